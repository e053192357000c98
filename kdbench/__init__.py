"""kdbench: a benchmark suite and leaderboard harness for knowledge distillation."""

__version__ = "0.1.0"
