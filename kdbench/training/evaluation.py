"""Evaluation of a trained (deployed) model on a split: what the record's test and validation figures are.

The loop (kdbench/training/engine.py) calls `evaluate` at the epochs the recipe evaluates; teacher
training (kdbench/training/teachers.py) calls it once on the trained teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from kdbench.data import DatasetInfo, ImageData, iterate_batches

EVAL_BATCH_SIZE = 512


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageData,
    info: DatasetInfo,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> dict:
    """Top-1 / top-5 accuracy (%) on a whole split, eval mode (under the run's autocast)."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    topk = min(5, info.num_classes)
    for images, labels, _ in iterate_batches(
        data, info, EVAL_BATCH_SIZE, shuffle=False, augment=False, device=device, generator=None
    ):
        with autocast():
            logits = model(images)
        top = logits.topk(topk, dim=1).indices
        hits = top.eq(labels[:, None])
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
    model.train(was_training)
    count = len(data.labels)
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count}
