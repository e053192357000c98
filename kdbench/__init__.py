"""kdbench: a benchmark suite and leaderboard harness for knowledge distillation.

The Python API (kdbench/api.py): `kdbench.run(...)`, `kdbench.leaderboard(...)` (a pandas DataFrame),
`kdbench.runs_frame(...)` (one row per run), `kdbench.report(...)`, `kdbench.load_records(...)`.
"""

__version__ = "0.1.0"
API = ("run", "leaderboard", "runs_frame", "report", "load_records")


def __getattr__(name: str):
    """The API, imported on first use (PEP 562): `import kdbench` stays light, and the layers hold
    (tests/test_layers.py lets this function alone import upward)."""
    if name in API:
        from kdbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's own names and the API's, which `__getattr__` imports on first use (tab completion)."""
    return sorted({*globals(), *API})
