"""The shapes, contexts and features the per-method tests (tests/methods/test_method_*.py) build methods from.

One place for the scaffolding, so each test file holds only its method's checks. Not a test module
(no `test_` prefix); tests/conftest.py puts this folder on sys.path."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import Method, MethodContext

NUM_CLASSES = 5
BATCH = 2


def shapes(channels: list[int], sizes: list[int], pooled: int | None = None, classes: int = NUM_CLASSES):
    """Square stage maps of `channels` x `sizes`; the stem has the first stage's channels and size."""
    stages = tuple((c, s, s) for c, s in zip(channels, sizes, strict=True))
    return FeatureShapes(
        stem=(channels[0], sizes[0], sizes[0]),
        stages=stages,
        preact=stages,
        pooled=(pooled or channels[-1],),
        logits=(classes,),
    )


STUDENT = shapes([2, 3], [4, 2])
TEACHER = shapes([3, 4], [4, 4])  # same stage count, wider, larger last map
# the pair the methods with an init stage (AB, FT, FSP, ReviewKD) are checked on
INIT_STUDENT = shapes([4, 8], [8, 4])
INIT_TEACHER = shapes([4, 16], [8, 4])  # same stage count, wider last stage


def context(
    student: FeatureShapes = STUDENT, teacher: FeatureShapes = TEACHER, num_train: int = 8
) -> MethodContext:
    return MethodContext(
        student,
        teacher,
        NUM_CLASSES,
        num_train=num_train,
        train_labels=torch.zeros(num_train, dtype=torch.long),
    )


def build_between(
    name: str, student: FeatureShapes = STUDENT, teacher: FeatureShapes = TEACHER, **overrides
) -> Method:
    cls = METHODS.get(name)
    return cls(cls.resolve_hp(overrides), context(student, teacher))


def build_init_stage(cls, **overrides) -> Method:
    """`cls` between INIT_STUDENT and INIT_TEACHER (a training set of 10)."""
    return cls(cls.resolve_hp(overrides), context(INIT_STUDENT, INIT_TEACHER, num_train=10))


def random_features(
    feature_shapes: FeatureShapes,
    requires_grad: bool,
    batch: int = BATCH,
    draw: Callable[..., torch.Tensor] = torch.randn,
) -> Features:
    """Every feature of `feature_shapes` for `batch` samples, drawn by `draw` in field order."""

    def tensor(shape):
        return draw(batch, *shape, requires_grad=requires_grad)

    return Features(
        logits=tensor(feature_shapes.logits),
        pooled=tensor(feature_shapes.pooled),
        stem=tensor(feature_shapes.stem),
        stages=[tensor(s) for s in feature_shapes.stages],
        preact=[tensor(s) for s in feature_shapes.preact],
    )


def features(logits=None, pooled=None, stages=()) -> Features:
    return Features(logits=logits, pooled=pooled, stages=list(stages))


def rows(matrix: torch.Tensor) -> list[list[float]]:
    return matrix.tolist()


def dot(u, v) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


# the foundation tests' (KD, AT, FitNet, CRD, student) hand-made shapes: 3 classes, labels 0..2 twice
def feature_shapes(stages, stem=(2, 4, 4), pooled=(3,), logits=(3,)) -> FeatureShapes:
    return FeatureShapes(stem=stem, stages=tuple(stages), preact=tuple(stages), pooled=pooled, logits=logits)


def method_context(student_shapes, teacher_shapes, train_labels=(0, 0, 1, 1, 2, 2)) -> MethodContext:
    labels = torch.tensor(train_labels)
    return MethodContext(student_shapes, teacher_shapes, int(labels.max()) + 1, len(labels), labels)


def build(name: str, context: MethodContext, **overrides) -> Method:
    method_class = lookup(METHODS, "method", name)
    return method_class(method_class.resolve_hp(overrides), context)


def features_of(shapes: FeatureShapes, batch: int = 2) -> Features:
    """Uniform features that carry gradients, as the foundation tests draw them."""
    return random_features(shapes, requires_grad=True, batch=batch, draw=torch.rand)


def softmax(values: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def mean(values):
    return sum(values) / len(values)


def cross_entropy_by_hand(logits, labels):
    return sum(
        -(row[label] - math.log(sum(math.exp(v) for v in row)))
        for row, label in zip(logits.tolist(), labels, strict=True)
    ) / len(labels)


def kl_times_t2(student_row, teacher_row, temperature):
    p_s, p_t = softmax(student_row, temperature), softmax(teacher_row, temperature)
    return temperature**2 * sum(t * math.log(t / s) for s, t in zip(p_s, p_t, strict=True))


# the logit methods' hand-picked values, imported under the names each test file reads them by
# 2 samples x 3 classes (KD, AT, CRD, FitNet, student)
PAIR_STUDENT_LOGITS = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
PAIR_TEACHER_LOGITS = torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
PAIR_LABELS = torch.tensor([2, 0])
# 3 samples x 4 classes (NKD, TF-KD; the labels also KDSVD, OFD, WSLD, WTTM)
TRIO_STUDENT_LOGITS = torch.tensor([[2.0, 0.5, -1.0, 0.3], [0.1, 0.3, 1.5, -2.0], [1.0, 1.0, 1.0, 1.0]])
TRIO_TEACHER_LOGITS = torch.tensor([[3.0, -0.5, 0.2, 1.1], [1.2, 0.4, -0.3, 2.2], [0.0, 2.5, 0.5, -1.0]])
TRIO_LABELS = torch.tensor([0, 2, 1])
# 4 samples x 3 classes as plain rows (CTKD, MLKD)
ROWS_STUDENT_LOGITS = [[1.0, -0.5, 0.2], [0.3, 0.8, -1.0], [-0.2, 0.1, 0.4], [2.0, 0.0, -1.0]]
ROWS_TEACHER_LOGITS = [[2.0, -1.0, 0.5], [0.1, 1.5, -0.5], [0.0, -0.3, 1.2], [1.0, 1.0, -2.0]]


def logits_context(batch_size=4, num_classes=3) -> MethodContext:
    """Student and teacher that expose only logits (and a pooled vector)."""
    only_logits = FeatureShapes(stem=None, stages=(), preact=(), pooled=(2,), logits=(num_classes,))
    return MethodContext(
        only_logits, only_logits, num_classes, 8, torch.zeros(8, dtype=torch.long), batch_size=batch_size
    )


def row_features(rows, requires_grad=False) -> Features:
    return Features(logits=torch.tensor(rows, requires_grad=requires_grad), pooled=None)


def logits_features(logits: torch.Tensor) -> Features:
    return Features(logits=logits, pooled=None)


# stage-only shapes (no stem) and a 6-sample context, for the feature methods KDSVD, OFD, WSLD
def shapes_of(stages, preact=None, pooled=(3,), logits=(3,)) -> FeatureShapes:
    stages = tuple(stages)
    return FeatureShapes(
        stem=None, stages=stages, preact=tuple(preact or stages), pooled=pooled, logits=logits
    )


def context_of(student_shapes, teacher_shapes, num_classes=3) -> MethodContext:
    labels = torch.arange(6) % num_classes
    return MethodContext(student_shapes, teacher_shapes, num_classes, len(labels), labels)


def model_pair_context(models, num_classes=3, **fields) -> MethodContext:
    """The context of a method that reads the models themselves: `models` is (student, teacher,
    student shapes, teacher shapes) on 16x16 images; `fields` override the context's fields."""
    student, teacher, student_shapes, teacher_shapes = models
    return MethodContext(
        student_shapes,
        teacher_shapes,
        num_classes,
        8,
        torch.zeros(8, dtype=torch.long),
        image_shape=(3, 16, 16),
        **{"teacher": teacher, "student": student, **fields},
    )
