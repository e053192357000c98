"""student, kd, fitnet, at, crd: each loss checked against its paper's formula, written out here by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.base import Method, MethodContext, PairNotSupportedError

FOUNDATION = ("student", "kd", "fitnet", "at", "crd")


def feature_shapes(stages, stem=(2, 4, 4), pooled=(3,), logits=(3,)) -> FeatureShapes:
    return FeatureShapes(stem=stem, stages=tuple(stages), preact=tuple(stages), pooled=pooled, logits=logits)


def method_context(student_shapes, teacher_shapes, train_labels=(0, 0, 1, 1, 2, 2)) -> MethodContext:
    labels = torch.tensor(train_labels)
    return MethodContext(student_shapes, teacher_shapes, int(labels.max()) + 1, len(labels), labels)


def build(name: str, context: MethodContext, **overrides) -> Method:
    method_class = lookup(METHODS, "method", name)
    return method_class(method_class.resolve_hp(overrides), context)


def features_of(shapes: FeatureShapes, batch: int = 2) -> Features:
    def rand(shape):
        return torch.rand(batch, *shape, requires_grad=True)

    return Features(
        logits=rand(shapes.logits),
        pooled=rand(shapes.pooled),
        stem=rand(shapes.stem),
        stages=[rand(s) for s in shapes.stages],
        preact=[rand(s) for s in shapes.preact],
    )


# --- registry and hyper-parameters ---------------------------------------------------------------


def test_registry_finds_the_five_foundation_methods():
    for name in FOUNDATION:
        method_class = lookup(METHODS, "method", name)
        assert issubclass(method_class, Method) and method_class.name == name


def test_resolve_hp_layers_defaults_and_refuses_unknown_keys():
    kd = lookup(METHODS, "method", "kd")
    assert {k: kd.resolve_hp()[k] for k in ("ce_weight", "kd_weight", "method_weight", "temperature")} == {
        "ce_weight": 0.1,
        "kd_weight": 0.9,
        "method_weight": 0.0,
        "temperature": 4.0,
    }
    assert kd.resolve_hp({"temperature": 2})["temperature"] == 2.0
    with pytest.raises(ValueError, match="nce_kk"):
        lookup(METHODS, "method", "crd").resolve_hp({"nce_kk": 10})


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("student", {"ce_weight": 1.0, "kd_weight": 0.0}),
        ("fitnet", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 100.0, "hint_layer": 2}),
        ("at", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 1000.0, "p": 2.0}),
        (
            "crd",
            {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 0.8, "feat_dim": 128, "nce_k": 16384},
        ),
    ],
)
def test_published_defaults(name, published):
    hp = lookup(METHODS, "method", name).resolve_hp()
    assert {key: hp[key] for key in published} == published


# --- student and KD ------------------------------------------------------------------------------

STUDENT_LOGITS = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
TEACHER_LOGITS = torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
LABELS = torch.tensor([2, 0])


def cross_entropy_by_hand(logits, labels):
    return sum(
        -(row[label] - math.log(sum(math.exp(v) for v in row)))
        for row, label in zip(logits.tolist(), labels, strict=True)
    ) / len(labels)


def test_student_is_plain_cross_entropy_without_teacher():
    shapes = feature_shapes([(2, 4, 4)])
    method = build("student", method_context(shapes, None))
    assert method.needs_teacher is False
    student = Features(logits=STUDENT_LOGITS, pooled=torch.zeros(2, 3))
    terms = method.losses(student, None, LABELS, torch.tensor([0, 1]))
    assert terms.keys() == {"ce"}
    assert terms["ce"].item() == pytest.approx(cross_entropy_by_hand(STUDENT_LOGITS, LABELS.tolist()))


def test_kd_term_is_t_squared_kl_of_softened_outputs():
    shapes = feature_shapes([(2, 4, 4)])
    method = build("kd", method_context(shapes, shapes))
    terms = method.losses(
        Features(logits=STUDENT_LOGITS, pooled=torch.zeros(2, 3)),
        Features(logits=TEACHER_LOGITS, pooled=torch.zeros(2, 3)),
        LABELS,
        torch.tensor([0, 1]),
    )
    temperature = 4.0

    def softmax(row):
        exps = [math.exp(v / temperature) for v in row]
        return [e / sum(exps) for e in exps]

    kl_sum = 0.0
    for student_row, teacher_row in zip(STUDENT_LOGITS.tolist(), TEACHER_LOGITS.tolist(), strict=True):
        p_student, p_teacher = softmax(student_row), softmax(teacher_row)
        kl_sum += sum(pt * math.log(pt / ps) for pt, ps in zip(p_teacher, p_student, strict=True))
    expected_kd = temperature**2 * kl_sum / 2

    assert terms.keys() == {"ce", "kd"}
    assert terms["kd"].item() == pytest.approx(0.9 * expected_kd, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(0.1 * cross_entropy_by_hand(STUDENT_LOGITS, LABELS.tolist()))


# --- FitNet --------------------------------------------------------------------------------------


def test_fitnet_with_identity_regressor_is_plain_mse_on_the_second_stage():
    student_shapes = feature_shapes([(3, 4, 4), (2, 2, 2), (2, 1, 1)])
    teacher_shapes = feature_shapes([(5, 4, 4), (2, 2, 2), (4, 1, 1)])
    method = build("fitnet", method_context(student_shapes, teacher_shapes))  # hint_layer 2 -> stages[1]
    regressor = method.regressor
    assert regressor.conv.kernel_size == (1, 1)
    with torch.no_grad():
        regressor.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        regressor.conv.bias.zero_()
        regressor.bn.running_var.fill_(1 - regressor.bn.eps)  # BN(x) = x in eval mode
    method.eval()

    student, teacher = features_of(student_shapes, batch=1), features_of(teacher_shapes, batch=1)
    student.stages[1] = torch.arange(8.0).view(1, 2, 2, 2)  # values 0..7, untouched by the ReLU
    teacher.stages[1] = torch.ones(1, 2, 2, 2)
    expected = sum((value - 1) ** 2 for value in range(8)) / 8  # = 11.5

    terms = method.method_terms(student, teacher, LABELS[:1], torch.tensor([0]))
    assert terms["hint"].item() == pytest.approx(expected)
    assert method.losses(student, teacher, LABELS[:1], torch.tensor([0]))["hint"].item() == pytest.approx(
        100 * expected
    )


@pytest.mark.parametrize(
    ("student_hint", "teacher_hint", "conv_type"),
    [
        ((4, 8, 8), (6, 4, 4), torch.nn.Conv2d),  # twice the size: 3x3 stride 2
        ((4, 4, 4), (6, 8, 8), torch.nn.ConvTranspose2d),  # half the size: 4x4 transposed stride 2
        ((4, 6, 6), (6, 4, 4), torch.nn.Conv2d),  # larger: valid 3x3 conv
    ],
)
def test_fitnet_regressor_resizes_to_the_teacher_hint(student_hint, teacher_hint, conv_type):
    student_shapes = feature_shapes([(2, 8, 8), student_hint])
    teacher_shapes = feature_shapes([(2, 8, 8), teacher_hint])
    method = build("fitnet", method_context(student_shapes, teacher_shapes))
    assert type(method.regressor.conv) is conv_type
    assert method.regressor(torch.rand(2, *student_hint)).shape[1:] == teacher_hint


def test_fitnet_hint_layer_zero_is_the_stem_and_smaller_student_maps_are_refused():
    student_shapes = feature_shapes([(2, 3, 3), (2, 3, 3)], stem=(2, 4, 4))
    teacher_shapes = feature_shapes([(2, 8, 8), (2, 8, 8)], stem=(5, 4, 4))
    method = build("fitnet", method_context(student_shapes, teacher_shapes), hint_layer=0)
    assert method.regressor(torch.rand(2, 2, 4, 4)).shape == (2, 5, 4, 4)
    with pytest.raises(PairNotSupportedError, match="3x3 student hint onto a 8x8"):
        method.check_pair(student_shapes, teacher_shapes)


# --- AT ------------------------------------------------------------------------------------------


def test_at_on_hand_computed_attention_maps():
    # Stage 1. Student: two channels, both [[1, 0], [0, 1]]
    #            -> mean_c f^2 = [[1, 0], [0, 1]] -> Q_s = (1, 0, 0, 1) / sqrt2.
    #          Teacher: one channel [[2, 0], [0, 0]] -> [[4, 0], [0, 0]] -> Q_t = (1, 0, 0, 0).
    #          mean of squared differences = ((1/sqrt2 - 1)^2 + 1/2) / 4 = (2 - sqrt2) / 4.
    # Stage 2. Uniform maps on both sides -> 0.
    student_stage1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(1, 2, 2, 2)
    teacher_stage1 = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]])
    student_stages = [student_stage1, torch.ones(1, 1, 2, 2)]
    teacher_stages = [teacher_stage1, 2 * torch.ones(1, 3, 2, 2)]

    student_shapes = feature_shapes([tuple(s.shape[1:]) for s in student_stages])
    teacher_shapes = feature_shapes([tuple(t.shape[1:]) for t in teacher_stages])
    method = build("at", method_context(student_shapes, teacher_shapes))
    student = Features(logits=STUDENT_LOGITS[:1], pooled=torch.zeros(1, 3), stages=student_stages)
    teacher = Features(logits=TEACHER_LOGITS[:1], pooled=torch.zeros(1, 3), stages=teacher_stages)

    expected = (2 - math.sqrt(2)) / 4
    assert method.method_terms(student, teacher, LABELS[:1], torch.tensor([0]))["at"].item() == pytest.approx(
        expected
    )
    assert method.losses(student, teacher, LABELS[:1], torch.tensor([0]))["at"].item() == pytest.approx(
        1000 * expected
    )


def test_at_pools_the_larger_map_to_the_smaller_size():
    # Student 4x4 of ones -> 2x2 of ones -> (1/2, 1/2, 1/2, 1/2); teacher (1, 0, 0, 0) as above.
    # Squared differences 1/4 each -> mean 1/4.
    student_stages = [torch.ones(1, 1, 4, 4)]
    teacher_stages = [torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]])]
    shapes_s, shapes_t = feature_shapes([(1, 4, 4)]), feature_shapes([(1, 2, 2)])
    method = build("at", method_context(shapes_s, shapes_t))
    method.check_pair(shapes_s, shapes_t)
    terms = method.method_terms(
        Features(logits=STUDENT_LOGITS[:1], pooled=torch.zeros(1, 3), stages=student_stages),
        Features(logits=TEACHER_LOGITS[:1], pooled=torch.zeros(1, 3), stages=teacher_stages),
        LABELS[:1],
        torch.tensor([0]),
    )
    assert terms["at"].item() == pytest.approx(0.25)


def test_at_refuses_pairs_with_different_stage_counts():
    at = lookup(METHODS, "method", "at")
    with pytest.raises(PairNotSupportedError) as refusal:
        at.check_pair(feature_shapes([(2, 8, 8)] * 3), feature_shapes([(2, 8, 8)] * 4))
    message = str(refusal.value)
    assert "student has 3 stages and the teacher 4" in message and "one to one" in message


# --- CRD -----------------------------------------------------------------------------------------

CRD_LABELS = (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2)  # 12 samples, 3 classes: 8 negatives per anchor


def crd_method(**overrides):
    shapes = feature_shapes([(2, 4, 4)], pooled=(3,))
    hp = {"feat_dim": 3, "nce_k": 2, **overrides}
    return build("crd", method_context(shapes, shapes, train_labels=CRD_LABELS), **hp)


def test_crd_negatives_are_distinct_and_never_of_the_anchor_class():
    method = crd_method(nce_k=5)
    labels = torch.tensor(CRD_LABELS)
    indices = torch.tensor([0, 5, 10, 3])
    for _ in range(20):
        negatives = method.sample_negatives(indices)
        assert negatives.shape == (4, 5)
        assert (labels[negatives] != labels[indices][:, None]).all()
        assert all(len(set(row)) == 5 for row in negatives.tolist())


def test_crd_caps_nce_k_at_the_smallest_negative_pool():
    with pytest.warns(UserWarning, match="capped at 8"):
        method = crd_method(nce_k=100)
    negatives = method.sample_negatives(torch.tensor([1, 6]))
    assert sorted(negatives[0].tolist()) == list(range(4, 12))
    assert sorted(negatives[1].tolist()) == [0, 1, 2, 3, 8, 9, 10, 11]


def test_crd_nce_loss_and_memory_update_follow_the_paper():
    temperature, momentum, num_train, k = 0.5, 0.5, 12, 2
    method = crd_method(nce_t=temperature, nce_momentum=momentum)
    with torch.no_grad():
        for embed in (method.student_embed, method.teacher_embed):
            embed.weight.copy_(torch.eye(3))
            embed.bias.zero_()
        method.student_memory.copy_(F.normalize(torch.arange(36.0).view(12, 3).sin(), dim=1))
        method.teacher_memory.copy_(F.normalize(torch.arange(36.0).view(12, 3).cos(), dim=1))
    student_memory_before = method.student_memory.clone()
    teacher_memory_before = method.teacher_memory.clone()
    indices = torch.tensor([0, 5])
    negatives = torch.tensor([[4, 9], [0, 10]])
    method.sample_negatives = lambda anchor_indices: negatives

    student_pooled = torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]])
    teacher_pooled = torch.tensor([[2.0, 1.0, 2.0], [4.0, 0.0, 3.0]])
    terms = method.method_terms(
        Features(logits=STUDENT_LOGITS, pooled=student_pooled),
        Features(logits=TEACHER_LOGITS, pooled=teacher_pooled),
        LABELS,
        indices,
    )

    # Identity embeddings: v = pooled / ||pooled||.
    student_embedding = [[x / 3 for x in (1, 2, 2)], [x / 5 for x in (0, 3, 4)]]
    teacher_embedding = [[x / 3 for x in (2, 1, 2)], [x / 5 for x in (4, 0, 3)]]

    def nce_by_hand(anchors, memory):
        slots = [[0, 4, 9], [5, 0, 10]]  # the positive (own index) first, then the negatives
        exp_scores = [
            [
                math.exp(sum(a * m for a, m in zip(anchor, memory[j].tolist(), strict=True)) / temperature)
                for j in row
            ]
            for anchor, row in zip(anchors, slots, strict=True)
        ]
        normalizer = num_train * sum(sum(row) for row in exp_scores) / 6  # Z = N * mean, first batch
        noise = 1 / num_train
        loss = 0.0
        for row in exp_scores:
            probabilities = [score / normalizer for score in row]
            loss -= math.log(probabilities[0] / (probabilities[0] + k * noise))
            loss -= sum(math.log(k * noise / (p + k * noise)) for p in probabilities[1:])
        return loss / 2, normalizer

    student_anchor_loss, student_anchor_z = nce_by_hand(student_embedding, teacher_memory_before)
    teacher_anchor_loss, teacher_anchor_z = nce_by_hand(teacher_embedding, student_memory_before)
    assert terms["crd"].item() == pytest.approx(student_anchor_loss + teacher_anchor_loss, rel=1e-5)
    assert method.student_anchor_normalizer.item() == pytest.approx(student_anchor_z, rel=1e-5)
    assert method.teacher_anchor_normalizer.item() == pytest.approx(teacher_anchor_z, rel=1e-5)

    # Memory: the batch's own slots move by momentum, then are renormalised; the others stay.
    for memory, before, embedding in (
        (method.student_memory, student_memory_before, student_embedding),
        (method.teacher_memory, teacher_memory_before, teacher_embedding),
    ):
        for row, index in enumerate(indices.tolist()):
            blended = [
                momentum * old + (1 - momentum) * new
                for old, new in zip(before[index].tolist(), embedding[row], strict=True)
            ]
            norm = math.sqrt(sum(x * x for x in blended))
            assert memory[index].tolist() == pytest.approx([x / norm for x in blended], rel=1e-5)
        untouched = [i for i in range(num_train) if i not in indices.tolist()]
        assert torch.equal(memory[untouched], before[untouched])

    # Z stays fixed after the first batch.
    method.method_terms(
        Features(logits=STUDENT_LOGITS, pooled=2 * student_pooled),
        Features(logits=TEACHER_LOGITS, pooled=teacher_pooled),
        LABELS,
        indices,
    )
    assert method.student_anchor_normalizer.item() == pytest.approx(student_anchor_z, rel=1e-5)


def test_crd_is_deterministic_under_manual_seed_and_trains_only_the_embeddings():
    shapes = feature_shapes([(2, 4, 4)])

    def one_step(method):
        student, teacher = features_of(shapes, batch=3), features_of(shapes, batch=3)
        loss = method.losses(student, teacher, torch.tensor([0, 1, 2]), torch.tensor([2, 7, 9]))["crd"]
        return student, loss

    def seeded_first_step():
        torch.manual_seed(3)
        method = crd_method(nce_k=4)
        return method, *one_step(method)

    method, student, loss = seeded_first_step()
    again, _, loss_again = seeded_first_step()
    assert loss.item() == loss_again.item()
    assert torch.equal(method.student_memory, again.student_memory)

    loss.backward()
    assert method.student_embed.weight.grad is not None and student.pooled.grad is not None
    one_step(method)[1].backward()  # the bank updated by step 1 does not break step 2's backward
    assert [name for name, _ in method.named_parameters()] == [
        "student_embed.weight",
        "student_embed.bias",
        "teacher_embed.weight",
        "teacher_embed.bias",
    ]
    assert "train_labels" not in method.state_dict() and "student_memory" in method.state_dict()


# --- every method end to end ---------------------------------------------------------------------


@pytest.mark.parametrize("name", FOUNDATION)
def test_losses_are_finite_and_backpropagate(name):
    student_shapes = feature_shapes([(2, 8, 8), (3, 4, 4), (4, 2, 2)])
    teacher_shapes = feature_shapes([(3, 8, 8), (5, 4, 4), (6, 2, 2)], pooled=(6,))
    context = method_context(student_shapes, teacher_shapes)
    method_class = lookup(METHODS, "method", name)
    method_class.check_pair(student_shapes, teacher_shapes)
    method = build(name, context, **({"nce_k": 2, "feat_dim": 4} if name == "crd" else {}))
    student, teacher = features_of(student_shapes, batch=3), features_of(teacher_shapes, batch=3)
    terms = method.losses(
        student, teacher if method.needs_teacher else None, torch.tensor([0, 1, 2]), torch.tensor([0, 2, 4])
    )
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert student.logits.grad is not None
