"""SP, CC, VID, RKD, PKT, NST, DKD, DIST and logit standardisation: each loss against its paper's
formula written out independently here (plain Python loops, math and statistics, no helpers of the
methods), on small hand-made tensors; the registry, defaults, pair refusals, DKD's warm-up and
finite gradients through `losses`."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.methods.base import Method, MethodContext, PairNotSupportedError, kd_kl_div
from kdbench.methods._shared import standardize_logits

NUM_CLASSES = 5
METHOD_NAMES = ("sp", "cc", "vid", "rkd", "pkt", "nst", "dkd", "dist")


def shapes(channels: list[int], sizes: list[int], pooled: int | None = None, classes: int = NUM_CLASSES):
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


def context(student: FeatureShapes = STUDENT, teacher: FeatureShapes = TEACHER) -> MethodContext:
    return MethodContext(
        student, teacher, NUM_CLASSES, num_train=8, train_labels=torch.zeros(8, dtype=torch.long)
    )


def build(
    name: str, student: FeatureShapes = STUDENT, teacher: FeatureShapes = TEACHER, **overrides
) -> Method:
    cls = METHODS.get(name)
    return cls(cls.resolve_hp(overrides), context(student, teacher))


def features(logits=None, pooled=None, stages=()) -> Features:
    return Features(logits=logits, pooled=pooled, stages=list(stages))


def random_features(feature_shapes: FeatureShapes, batch: int, requires_grad: bool) -> Features:
    def tensor(shape):
        return torch.randn(batch, *shape, requires_grad=requires_grad)

    return Features(
        logits=tensor(feature_shapes.logits),
        pooled=tensor(feature_shapes.pooled),
        stem=tensor(feature_shapes.stem),
        stages=[tensor(s) for s in feature_shapes.stages],
        preact=[tensor(s) for s in feature_shapes.preact],
    )


def rows(matrix: torch.Tensor) -> list[list[float]]:
    return matrix.tolist()


def dot(u, v) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def softmax(values: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def huber(difference: float) -> float:
    return 0.5 * difference**2 if abs(difference) < 1 else abs(difference) - 0.5


# -- registry and hyper-parameters ------------------------------------------------------------


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_is_registered_under_its_name(name):
    cls = METHODS.get(name)
    assert issubclass(cls, Method) and cls.name == name and cls.needs_teacher


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sp", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 3000.0}),
        ("cc", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 0.02, "embed_dim": 128}),
        ("vid", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 1.0, "init_pred_var": 5.0}),
        ("rkd", {"method_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}),
        ("pkt", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 30000.0}),
        ("nst", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 50.0}),
        ("dkd", {"ce_weight": 1.0, "temperature": 4.0, "alpha": 1.0, "beta": 8.0, "warmup_epochs": 20}),
        ("dist", {"ce_weight": 1.0, "kd_weight": 0.0, "temperature": 4.0, "beta": 2.0, "gamma": 2.0}),
    ],
)
def test_published_defaults_resolve(name, expected):
    hp = METHODS.get(name).resolve_hp()
    assert {key: hp[key] for key in expected} == expected
    assert hp["logit_std"] is False


def test_resolve_hp_casts_overrides_and_refuses_unknown_keys():
    dkd = METHODS.get("dkd")
    hp = dkd.resolve_hp({"beta": "6", "warmup_epochs": "5", "logit_std": True})
    assert hp["beta"] == 6.0 and isinstance(hp["beta"], float)
    assert hp["warmup_epochs"] == 5 and hp["logit_std"] is True
    with pytest.raises(ValueError, match="no hyper-parameter 'gamma'"):
        dkd.resolve_hp({"gamma": 1.0})


# -- pair checks --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_matching_pair_is_accepted(name):
    METHODS.get(name).check_pair(STUDENT, TEACHER)


@pytest.mark.parametrize("name", ["vid", "nst"])
def test_stagewise_methods_refuse_unequal_stage_counts(name):
    three_stages = shapes([2, 3, 4], [8, 4, 2])
    with pytest.raises(PairNotSupportedError, match="2 stages, the teacher 3"):
        METHODS.get(name).check_pair(STUDENT, three_stages)


@pytest.mark.parametrize("name", ["vid", "nst"])
def test_stagewise_methods_refuse_token_features(name):
    tokens = FeatureShapes(
        stem=None, stages=((16, 8), (16, 8)), preact=(), pooled=(8,), logits=(NUM_CLASSES,)
    )
    with pytest.raises(PairNotSupportedError, match=r"\(C, H, W\)"):
        METHODS.get(name).check_pair(STUDENT, tokens)


@pytest.mark.parametrize("name", ["dkd", "dist"])
def test_logit_methods_refuse_different_class_counts(name):
    with pytest.raises(PairNotSupportedError, match="logits"):
        METHODS.get(name).check_pair(STUDENT, shapes([3, 4], [4, 4], classes=NUM_CLASSES + 1))


def test_sp_refuses_a_model_without_stages():
    no_stages = FeatureShapes(stem=None, stages=(), preact=(), pooled=(4,), logits=(NUM_CLASSES,))
    with pytest.raises(PairNotSupportedError, match="stage outputs"):
        METHODS.get("sp").check_pair(STUDENT, no_stages)


# -- SP -----------------------------------------------------------------------------------------


def test_sp_matches_hand_computed_gram_matrices():
    # two samples; the last stage is (2 channels, 1 x 1) for the student, (2, 1, 1) for the teacher
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(2, 2, 1, 1)
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)
    # G_s = [[1, 1], [1, 2]] -> rows / (sqrt 2, sqrt 5); G_t = identity (rows already unit)
    g_s = [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(5), 2 / math.sqrt(5)]]
    g_t = [[1.0, 0.0], [0.0, 1.0]]
    expected = sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(2) for j in range(2)) / 2**2
    sp = build("sp")
    only_last_stage_counts = [torch.zeros(2, 1), student]
    terms = sp.method_terms(features(stages=only_last_stage_counts), features(stages=[teacher]), None, None)
    assert terms["sp"].item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx((4 - math.sqrt(2) - 4 / math.sqrt(5)) / 4)  # the same sum, expanded


# -- CC -----------------------------------------------------------------------------------------


def test_cc_matches_repdistiller_correlation_of_neighbouring_mismatches():
    from kdbench.methods.cc import correlation_congruence_loss

    e_s = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 1.0]])
    e_t = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    d = [[abs(a - b) for a, b in zip(s, t, strict=True)] for s, t in zip(rows(e_s), rows(e_t), strict=True)]
    # d = [[1, 1], [1, 2], [2, 1]] -> (<d0, d1> + <d1, d2>) / 2 = (3 + 4) / 2
    expected = (dot(d[0], d[1]) + dot(d[1], d[2])) / 2
    assert expected == 3.5
    assert correlation_congruence_loss(e_s, e_t).item() == pytest.approx(expected)


def test_cc_embeds_both_pooled_features_into_the_shared_space():
    cc = build("cc", embed_dim=6)
    assert cc.student_embed.in_features == STUDENT.pooled[0]
    assert cc.teacher_embed.in_features == TEACHER.pooled[0]
    student, teacher = random_features(STUDENT, 3, False), random_features(TEACHER, 3, False)
    e_s, e_t = rows(cc.student_embed(student.pooled)), rows(cc.teacher_embed(teacher.pooled))
    d = [[abs(a - b) for a, b in zip(s, t, strict=True)] for s, t in zip(e_s, e_t, strict=True)]
    expected = (dot(d[0], d[1]) + dot(d[1], d[2])) / 2
    assert cc.method_terms(student, teacher, None, None)["cc"].item() == pytest.approx(expected, rel=1e-5)


# -- VID ----------------------------------------------------------------------------------------


def test_vid_is_the_gaussian_negative_log_likelihood_per_element():
    vid = build("vid")
    for regressor in vid.regressors:
        assert torch.allclose(regressor.variance(), torch.full_like(regressor.variance(), 5.0))
        for conv in regressor.mean:
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.zeros_(conv.weight)  # mu(s) = 0: the loss depends on the teacher only
    teacher = [torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)]
    student = [torch.randn(2, 2, 4, 4), torch.randn(2, 3, 2, 2)]  # last stage: teacher pooled 4x4 -> 2x2

    def nll(values: list[float], variance: float) -> float:
        # -log N(t; 0, sigma^2) without the constant: log sigma + t^2 / (2 sigma^2), averaged
        return statistics.fmean(math.log(math.sqrt(variance)) + v**2 / (2 * variance) for v in values)

    pooled_teacher = teacher[1].view(2, 4, 2, 2, 2, 2).mean(dim=(3, 5))  # 2x2 average pooling by hand
    expected = nll(teacher[0].flatten().tolist(), 5.0) + nll(pooled_teacher.flatten().tolist(), 5.0)
    terms = vid.method_terms(features(stages=student), features(stages=teacher), None, None)
    assert terms["vid"].item() == pytest.approx(expected, rel=1e-5)


# -- RKD ----------------------------------------------------------------------------------------


def rkd_by_hand(student: list[list[float]], teacher: list[list[float]]) -> tuple[float, float]:
    n = len(student)

    def psi_d(points):
        distances = {(i, j): math.dist(points[i], points[j]) for i in range(n) for j in range(n)}
        mu = statistics.fmean(d for (i, j), d in distances.items() if i != j)
        return {key: d / mu for key, d in distances.items()}

    def psi_a(points):
        def unit(i, j):
            diff = [a - b for a, b in zip(points[i], points[j], strict=True)]
            norm = math.hypot(*diff)
            return [x / norm for x in diff] if norm > 0 else [0.0] * len(diff)

        return {(i, j, k): dot(unit(i, j), unit(k, j)) for i in range(n) for j in range(n) for k in range(n)}

    d_s, d_t = psi_d(student), psi_d(teacher)
    a_s, a_t = psi_a(student), psi_a(teacher)
    distance = statistics.fmean(huber(d_t[key] - d_s[key]) for key in d_t)
    angle = statistics.fmean(huber(a_t[key] - a_s[key]) for key in a_t)
    return distance, angle


def test_rkd_distance_term_on_a_3_4_5_triangle():
    student = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]  # distances 3, 4, 5: mu = 4
    teacher = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]  # distances 1, 1, sqrt 2: mu = (2 + sqrt 2) / 3
    mu_t = (2 + math.sqrt(2)) / 3
    differences = [3 / 4 - 1 / mu_t, 4 / 4 - 1 / mu_t, 5 / 4 - math.sqrt(2) / mu_t]  # all below 1
    expected = 2 * sum(0.5 * d**2 for d in differences) / 9  # each pair twice, 9 entries
    assert rkd_by_hand(student, teacher)[0] == pytest.approx(expected)
    rkd = build("rkd")
    student_features, teacher_features = (
        features(pooled=torch.tensor(student)),
        features(pooled=torch.tensor(teacher)),
    )
    terms = rkd.method_terms(student_features, teacher_features, None, None)
    assert terms["rkd_distance"].item() == pytest.approx(25 * expected, rel=1e-5)


def test_rkd_distance_and_angle_terms_on_random_embeddings():
    student, teacher = torch.randn(4, 3), torch.randn(4, 5)
    distance, angle = rkd_by_hand(rows(student), rows(teacher))
    rkd = build("rkd")
    terms = rkd.method_terms(features(pooled=student), features(pooled=teacher), None, None)
    assert terms["rkd_distance"].item() == pytest.approx(25 * distance, rel=1e-4)
    assert terms["rkd_angle"].item() == pytest.approx(50 * angle, rel=1e-4)


# -- PKT ----------------------------------------------------------------------------------------


def test_pkt_matches_cosine_similarity_probabilities():
    student, teacher = torch.randn(3, 4), torch.randn(3, 6)
    eps = 1e-7

    def conditional(points):
        cos = [[dot(a, b) / (math.hypot(*a) * math.hypot(*b)) for b in points] for a in points]
        kernel = [[(c + 1) / 2 for c in row] for row in cos]
        return [[k / sum(row) for k in row] for row in kernel]

    p_s, p_t = conditional(rows(student)), conditional(rows(teacher))
    expected = statistics.fmean(
        p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(3) for j in range(3)
    )
    pkt = build("pkt")
    terms = pkt.method_terms(features(pooled=student), features(pooled=teacher), None, None)
    assert terms["pkt"].item() == pytest.approx(expected, rel=1e-4, abs=1e-8)
    same = pkt.method_terms(features(pooled=2 * teacher), features(pooled=teacher), None, None)
    assert same["pkt"].item() == pytest.approx(0.0, abs=1e-7)  # cosine kernel: scale does not matter


# -- NST ----------------------------------------------------------------------------------------


def test_nst_is_the_squared_mmd_of_normalised_channel_maps():
    student = [torch.randn(2, 2, 4, 4), torch.randn(2, 3, 2, 2)]
    teacher = [torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)]  # last stage pooled 4x4 -> 2x2

    def mmd(f_s: torch.Tensor, f_t: torch.Tensor) -> float:
        total = 0.0
        for sample_s, sample_t in zip(f_s, f_t, strict=True):  # per sample, averaged below
            s = [[x / math.hypot(*c) for x in c] for c in rows(sample_s.flatten(1))]
            t = [[x / math.hypot(*c) for x in c] for c in rows(sample_t.flatten(1))]

            def k(a, b):
                return dot(a, b) ** 2  # polynomial kernel, d = 2, c = 0

            total += (
                sum(k(a, b) for a in t for b in t) / len(t) ** 2
                + sum(k(a, b) for a in s for b in s) / len(s) ** 2
                - 2 * sum(k(a, b) for a in s for b in t) / (len(s) * len(t))
            )
        return total / len(f_s)

    pooled_teacher = teacher[1].view(2, 4, 2, 2, 2, 2).mean(dim=(3, 5))
    expected = mmd(student[0], teacher[0]) + mmd(student[1], pooled_teacher)
    nst = build("nst")
    terms = nst.method_terms(features(stages=student), features(stages=teacher), None, None)
    assert terms["nst"].item() == pytest.approx(expected, rel=1e-5)


# -- DKD ----------------------------------------------------------------------------------------


def dkd_parts_by_hand(z_s: list[float], z_t: list[float], target: int, temperature: float):
    """The paper's decomposition: b = [p_t, 1 - p_t], p^_i = p_i / (1 - p_t) for i != t."""
    p_s, p_t = softmax(z_s, temperature), softmax(z_t, temperature)
    b_s, b_t = [p_s[target], 1 - p_s[target]], [p_t[target], 1 - p_t[target]]
    hat_s = [p / (1 - p_s[target]) for i, p in enumerate(p_s) if i != target]
    hat_t = [p / (1 - p_t[target]) for i, p in enumerate(p_t) if i != target]
    return kl(b_t, b_s), kl(hat_t, hat_s), p_t[target]


def test_dkd_terms_match_the_binary_and_non_target_decomposition():
    z_s, z_t = torch.randn(3, NUM_CLASSES) * 3, torch.randn(3, NUM_CLASSES) * 3
    labels = torch.tensor([0, 4, 2])
    temperature = 4.0
    samples = zip(rows(z_s), rows(z_t), labels.tolist(), strict=True)
    parts = [dkd_parts_by_hand(s, t, y, temperature) for s, t, y in samples]
    tckd = statistics.fmean(p[0] for p in parts) * temperature**2
    nckd = statistics.fmean(p[1] for p in parts) * temperature**2
    dkd = build("dkd")  # alpha 1, beta 8
    terms = dkd.method_terms(features(logits=z_s), features(logits=z_t), labels, None)
    assert terms["dkd_tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert terms["dkd_nckd"].item() == pytest.approx(8 * nckd, rel=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_dkd_with_unit_weights_recovers_classical_kd_by_the_decomposition_identity(seed):
    # KD = TCKD + (1 - p_t^T) * NCKD holds per sample: one sample per batch
    generator = torch.Generator().manual_seed(seed)
    z_s = torch.randn(1, NUM_CLASSES, generator=generator) * 4
    z_t = torch.randn(1, NUM_CLASSES, generator=generator) * 4
    label = torch.tensor([seed % NUM_CLASSES])
    dkd = build("dkd", alpha=1.0, beta=1.0)
    terms = dkd.method_terms(features(logits=z_s), features(logits=z_t), label, None)
    teacher_target_prob = softmax(z_t[0].tolist(), 4.0)[label.item()]
    recomposed = terms["dkd_tckd"] + (1 - teacher_target_prob) * terms["dkd_nckd"]
    assert recomposed.item() == pytest.approx(kd_kl_div(z_s, z_t, 4.0).item(), rel=1e-5)
    tckd, nckd, _ = dkd_parts_by_hand(z_s[0].tolist(), z_t[0].tolist(), label.item(), 4.0)
    by_hand = 4.0**2 * (tckd + (1 - teacher_target_prob) * nckd)
    assert kd_kl_div(z_s, z_t, 4.0).item() == pytest.approx(by_hand, rel=1e-5)


def test_dkd_warmup_ramps_linearly_and_scales_with_short_runs():
    dkd = build("dkd")
    z_s, z_t, labels = torch.randn(2, NUM_CLASSES), torch.randn(2, NUM_CLASSES), torch.tensor([1, 3])
    full = dkd.method_terms(features(logits=z_s), features(logits=z_t), labels, None)
    expected_factors = [
        ((1, 240), 1 / 20),  # published: 20 of 240 epochs
        ((10, 240), 0.5),
        ((20, 240), 1.0),
        ((1, 24), 0.5),  # 24-epoch run: warm-up 20 * 24 / 240 = 2 epochs
        ((2, 24), 1.0),
        ((1, 480), 1 / 20),  # longer runs keep the published 20
    ]
    for (epoch, num_epochs), factor in expected_factors:
        dkd.set_epoch(epoch, num_epochs)
        ramped = dkd.method_terms(features(logits=z_s), features(logits=z_t), labels, None)
        for name in ("dkd_tckd", "dkd_nckd"):
            assert ramped[name].item() == pytest.approx(factor * full[name].item(), rel=1e-6)
    no_warmup = build("dkd", warmup_epochs=0)
    no_warmup.set_epoch(1, 240)
    assert no_warmup.warmup_factor == 1.0


# -- DIST ---------------------------------------------------------------------------------------


def test_dist_matches_pearson_relations():
    z_s, z_t = torch.randn(4, NUM_CLASSES) * 2, torch.randn(4, NUM_CLASSES) * 2
    tau = 4.0
    y_s = [softmax(row, tau) for row in rows(z_s)]
    y_t = [softmax(row, tau) for row in rows(z_t)]
    inter = 1 - statistics.fmean(statistics.correlation(s, t) for s, t in zip(y_s, y_t, strict=True))
    columns_s, columns_t = list(zip(*y_s, strict=True)), list(zip(*y_t, strict=True))
    intra = 1 - statistics.fmean(
        statistics.correlation(s, t) for s, t in zip(columns_s, columns_t, strict=True)
    )
    dist = build("dist")  # beta = gamma = 2
    terms = dist.method_terms(features(logits=z_s), features(logits=z_t), None, None)
    assert terms["dist_inter"].item() == pytest.approx(2 * tau**2 * inter, rel=1e-4)
    assert terms["dist_intra"].item() == pytest.approx(2 * tau**2 * intra, rel=1e-4)
    # identical predictions correlate perfectly (up to the authors' eps in the denominator)
    same = dist.method_terms(features(logits=z_t), features(logits=z_t), None, None)
    assert same["dist_inter"].item() == pytest.approx(0.0, abs=1e-3)
    assert same["dist_intra"].item() == pytest.approx(0.0, abs=1e-3)


# -- logit standardisation ---------------------------------------------------------------------


def test_standardized_logits_have_zero_mean_and_unit_std():
    logits = torch.tensor([[1.0, 2.0, 3.0, 6.0], [-4.0, 0.0, 0.5, 10.0]])
    z = standardize_logits(logits)
    for row_in, row_out in zip(rows(logits), rows(z), strict=True):
        mean, std = statistics.fmean(row_in), statistics.pstdev(row_in)
        assert row_out == pytest.approx([(v - mean) / std for v in row_in], rel=1e-6)
        assert statistics.fmean(row_out) == pytest.approx(0.0, abs=1e-6)
        assert statistics.pstdev(row_out) == pytest.approx(1.0, rel=1e-6)


def test_shared_kd_term_with_logit_std_equals_hand_computation():
    z_s = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 3.0, 1.0, 1.0]])
    z_t = torch.tensor([[4.0, 8.0, 1.0, -6.0], [2.0, 2.5, 0.0, 9.0]])
    base_temperature, kd_weight = 2.0, 9.0  # the paper's CIFAR-100 recipe

    def zscore(row):
        mean, std = statistics.fmean(row), statistics.pstdev(row)
        return [(v - mean) / std for v in row]

    expected = (
        kd_weight
        * base_temperature**2
        * statistics.fmean(
            kl(softmax(zscore(t), base_temperature), softmax(zscore(s), base_temperature))
            for s, t in zip(rows(z_s), rows(z_t), strict=True)
        )
    )
    hp = Method.resolve_hp({"kd_weight": kd_weight, "temperature": base_temperature, "logit_std": True})
    method = Method(hp, context())
    labels = torch.tensor([0, 1])
    terms = method.losses(features(logits=z_s), features(logits=z_t), labels, None)
    assert terms["kd"].item() == pytest.approx(expected, rel=1e-5)
    # the student need not match the teacher's logit range: scaling and shifting it changes nothing
    rescaled = method.losses(features(logits=3 * z_s + 7), features(logits=z_t), labels, None)
    assert rescaled["kd"].item() == pytest.approx(expected, rel=1e-5)
    plain = Method(Method.resolve_hp({"kd_weight": kd_weight, "temperature": base_temperature}), context())
    plain_kd = plain.losses(features(logits=z_s), features(logits=z_t), labels, None)["kd"]
    assert plain_kd.item() == pytest.approx(kd_weight * kd_kl_div(z_s, z_t, base_temperature).item())


@pytest.mark.parametrize("name", ["dkd", "dist"])
def test_logit_methods_standardize_when_asked(name):
    z_s, z_t, labels = torch.randn(3, NUM_CLASSES) * 5, torch.randn(3, NUM_CLASSES), torch.tensor([0, 1, 2])
    standardized = build(name, logit_std=True).method_terms(
        features(logits=z_s), features(logits=z_t), labels, None
    )
    by_hand = build(name).method_terms(
        features(logits=standardize_logits(z_s)), features(logits=standardize_logits(z_t)), labels, None
    )
    assert standardized.keys() == by_hand.keys()
    for term in standardized:
        assert standardized[term].item() == pytest.approx(by_hand[term].item(), rel=1e-6)


# -- end to end through `losses` ----------------------------------------------------------------


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_forward_backward_gives_finite_gradients(name):
    method = build(name)
    student = random_features(STUDENT, batch=4, requires_grad=True)
    teacher = random_features(TEACHER, batch=4, requires_grad=False)
    labels = torch.tensor([0, 1, 2, 3])
    terms = method.losses(student, teacher, labels, torch.arange(4))
    assert "ce" in terms and len(terms) >= 2
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    student_grads = [t.grad for t in [student.logits, student.pooled, *student.stages] if t.grad is not None]
    assert student_grads and all(torch.isfinite(g).all() for g in student_grads)
    assert any(g.abs().sum() > 0 for g in student_grads)
    for parameter in method.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
