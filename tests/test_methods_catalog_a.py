"""kdsvd, ofd, wsld, sdd: each loss checked against its paper's formula, recomputed here by hand
(explicit loops, numpy) on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import Method, MethodContext, PairNotSupportedError


def shapes_of(stages, preact=None, pooled=(3,), logits=(3,)) -> FeatureShapes:
    stages = tuple(stages)
    return FeatureShapes(
        stem=None, stages=stages, preact=tuple(preact or stages), pooled=pooled, logits=logits
    )


def context_of(student_shapes, teacher_shapes, num_classes=3) -> MethodContext:
    labels = torch.arange(6) % num_classes
    return MethodContext(student_shapes, teacher_shapes, num_classes, len(labels), labels)


def build(name: str, context: MethodContext, **overrides) -> Method:
    method_class = lookup(METHODS, "method", name)
    return method_class(method_class.resolve_hp(overrides), context)


def logits_features(logits: torch.Tensor) -> Features:
    return Features(logits=logits, pooled=None)


# --- WSLD ----------------------------------------------------------------------------------------

STUDENT_LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.5], [1.0, 1.0, 1.0]])
TEACHER_LOGITS = torch.tensor([[3.0, -0.5, 0.2], [1.2, 0.4, -0.3], [0.0, 2.5, 0.5]])
LABELS = torch.tensor([0, 2, 1])


def softmax_by_hand(row, temperature=1.0):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def wsld_by_hand(student, teacher, labels, temperature):
    total = 0.0
    for s_row, t_row, label in zip(student.tolist(), teacher.tolist(), labels.tolist(), strict=True):
        ce_student = -math.log(softmax_by_hand(s_row)[label])
        ce_teacher = -math.log(softmax_by_hand(t_row)[label])
        weight = 1 - math.exp(-(ce_student / ce_teacher))
        p_t, p_s = softmax_by_hand(t_row, temperature), softmax_by_hand(s_row, temperature)
        soft_ce = -sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s, strict=True))
        total += weight * soft_ce
    return temperature**2 * total / len(labels)


def test_wsld_defaults_are_the_authors_cifar_ones():
    hp = lookup(METHODS, "method", "wsld").resolve_hp()
    assert {k: hp[k] for k in ("ce_weight", "kd_weight", "method_weight", "temperature")} == {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "method_weight": 2.25,
        "temperature": 4.0,
    }


def test_wsld_weights_each_sample_soft_cross_entropy_by_the_ce_ratio():
    shapes = shapes_of([(2, 2, 2)])
    method = build("wsld", context_of(shapes, shapes))
    student_logits = STUDENT_LOGITS.clone().requires_grad_(True)
    terms = method.losses(logits_features(student_logits), logits_features(TEACHER_LOGITS), LABELS, LABELS)
    assert terms.keys() == {"ce", "wsld"}
    expected = wsld_by_hand(STUDENT_LOGITS, TEACHER_LOGITS, LABELS, 4.0)
    assert terms["wsld"].item() == pytest.approx(2.25 * expected, rel=1e-5)
    # the weights carry no gradient: d/dz of the term is w_i * T * (p_s - p_t) / batch
    terms["wsld"].backward()
    for i, (s_row, t_row, label) in enumerate(
        zip(STUDENT_LOGITS.tolist(), TEACHER_LOGITS.tolist(), LABELS.tolist(), strict=True)
    ):
        ratio = -math.log(softmax_by_hand(s_row)[label]) / -math.log(softmax_by_hand(t_row)[label])
        weight = 1 - math.exp(-ratio)
        p_s, p_t = softmax_by_hand(s_row, 4.0), softmax_by_hand(t_row, 4.0)
        expected_grad = [2.25 * weight * 4.0 * (ps - pt) / 3 for ps, pt in zip(p_s, p_t, strict=True)]
        assert student_logits.grad[i].tolist() == pytest.approx(expected_grad, rel=1e-4, abs=1e-7)


def test_wsld_refuses_different_class_counts():
    with pytest.raises(PairNotSupportedError, match="wsld"):
        lookup(METHODS, "method", "wsld").check_pair(
            shapes_of([(2, 2, 2)]), shapes_of([(2, 2, 2)], logits=(4,))
        )


# --- OFD -----------------------------------------------------------------------------------------


def partial_l2_by_hand(student: np.ndarray, teacher: np.ndarray, margin: np.ndarray) -> float:
    """sum over elements of d_p(max(t, m_c), s), divided by the batch: the paper's case rule."""
    total = 0.0
    n, c, h, w = student.shape
    for i in range(n):
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    target = max(teacher[i, ch, y, x], margin[ch])
                    s = student[i, ch, y, x]
                    if s <= target <= 0:
                        continue
                    total += (target - s) ** 2
    return total / n


def test_ofd_partial_l2_follows_the_case_rule():
    from kdbench.methods.ofd import partial_l2

    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 2, 2, generator=generator)
    teacher = torch.randn(2, 3, 2, 2, generator=generator)
    margin = torch.tensor([-0.5, -1.0, -0.2]).view(1, 3, 1, 1)
    expected = partial_l2_by_hand(student.numpy(), teacher.numpy(), margin.flatten().numpy())
    assert partial_l2(student, teacher, margin).item() == pytest.approx(expected, rel=1e-5)


def test_ofd_margin_is_the_mean_negative_response_or_minus_three_std():
    from kdbench.methods.ofd import empirical_margin

    preact = torch.tensor(
        [
            [[[-1.0, 2.0], [-3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]],
            [[[0.5, -2.0], [1.0, 1.0]], [[2.0, 2.0], [5.0, 1.0]]],
        ]
    )  # channel 0 has negatives -1, -3, -2; channel 1 has none
    margin = empirical_margin(preact).flatten().tolist()
    channel_1 = preact[:, 1].flatten().numpy()
    assert margin[0] == pytest.approx(-2.0)
    assert margin[1] == pytest.approx(-3 * float(np.std(channel_1)), rel=1e-5)


def test_ofd_loss_weights_stages_by_depth_and_fixes_margins_on_the_first_batch():
    student_shapes = shapes_of([(2, 4, 4), (2, 2, 2)])
    teacher_shapes = shapes_of([(3, 8, 8), (2, 4, 4), (2, 2, 2)])  # one stage more: the last two pair
    method = build("ofd", context_of(student_shapes, teacher_shapes))
    assert [m[0].in_channels for m in method.connectors] == [2, 2]
    method.connectors = nn.ModuleList([nn.Identity(), nn.Identity()])  # the connector's own test is below

    generator = torch.Generator().manual_seed(1)
    student = [torch.randn(2, *s, generator=generator) for s in student_shapes.preact]
    teacher = [torch.randn(2, *s, generator=generator) for s in teacher_shapes.preact]
    terms = method.method_terms(
        Features(logits=None, pooled=None, preact=student),
        Features(logits=None, pooled=None, preact=teacher),
        LABELS,
        LABELS,
    )
    margins = []
    for t in teacher[1:]:  # the margin by hand: mean of the negatives of each channel
        values = t.transpose(0, 1).reshape(t.shape[1], -1).numpy()
        margins.append(np.array([row[row < 0].mean() for row in values]))
    expected = partial_l2_by_hand(student[0].numpy(), teacher[1].numpy(), margins[0]) / 2
    expected += partial_l2_by_hand(student[1].numpy(), teacher[2].numpy(), margins[1])
    assert terms["ofd"].item() == pytest.approx(expected, rel=1e-5)

    # a second batch reuses the first batch's margins
    shifted = [t - 5 for t in teacher]
    method.method_terms(
        Features(logits=None, pooled=None, preact=student),
        Features(logits=None, pooled=None, preact=shifted),
        LABELS,
        LABELS,
    )
    assert method.margin1.flatten().tolist() == pytest.approx(margins[1].tolist(), rel=1e-5)
    assert method.state_dict()["margins_set"].item() is True


def test_ofd_pools_the_teacher_to_the_student_and_connects_with_conv_bn():
    student_shapes = shapes_of([(2, 2, 2)])
    teacher_shapes = shapes_of([(3, 4, 4)])
    method = build("ofd", context_of(student_shapes, teacher_shapes))
    conv, bn = method.connectors[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (2, 3, (1, 1), None)
    assert isinstance(bn, nn.BatchNorm2d)
    method.eval()
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(2, 2, 2, 2, generator=generator)
    teacher = torch.randn(2, 3, 4, 4, generator=generator)
    terms = method.method_terms(
        Features(logits=None, pooled=None, preact=[student]),
        Features(logits=None, pooled=None, preact=[teacher]),
        LABELS,
        LABELS,
    )
    with torch.no_grad():
        regressed = bn(conv(student)).numpy()
    pooled = teacher.numpy().reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))  # 2x2 average pooling
    values = teacher.transpose(0, 1).reshape(3, -1).numpy()
    margin = np.array([row[row < 0].mean() for row in values])
    assert terms["ofd"].item() == pytest.approx(partial_l2_by_hand(regressed, pooled, margin), rel=1e-5)


def test_ofd_refuses_a_teacher_map_smaller_than_the_student_map():
    with pytest.raises(PairNotSupportedError, match="ofd"):
        lookup(METHODS, "method", "ofd").check_pair(shapes_of([(2, 4, 4)]), shapes_of([(2, 2, 2)]))


# --- KD-SVD --------------------------------------------------------------------------------------


def right_vectors_by_hand(feature: np.ndarray, count: int):
    """numpy's SVD of each sample's (H*W, C) matrix: normalised first singular values, first vectors."""
    values, vectors = [], []
    for sample in feature:
        matrix = sample.reshape(sample.shape[0], -1).T  # (H*W, C)
        _, s, vh = np.linalg.svd(matrix, full_matrices=False)
        values.append(s[:count] / np.linalg.norm(s[:count]))
        vectors.append(vh[:count].T)  # (C, count)
    return np.array(values), np.array(vectors)


def kdsvd_by_hand(student_maps, teacher_maps, k, teacher_signs):
    """The paper's KD-SVD with numpy, the teacher's vector signs set to `teacher_signs` (an SVD's sign
    is the routine's choice; the test takes torch's so that the two computations meet)."""
    total, previous = 0.0, None
    batch = student_maps[0].shape[0]
    for layer, (s_map, t_map) in enumerate(zip(student_maps, teacher_maps, strict=True)):
        t_values, t_vectors = right_vectors_by_hand(t_map, k)
        t_vectors = t_vectors * teacher_signs[layer][:, None, :]
        _, s_vectors = right_vectors_by_hand(s_map, k + 3)
        aligned = np.zeros_like(t_vectors)
        for n in range(batch):
            for j in range(k):
                cosines = [float(s_vectors[n, :, i] @ t_vectors[n, :, j]) for i in range(s_vectors.shape[2])]
                best = int(np.argmax(np.abs(cosines)))
                aligned[n, :, j] = np.sign(cosines[best]) * s_vectors[n, :, best]
        current = (aligned * t_values[:, None, :], t_vectors * t_values[:, None, :])
        if previous is not None:
            for n in range(batch):
                for c in range(current[0].shape[1]):
                    for c_prev in range(previous[0].shape[1]):
                        for j in range(k):
                            g_s = math.exp(-((current[0][n, c, j] - previous[0][n, c_prev, j]) ** 2) / 8)
                            g_t = math.exp(-((current[1][n, c, j] - previous[1][n, c_prev, j]) ** 2) / 8)
                            total += (g_s - g_t) ** 2
        previous = current
    return total / batch


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_loss_matches_the_paper_computed_with_numpy(k):
    from kdbench.methods.kdsvd import kdsvd_loss, svd_knowledge

    generator = torch.Generator().manual_seed(3)
    shapes = [(3, 4, 4), (4, 2, 2), (5, 2, 2)]  # (C, H, W); the last has H*W < C
    student = [torch.randn(2, *s, generator=generator, dtype=torch.float64) for s in shapes]
    teacher = [torch.randn(2, *s, generator=generator, dtype=torch.float64) for s in shapes]
    signs = []
    for t in teacher:
        _, torch_vectors = svd_knowledge(t, k)
        _, numpy_vectors = right_vectors_by_hand(t.numpy(), k)
        dots = np.einsum("ncj,ncj->nj", torch_vectors.double().numpy(), numpy_vectors)
        assert np.allclose(np.abs(dots), 1.0, atol=1e-5)  # the same vectors up to sign
        signs.append(np.sign(dots))
    expected = kdsvd_by_hand([s.numpy() for s in student], [t.numpy() for t in teacher], k, signs)
    assert kdsvd_loss(student, teacher, k).item() == pytest.approx(expected, rel=1e-4)


def test_kdsvd_svd_gradient_matches_torch_and_stays_finite_on_dead_channels():
    from kdbench.methods.kdsvd import right_singular

    generator = torch.Generator().manual_seed(4)
    weights = torch.randn(2, 5, 2, generator=generator, dtype=torch.float64)
    for rows in (7, 3):  # H*W > C and H*W < C
        x = torch.randn(2, rows, 5, generator=generator, dtype=torch.float64, requires_grad=True)

        def loss(values, vectors):
            return values[:, :2].sum() + (vectors[:, :, :2] ** 2 * weights).sum()  # sign-invariant

        loss(*right_singular(x)).backward()
        reference = x.detach().clone().requires_grad_(True)
        _, s, vh = torch.linalg.svd(reference, full_matrices=False)
        loss(s, vh.transpose(-2, -1)).backward()
        assert torch.allclose(x.grad, reference.grad, atol=1e-10)

    dead = torch.relu(torch.randn(2, 8, 5, generator=generator, dtype=torch.float64))
    dead[:, :, 3:] = 0  # two dead channels: repeated zero singular values
    dead.requires_grad_(True)
    loss(*right_singular(dead)).backward()
    assert torch.isfinite(dead.grad).all() and dead.grad.abs().sum() > 0


def test_kdsvd_trains_only_the_student_and_refuses_channel_mismatch():
    kdsvd = lookup(METHODS, "method", "kdsvd")
    assert kdsvd.resolve_hp()["k"] == 1 and kdsvd.resolve_hp()["method_weight"] == 1.0
    with pytest.raises(PairNotSupportedError, match="channels"):
        kdsvd.check_pair(shapes_of([(2, 4, 4), (4, 2, 2)]), shapes_of([(2, 4, 4), (8, 2, 2)]))
    with pytest.raises(PairNotSupportedError, match="stages"):
        kdsvd.check_pair(shapes_of([(2, 4, 4)]), shapes_of([(2, 4, 4), (8, 2, 2)]))
    shapes = shapes_of([(2, 4, 4), (4, 2, 2)])
    method = build("kdsvd", context_of(shapes, shapes))
    assert not list(method.parameters())
    student = [torch.randn(2, *s, requires_grad=True) for s in shapes.stages]
    teacher = [torch.randn(2, *s) for s in shapes.stages]
    terms = method.method_terms(
        Features(logits=None, pooled=None, stages=student),
        Features(logits=None, pooled=None, stages=teacher),
        LABELS,
        LABELS,
    )
    terms["kdsvd"].backward()
    assert all(torch.isfinite(s.grad).all() for s in student)
