"""KDExplainer's HME (routing, annealing, the soft -> hard switch, the learned tree) and `kdbench explain`
end to end on the synthetic dataset."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from kdbench.cli import main
from kdbench.core import store
from kdbench.core.features import Features
from kdbench.core.spec import Recipe
from kdbench.explain import VARIANTS, ExplainRequest, run_explain
from kdbench.models import build_model
from kdbench.models.hme import HME
from kdbench.reporting.explain_report import explain_table, render_report, write_report


def tiny_hme(num_classes: int = 10, in_chans: int = 1, **options) -> HME:
    return HME(
        num_classes, in_chans, channels=(4, 4, 4), mid_channels=4, head_hidden=8, pool_size=2, **options
    )


def test_soft_routing_rows_sum_to_one_and_hard_routing_is_one_hot():
    model = tiny_hme()
    model.set_epoch(1, 4)
    for weights in model.routing_weights():
        assert torch.allclose(weights.sum(dim=1), torch.ones(len(weights)))
        assert (weights > 0).all() and (weights < 1).all()
    model.set_epoch(3, 4)
    for logits, weights in zip(model.routing_logits(), model.routing_weights(), strict=True):
        assert torch.equal(weights, F.one_hot(logits.argmax(dim=1), logits.shape[1]).float())


def test_temperature_anneals_as_t0_over_epoch_then_freezes_in_the_hard_stage():
    model = tiny_hme(t0=10.0)
    for epoch in (1, 2, 3):
        model.set_epoch(epoch, 6)
        assert float(model.temperature) == pytest.approx(10.0 / epoch)
        assert not model.hard_routing
    for epoch in (4, 5, 6):
        model.set_epoch(epoch, 6)
        assert float(model.temperature) == pytest.approx(10.0 / 3)
        assert model.hard_routing


@pytest.mark.parametrize(
    ("num_epochs", "hard_fraction", "soft_epochs"), [(4, 0.5, 2), (8, 0.25, 6), (1, 0.5, 1), (3, 0.0, 3)]
)
def test_stage_switch_routes_the_last_fraction_of_epochs_hard(num_epochs, hard_fraction, soft_epochs):
    model = tiny_hme(hard_fraction=hard_fraction)
    hard = []
    for epoch in range(1, num_epochs + 1):
        model.set_epoch(epoch, num_epochs)
        hard.append(bool(model.hard_routing))
    assert hard == [False] * soft_epochs + [True] * (num_epochs - soft_epochs)


def test_hard_routing_is_a_fixed_tree_that_sgd_leaves_alone():
    torch.manual_seed(0)
    model = tiny_hme().eval()
    images = torch.randn(4, 1, 28, 28)
    model.set_epoch(2, 2)  # hard
    before = model(images)
    with torch.no_grad():  # logits moved, arg-max kept: the tree and so the output stay the same
        for routing in model.routing:
            routing += 0.1 * F.one_hot(routing.argmax(dim=1), routing.shape[1])
    assert torch.allclose(model(images), before)
    model.set_epoch(1, 2)  # soft: the same change shows
    soft = model(images)
    with torch.no_grad():
        for routing in model.routing:
            routing += 0.1 * F.one_hot(routing.argmax(dim=1), routing.shape[1])
    assert not torch.allclose(model(images), soft)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    labels = torch.tensor([0, 1, 2, 3])
    for epoch in (1, 2):  # one soft step (momentum builds up), then one hard step
        model.set_epoch(epoch, 2)
        routing = [r.detach().clone() for r in model.routing]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(routing, model.routing, strict=True))


def test_learned_tree_lists_the_classes_under_every_expert():
    model = tiny_hme(num_classes=10)
    chosen = [[k // 2 for k in range(4)], [k // 2 for k in range(8)], [c % 8 for c in range(10)]]
    with torch.no_grad():
        for routing, parents in zip(model.routing, chosen, strict=True):
            routing.copy_(F.one_hot(torch.tensor(parents), routing.shape[1]).float())
    tree = model.learned_tree()
    assert tree["parents"] == chosen
    level3 = [[0, 8], [1, 9], [2], [3], [4], [5], [6], [7]]
    assert tree["classes"] == [
        [[0, 1, 2, 3, 8, 9], [4, 5, 6, 7]],
        [[0, 1, 8, 9], [2, 3], [4, 5], [6, 7]],
        level3,
    ]


def test_routing_entropy_is_maximal_for_uniform_routing_and_the_analysis_is_json():
    model = tiny_hme()
    with torch.no_grad():
        for routing in model.routing:
            routing.zero_()
    model.set_epoch(1, 2)
    analysis = json.loads(json.dumps(model.analysis()))
    assert analysis["routing_levels"] == ["2->4", "4->8", "8->10"]
    assert analysis["routing_entropy"] == pytest.approx([math.log(2), math.log(4), math.log(8)])
    assert analysis["max_entropy"] == pytest.approx(analysis["routing_entropy"])
    assert analysis["temperature"] == pytest.approx(10.0)


@pytest.mark.parametrize(("in_chans", "size", "last"), [(1, 28, 3), (3, 32, 4)])
def test_hme_forward_logits_and_features(in_chans, size, last):
    model = build_model("hme_small", num_classes=10, in_chans=in_chans)
    images = torch.randn(2, in_chans, size, size)
    assert model(images).shape == (2, 10)
    features = model(images, features=True)
    assert isinstance(features, Features)
    assert [tuple(s.shape) for s in features.stages] == [
        (2, 2 * 16, size // 2, size // 2),
        (2, 4 * 16, size // 4, size // 4),
        (2, 8 * 8, last, last),
    ]
    assert features.pooled.shape == (2, 10 * 32)
    authors = build_model("hme", num_classes=10, in_chans=3)
    assert [len(level) for level in authors.levels] == [2, 4, 8]
    assert authors.levels[2][0][3].out_channels == 32 and authors.heads[0].score.in_features == 128


def _untrained_teacher_checkpoint(path, dataset: str, num_classes: int = 10, in_chans: int = 3):
    model = build_model("resnet8", num_classes=num_classes, in_chans=in_chans)
    meta = {"arch": "resnet8", "dataset": dataset, "num_classes": num_classes, "in_chans": in_chans}
    torch.save({"model": model.state_dict(), "kdbench": meta}, path)
    return path


def test_explain_end_to_end_on_synthetic(tmp_path, capsys):
    teacher = _untrained_teacher_checkpoint(tmp_path / "teacher.pt", "synthetic")
    argv = ["explain", "--teacher", str(teacher), "--dataset", "synthetic", "--seeds", "1", "--epochs", "1"]
    assert main([*argv, "--train-subset", "0", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "Paper's claim" in printed and "label smoothing" in printed
    records = store.load_records(tmp_path / "out")
    assert sorted((r["spec"]["method"], r["spec"]["hp"]["label_smoothing"]) for r in records) == [
        ("kd", 0.0),
        ("student", 0.0),
        ("student", 0.1),
    ]
    for record in records:
        assert record["spec"]["student"] == "hme_small"
        assert len(record["analysis"]["routing_entropy"]) == 3
    assert (tmp_path / "out" / "explain" / "synthetic-resnet8-hme_small.png").stat().st_size > 10_000
    assert "Learned trees" in (tmp_path / "out" / "explain" / "synthetic-resnet8-hme_small.md").read_text()


def test_explain_trains_a_named_teacher_once_and_reuses_every_run(tmp_path):
    request = ExplainRequest(
        teacher="resnet8",
        dataset="synthetic",
        teacher_recipe=Recipe(epochs=1, batch_size=128, lr_decay_epochs=()),
        recipe=Recipe(epochs=1, batch_size=128, lr_decay_epochs=()),
        seeds=1,
        out=tmp_path,
    )
    result = run_explain(request, progress=lambda line: None)
    assert list(result.records) == [label for label, _, _ in VARIANTS] and not result.failed
    (teacher,) = store.load_records(tmp_path, kind="teacher")
    assert result.records["KD"][0]["spec"]["teacher_sha256"] == teacher["checkpoint"]["sha256"]
    lines = []
    again = run_explain(request, progress=lines.append)  # all cached: nothing trains
    assert all("cached" in line for line in lines)
    assert explain_table(again).equals(explain_table(result))
    assert "Paper's claim" in render_report(result)
    assert [path.suffix for path in write_report(result, tmp_path)] == [".md", ".png"]


def test_explain_refuses_a_teacher_of_another_dataset_before_training(tmp_path, capsys):
    teacher = _untrained_teacher_checkpoint(tmp_path / "fm.pt", "fashion-mnist", in_chans=1)
    code = main(
        ["explain", "--teacher", str(teacher), "--dataset", "synthetic", "--out", str(tmp_path / "o")]
    )
    error = capsys.readouterr().err.strip()
    assert code != 0
    assert error.startswith("kdbench: error:") and "trained on fashion-mnist" in error and "\n" not in error
    assert not (tmp_path / "o" / "runs").exists()


def test_explain_asks_for_the_architecture_of_a_foreign_checkpoint(tmp_path, capsys):
    path = tmp_path / "repdistiller.pth"
    torch.save({"model": build_model("resnet8", num_classes=10).state_dict()}, path)
    assert main(["explain", "--teacher", str(path), "--dataset", "synthetic", "--out", str(tmp_path)]) != 0
    assert "--teacher-arch" in capsys.readouterr().err
