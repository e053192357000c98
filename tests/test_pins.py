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
