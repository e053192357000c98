"""Evaluation of a trained (deployed) model on a split: what the record's test and validation figures are.

The loop (kdbench/training/engine.py) calls `evaluate` at the epochs the recipe evaluates; teacher
training (kdbench/training/teachers.py) calls it once on the trained teacher. One pass over the split
gives top-1 / top-5 and, beside them, the record's `evaluation` part (kdbench/core/records.py
`Evaluation`): per-class accuracy, the confusion matrix, the expected calibration error and, given the
teacher's outputs on the same split (`teacher_outputs`, computed once per teacher and split and then
reused by every member at every evaluation), how far the student agrees with its teacher.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.core.records import CONFUSION_MAX_CLASSES  # 1,000 classes: a million counts per record
from kdbench.data import DatasetInfo, ImageData, iterate_batches

EVAL_BATCH_SIZE = 512
# Guo et al., "On Calibration of Modern Neural Networks", ICML 2017: confidence (the top-1 softmax
# probability) in 15 equal-width bins (0, 1/15], ..., (14/15, 1]; ECE = sum over bins of
# |bin| / n * |accuracy(bin) - mean confidence(bin)|
ECE_BINS = 15


@dataclass(frozen=True)
class TeacherOutputs:
    """The frozen teacher on every image of a split, by position: its log-probabilities at temperature 1
    and its top-1 class."""

    log_probs: torch.Tensor  # float32 (N, classes)
    top1: torch.Tensor  # int64 (N,)


class _Tally:
    """The counts of one pass: top-1 / top-5 hits, the confusion matrix, the calibration bins, the
    agreement with the teacher."""

    def __init__(self, classes: int, device: torch.device, teacher: TeacherOutputs | None):
        self.classes, self.teacher = classes, teacher
        self.correct1 = self.correct5 = 0
        self.confusion = torch.zeros(classes * classes, dtype=torch.int64, device=device)
        self.bin_confidence = torch.zeros(ECE_BINS, dtype=torch.float64, device=device)
        self.bin_correct = torch.zeros(ECE_BINS, dtype=torch.int64, device=device)
        self.agreed = torch.zeros((), dtype=torch.int64, device=device)
        self.kl_sum = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, topk: int) -> None:
        top = logits.topk(topk, dim=1).indices
        hits = top.eq(labels[:, None])
        self.correct1 += int(hits[:, 0].sum())
        self.correct5 += int(hits.any(dim=1).sum())
        predicted = top[:, 0]  # the top-1 the accuracy counts, ties broken alike
        self.confusion += torch.bincount(labels * self.classes + predicted, minlength=self.classes**2)
        log_probs = F.log_softmax(logits.float(), dim=1)
        confidence = log_probs.gather(1, predicted[:, None]).squeeze(1).exp()
        bins = (confidence * ECE_BINS).ceil().long().clamp(1, ECE_BINS) - 1  # (k/15, (k+1)/15] -> k
        self.bin_confidence.index_add_(0, bins, confidence.double())
        self.bin_correct.index_add_(0, bins, hits[:, 0].long())
        if self.teacher is not None:
            teacher_log_probs = self.teacher.log_probs[indices]
            self.agreed += self.teacher.top1[indices].eq(predicted).sum()
            # KL(teacher || student) per image; a class the teacher gives probability 0 adds nothing
            terms = teacher_log_probs.exp() * (teacher_log_probs - log_probs)
            self.kl_sum += torch.where(teacher_log_probs.isneginf(), 0.0, terms).sum(dtype=torch.float64)

    def result(self, count: int) -> dict:
        confusion = self.confusion.view(self.classes, self.classes).cpu()
        class_images, class_hits = confusion.sum(dim=1).tolist(), confusion.diagonal().tolist()
        gaps = (self.bin_correct.cpu().double() - self.bin_confidence.cpu()).abs()
        # sum over bins of |b| / n * |accuracy_b - confidence_b| = sum over bins of |hits_b - confidences_b| / n
        ece = 100.0 * float(gaps.sum()) / count
        kl = float(self.kl_sum) / count if self.teacher is not None else None
        return {
            "images": count,
            "classes": self.classes,
            "per_class_top1": [
                100.0 * hits / images if images else None
                for hits, images in zip(class_hits, class_images, strict=True)
            ],
            "confusion": confusion.tolist() if self.classes <= CONFUSION_MAX_CLASSES else None,
            "ece": ece if math.isfinite(ece) else None,
            "ece_bins": ECE_BINS,
            "agreement_top1": 100.0 * int(self.agreed) / count if self.teacher is not None else None,
            "teacher_kl": kl if kl is None or math.isfinite(kl) else None,
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageData,
    info: DatasetInfo,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    teacher: TeacherOutputs | None = None,
) -> dict:
    """Top-1 / top-5 accuracy (%) on a whole split, eval mode (under the run's autocast), and, from the
    same pass, the split's `evaluation` (per-class accuracy, confusion, ECE; agreement with `teacher`,
    its outputs on this split, where given): {"top1", "top5", "evaluation"}."""
    was_training = model.training
    model.eval()
    topk = min(5, info.num_classes)
    tally = _Tally(info.num_classes, torch.device(device), teacher)
    for images, labels, indices in iterate_batches(
        data, info, EVAL_BATCH_SIZE, shuffle=False, augment=False, device=device, generator=None
    ):
        with autocast():
            logits = model(images)
        tally.add(logits, labels, indices, topk)
    model.train(was_training)
    count = len(data.labels)
    return {
        "top1": 100.0 * tally.correct1 / count,
        "top5": 100.0 * tally.correct5 / count,
        "evaluation": tally.result(count),
    }


@torch.no_grad()
def _teacher_pass(
    teacher: nn.Module, data: ImageData, info: DatasetInfo, device: torch.device
) -> TeacherOutputs:
    """The teacher over the whole split in full precision (as its test accuracy is measured, whatever
    the students' precision)."""
    was_training = teacher.training
    teacher.eval()
    log_probs = []
    for images, _, _ in iterate_batches(
        data, info, EVAL_BATCH_SIZE, shuffle=False, augment=False, device=device, generator=None
    ):
        log_probs.append(F.log_softmax(teacher(images).float(), dim=1))
    teacher.train(was_training)
    joined = torch.cat(log_probs)
    return TeacherOutputs(joined, joined.topk(1, dim=1).indices.squeeze(1))


# teacher module -> (the split it was run on, its outputs): one teacher pass per teacher and split, for
# every member of every cohort that shares the teacher; dropped with the teacher
_TEACHER_OUTPUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def teacher_outputs(
    teacher: nn.Module, data: ImageData, info: DatasetInfo, device: torch.device
) -> TeacherOutputs:
    """The frozen `teacher`'s outputs on the split `data`: computed at the first call for this teacher
    and split, the same tensors thereafter."""
    kept = _TEACHER_OUTPUTS.get(teacher)
    if kept is None or kept[0]() is not data:
        kept = (weakref.ref(data), _teacher_pass(teacher, data, info, device))
        _TEACHER_OUTPUTS[teacher] = kept
    return kept[1]
