"""The random streams of a run and the sources that draw from them (docs/DESIGN.md, "Protocol").

A member (kdbench/training/member.py) seeds its streams from `stream_seeds`; its record's `seeds` is
`source_seeds`, read from the same table; tests/training/test_seeds.py checks each source where it draws.
"""

from __future__ import annotations

from kdbench.data import SUBSET_SEED, view_generator

# Each random source of a run -> the stream it draws from. The global stream is seeded once, then
# drawn by the sources in this order: construction draws the student's, the wrappers' and the
# method's initial weights; training draws the method's sampling and dropout.
RANDOM_SOURCES = {
    "student_init": "global",
    "wrapper_init": "global",
    "method_init": "global",
    "method_sampling": "global",
    "dropout": "global",
    "batch_order": "batches",
    "augmentation": "batches",
    "extra_views": "views",
    "data_subset": "data",
    "validation_split": "data",
}


def stream_seeds(seed: int) -> dict[str, int]:
    """The seed of each random stream of a run whose spec seed is `seed`: a member seeds its
    streams from this table and the record's `seeds` is read from it (`source_seeds`)."""
    return {
        "global": seed,  # torch's global generator (the CPU's and every CUDA device's)
        "batches": seed,  # the run's generator, shared by a cohort's members
        "views": view_generator(seed).initial_seed(),  # derived from the seed, apart from the batches
        "data": SUBSET_SEED,  # fixed: every seed trains on the same images
    }


def source_seeds(seed: int, extra_views: bool) -> dict[str, int | None]:
    """The record's `seeds`: each of `RANDOM_SOURCES` -> the seed of its stream (extra views: None
    for a method that reads none)."""
    streams = stream_seeds(seed)
    seeds = {source: streams[stream] for source, stream in RANDOM_SOURCES.items()}
    return {**seeds, "extra_views": seeds["extra_views"] if extra_views else None}
