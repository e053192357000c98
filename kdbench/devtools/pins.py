"""Pinned per-step losses: the fast, deterministic regression tier.

Every registered method (plus `crd+kd` and kd with VAM) takes its first `STEPS` training steps
at a fixed seed on the synthetic dataset, resnet14 (random weights, frozen) -> resnet8, with the
method's init stage first where it has one. The weighted loss terms of each step are compared
with the committed file (`results/baselines/step-losses.json`) within a relative tolerance that
was measured between runs and thread counts and is stored in the file. A change to a method's
math or to the engine shows up in seconds, with the method, the step and the term named; the
statistical gate (`kdbench check`) judges accuracies.

    kdbench pins                 # compare with the committed file; exit 1 on a difference
    kdbench pins --write         # re-measure (threads 1 and 2) and rewrite it
    kdbench pins --add           # pin the cases that have no pin yet; keep every pin there is

`--add` keeps each existing pin and its values, measured on the machine that wrote them. Where this
machine's values differ from a pin by less than MACHINE_CAP, the difference is recorded as that
case's spread between machines and its tolerance widened to cover twice it (another CPU rounds
differently: a pin must hold on the machines that run CI); a larger difference is left as a
change for `kdbench pins` to report.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch

from kdbench.core.errors import ConfigError
from kdbench.core.registries import METHODS
from kdbench.core.spec import Recipe, RunSpec
from kdbench.core.store import atomic_write_bytes
from kdbench.data import prepare_data
from kdbench.methods.base import method_class
from kdbench.models import build_model
from kdbench.training.member import Member
from kdbench.wrappers.vam import VAMConfig

STEPS = 4
RECIPE = Recipe(epochs=1, batch_size=32, lr=0.01, lr_decay_epochs=(), train_subset=256)
DATASET, TEACHER, STUDENT = "synthetic", "resnet14", "resnet8"
DEFAULT_FILE = Path(__file__).resolve().parents[2] / "results" / "baselines" / "step-losses.json"
# Never tighter than this, whatever the measured spread (another CPU may round differently).
RTOL_FLOOR = 1e-4
# The largest difference from a pin that `--add` reads as another machine's rounding, not a change.
MACHINE_CAP = 1e-2


def cases() -> list[tuple[str, str, bool]]:
    """(label, method, VAM) for every registered method, a composition and one wrapper."""
    methods = sorted(name for name in METHODS.module_dict)
    return [(m, m, False) for m in methods] + [("crd+kd", "crd+kd", False), ("kd +VAM", "kd", True)]


def step_losses(method: str, vam: bool) -> list[dict[str, float]]:
    """The weighted loss terms (and their sum, "loss") of the first STEPS steps of one method."""
    data = prepare_data(DATASET, None, RECIPE)
    info = data.info
    method_cls = method_class(method)
    torch.manual_seed(0)
    # left in train mode: putting it in eval mode and freezing it is the engine's job, pinned here too
    teacher = build_model(TEACHER, num_classes=info.num_classes, in_chans=info.in_chans)
    spec = RunSpec(
        method=method,
        student=STUDENT,
        dataset=DATASET,
        teacher=TEACHER if method_cls.needs_teacher else None,
        wrappers={"vam": VAMConfig()} if vam else {},
        hp=method_cls.resolve_hp(),
        recipe=RECIPE,
    )
    with tempfile.TemporaryDirectory() as out:
        member = Member(
            spec,
            data,
            teacher=teacher if method_cls.needs_teacher else None,
            device=torch.device("cpu"),
            out=Path(out),
            progress=lambda line: None,
        )
        member.run_init_stage()
        member.begin_epoch(1)
        losses = []
        for step, (images, labels, indices) in zip(range(STEPS), member.batches(), strict=False):
            loss, terms = member.step(images, labels, indices, f"pinned step {step}")
            losses.append({"loss": loss, **terms})
    return losses


def measure(threads: int, labels: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    """The losses of every case (or of `labels`) at `threads` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return {
            label: step_losses(method, vam)
            for label, method, vam in cases()
            if labels is None or label in labels
        }
    finally:
        torch.set_num_threads(previous)


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def largest_difference(first: list[dict], second: list[dict]) -> float:
    """The largest relative difference between two runs' steps of one case."""
    return max(
        (
            relative_difference(step[term], other[term])
            for step, other in zip(first, second, strict=True)
            for term in step
        ),
        default=0.0,
    )


def _spread(labels: list[str]) -> tuple[dict, dict]:
    """The 1-thread losses of the cases `labels`, and each case's largest relative spread between two
    1-thread runs and between 1 and 2 threads."""
    pinned, again, two_threads = measure(1, labels), measure(1, labels), measure(2, labels)
    spread = {
        label: {
            "rerun": largest_difference(pinned[label], again[label]),
            "threads_1_vs_2": largest_difference(pinned[label], two_threads[label]),
        }
        for label in pinned
    }
    return pinned, spread


def _content(pinned: dict, spread: dict) -> dict:
    """The pins file: each case's tolerance twice its largest spread seen (at least RTOL_FLOOR), so a
    method whose math is sensitive to the thread count (an SVD, a median) does not loosen every other
    method's pin."""
    return {
        "about": "kdbench pins: weighted loss terms of the first steps of every method (kdbench/devtools/pins.py)",
        "setup": {
            "dataset": DATASET,
            "teacher": TEACHER,
            "student": STUDENT,
            "steps": STEPS,
            "recipe": RECIPE.__dict__,
        },
        "measured_spread": spread,
        "rtol": {label: max(RTOL_FLOOR, 2 * max(spread[label].values())) for label in pinned},
        "torch": torch.__version__,
        "losses": pinned,
    }


def write(path: Path = DEFAULT_FILE) -> dict:
    """Measure every case at 1 and 2 threads and twice at 1, and pin the 1-thread values."""
    pinned, spread = _spread([label for label, _, _ in cases()])
    return _save(path, _content(pinned, spread))


def add(path: Path = DEFAULT_FILE) -> dict:
    """Pin the cases without a pin (measured as `write` does); keep every existing pin, its spread
    widened by this machine's difference from it where that is under MACHINE_CAP (module docstring)."""
    previous = read_pins(path)
    labels = [label for label, _, _ in cases()]
    pinned, spread = _spread([label for label in labels if label not in previous["losses"]])
    kept = [label for label in labels if label not in pinned]
    here = measure(1, kept)
    for label in kept:
        pinned[label] = previous["losses"][label]
        spread[label] = dict(previous.get("measured_spread", {}).get(label, {"rerun": 0.0}))
        same_terms = [step.keys() for step in here[label]] == [step.keys() for step in pinned[label]]
        if same_terms:
            machines = largest_difference(pinned[label], here[label])
            if machines < MACHINE_CAP:
                spread[label]["machines"] = max(machines, spread[label].get("machines", 0.0))
    return _save(path, _content(pinned, spread))


def _save(path: Path, content: dict) -> dict:
    atomic_write_bytes(path, (json.dumps(content, indent=1, sort_keys=True, default=list) + "\n").encode())
    return content


def compare(pinned: dict, measured: dict[str, list[dict[str, float]]]) -> list[str]:
    """One line per difference beyond the pinned tolerance, naming the method, step and term."""
    problems = []
    for label, steps in measured.items():
        rtol = pinned["rtol"].get(label, RTOL_FLOOR)
        expected_steps = pinned["losses"].get(label)
        if expected_steps is None:
            problems.append(f"{label}: no pinned losses (new method? run `kdbench pins --write`)")
            continue
        if len(expected_steps) != len(steps):
            problems.append(f"{label}: {len(expected_steps)} steps pinned, {len(steps)} measured")
            continue
        for step, (expected, got) in enumerate(zip(expected_steps, steps, strict=True)):
            for term in sorted(set(expected) | set(got)):
                if term not in expected or term not in got:
                    problems.append(f"{label} step {step}: term '{term}' appeared or vanished")
                elif relative_difference(expected[term], got[term]) > rtol:
                    problems.append(
                        f"{label} step {step} {term}: {got[term]:.8g}, pinned {expected[term]:.8g} (rtol {rtol:.1e})"
                    )
    problems += [
        f"{label}: pinned but no longer registered" for label in set(pinned["losses"]) - set(measured)
    ]
    return problems


def check(path: Path = DEFAULT_FILE) -> list[str]:
    return compare(read_pins(path), measure(1))


def read_pins(path: Path) -> dict:
    """The pinned losses at `path`, their shape checked (compare reads every number of them); a ConfigError
    naming the file."""
    fix = "make them with `kdbench pins --write`"
    try:
        pinned = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON or bytes that are not UTF-8
        raise ConfigError(f"pinned losses {path} are unreadable ({type(err).__name__}); {fix}") from err
    if not _is_pins(pinned):
        raise ConfigError(
            f"pinned losses {path} are not a pins file (rtol: {{method: number}}, losses: {{method: "
            f"[{{term: number}}, ...]}}); {fix}"
        )
    return pinned


def _is_pins(pinned: object) -> bool:
    def number(value: object) -> bool:
        return type(value) in (int, float) and math.isfinite(value)

    def steps_ok(steps: object) -> bool:
        return isinstance(steps, list) and all(
            isinstance(step, dict) and all(map(number, step.values())) for step in steps
        )

    return (
        isinstance(pinned, dict)
        and isinstance(pinned.get("rtol"), dict)
        and isinstance(pinned.get("losses"), dict)
        and all(map(number, pinned["rtol"].values()))
        and all(map(steps_ok, pinned["losses"].values()))
    )
