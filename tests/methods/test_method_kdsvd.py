"""KD-SVD (Lee et al., ECCV 2018, methods/kdsvd.py): the loss recomputed with numpy, its SVD gradient.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python or numpy on small hand-made tensors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from method_fixtures import TRIO_LABELS as LABELS
from method_fixtures import build, context_of, shapes_of

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import PairNotSupportedError


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
