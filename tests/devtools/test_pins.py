"""The fast regression tier: every method's first steps match the committed pinned losses."""

import json

import pytest

from kdbench.devtools import pins


@pytest.fixture(scope="module")
def measured():
    return pins.measure(1)


def test_every_registered_method_is_pinned(measured):
    pinned = json.loads(pins.DEFAULT_FILE.read_text())
    assert set(measured) == set(pinned["losses"])


def test_every_method_takes_its_pinned_first_steps(measured):
    problems = pins.compare(json.loads(pins.DEFAULT_FILE.read_text()), measured)
    assert not problems, "\n".join(problems)


def test_a_change_to_a_loss_is_named(measured):
    pinned = json.loads(pins.DEFAULT_FILE.read_text())
    changed = {label: [dict(step) for step in steps] for label, steps in measured.items()}
    changed["kd"][2]["kd"] *= 1 + 3 * pinned["rtol"]["kd"]
    assert pins.compare(pinned, changed) == [
        f"kd step 2 kd: {changed['kd'][2]['kd']:.8g}, pinned {pinned['losses']['kd'][2]['kd']:.8g} "
        f"(rtol {pinned['rtol']['kd']:.1e})"
    ]


def test_each_method_has_its_own_measured_tolerance():
    """One method sensitive to the thread count must not loosen the pins of the others."""
    pinned = json.loads(pins.DEFAULT_FILE.read_text())
    assert set(pinned["rtol"]) == set(pinned["losses"])
    assert pinned["rtol"]["kd"] <= 1e-2
    assert all(rtol >= pins.RTOL_FLOOR for rtol in pinned["rtol"].values())


def test_the_temperature_on_the_student_only_is_caught_and_named(monkeypatch):
    """Issue 10's planted bug: the teacher's soft targets left unscaled by T. The statistical gate
    cannot see it in CI's 2-epoch, 3-seed runs; this tier, which `kdbench check` runs first, does."""
    import torch.nn.functional as F

    from kdbench.methods import base

    def student_only(student_logits, teacher_logits, temperature):
        log_p_student = F.log_softmax(student_logits / temperature, dim=1)
        return (
            F.kl_div(log_p_student, F.softmax(teacher_logits, dim=1), reduction="batchmean") * temperature**2
        )

    monkeypatch.setattr(base, "kd_kl_div", student_only)
    pinned = json.loads(pins.DEFAULT_FILE.read_text())
    problems = pins.compare(pinned, {"kd": pins.step_losses("kd", False)})
    assert any(line.startswith("kd step 0 kd:") for line in problems), problems


def test_add_pins_a_new_case_and_keeps_the_others_widened_only_by_a_machines_rounding(monkeypatch, tmp_path):
    """`kdbench pins --add`: a case without a pin is measured and pinned; an existing pin keeps its
    values, its tolerance covering twice this machine's difference when that is rounding (under
    MACHINE_CAP), and a larger difference stays a change that `kdbench pins` reports."""
    monkeypatch.setattr(
        pins, "cases", lambda: [("kd", "kd", False), ("at", "at", False), ("sp", "sp", False)]
    )
    measured = pins.measure(1)
    rounded = [{term: value * (1 + 1e-3) for term, value in step.items()} for step in measured["at"]]
    changed = [{term: value * 1.5 for term, value in step.items()} for step in measured["sp"]]
    old = {"rtol": {"at": 1e-4, "sp": 1e-4}, "losses": {"at": rounded, "sp": changed}}
    old["measured_spread"] = {"at": {"rerun": 0.0}, "sp": {"rerun": 0.0}}
    path = tmp_path / "pins.json"
    path.write_text(json.dumps(old))
    content = pins.add(path)
    assert content["losses"]["kd"] == measured["kd"]  # the new case, pinned
    assert content["losses"]["at"] == rounded and content["losses"]["sp"] == changed  # values kept
    assert 1.99e-3 <= content["rtol"]["at"] < 3e-3  # twice 1e-3, relative to the larger value
    assert content["rtol"]["sp"] == pins.RTOL_FLOOR
    problems = pins.compare(json.loads(path.read_text()), measured)
    assert problems and all(line.startswith("sp step") for line in problems), problems
