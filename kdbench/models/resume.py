"""`forward_from`, the part of the model protocol that resumes a network from one of its stage outputs.

    features = model(x, features=True)
    model.forward_from(i, features.stages[i]) == model(x)
    model.forward_from(i, features.stages[i], features=True)   # Features of the resumed run:
        .stages == features.stages[i + 1:]   (only the stages after i), .pooled, .logits

Every zoo model, the HME and the timm adapter (where its stages chain) have it: the stages after
stage i, whatever the model applies between stages (VGG's max pools), then its head, on the tensor
`Features.stages[i]` holds. Methods that run one network's later stages on another's (mapped)
features use it (FCFD, methods/fcfd.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from kdbench.core.features import Features


def check_stage_index(stage_index: int, num_stages: int) -> None:
    """IndexError unless `stage_index` names one of `num_stages` stages (0-based, no negative index)."""
    if not 0 <= stage_index < num_stages:
        raise IndexError(f"stage_index {stage_index}: the model has stages 0..{num_stages - 1}")


def run_later_stages(
    stages: Sequence[Callable[[Tensor], Tensor]], stage_index: int, x: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """The stages after `stages[stage_index]` run in turn on `x` (that stage's output), for the models
    whose stages chain with nothing between them: the last output and every later stage's output."""
    check_stage_index(stage_index, len(stages))
    later = []
    for stage in stages[stage_index + 1 :]:
        x = stage(x)
        later.append(x)
    return x, later


def resumed(logits: Tensor, pooled: Tensor, later_stages: list[Tensor], features: bool) -> Tensor | Features:
    """What `forward_from` returns: the logits, or the resumed run's Features (`stages`: the later ones)."""
    if not features:
        return logits
    return Features(logits=logits, pooled=pooled, stages=later_stages)
