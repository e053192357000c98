"""The record's `evaluation` part (kdbench/core/records.py `Evaluation`) as the record check sees it: a
record may be hostile, so each of its fields is checked (types, sizes, finite, non-negative counts) and a
bad one is refused naming the field; a record written before the part existed still passes."""

import copy
import json
import math

import pytest

from kdbench.core import store
from kdbench.core.records import CONFUSION_MAX_CLASSES, new_record, record_problem
from kdbench.core.spec import RunSpec

SPEC = RunSpec(method="student", student="resnet8", dataset="synthetic")
EVALUATION = {
    "epoch": 1,
    "images": 4,
    "classes": 3,
    "per_class_top1": [50.0, 100.0, None],
    "confusion": [[1, 1, 0], [0, 2, 0], [0, 0, 0]],
    "ece": 26.5,
    "ece_bins": 15,
    "agreement_top1": 75.0,
    "teacher_kl": 0.12,
}


def record(evaluation=EVALUATION):
    metrics = {"last_top1": 75.0, "last_top5": 100.0, "best_top1": 75.0, "best_top5": 100.0, "best_epoch": 1}
    history = [{"epoch": 1, "test_top1": 75.0, "test_top5": 100.0}]
    result = {"history": history, "metrics": metrics, "evaluation": copy.deepcopy(evaluation)}
    return new_record(SPEC.to_dict(), SPEC.run_id, SPEC.kind, "done", {}, result)


def problem(made):
    return record_problem(made, f"{SPEC.run_id}.json")


def with_field(key, value):
    return record({**EVALUATION, key: value})


def test_a_sound_evaluation_a_null_one_and_none_at_all_pass():
    assert problem(record()) is None
    assert problem(record(None)) is None  # a failed run, or no test split evaluated
    old = record()
    del old["evaluation"]  # written before records had it
    assert problem(old) is None
    assert problem(with_field("confusion", None)) is None
    assert problem(record({**EVALUATION, "agreement_top1": None, "teacher_kl": None})) is None  # no teacher


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("ece", math.nan, "evaluation.ece"),
        ("ece", 101.0, "evaluation.ece"),
        ("ece", "3.2", "evaluation.ece"),
        ("teacher_kl", math.inf, "evaluation.teacher_kl"),
        ("teacher_kl", -0.5, "evaluation.teacher_kl"),
        ("agreement_top1", -1.0, "evaluation.agreement_top1"),
        ("agreement_top1", math.nan, "evaluation.agreement_top1"),
        ("classes", 0, "evaluation.classes"),
        ("classes", True, "evaluation.classes"),
        ("images", 2.5, "evaluation.images"),
        ("epoch", 0, "evaluation.epoch"),
        ("ece_bins", -15, "evaluation.ece_bins"),
        ("per_class_top1", [50.0, math.nan, None], "evaluation.per_class_top1[1]"),
        ("per_class_top1", [50.0, 100.0], "evaluation.per_class_top1 must hold 3 values"),
        ("per_class_top1", {"0": 50.0}, "evaluation.per_class_top1 must be a list"),
        ("confusion", [[1, -1, 0], [0, 2, 0], [0, 0, 2]], "evaluation.confusion[0][1]"),
        ("confusion", [[1, 1.5, 0], [0, 2, 0], [0, 0, 0]], "evaluation.confusion[0][1]"),
        ("confusion", [[1, 1], [0, 2]], "evaluation.confusion must be 3 x 3"),
        ("confusion", [[1, 1, 0], [0, 2, 0], [0, 0]], "evaluation.confusion must be 3 x 3"),
        ("confusion", [[1, 1, 0], [0, 2, 0], [0, 0, 1]], "evaluation.confusion must count 4 images, got 5"),
        ("confusion", [[4], [0], [0]], "evaluation.confusion must be 3 x 3"),
    ],
)
def test_a_hostile_field_is_refused_naming_it(key, value, named):
    found = problem(with_field(key, value))
    assert found is not None and named in found, found


def test_a_missing_field_and_a_part_that_is_no_mapping_are_refused():
    partial = dict(EVALUATION)
    del partial["ece"]
    assert "evaluation has no ece" in problem(record(partial))
    assert "evaluation must be a mapping" in problem(record([1, 2]))


def test_a_confusion_matrix_is_kept_out_above_its_class_limit():
    classes = CONFUSION_MAX_CLASSES + 1
    big = {**EVALUATION, "classes": classes, "images": 1, "per_class_top1": [None] * classes}
    confusion = [[0] * classes for _ in range(classes)]
    confusion[0][0] = 1
    assert "evaluation.confusion must be null above" in problem(record({**big, "confusion": confusion}))
    assert problem(record({**big, "confusion": None})) is None


def test_the_store_refuses_a_hostile_evaluation_naming_file_and_field(tmp_path):
    path = store.write_record(tmp_path, record())
    hostile = json.loads(path.read_text())
    hostile["evaluation"]["confusion"][1][1] = -2
    path.write_text(json.dumps(hostile))
    with pytest.raises(store.StoreError, match=r"evaluation\.confusion\[1\]\[1\]") as refused:
        store.read_record(path)
    assert str(path) in str(refused.value) or path.name in str(refused.value)
