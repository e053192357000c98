"""A trained member's measured results: the record's part the loop produces (kdbench/core/store.py
`new_record` assembles the rest)."""

from __future__ import annotations

import math

import torch

from kdbench.core.spec import wrappers_in_every_spec
from kdbench.core.store import TrainResult
from kdbench.training.export import deployed_student
from kdbench.training.measure import inference_flops, parameter_count
from kdbench.training.member import Member


def train_result(member: Member) -> TrainResult:
    """The record's measured part, once every epoch is done: metrics of the history, costs, the
    deployed student's cost and export check, each wrapper's summary, the seeds, the deployed weights."""
    info = member.data.info
    # the last evaluated epoch's full evaluation (kdbench/training/engine.py `finish_epoch` keeps it in
    # that epoch's entry) becomes the record's `evaluation`; the history keeps its small entries
    evaluation = next((h["evaluation"] for h in reversed(member.history) if "evaluation" in h), None)
    history = [{key: value for key, value in h.items() if key != "evaluation"} for h in member.history]
    deployed, export_error = deployed_student(member)
    example = torch.zeros(1, info.in_chans, *info.image_size, device=member.device)
    best = max((h for h in history if "test_top1" in h), key=lambda h: h["test_top1"])
    last = history[-1]
    images = sum(h["images"] for h in history)
    return {
        "history": history,
        "metrics": {
            "last_top1": last["test_top1"],
            "last_top5": last["test_top5"],
            "best_top1": best["test_top1"],
            "best_top5": best["test_top5"],
            "best_epoch": best["epoch"],
        },
        "evaluation": evaluation,  # the deployed student on the test split at the last evaluated epoch
        "throughput_img_s": images / member.train_seconds if member.train_seconds else math.nan,
        "overhead": {
            **member.costs,
            "epoch_seconds": member.train_seconds / len(history),
            "deploy_params": parameter_count(deployed),
            "deploy_flops_per_image": inference_flops(deployed, example),
            "export_max_abs_error": export_error,
        },
        # each wrapper's summary under its name; a built-in's key is null where the run did not use it
        # (a plugin wrapper loaded for other runs adds no key: a record does not depend on what was loaded)
        **dict.fromkeys(wrappers_in_every_spec()),
        **{wrapper.name: wrapper.summary(member.student) for wrapper in member.wrappers},
        # a student model's own JSON-able findings, where it defines `analysis()`
        "analysis": member.student.analysis() if hasattr(member.student, "analysis") else None,
        "seeds": member.seeds,  # which seed drove which random source
        "final_state": deployed.state_dict(),
    }
