"""Other code bases' models and checkpoints: RepDistiller's and mdistiller's model names as aliases,
their checkpoints (and timm's) as teachers and student inits, weights only; the teacher's own test
accuracy in every distillation record and on the board."""

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_bad_input import assert_one_line_error, run_cli

from kdbench.core import store
from kdbench.core.catalog import parse_pairs
from kdbench.core.registries import UnknownNameError
from kdbench.core.spec import HASH_OMITS_AT_DEFAULT, Recipe, RunSpec
from kdbench.core.store import CheckpointError
from kdbench.data import prepare_data
from kdbench.execution import config
from kdbench.execution.sweep import Sweep, specs_for_pair
from kdbench.methods.base import method_class
from kdbench.models import ALIASES, build_model, list_models
from kdbench.training import teachers

# RepDistiller's models/__init__.py `model_dict` and mdistiller's mdistiller/models/cifar/__init__.py
# `cifar_model_dict`, read off their sources; kdbench has no mobile_full (RepDistiller) nor ResNet18
# (mdistiller's CIFAR ResNet18).
REPDISTILLER = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
    "resnet32x4", "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13",
    "vgg16", "vgg19", "mobile_half", "ShuffleV1", "ShuffleV2",
]  # fmt: skip
MDISTILLER = [
    "resnet56", "resnet110", "resnet32x4", "ResNet50", "wrn_40_2", "vgg13", "resnet8", "resnet14",
    "resnet20", "resnet32", "resnet44", "resnet8x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "vgg8", "vgg11",
    "vgg16", "vgg19", "MobileNetV2", "ShuffleV1", "ShuffleV2",
]  # fmt: skip
SAME_AS = {"MobileNetV2": "mobile_half"}

TINY = ["--dataset", "synthetic", "--epochs", "1", "--teacher-epochs", "1", "--train-subset", "128"]
TINY += ["--vam", "off", "--jobs", "1", "--time-probe", "off"]  # no test here reads time / student


def leaderboard(records):
    try:  # the report package, whichever name it has
        from kdbench.reporting import leaderboard as board
    except ImportError:
        from kdbench.report import leaderboard as board
    return board(records)


def shapes(model):
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def synthetic():
    return prepare_data("synthetic", None, Recipe(epochs=1, train_subset=128))


# -- names ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(set(REPDISTILLER + MDISTILLER)))
def test_every_repdistiller_and_mdistiller_name_builds_kdbench_s_model(name):
    canonical = SAME_AS.get(name, name)
    assert canonical in list_models()
    (pair,) = parse_pairs(f"resnet56:{name}")
    assert pair.student == canonical  # made canonical where it enters
    if name in SAME_AS:
        assert shapes(build_model(name, num_classes=100)) == shapes(build_model(canonical, num_classes=100))


def test_aliases_name_registered_models_and_stay_out_of_the_list():
    assert ALIASES["MobileNetV2"] == "mobile_half"
    assert all(target in list_models() for target in ALIASES.values())
    assert not set(ALIASES) & set(list_models())  # `kdbench list models` shows kdbench's names


def test_an_alias_resolves_before_the_spec_so_run_ids_and_per_pair_hp_match():
    def specs(pairs):
        flags = {"pairs": pairs, "methods": "student,dkd", "dataset": "synthetic", "vam": "off"}
        request = config.build_request(config.resolve(flags=flags))
        (pair,) = request.pairs
        return specs_for_pair(request, pair, None) + specs_for_pair(request, pair, "0" * 64)

    alias, canonical = specs("vgg13_bn:MobileNetV2"), specs("vgg13:mobile_half")
    assert [s.run_id for s in alias] == [s.run_id for s in canonical]
    assert {s.student for s in alias} == {"mobile_half"} and alias[1].teacher == "vgg13"
    # DKD's published beta for vgg13 -> MobileNetV2 (registry/pairs.json) reaches the alias spelling too
    assert alias[1].hp["beta"] == canonical[1].hp["beta"] == 6.0 != method_class("dkd").resolve_hp()["beta"]


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("mobilenetv2", "MobileNetV2"),
        ("shufflev1", "ShuffleV1"),
        ("resnet50", "ResNet50"),
        ("WRN_40_2", "wrn_40_2"),
    ],
)
def test_did_you_mean_ignores_case(name, suggestion):
    with pytest.raises(UnknownNameError, match=f"Did you mean '{suggestion}'"):
        build_model(name, num_classes=10)


def test_an_unknown_name_on_the_command_line_suggests_the_alias(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--pairs", "vgg13:mobilenetv2", "--out", str(tmp_path))
    assert_one_line_error(code, err, "unknown model 'mobilenetv2'", "Did you mean 'MobileNetV2'")


def test_run_with_repdistiller_names_trains_under_kdbench_s_names(capsys, tmp_path):
    out = str(tmp_path / "s")
    argv = ["run", *TINY, "--methods", "student,kd", "--format", "json", "--out", out]
    code, _, err = run_cli(capsys, *argv, "--pairs", "vgg13:MobileNetV2")
    assert code == 0, err
    records = store.load_records(out)
    assert {r["spec"]["student"] for r in records} == {"mobile_half"}
    assert {r["spec"]["teacher"] for r in records} == {None, "vgg13"}
    # the other spelling is the same experiment: every run is a cache hit
    code, _, err = run_cli(capsys, *argv, "--pairs", "vgg13:mobile_half")
    assert code == 0 and "0 trained, 2 cached" in err, err


# -- checkpoint layouts ----------------------------------------------------------------------------------
def repdistiller_final(model) -> dict:
    """RepDistiller's train_teacher.py: `{'opt': opt, 'model': ..., 'optimizer': ...}` at the end (its
    periodic saves: epoch, model, accuracy, optimizer), `opt` its argparse Namespace."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    opt = argparse.Namespace(
        model="resnet8", dataset="cifar100", learning_rate=0.05, lr_decay_epochs=[150, 180, 210]
    )
    return {
        "epoch": 240,
        "model": model.state_dict(),
        "accuracy": torch.tensor(71.25),
        "optimizer": optimizer.state_dict(),
        "opt": opt,
    }


def assert_same_weights(model, state):
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_repdistiller_final_checkpoint_loads_as_a_teacher(tmp_path, synthetic):
    torch.manual_seed(3)
    source = build_model("resnet8", num_classes=10)
    path = tmp_path / "resnet8_last.pth"
    torch.save(repdistiller_final(source), path)
    # the allowlist is the teacher reader's only: the plain reader refuses the Namespace, before and after
    for _ in range(2):
        with pytest.raises(CheckpointError, match="argparse.Namespace"):
            store.read_checkpoint(path)
        assert argparse.Namespace not in torch.serialization.get_safe_globals()
        teacher = teachers.load_teacher(path, "resnet8", synthetic.info, torch.device("cpu"))
        assert_same_weights(teacher, source.state_dict())


def _touch(path):  # what a malicious pickle would call
    Path(path).write_text("code ran")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["beside", "inside the Namespace", "shell"])
def test_a_repdistiller_checkpoint_with_another_global_is_refused_and_runs_nothing(
    tmp_path, synthetic, where
):
    marker = tmp_path / "code-ran"
    payload = repdistiller_final(build_model("resnet8", num_classes=10))
    if where == "beside":
        payload["extra"] = _RunsCode(marker)
    elif where == "inside the Namespace":
        payload["opt"].hook = _RunsCode(marker)
    else:
        payload["extra"] = _RunsShell(marker)
    path = tmp_path / "evil.pth"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"{path} is unreadable"):
        teachers.load_teacher(path, "resnet8", synthetic.info, torch.device("cpu"))
    assert not marker.exists()


def test_mdistiller_checkpoints_give_the_student(tmp_path, synthetic):
    torch.manual_seed(4)
    student, other = build_model("resnet8", num_classes=10), build_model("resnet14", num_classes=10)
    # student_best: {"model": student.state_dict()}
    torch.save({"model": student.state_dict()}, tmp_path / "student_best")
    loaded = teachers.load_teacher(tmp_path / "student_best", "resnet8", synthetic.info, torch.device("cpu"))
    assert_same_weights(loaded, student.state_dict())
    # best / latest: the DataParallel distiller's state (module.student.*, module.teacher.*, ...)
    distiller = {f"module.student.{k}": v for k, v in student.state_dict().items()}
    distiller |= {f"module.teacher.{k}": v for k, v in other.state_dict().items()}
    full = {"epoch": 240, "model": distiller, "optimizer": {}, "best_acc": torch.tensor(70.0)}
    torch.save(full, tmp_path / "best")
    loaded = teachers.load_teacher(tmp_path / "best", "resnet8", synthetic.info, torch.device("cpu"))
    assert_same_weights(loaded, student.state_dict())
    # a DataParallel model's own state_dict
    torch.save({"model": {f"module.{k}": v for k, v in other.state_dict().items()}}, tmp_path / "dp.pth")
    loaded = teachers.load_teacher(tmp_path / "dp.pth", "resnet14", synthetic.info, torch.device("cpu"))
    assert_same_weights(loaded, other.state_dict())


def timm_model(num_classes=10):
    torch.manual_seed(5)
    return build_model("timm:resnet10t", num_classes=num_classes)


@pytest.mark.parametrize("layout", ["bare", "model", "state_dict", "timm train.py", "kdbench"])
def test_timm_checkpoints_load_into_timm_teachers(tmp_path, synthetic, layout):
    adapted = timm_model()
    own = adapted.model.state_dict()  # what timm saves: no adapter prefix
    payload = {
        "bare": own,
        "model": {"model": own},
        "state_dict": {"state_dict": own},
        # timm's train.py CheckpointSaver: epoch, arch, state_dict, optimizer, version, args (Namespace), metric
        "timm train.py": {
            "epoch": 3,
            "arch": "resnet10t",
            "state_dict": own,
            "optimizer": {},
            "version": 2,
            "args": argparse.Namespace(model="resnet10t", lr=0.1),
            "metric": 71.0,
        },
        "kdbench": {"model": adapted.state_dict()},  # the adapter's keys, as kdbench saves a timm model
    }[layout]
    path = tmp_path / "timm.pth"
    torch.save(payload, path)
    teacher = teachers.load_teacher(path, "timm:resnet10t", synthetic.info, torch.device("cpu"))
    assert_same_weights(teacher, adapted.state_dict())
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(teacher(images), adapted.eval()(images))


def test_a_timm_checkpoint_for_another_class_count_names_the_file_and_the_shapes(tmp_path, synthetic):
    path = tmp_path / "timm5.pth"
    torch.save(timm_model(num_classes=5).model.state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"timm5.pth is .*not a 'timm:resnet10t'.*fc.weight has shape \[5, 512\]"
    ):
        teachers.load_teacher(path, "timm:resnet10t", synthetic.info, torch.device("cpu"))


def test_a_loaded_timm_teacher_distils_from_the_command_line(capsys, tmp_path):
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": timm_model().model.state_dict()}, path)
    out = tmp_path / "s"
    code, _, err = run_cli(
        capsys, "run", *TINY, "--pairs", "timm:resnet10t:resnet8", "--methods", "kd", "--teacher", str(path),
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    (record,) = store.load_records(out)
    assert record["spec"]["teacher"] == "timm:resnet10t"
    assert record["spec"]["teacher_sha256"] == teachers.sha256_of(path)


# -- --student-init ----------------------------------------------------------------------------------------
def test_student_init_is_part_of_the_spec_and_absent_leaves_run_ids_unchanged():
    spec = RunSpec(method="student", student="resnet8", dataset="synthetic")
    kd = RunSpec(
        method="kd",
        student="resnet8",
        teacher="resnet14",
        teacher_sha256="0" * 64,
        dataset="synthetic",
        hp={"temperature": 4.0},
        recipe=Recipe(epochs=3),
    )
    # the run ids these specs had before the field existed (computed with the previous kdbench/core/spec.py)
    assert (spec.run_id, kd.run_id) == ("838ceca67935", "1e4b910fc7a4")
    assert HASH_OMITS_AT_DEFAULT["student_init_sha256"] is None
    with_init = replace(spec, student_init_sha256="a" * 64)
    assert with_init.run_id != spec.run_id != replace(spec, student_init_sha256="b" * 64).run_id
    assert RunSpec.from_dict(with_init.to_dict()) == with_init
    legacy = spec.to_dict()
    del legacy["student_init_sha256"]  # a record written before the field
    assert RunSpec.from_dict(legacy).run_id == spec.run_id


def test_the_student_starts_from_the_init_weights(tmp_path, tiny_data):
    from conftest import make_trainer

    from kdbench.execution.units import stage_student_init

    torch.manual_seed(9)
    source = build_model("resnet8", num_classes=10)
    path = tmp_path / "init.pth"
    torch.save(repdistiller_final(source), path)  # any supported layout; RepDistiller's final save here
    sha = stage_student_init(tmp_path, path, ["resnet8"], tiny_data.info)
    assert sha == teachers.sha256_of(path) and store.student_init_path(tmp_path, sha).is_file()
    trainer = make_trainer(tiny_data, tmp_path, "student", student_init_sha256=sha)
    assert_same_weights(trainer.student, source.state_dict())
    fresh = make_trainer(tiny_data, tmp_path, "student")
    assert not torch.equal(fresh.student.state_dict()["fc.weight"], source.state_dict()["fc.weight"])


def test_a_timm_student_init_is_staged(tmp_path, synthetic):
    from kdbench.execution.units import stage_student_init

    path = tmp_path / "timm.pth"
    torch.save(timm_model().model.state_dict(), path)
    assert stage_student_init(tmp_path, path, ["timm:resnet10t"], synthetic.info) == teachers.sha256_of(path)


def test_student_init_on_the_command_line(capsys, tmp_path):
    torch.manual_seed(11)
    path = tmp_path / "init.pth"
    torch.save({"model": build_model("resnet8", num_classes=10).state_dict()}, path)
    out = tmp_path / "s"
    argv = ["run", *TINY, "--pairs", "resnet14:resnet8", "--methods", "student", "--out", str(out)]
    code, _, err = run_cli(capsys, *argv, "--student-init", str(path))
    assert code == 0, err
    (record,) = store.load_records(out)
    assert record["spec"]["student_init_sha256"] == teachers.sha256_of(path)
    # without the flag: another configuration, trained as such
    code, _, err = run_cli(capsys, *argv)
    assert code == 0 and "1 trained, 0 cached" in err, err
    plain = [r for r in store.load_records(out) if r["run_id"] != record["run_id"]]
    assert len(plain) == 1 and plain[0]["spec"]["student_init_sha256"] is None


@pytest.mark.parametrize("problem", ["missing", "architecture", "classes", "not weights"])
def test_a_bad_student_init_is_one_line_naming_the_file(capsys, tmp_path, problem):
    path = tmp_path / "init.pth"
    if problem == "architecture":
        torch.save({"model": build_model("resnet14", num_classes=10).state_dict()}, path)
    elif problem == "classes":
        torch.save({"model": build_model("resnet8", num_classes=7).state_dict()}, path)
    elif problem == "not weights":
        torch.save({"epoch": 3}, path)
    argv = ["run", *TINY, "--pairs", "resnet14:resnet8", "--methods", "student", "--out", str(tmp_path / "s")]
    code, _, err = run_cli(capsys, *argv, "--student-init", str(path))
    fragment = {
        "missing": "does not exist",
        "architecture": "is a 'resnet14', not a 'resnet8'",
        "classes": "fc.weight has shape [7, 64] in the file, [10, 64] in the model",
        "not weights": "holds no state_dict",
    }[problem]
    assert_one_line_error(code, err, str(path), fragment)
    assert not (tmp_path / "s" / "runs").exists()


# -- the teacher's own accuracy ------------------------------------------------------------------------------
def test_a_loaded_teacher_is_evaluated_once_and_its_accuracy_is_in_each_record(tmp_path, synthetic):
    from kdbench.core.catalog import Pair
    from kdbench.execution.sweep import SweepRequest
    from kdbench.training.evaluation import evaluate

    torch.manual_seed(13)
    path = tmp_path / "teacher.pth"
    torch.save(repdistiller_final(build_model("resnet14", num_classes=10)), path)
    recipe = Recipe(epochs=1, batch_size=64, lr_decay_epochs=(), train_subset=128)
    request = SweepRequest(
        methods=["student", "kd"],
        pairs=[Pair("resnet14", "resnet8")],
        dataset="synthetic",
        recipe=recipe,
        teacher_recipe=recipe,
        teacher_path=str(path),
        out=tmp_path / "s",
    )
    Sweep(request, progress=lambda _: None).run()
    teacher = teachers.load_teacher(path, "resnet14", synthetic.info, torch.device("cpu"))
    expected = evaluate(teacher, synthetic.test, synthetic.info, torch.device("cpu"))
    records = {r["spec"]["method"]: r for r in store.load_records(tmp_path / "s")}
    sha = teachers.sha256_of(path)
    assert records["kd"]["teacher"] == {
        "sha256": sha,
        "test_top1": expected["top1"],
        "test_top5": expected["top5"],
    }
    assert records["student"]["teacher"] is None
    cached = store.teacher_eval_path(tmp_path / "s", sha, "synthetic")
    assert json.loads(cached.read_text())["test_top1"] == expected["top1"]
    # the board's teacher row: one value per pair, not a method (no Δ note, no seed-count note about it)
    board = leaderboard(store.load_records(tmp_path / "s"))
    assert board.table.index[0] == "teacher"
    assert board.table.loc["teacher", "resnet14→resnet8"].startswith(f"{expected['top1']:.2f}")
    assert not any("teacher on" in note for note in board.notes)
    # measured once: a later run reads the store's value
    planted = {"sha256": sha, "test_top1": 12.5, "test_top5": 50.0, "data_sha256": synthetic.info.data_sha256}
    cached.write_text(json.dumps(planted))
    Sweep(replace(request, seeds=[1]), progress=lambda _: None).run()
    again = [r for r in store.load_records(tmp_path / "s") if r["spec"]["seed"] == 1 and r["spec"]["teacher"]]
    assert again[0]["teacher"]["test_top1"] == 12.5


def test_a_trained_teacher_s_accuracy_is_recorded_too(tmp_path):
    from kdbench.core.catalog import Pair
    from kdbench.execution.sweep import SweepRequest

    recipe = Recipe(epochs=1, batch_size=64, lr_decay_epochs=(), train_subset=128)
    request = SweepRequest(
        methods=["kd"],
        pairs=[Pair("resnet14", "resnet8")],
        dataset="synthetic",
        recipe=recipe,
        teacher_recipe=recipe,
        out=tmp_path,
    )
    Sweep(request, progress=lambda _: None).run()
    (teacher_record,) = store.load_records(tmp_path, kind="teacher")
    (kd,) = store.load_records(tmp_path)
    assert kd["teacher"]["sha256"] == teacher_record["checkpoint"]["sha256"] == kd["spec"]["teacher_sha256"]
    assert kd["teacher"]["test_top1"] == pytest.approx(teacher_record["metrics"]["last_top1"], abs=1.0)
    assert "teacher" in leaderboard([kd]).table.index
