"""SimKD, SemCKD, CTKD and MLKD: each loss against its paper's formula written out independently here
(plain Python loops and math on small hand-made tensors), their defaults and pair refusals; and the
two engine hooks they brought: `Method.deploy` (SimKD's deployed student is backbone + projector +
the teacher's classifier: its parameters, FLOPs and test accuracy are measured on that) and
`Method.extra_views` (MLKD's strong view reaches a method only when it declares it, drawn from a
stream of the run's own, and cohorts still equal solo runs)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from conftest import make_trainer

from kdbench.core.features import Features, FeatureShapes
from kdbench.core.registries import METHODS
from kdbench.core.spec import Recipe
from kdbench.data import PreparedData, load_dataset
from kdbench.methods.base import Method, MethodContext, PairNotSupportedError, register_method
from kdbench.methods.ctkd import curriculum_lambda
from kdbench.methods.simkd import ReusedClassifierStudent
from kdbench.models import build_model
from kdbench.training import engine
from kdbench.training.cohort import Cohort
from kdbench.training.measure import parameter_count

NUM_CLASSES = 3


# -- helpers: plain-Python formulas -------------------------------------------------------------


def softmax(values, temperature=1.0):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def kl_times_t2(student_row, teacher_row, temperature):
    p_s, p_t = softmax(student_row, temperature), softmax(teacher_row, temperature)
    return temperature**2 * sum(t * math.log(t / s) for s, t in zip(p_s, p_t, strict=True))


def mean(values):
    return sum(values) / len(values)


def logits_context(batch_size=4) -> MethodContext:
    shapes = FeatureShapes(stem=None, stages=(), preact=(), pooled=(2,), logits=(NUM_CLASSES,))
    return MethodContext(
        shapes, shapes, NUM_CLASSES, 8, torch.zeros(8, dtype=torch.long), batch_size=batch_size
    )


def build(name, context, **overrides):
    cls = METHODS.get(name)
    return cls(cls.resolve_hp(overrides), context)


STUDENT_LOGITS = [[1.0, -0.5, 0.2], [0.3, 0.8, -1.0], [-0.2, 0.1, 0.4], [2.0, 0.0, -1.0]]
TEACHER_LOGITS = [[2.0, -1.0, 0.5], [0.1, 1.5, -0.5], [0.0, -0.3, 1.2], [1.0, 1.0, -2.0]]
STRONG_STUDENT = [[0.5, 0.1, -0.2], [0.0, 0.4, 0.3], [-1.0, 0.2, 0.9], [1.2, -0.4, 0.1]]
STRONG_TEACHER = [[1.5, -0.2, 0.0], [-0.3, 1.1, 0.2], [0.2, -0.5, 1.4], [0.8, 0.6, -1.1]]
LABELS = [0, 1, 2, 0]


def logits_features(rows, requires_grad=False):
    return Features(logits=torch.tensor(rows, requires_grad=requires_grad), pooled=None)


# -- defaults and refusals ----------------------------------------------------------------------


def test_the_four_methods_are_registered_with_their_published_defaults():
    expected = {
        "simkd": {"ce_weight": 0.0, "kd_weight": 0.0, "method_weight": 1.0, "factor": 2},
        "semckd": {"ce_weight": 1.0, "kd_weight": 1.0, "method_weight": 400.0, "factor": 4, "soft": 1.0},
        "ctkd": {"ce_weight": 0.1, "kd_weight": 0.0, "method_weight": 0.9, "t_start": 1.0, "t_range": 20.0},
        "mlkd": {"ce_weight": 0.1, "kd_weight": 0.0, "method_weight": 0.9, "temperature": 4.0},
    }
    for name, values in expected.items():
        hp = METHODS.get(name).resolve_hp()
        assert {key: hp[key] for key in values} == values, name
    assert METHODS.get("mlkd").extra_views == ("strong",)
    assert all(not METHODS.get(name).extra_views for name in ("simkd", "semckd", "ctkd", "kd"))


def test_simkd_refuses_a_teacher_whose_classifier_does_not_read_its_last_stage():
    student = FeatureShapes(None, ((4, 4, 4),), ((4, 4, 4),), (4,), (NUM_CLASSES,))
    teacher = FeatureShapes(None, ((8, 2, 2),), ((8, 2, 2),), (16,), (NUM_CLASSES,))  # a head in between
    with pytest.raises(PairNotSupportedError, match="classifier"):
        METHODS.get("simkd").check_pair(student, teacher)
    with pytest.raises(PairNotSupportedError):
        METHODS.get("simkd").check_pair(student, None)
    with pytest.raises(PairNotSupportedError):
        METHODS.get("semckd").check_pair(student, None)
    other = FeatureShapes(None, (), (), (4,), (NUM_CLASSES + 1,))
    for name in ("ctkd", "mlkd"):
        with pytest.raises(PairNotSupportedError, match="logits"):
            METHODS.get(name).check_pair(student, other)


# -- SimKD --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simkd_models():
    torch.manual_seed(3)
    student = build_model("resnet8", num_classes=NUM_CLASSES)
    teacher = build_model("resnet14", num_classes=NUM_CLASSES).eval()
    image = torch.zeros(2, 3, 16, 16)
    return (
        student,
        teacher,
        FeatureShapes.of(student(image, features=True)),
        FeatureShapes.of(teacher(image, features=True)),
    )


def simkd(models, **overrides):
    student, teacher, student_shapes, teacher_shapes = models
    context = MethodContext(
        student_shapes,
        teacher_shapes,
        NUM_CLASSES,
        8,
        torch.zeros(8, dtype=torch.long),
        image_shape=(3, 16, 16),
        teacher=teacher,
    )
    return build("simkd", context, **overrides)


def test_simkd_loss_is_the_mse_between_the_projected_student_map_and_the_teachers(simkd_models):
    method = simkd(simkd_models)
    torch.manual_seed(0)
    student_map = torch.randn(2, 64, 4, 4)  # larger than the teacher's 2x2 map: pooled 2x2 first
    teacher_map = torch.randn(2, 64, 2, 2)
    term = method.method_terms(
        Features(None, None, stages=[student_map]), Features(None, None, stages=[teacher_map]), None, None
    )
    pooled = [
        [
            [
                [
                    mean([student_map[n, c, 2 * i + a, 2 * j + b].item() for a in (0, 1) for b in (0, 1)])
                    for j in (0, 1)
                ]
                for i in (0, 1)
            ]
            for c in range(64)
        ]
        for n in range(2)
    ]
    projected = method.projector(torch.tensor(pooled))
    squares = [
        (projected[n, c, i, j].item() - teacher_map[n, c, i, j].item()) ** 2
        for n in range(2)
        for c in range(64)
        for i in range(2)
        for j in range(2)
    ]
    assert term["simkd"].item() == pytest.approx(mean(squares), rel=1e-5)


def test_simkd_reuses_a_frozen_copy_of_the_teachers_classifier_for_ce(simkd_models):
    _, teacher, _, _ = simkd_models
    method = simkd(simkd_models, ce_weight=1.0)
    assert (
        torch.equal(method.classifier.weight, teacher.fc.weight)
        and not method.classifier.weight.requires_grad
    )
    torch.manual_seed(1)
    student_map, teacher_map = torch.randn(2, 64, 4, 4), torch.randn(2, 64, 2, 2)
    labels = torch.tensor([0, 2])
    terms = method.losses(
        Features(torch.zeros(2, NUM_CLASSES), None, stages=[student_map]),
        Features(torch.zeros(2, NUM_CLASSES), None, stages=[teacher_map]),
        labels,
        None,
    )
    projected = method.projector(F.avg_pool2d(student_map, 2))
    pooled = [[mean(projected[n, c].flatten().tolist()) for c in range(64)] for n in range(2)]
    weight, bias = teacher.fc.weight.tolist(), teacher.fc.bias.tolist()
    expected = []
    for n in range(2):
        logits = [
            sum(w * x for w, x in zip(weight[k], pooled[n], strict=True)) + bias[k]
            for k in range(NUM_CLASSES)
        ]
        expected.append(-math.log(softmax(logits)[labels[n]]))
    assert terms["ce"].item() == pytest.approx(mean(expected), rel=1e-5)


def test_simkds_deployed_student_counts_projector_and_teacher_classifier_and_is_what_is_evaluated(
    tiny_data, tmp_path, monkeypatch
):
    evaluated = []
    real_evaluate = engine.evaluate

    def recording_evaluate(model, *args, **kwargs):
        evaluated.append(model)
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", recording_evaluate)
    trainer = make_trainer(tiny_data, tmp_path, "simkd")
    result = trainer.run()
    method, student = trainer.method, trainer.student
    # deployed = student without its own classifier + projector + the teacher's classifier
    expected = (
        parameter_count(student)
        - parameter_count(student.fc)
        + parameter_count(method.projector)
        + parameter_count(method.classifier)
    )
    assert result["overhead"]["deploy_params"] == expected
    example = torch.zeros(1, 3, 16, 16)
    assert result["overhead"]["deploy_flops_per_image"] > engine.inference_flops(student, example)
    # the accuracy recorded is that of the deployed network
    assert evaluated and all(isinstance(model, ReusedClassifierStudent) for model in evaluated)
    deployed = method.deploy(student)
    top1 = real_evaluate(deployed, tiny_data.test, tiny_data.info, torch.device("cpu"))["top1"]
    assert result["metrics"]["last_top1"] == top1
    with torch.no_grad():
        features = student.eval()(tiny_data.test.images[:4].float(), features=True)
        projected = method.projector.eval()(features.stages[-1]).mean(dim=(2, 3))
        assert torch.allclose(
            deployed.eval()(tiny_data.test.images[:4].float()), method.classifier(projected), atol=1e-5
        )
    assert set(result["final_state"]) >= {"projector.0.weight", "classifier.weight"}


# -- SemCKD -------------------------------------------------------------------------------------


def test_semckd_loss_is_the_attention_weighted_cross_layer_mse():
    student_shapes = FeatureShapes(None, ((2, 4, 4), (3, 2, 2)), ((2, 4, 4), (3, 2, 2)), (3,), (NUM_CLASSES,))
    teacher_shapes = FeatureShapes(None, ((4, 4, 4), (5, 2, 2)), ((4, 4, 4), (5, 2, 2)), (5,), (NUM_CLASSES,))
    batch = 4
    torch.manual_seed(0)
    context = MethodContext(
        student_shapes, teacher_shapes, NUM_CLASSES, 8, torch.zeros(8, dtype=torch.long), batch_size=batch
    )
    method = build("semckd", context, soft=2.0)
    student = Features(None, None, stages=[torch.randn(batch, *s) for s in student_shapes.stages])
    teacher = Features(None, None, stages=[torch.randn(batch, *s) for s in teacher_shapes.stages])
    term = method.method_terms(student, teacher, torch.zeros(batch, dtype=torch.long), None)["semckd"]

    def gram(feature):
        flat = [feature[i].flatten().tolist() for i in range(batch)]
        return [[sum(a * b for a, b in zip(u, v, strict=True)) for v in flat] for u in flat]

    def embed(module, matrix):  # the learned MLP, then L2 normalisation written out
        with torch.no_grad():
            out = module.linear2(torch.relu(module.linear1(torch.tensor(matrix)))).tolist()
        return [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in out]

    queries = [embed(q, gram(f)) for q, f in zip(method.queries, student.stages, strict=True)]
    keys = [embed(k, gram(f)) for k, f in zip(method.keys, teacher.stages, strict=True)]
    total = 0.0
    for i in range(batch):
        for s, student_map in enumerate(student.stages):
            energies = [sum(a * b for a, b in zip(queries[s][i], keys[t][i], strict=True)) for t in range(2)]
            alpha = softmax(energies, temperature=2.0)
            for t, teacher_map in enumerate(teacher.stages):
                source, target = student_map[i : i + 1], teacher_map[i : i + 1]
                if source.shape[-1] > target.shape[-1]:
                    source = F.avg_pool2d(source, source.shape[-1] // target.shape[-1])
                elif source.shape[-1] < target.shape[-1]:
                    target = F.avg_pool2d(target, target.shape[-1] // source.shape[-1])
                with torch.no_grad():
                    projected = method.projectors[s][t].eval()(source)
                diffs = (projected - target).flatten().tolist()
                total += alpha[t] * mean([d * d for d in diffs])
    method.eval()
    term = method.method_terms(student, teacher, torch.zeros(batch, dtype=torch.long), None)["semckd"]
    assert term.item() == pytest.approx(total / (batch * 2), rel=1e-5)
    # a batch smaller than the batch size is skipped by the authors: the term is 0
    short = Features(None, None, stages=[f[:3] for f in student.stages])
    short_teacher = Features(None, None, stages=[f[:3] for f in teacher.stages])
    assert (
        method.method_terms(short, short_teacher, torch.zeros(3, dtype=torch.long), None)["semckd"].item()
        == 0.0
    )


# -- CTKD ---------------------------------------------------------------------------------------


def test_ctkd_curriculum_rises_from_lambda_min_to_lambda_max_as_a_cosine():
    assert curriculum_lambda(0, 10, 0.0, 1.0) == 0.0
    assert curriculum_lambda(5, 10, 0.0, 1.0) == pytest.approx(0.5)
    assert curriculum_lambda(1, 10, 0.0, 1.0) == pytest.approx((1 - math.cos(math.pi / 10)) / 2)
    assert curriculum_lambda(10, 10, 0.0, 1.0) == curriculum_lambda(50, 10, 0.0, 1.0) == 1.0
    method = build("ctkd", logits_context())
    method.set_epoch(1, 24)  # 10 of 240 epochs -> 1 of 24: done after the first epoch
    assert method.lambda_ == 1.0
    method.set_epoch(1, 240)
    assert method.lambda_ == pytest.approx((1 - math.cos(math.pi / 10)) / 2)


def test_ctkd_is_kd_at_the_learned_temperature_whose_gradient_is_reversed():
    method = build("ctkd", logits_context(), init_theta=-2.0)  # tau = 1 + 20 sigmoid(-2) = 3.38
    method.set_epoch(5, 240)  # lambda = 1/2
    student = logits_features(STUDENT_LOGITS, requires_grad=True)
    term = method.method_terms(student, logits_features(TEACHER_LOGITS), None, None)["ctkd"]

    def loss_at(theta):
        temperature = 1.0 + 20.0 / (1.0 + math.exp(-theta))
        return mean(
            [kl_times_t2(s, t, temperature) for s, t in zip(STUDENT_LOGITS, TEACHER_LOGITS, strict=True)]
        )

    assert term.item() == pytest.approx(loss_at(-2.0), rel=1e-5)
    term.backward()
    derivative = (loss_at(-2.0 + 1e-5) - loss_at(-2.0 - 1e-5)) / 2e-5
    assert method.theta.grad.item() == pytest.approx(-0.5 * derivative, rel=1e-3)  # -lambda * dL/dtheta
    assert student.logits.grad is not None  # the student descends the same loss


# -- MLKD ---------------------------------------------------------------------------------------


def test_mlkd_is_instance_batch_and_class_alignment_at_five_temperatures_over_two_views():
    method = build("mlkd", logits_context())
    weak_s, weak_t = logits_features(STUDENT_LOGITS), logits_features(TEACHER_LOGITS)
    views = {"strong": (logits_features(STRONG_STUDENT), logits_features(STRONG_TEACHER))}
    terms = method.losses(weak_s, weak_t, torch.tensor(LABELS), None, views=views)

    teacher_probs = [softmax(row) for row in TEACHER_LOGITS]
    confidences = [max(p) for p in teacher_probs]
    samples = mean([c <= statistics.median(confidences) for c in confidences])
    class_sums = [sum(p[k] for p in teacher_probs) for k in range(NUM_CLASSES)]
    classes = mean([c <= statistics.median(class_sums) for c in class_sums])

    def batch_level(student, teacher, temperature):
        p_s = [softmax(r, temperature) for r in student]
        p_t = [softmax(r, temperature) for r in teacher]
        return (
            sum(
                (
                    sum(a * b for a, b in zip(p_t[i], p_t[j], strict=True))
                    - sum(a * b for a, b in zip(p_s[i], p_s[j], strict=True))
                )
                ** 2
                for i in range(4)
                for j in range(4)
            )
            / 4
        )

    def class_level(student, teacher, temperature):
        p_s = [softmax(r, temperature) for r in student]
        p_t = [softmax(r, temperature) for r in teacher]
        return (
            sum(
                (sum(p_t[n][k] * p_t[n][m] for n in range(4)) - sum(p_s[n][k] * p_s[n][m] for n in range(4)))
                ** 2
                for k in range(NUM_CLASSES)
                for m in range(NUM_CLASSES)
            )
            / NUM_CLASSES
        )

    def instance(student, teacher, temperature):
        return mean([kl_times_t2(s, t, temperature) for s, t in zip(student, teacher, strict=True)])

    temperatures = (2.0, 3.0, 4.0, 5.0, 6.0)
    expected_instance = sum(
        samples * instance(STUDENT_LOGITS, TEACHER_LOGITS, t) + instance(STRONG_STUDENT, STRONG_TEACHER, t)
        for t in temperatures
    )
    expected_batch = sum(samples * batch_level(STUDENT_LOGITS, TEACHER_LOGITS, t) for t in temperatures)
    expected_class = sum(classes * class_level(STUDENT_LOGITS, TEACHER_LOGITS, t) for t in temperatures)
    assert terms["mlkd_instance"].item() == pytest.approx(0.9 * expected_instance, rel=1e-5)
    assert terms["mlkd_batch"].item() == pytest.approx(0.9 * expected_batch, rel=1e-5)
    assert terms["mlkd_class"].item() == pytest.approx(0.9 * expected_class, rel=1e-5)

    def cross_entropy(rows):
        return mean([-math.log(softmax(row)[y]) for row, y in zip(rows, LABELS, strict=True)])

    assert terms["ce"].item() == pytest.approx(0.1 * cross_entropy(STUDENT_LOGITS), rel=1e-5)
    assert terms["ce_strong"].item() == pytest.approx(0.1 * cross_entropy(STRONG_STUDENT), rel=1e-5)
    assert set(terms) == {"ce", "ce_strong", "mlkd_instance", "mlkd_batch", "mlkd_class"}


# -- extra views through the engine ---------------------------------------------------------------


class _ViewRecorder(Method):
    """Records what reaches it, with a strong view declared (registered only inside the tests)."""

    name = "view-recorder"
    extra_views = ("strong",)
    seen: list = []

    def method_terms(self, student, teacher, labels, indices, views=None):
        self.seen.append((student, teacher, views))
        return {}


class _PlainRecorder(Method):
    """Records what reaches it, no view declared; its method_terms takes no `views`."""

    name = "plain-recorder"
    seen: list = []

    def method_terms(self, student, teacher, labels, indices):
        self.seen.append((student, teacher))
        return {}


@pytest.fixture
def recorders():
    for cls in (_ViewRecorder, _PlainRecorder):
        cls.seen.clear()
        register_method(cls)
    yield
    for cls in (_ViewRecorder, _PlainRecorder):
        METHODS.module_dict.pop(cls.name)


def test_extra_views_reach_a_method_only_when_it_declares_them(tiny_data, tmp_path, monkeypatch, recorders):
    trainer = make_trainer(tiny_data, tmp_path / "views", "view-recorder")
    trainer.train_epoch(1)
    student, teacher, views = _ViewRecorder.seen[-1]
    assert set(views) == {"strong"}
    strong_student, strong_teacher = views["strong"]
    assert (
        strong_student.logits.shape == student.logits.shape
        and strong_teacher.logits.shape == teacher.logits.shape
    )
    assert not torch.allclose(strong_teacher.logits, teacher.logits)  # another augmentation of the batch
    assert len(_ViewRecorder.seen) == 4  # 128 images, batch 32

    def no_views(*args, **kwargs):
        raise AssertionError("views drawn for a method that declares none")

    monkeypatch.setattr(engine, "augment_views", no_views)
    plain = make_trainer(tiny_data, tmp_path / "plain", "plain-recorder")
    plain.train_epoch(1)
    assert len(_PlainRecorder.seen) == 4 and plain.view_generator is None
    # the views have a stream of their own: the batch stream is the same as without them
    assert torch.equal(plain.generator.get_state(), trainer.generator.get_state())


def test_extra_views_are_a_function_of_the_seed_and_survive_a_checkpoint(tiny_data, tmp_path, recorders):
    first = make_trainer(tiny_data, tmp_path / "a", "view-recorder")
    first.train_epoch(1)
    first.save_checkpoint(1)
    seen_first = [v["strong"][1].logits for _, _, v in _ViewRecorder.seen]
    _ViewRecorder.seen.clear()
    second = make_trainer(tiny_data, tmp_path / "b", "view-recorder")
    second.train_epoch(1)
    assert all(
        torch.equal(a, b[2]["strong"][1].logits) for a, b in zip(seen_first, _ViewRecorder.seen, strict=True)
    )
    resumed = make_trainer(tiny_data, tmp_path / "a", "view-recorder")
    assert resumed.try_resume()
    assert torch.equal(resumed.view_generator.get_state(), first.view_generator.get_state())


def test_cohort_members_with_views_or_a_deployed_head_equal_their_solo_runs(tmp_path):
    info, train, test = load_dataset("synthetic", num_train=96, num_test=32, image_size=16)
    data = PreparedData(info, train, test, None)
    recipe = Recipe(epochs=2, batch_size=32, lr_decay_epochs=())
    trainers = {
        m: make_trainer(data, tmp_path / f"solo-{m}", m, recipe=recipe) for m in ("kd", "mlkd", "simkd")
    }
    solo = {m: t.run() for m, t in trainers.items()}
    torch.manual_seed(1)
    teacher = build_model("resnet14", num_classes=info.num_classes, in_chans=info.in_chans)
    specs = [t.spec for t in trainers.values()]
    members = Cohort(specs, data, teacher=teacher, device=torch.device("cpu"), out=tmp_path / "cohort").run()
    for member in members:
        assert member.error is None, member.error
        alone = solo[member.spec.method]
        for ours, theirs in zip(member.result["history"], alone["history"], strict=True):
            assert ours["loss_terms"] == theirs["loss_terms"] and ours["test_top1"] == theirs["test_top1"]
        state = member.result["final_state"]
        assert all(torch.equal(state[k], alone["final_state"][k]) for k in state)
