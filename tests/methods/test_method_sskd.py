"""SSKD (Xu et al., ECCV 2020, methods/sskd.py): KD on the normal and the rotated images, the
teacher's self-supervised similarities distilled over the rows it ranks well, its head trained
first in the init stage on the rotations.

Each loss is checked against the formulas of the authors' student.py written out here in plain
Python (lists, math) on small hand-made tensors, with its own ranking (count of higher scores)
and selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_trainer
from method_fixtures import cross_entropy_by_hand, softmax

from kdbench.core.errors import ConfigError
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.data import augment_views
from kdbench.data.batches import augment_batch, normalize
from kdbench.methods.base import MethodContext, PairNotSupportedError

CLASSES, BATCH, STUDENT_DIM, TEACHER_DIM = 3, 4, 2, 3
STUDENT = FeatureShapes(None, (), (), (STUDENT_DIM,), (CLASSES,))
TEACHER = FeatureShapes(None, (), (), (TEACHER_DIM,), (CLASSES,))
ROTATIONS = ("rot90", "rot180", "rot270")


def build(image_shape=(3, 8, 8), **overrides):
    cls = METHODS.get("sskd")
    context = MethodContext(
        STUDENT, TEACHER, CLASSES, 8, torch.zeros(8, dtype=torch.long), image_shape=image_shape
    )
    return cls(cls.resolve_hp(overrides), context)


def hand_made(seed: int):
    """Normal and rotated (student, teacher) features of BATCH images, drawn once from `seed`."""
    generator = torch.Generator().manual_seed(seed)

    def side(dim):
        return Features(
            logits=torch.randn(BATCH, CLASSES, generator=generator) * 2,
            pooled=torch.randn(BATCH, dim, generator=generator),
        )

    normal = (side(STUDENT_DIM), side(TEACHER_DIM))
    views = {name: (side(STUDENT_DIM), side(TEACHER_DIM)) for name in ROTATIONS}
    return normal, views


def head_by_hand(linear_1, linear_2, vector):
    """Linear, ReLU, Linear, in plain Python."""
    hidden = [
        max(0.0, sum(w * v for w, v in zip(row, vector, strict=True)) + b)
        for row, b in zip(*linear_1, strict=True)
    ]
    return [
        sum(w * h for w, h in zip(row, hidden, strict=True)) + b for row, b in zip(*linear_2, strict=True)
    ]


def weights(head):
    return [(layer.weight.tolist(), layer.bias.tolist()) for layer in (head[0], head[2])]


def cosine(u, v):
    return sum(a * b for a, b in zip(u, v, strict=True)) / math.sqrt(
        sum(a * a for a in u) * sum(b * b for b in v)
    )


def rotated_by_hand(views, side, field):
    """Image-major rows: image i's 90, 180, 270 degree turns."""
    return [getattr(views[name][side], field)[i].tolist() for i in range(BATCH) for name in ROTATIONS]


def similarities_by_hand(head, rotated, normal):
    layers = weights(head)
    rotated = [head_by_hand(*layers, row) for row in rotated]
    normal = [head_by_hand(*layers, row) for row in normal]
    return [[cosine(r, n) for n in normal] for r in rotated]


def rank_by_hand(scores, target):
    return sum(1 for value in scores if value > scores[target])


def kept_by_hand(ranks, keep):
    wrong = [i for i, rank in enumerate(ranks) if rank > 0]
    best_wrong = sorted(wrong, key=lambda i: (ranks[i], i))[: int(len(wrong) * keep)]
    return sorted([i for i, rank in enumerate(ranks) if rank == 0] + best_wrong)


def kl_by_hand(student_rows, teacher_rows, temperature):
    total = 0.0
    for s, t in zip(student_rows, teacher_rows, strict=True):
        p_s, p_t = softmax(s, temperature), softmax(t, temperature)
        total += sum(b * math.log(b / a) for a, b in zip(p_s, p_t, strict=True))
    return temperature**2 * total / len(student_rows)


@pytest.mark.parametrize("seed", [0, 1])
def test_sskd_terms_follow_the_authors_student_py(seed):
    method = build(transform_keep=0.5)  # the default 1.0 keeps every row; 0.5 selects
    (student, teacher), views = hand_made(seed)
    labels = torch.tensor([0, 2, 1, 2])
    terms = method.losses(student, teacher, labels, None, views=views)
    assert set(terms) == {"ce", "kd", "sskd_transform", "sskd_similarity"}

    assert terms["ce"].item() == pytest.approx(
        0.1 * cross_entropy_by_hand(student.logits, labels.tolist()), rel=1e-5
    )
    assert terms["kd"].item() == pytest.approx(
        0.9 * kl_by_hand(student.logits.tolist(), teacher.logits.tolist(), 4.0), rel=1e-5
    )

    rotated_labels = [label for label in labels.tolist() for _ in ROTATIONS]
    student_logits, teacher_logits = rotated_by_hand(views, 0, "logits"), rotated_by_hand(views, 1, "logits")
    ranks = [rank_by_hand(row, label) for row, label in zip(teacher_logits, rotated_labels, strict=True)]
    kept = kept_by_hand(ranks, 0.5)
    assert 0 < len(kept) < len(ranks)
    transform = kl_by_hand([student_logits[i] for i in kept], [teacher_logits[i] for i in kept], 4.0)
    assert terms["sskd_transform"].item() == pytest.approx(2.7 * transform, rel=1e-5)

    student_similarity = similarities_by_hand(
        method.student_head, rotated_by_hand(views, 0, "pooled"), student.pooled.tolist()
    )
    teacher_similarity = similarities_by_hand(
        method.teacher_head, rotated_by_hand(views, 1, "pooled"), teacher.pooled.tolist()
    )
    own = [i for i in range(BATCH) for _ in ROTATIONS]
    ranks = [rank_by_hand(row, column) for row, column in zip(teacher_similarity, own, strict=True)]
    kept = kept_by_hand(ranks, 0.75)
    assert len(kept) < len(ranks)
    similarity = kl_by_hand([student_similarity[i] for i in kept], [teacher_similarity[i] for i in kept], 0.5)
    assert terms["sskd_similarity"].item() == pytest.approx(10.0 * similarity, rel=1e-5)


def test_sskd_keeps_every_transformed_row_by_default():
    (student, teacher), views = hand_made(0)
    labels = torch.tensor([0, 2, 1, 2])
    terms = build().method_terms(student, teacher, labels, None, views=views)
    student_logits, teacher_logits = rotated_by_hand(views, 0, "logits"), rotated_by_hand(views, 1, "logits")
    assert terms["sskd_transform"].item() == pytest.approx(
        2.7 * kl_by_hand(student_logits, teacher_logits, 4.0), rel=1e-5
    )


def test_the_teacher_head_stage_is_cross_entropy_of_raw_cosines():
    method = build(init_epochs=60)
    (student, teacher), views = hand_made(2)
    stage = method.init_stage()
    assert stage.epochs == 60 and not stage.trains_student
    assert {id(p) for p in stage.parameters} == {id(p) for p in method.teacher_head.parameters()}
    loss = stage.loss(student, teacher, views=views)["sskd_teacher_head"]
    similarity = similarities_by_hand(
        method.teacher_head, rotated_by_hand(views, 1, "pooled"), teacher.pooled.tolist()
    )
    own = [i for i in range(BATCH) for _ in ROTATIONS]
    assert loss.item() == pytest.approx(cross_entropy_by_hand(torch.tensor(similarity), own), rel=1e-5)
    assert build(init_epochs=60).init_epochs() == 60 and METHODS.get("sskd").extra_views == ROTATIONS


def test_the_rotated_views_turn_the_recropped_images_as_np_rot90(tiny_data):
    indices = torch.tensor([3, 0, 7])
    views = augment_views(
        tiny_data.train,
        tiny_data.info,
        indices,
        ROTATIONS,
        generator=torch.Generator().manual_seed(5),
        device="cpu",
    )
    generator = torch.Generator().manual_seed(5)
    for turns, name in enumerate(ROTATIONS, start=1):
        cropped = (
            augment_batch(tiny_data.train.images[indices], tiny_data.info, generator)
            .permute(0, 2, 3, 1)
            .numpy()
        )
        turned = torch.from_numpy(np.rot90(cropped, turns, axes=(1, 2)).copy()).permute(0, 3, 1, 2)
        assert torch.equal(views[name], normalize(turned, tiny_data.info))


def test_sskd_refuses_what_it_cannot_serve():
    with pytest.raises(PairNotSupportedError, match="^sskd .*pooled"):
        METHODS.get("sskd").check_pair(STUDENT, FeatureShapes(None, (), (), None, (CLASSES,)))
    with pytest.raises(PairNotSupportedError, match="^sskd .*logits"):
        METHODS.get("sskd").check_pair(STUDENT, FeatureShapes(None, (), (), (TEACHER_DIM,), (CLASSES + 1,)))
    with pytest.raises(ConfigError, match="sskd .*square.*8x6"):
        build(image_shape=(3, 8, 6))


def test_sskd_trains_its_teacher_head_in_the_init_stage_then_freezes_it(tiny_data, tmp_path):
    trainer = make_trainer(tiny_data, tmp_path, "sskd")  # 60 of 240 epochs, for 1: a 1-epoch stage
    head = {k: v.clone() for k, v in trainer.method.teacher_head.state_dict().items()}
    student = {k: v.clone() for k, v in trainer.method.student_head.state_dict().items()}
    trainer.run_init_stage()
    after_stage = {k: v.clone() for k, v in trainer.method.teacher_head.state_dict().items()}
    assert all(not torch.equal(head[k], after_stage[k]) for k in head)
    assert all(torch.equal(student[k], v) for k, v in trainer.method.student_head.state_dict().items())
    trainer.train_epoch(1)
    assert all(torch.equal(after_stage[k], v) for k, v in trainer.method.teacher_head.state_dict().items())
    assert any(not torch.equal(student[k], v) for k, v in trainer.method.student_head.state_dict().items())
