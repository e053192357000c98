"""`forward_from`, the part of the model protocol that resumes a network from one of its stage outputs.

    model.forward_from(i, model(x, features=True).stages[i]) == model(x)

Every zoo model and the timm adapter has it: the stages after stage i, whatever the model applies
between stages (VGG's max pools), then its head, on the tensor `Features.stages[i]` holds. Methods
that run one network's later stages on another's (mapped) features use it (FCFD, methods/fcfd.py).
"""

from __future__ import annotations


def check_stage_index(stage_index: int, num_stages: int) -> None:
    """IndexError unless `stage_index` names one of `num_stages` stages (0-based, no negative index)."""
    if not 0 <= stage_index < num_stages:
        raise IndexError(f"stage_index {stage_index}: the model has stages 0..{num_stages - 1}")
