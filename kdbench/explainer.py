"""KDExplainer: the hierarchical mixture of experts (HME) and the `kdbench explain` analysis.

Paper: M. Xue, J. Song, X. Wang, Y. Chen, X. Wang, M. Song, "KDExplainer: A Task-oriented
Attention Model for Explaining Knowledge Distillation", IJCAI 2021 (arXiv:2105.04181). The HME is
built as the authors' public code builds it (`LEARNTOBRANCH.py`, class `LEARNTOBRANCH_Deep`, and
`train_LTB_s1.py` / `train_LTB_s2.py` / `train_LTB_kd_s1.py`, github.com/zju-vipa/KDExplainer):

- a tree of expert blocks, conv3x3-BN-ReLU-conv3x3-BN-ReLU-maxpool2, with 2 -> 4 -> 8 experts per
  level; both first-level experts read the image;
- every child's input is the weighted mix of all its parents' outputs, the weights one row of
  softmax(R / (0.5 t)) over the parents (R: a learned children x parents matrix, initialised
  U(0, 1)). The authors compute it in two steps, softmax(log(softmax(R / 0.5)) / t), which is the
  same thing;
- the K leaves (one per class) mix the last experts' outputs the same way; each leaf has its own
  head (adaptive avg-pool 7x7, Linear-ReLU-Dropout(0.15), Linear-ReLU-Dropout(0.15), Linear -> 1
  score), so a K-class problem is K binary "is it this class" subtasks. The authors' `ce` setting
  concatenates the K scores into logits and trains them with cross-entropy over the classes; so
  does kdbench (the logits feed the shared CE / KD losses unchanged);
- stage 1 routes softly with t = t0 / epoch, t0 = 10 (`training.t` in their configs); stage 2 routes
  each child to the arg-max parent of its row only (one-hot weights: a fixed tree) and trains the
  experts under that tree.

Deviations, because kdbench trains every model with its one engine (SGD) on short schedules:
- stage 2: the authors run it as a second 300-epoch run that re-initialises the experts
  (`model._initialize_weights()` in `train_LTB_s2.py`) and keeps only the routing. kdbench runs both
  stages in one engine run (`set_epoch` switches to hard routing for the last `hard_fraction` of the
  epochs, default 0.5 = the authors' 300 + 300) and keeps training the experts it has. In the hard
  stage R gets no gradient, so SGD leaves it as stage 1 ended; t stays at its last soft value;
- optimizer: the authors train stage 1 with Adam (lr 0.05, routing lr 0.01). Adam moves R by about
  its lr per step whatever the gradient's size; SGD moves it by lr x gradient, and the gradient
  through softmax(R / (0.5 t)) at t = 10 is tiny, so R would stay at its random init. The HME
  therefore stores R / `routing_lr_scale` as the parameter, which makes SGD's steps on R
  routing_lr_scale^2 times larger (the "equalized learning rate" reparameterisation of Karras et
  al., ICLR 2018); weight decay acts on R as before. 30 is measured: on a 6,000-image Fashion-MNIST
  subset, 3 soft epochs left the routing entropy within 1% of uniform at scale 1 and within 12% at
  10; at 30 the routing settles into a tree (2-75% of uniform, level by level);
- the leaf heads' linears keep PyTorch's default init instead of the authors' N(0, 0.01), which
  under SGD left the loss at log K for several epochs (measured on Fashion-MNIST).

The analysis (`HME.analysis()`, stored in the run record under "analysis") reports per routing
level the mean entropy (nats) of the children's routing rows at the last soft temperature, and the
learned tree: each child's arg-max parent and which classes sit under every expert.

`kdbench explain` (`run_explain`) trains the HME plain, with label smoothing and with KD, each a
normal cached run record of the shared engine, and reports per level the routing entropy, the trees
and the accuracy (mean ± std over seeds; `render_report`, `plot_explain`). The paper's claim, that KD
modulates the knowledge conflicts between the subtasks more than label smoothing does, is checked as:
the mean over levels of H / log(parents) is lower with KD than with label smoothing and than plain.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from tabulate import tabulate
from torch import Tensor, nn

from kdbench import store
from kdbench.catalog import Pair
from kdbench.features import Features
from kdbench.registries import MODELS
from kdbench.spec import Recipe

# kdbench.models imports this module (to register the HME), so the training machinery built on
# kdbench.models (engine, sweep) is imported inside the functions that run `kdbench explain`.

# Authors' code: `gumbel_softmax(R, 0.5)` before the temperature-t softmax (no Gumbel noise is drawn).
ROUTING_BASE_TEMPERATURE = 0.5
# R is stored divided by this, so SGD moves it this squared times faster (see the module docstring).
ROUTING_LR_SCALE = 30.0


def expert_block(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3-BN-ReLU-conv3x3-BN-ReLU-maxpool2: one expert (the authors' `conv{level}_{i}`)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=2, stride=2),
    )


class LeafHead(nn.Module):
    """One class's binary subtask head (the authors' `fc1_i` + `fc2_i`): pooled features -> 1 score."""

    def __init__(self, in_channels: int, pool_size: int, hidden: int, dropout: float):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.hidden = nn.Sequential(
            nn.Linear(in_channels * pool_size * pool_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.score = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (hidden vector, score)."""
        hidden = self.hidden(self.pool(x).flatten(1))
        return hidden, self.score(hidden)


def routing_weights(routing_logits: Tensor, temperature: float, hard: bool) -> Tensor:
    """children x parents mixing weights: rows of softmax(R / (0.5 t)), or their arg-max one-hot."""
    if hard:
        return F.one_hot(routing_logits.argmax(dim=1), routing_logits.shape[1]).to(routing_logits.dtype)
    return F.softmax(routing_logits / (ROUTING_BASE_TEMPERATURE * temperature), dim=1)


def row_entropy(weights: Tensor) -> Tensor:
    """Entropy (nats) of each row of a row-stochastic matrix."""
    return -(weights * weights.clamp_min(1e-12).log()).sum(dim=1)


class HME(nn.Module):
    """Hierarchical mixture of experts of KDExplainer (Xue et al., IJCAI 2021); see the module docstring.

    Args:
        num_classes: K, the number of leaves (one binary subtask per class).
        in_chans: image channels.
        experts: experts per level (authors: 2, 4, 8); the leaves add the last routing level.
        channels: output channels of each level's experts (authors: 64, 64, 32).
        mid_channels: channels between an expert's two convolutions (authors: 64).
        pool_size, head_hidden, dropout: leaf heads (authors: 7, 128, 0.15).
        t0: initial routing temperature, t = t0 / epoch in stage 1 (authors: `t: 10`).
        hard_fraction: last fraction of the epochs routed by arg-max (stage 2; authors: 300 of 600).
        routing_lr_scale: R is stored as R / routing_lr_scale (SGD's steps on R grow by its square).

    Shapes on N 32x32 images with the authors' sizes (28x28 gives 14, 7, 3 instead of 16, 8, 4):
        stages  [(N, 2*64, 16, 16), (N, 4*64, 8, 8), (N, 8*32, 4, 4)]  every level's experts, concatenated
        pooled  (N, K*128)  every leaf head's hidden vector, concatenated
        logits  (N, K)      the leaf scores
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        experts: tuple[int, ...] = (2, 4, 8),
        channels: tuple[int, ...] = (64, 64, 32),
        mid_channels: int = 64,
        pool_size: int = 7,
        head_hidden: int = 128,
        dropout: float = 0.15,
        t0: float = 10.0,
        hard_fraction: float = 0.5,
        routing_lr_scale: float = ROUTING_LR_SCALE,
    ):
        super().__init__()
        if len(experts) != len(channels):
            raise ValueError(f"HME: {len(experts)} expert levels but {len(channels)} channel widths")
        if not 0.0 <= hard_fraction < 1.0:
            raise ValueError(f"HME: hard_fraction must be in [0, 1), got {hard_fraction}")
        self.num_classes, self.experts = num_classes, tuple(experts)
        self.t0, self.hard_fraction, self.routing_lr_scale = t0, hard_fraction, routing_lr_scale
        inputs = (in_chans, *channels[:-1])
        self.levels = nn.ModuleList(
            nn.ModuleList(expert_block(c_in, mid_channels, c_out) for _ in range(count))
            for count, c_in, c_out in zip(experts, inputs, channels, strict=True)
        )
        # routing[i]: R / routing_lr_scale of level i, (children, parents); the last children are the leaves
        children = (*experts[1:], num_classes)
        self.routing = nn.ParameterList(
            nn.Parameter(torch.rand(child, parent) / routing_lr_scale)
            for parent, child in zip(experts, children, strict=True)
        )
        self.heads = nn.ModuleList(
            LeafHead(channels[-1], pool_size, head_hidden, dropout) for _ in range(num_classes)
        )
        self.register_buffer("temperature", torch.tensor(float(t0)))
        self.register_buffer("hard_routing", torch.tensor(False))
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """The authors' `_initialize_weights` for the convs (Kaiming-normal, fan_out) and BN (1, 0); the
        linears keep PyTorch's default init (see the module docstring)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # -- schedule ------------------------------------------------------------------------------
    def soft_epochs(self, num_epochs: int) -> int:
        """Epochs of stage 1 (soft routing): the first (1 - hard_fraction) of the run, at least 1."""
        return max(1, round(num_epochs * (1.0 - self.hard_fraction)))

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Engine hook (1-based epoch): t = t0 / epoch in stage 1; arg-max routing in stage 2."""
        soft = self.soft_epochs(num_epochs)
        self.temperature.fill_(self.t0 / min(epoch, soft))
        self.hard_routing.fill_(epoch > soft)

    def routing_logits(self) -> list[Tensor]:
        """R of every routing level, (children, parents)."""
        return [self.routing_lr_scale * scaled for scaled in self.routing]

    def routing_weights(self) -> list[Tensor]:
        """The mixing weights of every routing level, as the forward pass uses them now."""
        temperature, hard = float(self.temperature), bool(self.hard_routing)
        return [routing_weights(logits, temperature, hard) for logits in self.routing_logits()]

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor, features: bool = False) -> Tensor | Features:
        stages = []
        inputs = [x] * self.experts[0]
        for experts, weights in zip(self.levels, self.routing_weights(), strict=True):
            outputs = torch.stack([expert(part) for expert, part in zip(experts, inputs, strict=True)])
            stages.append(outputs.transpose(0, 1).flatten(1, 2))
            # child k's input = sum over parents p of weights[k, p] * output of parent p
            inputs = torch.einsum("kp,pnchw->knchw", weights, outputs).unbind(0)
        heads = [head(part) for head, part in zip(self.heads, inputs, strict=True)]
        logits = torch.cat([score for _, score in heads], dim=1)
        if not features:
            return logits
        pooled = torch.cat([hidden for hidden, _ in heads], dim=1)
        return Features(logits=logits, pooled=pooled, stages=stages)

    def stage_modules(self) -> list[nn.Module]:
        return list(self.levels)

    # -- analysis ------------------------------------------------------------------------------
    @torch.no_grad()
    def soft_routing_weights(self) -> list[Tensor]:
        """Every level's soft weights at the current temperature (in stage 2: the last soft one)."""
        return [routing_weights(r, float(self.temperature), hard=False) for r in self.routing_logits()]

    def routing_entropies(self) -> list[float]:
        """Mean routing-row entropy (nats) per level at the current (in stage 2: last soft) temperature."""
        return [float(row_entropy(weights).mean()) for weights in self.soft_routing_weights()]

    @torch.no_grad()
    def learned_tree(self) -> dict:
        """The arg-max tree: each child's parent per routing level, and the classes under every expert.

        Returns {"parents": [[parent of each child] per routing level],
                 "classes": [[sorted classes under each expert] per expert level]}.
        """
        parents = [r.argmax(dim=1).tolist() for r in self.routing]  # the scale does not move an arg-max
        under = [[leaf] for leaf in range(self.num_classes)]
        classes = []
        for level_parents, count in zip(reversed(parents), reversed(self.experts), strict=True):
            grouped: list[list[int]] = [[] for _ in range(count)]
            for child, parent in enumerate(level_parents):
                grouped[parent].extend(under[child])
            under = [sorted(group) for group in grouped]
            classes.insert(0, under)
        return {"parents": parents, "classes": classes}

    def analysis(self) -> dict:
        """What the engine stores in the run record under "analysis" (JSON-able)."""
        return {
            "routing_levels": [
                f"{parents}->{children}"
                for parents, children in zip(self.experts, (*self.experts[1:], self.num_classes), strict=True)
            ],
            "temperature": float(self.temperature),
            "routing_entropy": self.routing_entropies(),
            "max_entropy": [math.log(parents) for parents in self.experts],
            "routing_weights": [weights.tolist() for weights in self.soft_routing_weights()],
            "tree": self.learned_tree(),
        }


@MODELS.register_module(name="hme")
def hme(num_classes: int, in_chans: int = 3) -> HME:
    """KDExplainer's HME with the authors' CIFAR sizes (experts 2/4/8, channels 64/64/32)."""
    return HME(num_classes, in_chans)


@MODELS.register_module(name="hme_small")
def hme_small(num_classes: int, in_chans: int = 3) -> HME:
    """The HME at a quarter of the authors' width (channels 16/16/8, heads 32): CPU-sized analyses."""
    return HME(num_classes, in_chans, channels=(16, 16, 8), mid_channels=16, head_hidden=32)


# -- kdbench explain ---------------------------------------------------------------------------
# (label, method, hyper-parameter overrides): the paper's three ways to train the HME. Label smoothing
# eps = 0.1 (Szegedy et al., CVPR 2016), the strength the paper compares KD against; KD with kdbench's
# `kd` defaults, which are the authors' (`ResNet50-LTB-ce.yml`: classify 0.1, kd 0.9, T = 4).
VARIANTS: tuple[tuple[str, str, dict], ...] = (
    ("plain", "student", {}),
    ("label smoothing", "student", {"label_smoothing": 0.1}),
    ("KD", "kd", {}),
)

# The default (short) schedule on a 6,000-image subset: `kdbench explain --teacher resnet20` on
# Fashion-MNIST took 7.5 minutes on 2 idle CPU cores, the resnet20 teacher trained on the fly included
# (hme_small: 18 MFLOPs/image at 28x28, trains at ~650 img/s, ~400 under KD from resnet20; the
# authors' width `hme` costs 281 MFLOPs/image, 16x more).
DEFAULT_STUDENT = "hme_small"
DEFAULT_EPOCHS = 4
DEFAULT_SEEDS = 2
DEFAULT_TRAIN_SUBSET = 6000


def explain_recipe(epochs: int = DEFAULT_EPOCHS, train_subset: int | None = DEFAULT_TRAIN_SUBSET) -> Recipe:
    """The HME's recipe: the authors' stage-2 SGD (lr 0.05, momentum 0.9, weight decay 5e-4, batch 128,
    `train_LTB_s2.py` + `train_LTB_ce.yml`) with their lr schedule (no decay within a stage); the test
    split is evaluated after the last epoch only. Half the epochs route softly (stage 1), half hard."""
    return Recipe(
        epochs=epochs,
        batch_size=128,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        lr_decay_epochs=(),
        train_subset=train_subset,
        eval_every=epochs,
    )


@dataclass
class ExplainRequest:
    teacher: str  # a zoo name (trained with `teacher_recipe` and cached) or a checkpoint path
    dataset: str
    teacher_recipe: Recipe
    recipe: Recipe = field(default_factory=explain_recipe)
    student: str = DEFAULT_STUDENT
    seeds: int = DEFAULT_SEEDS
    teacher_arch: str | None = None  # architecture of a checkpoint that does not record it
    data_root: str | None = None
    out: Path = Path("kdbench-results")
    device: str = "cpu"
    force: bool = False
    jobs: int = 1  # runs at once (kdbench.sweep.Sweep)
    threads: int | None = None  # torch threads per run


@dataclass
class ExplainResult:
    dataset: str
    teacher: str  # architecture
    student: str
    classes: tuple[str, ...]
    records: dict[str, list[dict]]  # variant label -> finished run records, one per seed
    failed: list[str]  # "variant seed: error" of runs that failed


def _checkpoint_architecture(path: Path) -> str | None:
    """The architecture a kdbench teacher checkpoint records (None for other checkpoints)."""
    from kdbench.engine import CheckpointError

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt / truncated / not a torch file
        raise CheckpointError(
            f"teacher checkpoint {path} is unreadable ({err}); re-save or retrain it"
        ) from err
    meta = checkpoint.get("kdbench", {}) if isinstance(checkpoint, dict) else {}
    return meta.get("arch")


def resolve_teacher_arch(teacher: str, teacher_arch: str | None) -> tuple[str, Path | None]:
    """(architecture, checkpoint path or None) for `--teacher NAME|PATH`."""
    from kdbench.engine import CheckpointError
    from kdbench.models import TIMM_PREFIX, list_models

    if teacher in list_models() or teacher.startswith(TIMM_PREFIX):
        return teacher, None
    path = Path(teacher)
    if not path.is_file():
        raise CheckpointError(
            f"--teacher {teacher} is neither a model name (kdbench list models) nor a checkpoint file"
        )
    arch = teacher_arch or _checkpoint_architecture(path)
    if arch is None:
        raise CheckpointError(
            f"teacher checkpoint {path} does not record its architecture (not saved by kdbench); "
            "pass --teacher-arch NAME"
        )
    return arch, path


def run_explain(request: ExplainRequest, progress: Callable[[str], None] | None = None) -> ExplainResult:
    """Train the HME plain, with label smoothing and with KD (each a normal, cached run record).

    The teacher is resolved first (a checkpoint is loaded and checked against the dataset; a name is
    trained with `teacher_recipe` and cached, or found in the cache), so a teacher for another dataset or
    class count is refused before any HME trains. `force` re-runs the HME runs, never the teacher.
    """
    from kdbench.sweep import Sweep, SweepRequest

    arch, teacher_path = resolve_teacher_arch(request.teacher, request.teacher_arch)

    def sweep_for(method: str, hp: dict, teacher_path: Path | None, force: bool) -> Sweep:
        return Sweep(
            SweepRequest(
                methods=[method],
                pairs=[Pair(arch, request.student)],
                dataset=request.dataset,
                recipe=request.recipe,
                teacher_recipe=request.teacher_recipe,
                seeds=list(range(request.seeds)),
                hp_overrides={method: hp},
                data_root=request.data_root,
                teacher_path=str(teacher_path) if teacher_path else None,
                out=request.out,
                device=request.device,
                force=force,
                jobs=request.jobs,
                threads=request.threads,
            ),
            progress=progress,
        )

    teacher_sweep = sweep_for("kd", {}, teacher_path, force=False)
    data = teacher_sweep.data_for(request.recipe)
    teacher_path, _ = teacher_sweep.ensure_teacher(arch)
    records: dict[str, list[dict]] = {}
    failed = []
    for label, method, hp in VARIANTS:
        summary = sweep_for(method, hp, teacher_path, force=request.force).run()
        found = [store.find_record(request.out, run_id) for run_id in summary.done + summary.cached]
        records[label] = sorted(found, key=lambda record: record["spec"]["seed"])
        for run_id in summary.failed:
            record = store.find_record(request.out, run_id)
            failed.append(f"{label} seed {record['spec']['seed']}: {record['error']}")
    return ExplainResult(request.dataset, arch, request.student, data.info.classes, records, failed)


# -- the report ----------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(values: list[float], digits: int) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def entropy_ratios(analysis: dict) -> list[float]:
    """H / log(parents) per routing level: 1 = uniform routing, 0 = a hard tree."""
    pairs = zip(analysis["routing_entropy"], analysis["max_entropy"], strict=True)
    return [entropy / maximum for entropy, maximum in pairs]


def normalised_entropy(analysis: dict) -> float:
    """The mean over routing levels of H / log(parents)."""
    ratios = entropy_ratios(analysis)
    return sum(ratios) / len(ratios)


def explain_table(result: ExplainResult) -> pd.DataFrame:
    """Rows: plain / label smoothing / KD. Columns: mean routing entropy (nats) per level, the mean
    normalised entropy, last-epoch top-1 (%); mean ± sample std over seeds."""
    rows = []
    for label, records in result.records.items():
        if not records:
            continue
        analyses = [record["analysis"] for record in records]
        first = analyses[0]
        row = {"variant": label, "n": len(records)}
        for level, (name, maximum) in enumerate(
            zip(first["routing_levels"], first["max_entropy"], strict=True)
        ):
            row[f"H {name} (max {maximum:.2f})"] = _cell([a["routing_entropy"][level] for a in analyses], 3)
        row["H / Hmax"] = _cell([normalised_entropy(a) for a in analyses], 3)
        row["top-1 (%)"] = _cell([record["metrics"]["last_top1"] for record in records], 2)
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def tree_text(analysis: dict, classes: tuple[str, ...]) -> list[str]:
    """The learned tree, one line per expert level: the classes under each expert, "|" between experts."""
    return [
        " | ".join("{" + ", ".join(classes[c] for c in group) + "}" for group in groups)
        for groups in analysis["tree"]["classes"]
    ]


def claim_verdict(result: ExplainResult) -> str:
    """Whether the paper's claim held here: KD lowers the routing entropy more than label smoothing
    does, both measured against the plain HME (mean normalised entropy over levels and seeds)."""
    entropy = {
        label: _mean_std([normalised_entropy(r["analysis"]) for r in records])
        for label, records in result.records.items()
        if records
    }
    if len(entropy) < len(VARIANTS):
        return "Paper's claim not checked: a variant has no finished run (see the failures above)."
    # compared at the 3 decimals printed: a smaller gap is no difference
    plain, smoothing, kd = (round(entropy[label][0], 3) for label in ("plain", "label smoothing", "KD"))
    held = kd < smoothing and kd < plain

    def change(value: float) -> str:
        return "left it unchanged" if value == plain else f"{'lowered' if value < plain else 'raised'} it"

    lines = [
        f"Paper's claim (KD lowers routing entropy more than label smoothing, both vs plain) "
        f"{'HELD' if held else 'DID NOT HOLD'} on {result.dataset}: normalised routing entropy (H / Hmax) "
        f"plain {plain:.3f}; label smoothing {change(smoothing)} ({smoothing:.3f}, {smoothing - plain:+.3f}); "
        f"KD {change(kd)} ({kd:.3f}, {kd - plain:+.3f})."
    ]
    spreads = [std for _, std in entropy.values()]
    if any(math.isnan(std) for std in spreads):
        lines.append("One seed only: no seed-to-seed spread, so no statement about noise.")
    elif abs(kd - smoothing) <= max(entropy["KD"][1], entropy["label smoothing"][1]):
        lines.append("The KD vs label-smoothing gap is within the seed-to-seed std: not conclusive.")
    return "\n".join(lines)


def render_report(result: ExplainResult) -> str:
    table = explain_table(result)
    seeds = max((len(records) for records in result.records.values()), default=0)
    lines = [
        f"KDExplainer on {result.dataset} (teacher {result.teacher}); routing entropy in nats at the last "
        f"soft-routing temperature, top-1 of the last epoch (hard tree) on the test split; "
        f"mean ± std over {seeds} seed(s).",
        tabulate(table, headers="keys", tablefmt="github"),
        "",
        "Learned trees (seed 0): the classes under each expert, level by level ({} = an unused expert)",
    ]
    for label, records in result.records.items():
        if records:
            lines.append(f"  {label}:")
            lines += [
                f"    L{level} {text}"
                for level, text in enumerate(tree_text(records[0]["analysis"], result.classes), 1)
            ]
    lines += ["", *([f"FAILED: {line}" for line in result.failed]), claim_verdict(result)]
    return "\n".join(lines)


def _tree_layout(parents: list[list[int]], first_level: int) -> list[list[float]]:
    """x position of every node, level by level (the image, the expert levels, the leaves), in [0, 1].

    Each level is ordered by its nodes' arg-max parents' positions, so the hard tree's edges do not cross.
    """
    positions = [[0.5], [(i + 0.5) / first_level for i in range(first_level)]]
    for level_parents in parents:
        order = sorted(
            range(len(level_parents)), key=lambda child: (positions[-1][level_parents[child]], child)
        )
        slot = {child: rank for rank, child in enumerate(order)}
        positions.append([(slot[child] + 0.5) / len(level_parents) for child in range(len(level_parents))])
    return positions


def _draw_tree(axis, analysis: dict, classes: tuple[str, ...], title: str) -> None:
    parents = analysis["tree"]["parents"]
    positions = _tree_layout(parents, len(analysis["tree"]["classes"][0]))
    depth = len(positions) - 1
    for x in positions[1]:
        axis.plot([0.5, x], [depth, depth - 1], color="0.6", lw=1, zorder=1)
    for level, weights in enumerate(analysis["routing_weights"], start=1):
        y_parent, y_child = depth - level, depth - level - 1
        for child, row in enumerate(weights):
            for parent, weight in enumerate(row):
                hard = parent == parents[level - 1][child]
                axis.plot(
                    [positions[level][parent], positions[level + 1][child]],
                    [y_parent, y_child],
                    color="tab:blue" if hard else "tab:red",
                    alpha=max(0.05, weight),
                    lw=0.5 + 2.5 * weight,
                    zorder=2 if hard else 1,
                )
    for level, xs in enumerate(positions):
        axis.scatter(xs, [depth - level] * len(xs), s=30 if level < depth else 12, color="k", zorder=3)
    for leaf, x in enumerate(positions[-1]):
        axis.text(x, -0.15, classes[leaf], rotation=90, ha="center", va="top", fontsize=7)
    axis.set_yticks(
        range(depth + 1), ["leaves", *[f"L{level}" for level in range(depth - 1, 0, -1)], "image"]
    )
    axis.set_xticks([])
    axis.set_ylim(-1.5, depth + 0.3)
    axis.set_title(title, fontsize=9)
    for side in ("top", "right", "bottom"):
        axis.spines[side].set_visible(False)


def plot_explain(result: ExplainResult, path: Path) -> Path:
    """One learned tree per variant (seed 0; edge width/opacity = soft routing weight at the last soft
    temperature, blue = the arg-max edge kept in stage 2), and the per-level routing entropy."""
    shown = [(label, records) for label, records in result.records.items() if records]
    figure = Figure(figsize=(4.2 * len(shown), 7), layout="constrained")
    grid = figure.add_gridspec(2, len(shown), height_ratios=(3, 1.4))
    for column, (label, records) in enumerate(shown):
        record = records[0]
        title = (
            f"{label}: top-1 {record['metrics']['last_top1']:.1f}%, "
            f"H/Hmax {normalised_entropy(record['analysis']):.2f}"
        )
        _draw_tree(figure.add_subplot(grid[0, column]), record["analysis"], result.classes, title)
    axis = figure.add_subplot(grid[1, :])
    levels = shown[0][1][0]["analysis"]["routing_levels"]
    width = 0.8 / len(shown)
    for index, (label, records) in enumerate(shown):
        ratios = [entropy_ratios(record["analysis"]) for record in records]
        stats = [_mean_std([per_run[level] for per_run in ratios]) for level in range(len(levels))]
        axis.bar(
            [level + (index - (len(shown) - 1) / 2) * width for level in range(len(levels))],
            [mean for mean, _ in stats],
            width,
            yerr=[0.0 if math.isnan(std) else std for _, std in stats],
            capsize=3,
            label=label,
        )
    axis.set_xticks(range(len(levels)), [f"routing {name}" for name in levels])
    axis.set_ylabel("H / log(parents)")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"KDExplainer HME on {result.dataset}, teacher {result.teacher} (mean ± std over seeds)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def write_report(result: ExplainResult, out: Path) -> list[Path]:
    """Write the report (markdown) and the figure (PNG) under `out`/explain/; return their paths."""
    stem = Path(out) / "explain" / f"{result.dataset}-{result.teacher}-{result.student}"
    report = stem.with_suffix(".md")
    store.atomic_write_bytes(report, (render_report(result) + "\n").encode())
    if not any(result.records.values()):
        return [report]
    return [report, plot_explain(result, stem.with_suffix(".png"))]
