"""PEFD (Chen et al., NeurIPS 2022, methods/pefd.py): the cosine distance between the averaged
ReLU-linear projector ensemble of the student and the teacher's pooled feature.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.core.errors import ConfigError
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import MethodContext, PairNotSupportedError

NUM_CLASSES = 3
STUDENT = FeatureShapes(None, (), (), (2,), (NUM_CLASSES,))
TEACHER = FeatureShapes(None, (), (), (3,), (NUM_CLASSES + 1,))  # other classes: PEFD reads features only


def build(**overrides):
    cls = METHODS.get("pefd")
    context = MethodContext(STUDENT, TEACHER, NUM_CLASSES, 8, torch.zeros(8, dtype=torch.long))
    return cls(cls.resolve_hp(overrides), context)


POOLED_S = [[0.5, -1.0], [1.5, 0.2], [-0.3, 0.9]]
POOLED_T = [[1.0, 0.0, 2.0], [0.3, -0.7, 1.1], [2.2, 0.5, -0.4]]


def ensemble_by_hand(method, row):
    outputs = []
    for projector in method.projectors:
        weight, bias = projector.weight.tolist(), projector.bias.tolist()
        outputs.append(
            [max(0.0, sum(w * x for w, x in zip(weight[d], row, strict=True)) + bias[d]) for d in range(3)]
        )
    return [sum(values) / len(outputs) for values in zip(*outputs, strict=True)]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


@pytest.mark.parametrize("num_projectors", [3, 1])
def test_pefd_is_one_minus_the_cosine_of_the_averaged_relu_projections_and_the_teacher(num_projectors):
    method = build(num_projectors=num_projectors)
    with torch.no_grad():  # biases that switch some ReLUs off, so the average of rectified outputs matters
        for k, projector in enumerate(method.projectors):
            projector.bias.copy_(torch.tensor([0.5, -0.8, 0.1]) * (k + 1))
    terms = method.losses(
        Features(logits=torch.zeros(3, NUM_CLASSES), pooled=torch.tensor(POOLED_S)),
        Features(logits=torch.zeros(3, NUM_CLASSES + 1), pooled=torch.tensor(POOLED_T)),
        torch.tensor([0, 1, 2]),
        None,
    )
    distances = [1 - cosine(ensemble_by_hand(method, s), t) for s, t in zip(POOLED_S, POOLED_T, strict=True)]
    assert len(method.projectors) == num_projectors
    assert terms["pefd"].item() == pytest.approx(25.0 * sum(distances) / 3, rel=1e-5)
    assert set(terms) == {"ce", "pefd"}


def test_pefd_refuses_no_teacher_and_an_empty_ensemble():
    with pytest.raises(PairNotSupportedError, match="teacher"):
        METHODS.get("pefd").check_pair(STUDENT, None)
    with pytest.raises(ConfigError, match="pefd.num_projectors=0"):
        build(num_projectors=0)
