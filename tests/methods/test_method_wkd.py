"""WKD (Lv et al., NeurIPS 2024, methods/wkd.py): WKD-L's target term and Sinkhorn distance over the
non-target classes under the teacher's classifier cost, WKD-F's Gaussian Wasserstein distance, the
cosine decay and the refusals.

Each loss is checked against the paper's formula written out here independently of the method's
code (plain Python on small hand-made tensors)."""

from __future__ import annotations

import math

import pytest
import torch
from method_fixtures import build, model_pair_context, softmax

from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import MethodContext, PairNotSupportedError
from kdbench.methods.wkd import sinkhorn_plan
from kdbench.models import build_model

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(5)
    return build_model("resnet8", num_classes=NUM_CLASSES).eval()


def shapes_of(model) -> FeatureShapes:
    return FeatureShapes.of(model(torch.zeros(2, 3, 16, 16), features=True))


def logit_context(teacher) -> MethodContext:
    """The teacher's shapes on both sides and the teacher itself (WKD-L reads its classifier)."""
    shapes = shapes_of(teacher)
    return model_pair_context((None, teacher, shapes, shapes), NUM_CLASSES)


def cost_by_hand(weight: list[list[float]], i: int, j: int, sharpen: float) -> float:
    """c_ij = 1 - exp(-kappa (1 - cos(w_i, w_j))), then ReLU + 1e-8 as the authors' loss does."""
    dot = sum(a * b for a, b in zip(weight[i], weight[j], strict=True))
    norms = math.sqrt(sum(a * a for a in weight[i])) * math.sqrt(sum(b * b for b in weight[j]))
    distance = 1 - dot / norms
    return max(1 - math.exp(-sharpen * distance), 0.0) + 1e-8


def sinkhorn_distance_by_hand(p, q, cost, reg, iterations):
    """The authors' iteration: u = 1/n; v = q / (K^T u); u = p / (K v); plan = u_i K_ij v_j."""
    n = len(p)
    kernel = [[math.exp(-cost[i][j] / reg) for j in range(n)] for i in range(n)]
    u, v = [1.0 / n] * n, [0.0] * n
    for _ in range(iterations):
        v = [q[j] / (sum(kernel[i][j] * u[i] for i in range(n)) + 1e-8) for j in range(n)]
        u = [p[i] / (sum(kernel[i][j] * v[j] for j in range(n)) + 1e-8) for i in range(n)]
    return sum(u[i] * kernel[i][j] * v[j] * cost[i][j] for i in range(n) for j in range(n))


STUDENT_LOGITS = [[1.0, -0.5, 0.2, 0.7], [0.3, 0.8, -1.0, 0.1]]
TEACHER_LOGITS = [[2.0, -1.0, 0.5, 0.1], [0.1, 1.5, -0.5, 0.9]]
LABELS = [2, 0]


def test_wkd_l_is_the_target_term_plus_gamma_times_the_sinkhorn_distance_of_the_non_target_classes(teacher):
    method = build("wkd", logit_context(teacher), temperature=2.0, gamma=3.0, sinkhorn_lambda=0.5)
    terms = method.losses(
        Features(logits=torch.tensor(STUDENT_LOGITS), pooled=None),
        Features(logits=torch.tensor(TEACHER_LOGITS), pooled=None),
        torch.tensor(LABELS),
        None,
    )
    weight = teacher.fc.weight.tolist()
    targets, distances = [], []
    for z_s, z_t, label in zip(STUDENT_LOGITS, TEACHER_LOGITS, LABELS, strict=True):
        targets.append(-softmax(z_t)[label] * math.log(softmax(z_s)[label]))
        others = [k for k in range(NUM_CLASSES) if k != label]
        p = softmax([z_s[k] for k in others], 2.0)
        q = softmax([z_t[k] for k in others], 2.0)
        cost = [[cost_by_hand(weight, i, j, 1.0) for j in others] for i in others]
        distances.append(sinkhorn_distance_by_hand(p, q, cost, 0.5, 10))
    assert terms["wkd_target"].item() == pytest.approx(sum(targets) / 2, rel=1e-5)
    assert terms["wkd_wasserstein"].item() == pytest.approx(3.0 * sum(distances) / 2, rel=1e-4)
    ce = sum(-math.log(softmax(z)[y]) for z, y in zip(STUDENT_LOGITS, LABELS, strict=True)) / 2
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert set(terms) == {"ce", "wkd_target", "wkd_wasserstein"}


def test_wkd_l_plan_transports_the_student_distribution_onto_the_teacher_one(teacher):
    """Iterated long enough, the plan's marginals are the two distributions (the coupling constraint)."""
    method = build("wkd", logit_context(teacher))
    torch.manual_seed(2)
    p, q = (
        torch.softmax(torch.randn(3, NUM_CLASSES), dim=1),
        torch.softmax(torch.randn(3, NUM_CLASSES), dim=1),
    )
    cost = method.cost.expand(3, -1, -1)
    plan = sinkhorn_plan(p, q, cost, reg=0.05, iterations=500)
    assert torch.allclose(plan.sum(dim=2), p, atol=1e-5)
    assert torch.allclose(plan.sum(dim=1), q, atol=1e-4)
    assert (plan >= 0).all()


def test_wkd_decays_by_a_half_cosine_after_the_published_epoch_scaled_to_the_run(teacher):
    method = build("wkd", logit_context(teacher))
    for (epoch, num_epochs), factor in [
        ((150, 240), 1.0),
        ((195, 240), 0.5),
        ((240, 240), 0.0),
        ((5, 8), 1.0),  # 150 * 8 / 240 = 5
        ((6, 8), 0.5 * (1 + math.cos(math.pi / 3))),
    ]:
        method.set_epoch(epoch, num_epochs)
        assert method.decay == pytest.approx(factor, abs=1e-12), (epoch, num_epochs)
    features = Features(logits=torch.tensor(STUDENT_LOGITS), pooled=None)
    teacher_features = Features(logits=torch.tensor(TEACHER_LOGITS), pooled=None)
    method.set_epoch(195, 240)
    half = method.method_terms(features, teacher_features, torch.tensor(LABELS), None)
    method.set_epoch(1, 240)
    full = method.method_terms(features, teacher_features, torch.tensor(LABELS), None)
    assert half["wkd_wasserstein"].item() == pytest.approx(0.5 * full["wkd_wasserstein"].item(), rel=1e-6)
    assert half["wkd_target"].item() == pytest.approx(full["wkd_target"].item(), rel=1e-6)


def test_wkd_refuses_other_classes_and_a_teacher_without_a_classifier(teacher):
    shapes = shapes_of(teacher)
    other = FeatureShapes(None, (), (), (64,), (NUM_CLASSES + 1,))
    with pytest.raises(PairNotSupportedError, match="logits"):
        METHODS.get("wkd").check_pair(shapes, other)
    blind = MethodContext(
        shapes, shapes, NUM_CLASSES, 8, torch.zeros(8, dtype=torch.long), image_shape=(3, 16, 16)
    )
    with pytest.raises(PairNotSupportedError, match="classifier"):
        build("wkd", blind)


def map_shapes(student_map, teacher_map) -> tuple[FeatureShapes, FeatureShapes]:
    def shapes(stage):
        return FeatureShapes(stage, (stage,), (stage,), (stage[0],), (NUM_CLASSES,))

    return shapes(student_map), shapes(teacher_map)


def moments_by_hand(values: list[float], eps: float) -> tuple[float, float]:
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance + eps)


@pytest.mark.parametrize("grid", [1, 2])
def test_wkd_f_is_the_gaussian_wasserstein_distance_of_each_channel_per_grid_cell(grid):
    student_shapes, teacher_shapes = map_shapes((2, 3, 3), (3, 3, 3))
    context = MethodContext(student_shapes, teacher_shapes, NUM_CLASSES, 8, torch.zeros(8, dtype=torch.long))
    method = build("wkdf", context, grid=grid)
    torch.manual_seed(0)
    student_map, teacher_map = torch.randn(2, 2, 3, 3), torch.randn(2, 3, 3, 3)
    terms = method.method_terms(
        Features(logits=None, pooled=None, stages=[student_map]),
        Features(logits=None, pooled=None, stages=[teacher_map]),
        torch.tensor([0, 1]),
        None,
    )
    projected = method.regressor(student_map).tolist()
    cells = [[0, 1, 2]] if grid == 1 else [[0, 1], [1, 2]]  # adaptive pooling's 3 -> 2 cells overlap
    mean_sum = std_sum = 0.0
    for b in range(2):
        for c in range(3):
            for rows in cells:
                for cols in cells:
                    s = [projected[b][c][r][k] for r in rows for k in cols]
                    t = [teacher_map[b, c, r, k].item() for r in rows for k in cols]
                    (mu_s, sigma_s), (mu_t, sigma_t) = moments_by_hand(s, 1e-5), moments_by_hand(t, 1e-5)
                    mean_sum += (mu_s - mu_t) ** 2
                    std_sum += (sigma_s - sigma_t) ** 2
    assert terms["wkdf_mean"].item() == pytest.approx(4.0 * mean_sum / (2 * grid**2), rel=1e-4)
    assert terms["wkdf_std"].item() == pytest.approx(std_sum / (2 * grid**2), rel=1e-4)
    weighted = method.losses(
        Features(logits=torch.zeros(2, NUM_CLASSES), pooled=None, stages=[student_map]),
        Features(logits=torch.zeros(2, NUM_CLASSES), pooled=None, stages=[teacher_map]),
        torch.tensor([0, 1]),
        None,
    )
    assert weighted["wkdf_std"].item() == pytest.approx(0.08 * terms["wkdf_std"].item(), rel=1e-5)


def test_wkd_f_refuses_maps_it_cannot_regress_or_summarise():
    wkdf = METHODS.get("wkdf")
    with pytest.raises(PairNotSupportedError, match=r"wkdf: cannot regress a 2x2 student"):
        wkdf.check_pair(*map_shapes((4, 2, 2), (4, 8, 8)))
    with pytest.raises(PairNotSupportedError, match="1x1 last stage leaves a cell of 1"):
        wkdf.check_pair(*map_shapes((4, 1, 1), (4, 1, 1)))
    student_shapes, teacher_shapes = map_shapes((4, 4, 4), (4, 4, 4))
    context = MethodContext(student_shapes, teacher_shapes, NUM_CLASSES, 8, torch.zeros(8, dtype=torch.long))
    with pytest.raises(PairNotSupportedError, match="4 x 4 grid"):
        build("wkdf", context, grid=4)
    tokens = FeatureShapes(None, ((16, 8),), (), (8,), (NUM_CLASSES,))
    with pytest.raises(PairNotSupportedError, match=r"\(C, H, W\)"):
        wkdf.check_pair(student_shapes, tokens)


def test_wkd_defaults_are_the_authors_cifar_configs():
    """configs/cifar100/wkd_l and wkd_f/res32x4_res8x4.yaml of JiamingLv/WKD."""
    wkd = METHODS.get("wkd").resolve_hp()
    assert {k: wkd[k] for k in ("ce_weight", "kd_weight", "gamma", "temperature", "sinkhorn_lambda")} == {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "gamma": 600.0,
        "temperature": 8.0,
        "sinkhorn_lambda": 0.05,
    }
    assert (wkd["sinkhorn_iterations"], wkd["sharpen"], wkd["decay_epoch"]) == (10, 1.0, 150)
    wkdf = METHODS.get("wkdf").resolve_hp()
    assert (wkdf["method_weight"], wkdf["mean_ratio"], wkdf["grid"], wkdf["eps"]) == (0.08, 4.0, 1, 1e-5)
