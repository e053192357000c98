"""Cohort planning: which runs train together in the one loop (kdbench/training/engine.py).

Runs that share student, dataset, recipe, seed, precision and compile draw the same batches (the
batch order and the augmentation come from the seed alone), so the loop trains them as one cohort:
each batch drawn once, the frozen teacher run once on it, every member stepping on it. Cohort
training is an execution strategy, not a protocol change: each member's record is bit-identical to
the same spec trained alone (tests/training/test_cohort.py).
"""

from __future__ import annotations

import math

from kdbench.core.spec import RunSpec


def cohort_key(spec: RunSpec, across_seeds: bool = False) -> tuple:
    """What members of one cohort share: the batches they draw and how the teacher runs on them. Across
    seeds (fused members, kdbench/training/fused.py), the seed is left out: the cohort's members of each
    seed are a data stream of their own, which the loop trains in lockstep with the others."""
    if across_seeds:
        return (spec.student, spec.dataset, spec.recipe, spec.teacher_sha256, spec.precision, spec.compile)
    return (spec.student, spec.dataset, spec.recipe, spec.seed, spec.precision, spec.compile)


# A cohort holds every member's student, optimizer state, method modules (CRD's memory bank) and
# tracker files at once, while the teacher forward it shares is one share of each step: past a dozen
# or so members that share is small and the memory is not, so a group larger than this is cut.
MAX_COHORT_MEMBERS = 16


def plan_cohorts(
    specs: list[RunSpec],
    jobs: int,
    enabled: bool = True,
    largest: int = MAX_COHORT_MEMBERS,
    across_seeds: bool = False,
) -> list[list[RunSpec]]:
    """Specs that can share a data stream and a teacher forward (same student, dataset, recipe,
    seed, precision, compile; any seed `across_seeds`, for fused members, which fuse across the
    streams of a cohort), each group cut into cohorts of at most `largest` members, then into
    `parts` cohorts: the fewest parts that keep the `jobs` workers busiest (rounds of work per part:
    ceil(groups * parts / jobs) / parts)."""
    if not enabled:
        return [[spec] for spec in specs]
    groups: dict[tuple, list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault(cohort_key(spec, across_seeds), []).append(spec)
    bounded = []
    for group in groups.values():
        cuts = math.ceil(len(group) / largest)
        bounded += [group[i::cuts] for i in range(cuts)]
    if not bounded:
        return []
    most = max(len(group) for group in bounded)
    parts = min(range(1, most + 1), key=lambda p: (math.ceil(len(bounded) * p / jobs) / p, p))
    return [group[i::parts] for group in bounded for i in range(min(parts, len(group)))]
