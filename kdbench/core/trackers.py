"""Per-run logs: `logs/<run_id>.txt` in the store, and per-epoch scalars to experiment trackers.

`--log tensorboard,mlflow,wandb,aim` sends each epoch's scalars (loss and its terms, accuracy,
learning rate, throughput, VAM attention entropy) through mmengine's visualisation back-ends, one
tracker run per kdbench run, named by what it trains (`tracker_run_name`: method, pair, dataset, seed,
then its run id, which tells two configurations apart) under `<store>/trackers/<backend>/<name>`
(TensorBoard event files; an MLflow file store; W&B and Aim in their own offline directories), with the
run's spec as its config. TensorBoard and Aim receive each epoch as it ends; MLflow and W&B, whose clients keep one
active run per process, receive a run's epochs when it finishes (a cohort trains several runs at
once). Each back-end needs its package (`pip install kdbench[trackers]` for TensorBoard and MLflow).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path

from kdbench.core.errors import ConfigError
from kdbench.core.spec import wrapper_label

# name -> (mmengine back-end class, the package it needs)
TRACKERS = {
    "tensorboard": ("TensorboardVisBackend", "tensorboard"),
    "mlflow": ("MLflowVisBackend", "mlflow"),
    "wandb": ("WandbVisBackend", "wandb"),
    "aim": ("AimVisBackend", "aim"),
}


def check_trackers(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The tracker names, each known and with its package installed; one line naming the first that is not."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"unknown tracker '{name}' in --log; valid: {', '.join(TRACKERS)}")
        package = TRACKERS[name][1]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"--log {name} needs the '{package}' package: pip install {package}")
    return tuple(names)


def epoch_scalars(entry: dict) -> dict[str, float]:
    """The numbers of one epoch's history entry, flat: loss, loss/<term>, test_top1, lr, img_per_s, ..."""
    scalars = {f"loss/{term}": value for term, value in entry.get("loss_terms", {}).items()}
    for key in ("train_loss", "test_top1", "test_top5", "val_top1", "lr"):
        if isinstance(entry.get(key), (int, float)):
            scalars[key] = float(entry[key])
    if entry.get("epoch_seconds"):
        scalars["img_per_s"] = entry["images"] / entry["epoch_seconds"]
    return scalars


def tracker_run_name(spec) -> str:
    """A tracker run's name and folder: `kd+VAM_resnet56-resnet20_cifar100_seed0_<run_id>` (a teacher's:
    `teacher_resnet56_cifar100_seed0_<run_id>`); what is no letter, digit, '.', '+' or '-' becomes '_'."""
    wrapped = "".join(f"+{wrapper_label(name)}" for name in spec.wrappers)
    what = "teacher" if spec.kind == "teacher" else f"{spec.method}{wrapped}"
    pair = f"{spec.teacher}-{spec.student}" if spec.teacher else spec.student
    return re.sub(
        r"[^\w.+-]", "_", f"{what}_{pair}_{spec.dataset}_seed{spec.seed}_{spec.run_id}", flags=re.ASCII
    )


# clients that keep one active run per process (a cohort trains several runs at once): they receive a
# run's scalars, epoch by epoch, when it finishes; the others stream each epoch as it ends
DEFERRED = ("mlflow", "wandb")


class RunLog:
    """One run's log file and tracker runs; `line` takes progress lines, `epoch` history entries.

    The log file is opened for each line and closed again (a run writes a few lines an epoch), so a
    cohort of many members holds no file open for each of them."""

    def __init__(self, out: Path, spec, trackers: tuple[str, ...] = ()):
        self.path = Path(out) / "logs" / f"{spec.run_id}.txt"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.out, self.spec = Path(out), spec
        self.live = [self._backend(name) for name in trackers if name not in DEFERRED]
        self.deferred = [name for name in trackers if name in DEFERRED]
        self.entries: list[dict] = []

    def _backend(self, name: str):
        from mmengine.config import Config
        from mmengine.visualization import vis_backend

        save_dir = self.out / "trackers" / name / tracker_run_name(self.spec)
        options = {}
        if name == "wandb":
            options = {"init_kwargs": {"name": tracker_run_name(self.spec)}}
        if name == "mlflow":
            # a file store in the results store (MLflow's default tracking URI for a save_dir)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            options = {"exp_name": "kdbench", "run_name": f"{self.spec.label} [{self.spec.run_id}]"}
            options["artifact_suffix"] = ()  # the record is the artifact; nothing else is uploaded
        backend = getattr(vis_backend, TRACKERS[name][0])(save_dir=str(save_dir), **options)
        backend.add_config(
            Config({"work_dir": str(save_dir), "run_id": self.spec.run_id, **self.spec.to_dict()})
        )
        return backend

    def line(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.write(text + "\n")

    def epoch(self, entry: dict) -> None:
        self.entries.append(entry)
        for backend in self.live:
            backend.add_scalars(epoch_scalars(entry), step=entry["epoch"])

    def close(self) -> None:
        for name in self.deferred:
            backend = self._backend(name)
            for entry in self.entries:
                backend.add_scalars(epoch_scalars(entry), step=entry["epoch"])
            backend.close()
        for backend in self.live:
            backend.close()


class RunLogs:
    """The logs of the runs one unit trains (alone or as a cohort): progress lines go to `forward` and
    to the log of the run their `[run_id]` prefix names; epochs go to that run's trackers."""

    PREFIX = re.compile(r"^\[([0-9a-f]{12})\]")

    def __init__(self, out: Path, specs, trackers: tuple[str, ...], forward: Callable[[str], None]):
        self.forward = forward
        self.logs = {spec.run_id: RunLog(out, spec, trackers) for spec in specs}

    def progress(self, line: str) -> None:
        self.forward(line)
        if (match := self.PREFIX.match(line)) and match.group(1) in self.logs:
            self.logs[match.group(1)].line(line)

    def on_epoch(self, spec, entry: dict) -> None:
        self.logs[spec.run_id].epoch(entry)

    def __enter__(self) -> RunLogs:
        return self

    def __exit__(self, *exc) -> None:
        for log in self.logs.values():
            log.close()
