"""Developer tools: benchmarks, the reference loops they compare with, pinned losses."""
