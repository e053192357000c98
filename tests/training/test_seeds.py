"""What a seed varies: every random source of a run, checked where it draws (docs/DESIGN.md, "Protocol").

Each source is checked where it draws (the weights right after construction, the first batch's
order and crop offsets, a training step's negatives, dropout masks and extra views): two seeds give
different draws, the same seed the same draws. Every build first moves torch's global
stream somewhere else, so two builds agree only because the engine seeds what it draws from.
"""

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_bad_input import TINY, run_cli
from test_streaming import image_folder

from kdbench.core.registries import METHODS
from kdbench.core.spec import Recipe, RunSpec
from kdbench.data import (
    SUBSET_SEED,
    PreparedData,
    load_dataset,
    normalize,
    prepare_data,
    split_validation,
    stratified_subset,
)
from kdbench.methods.base import method_class
from kdbench.models import build_model
from kdbench.training import teachers
from kdbench.training.engine import Cohort, Trainer
from kdbench.training.seeds import RANDOM_SOURCES, source_seeds
from kdbench.wrappers.vam import VAMConfig

# crd caps nce_k at what 128 samples allow, and says so
pytestmark = pytest.mark.filterwarnings("ignore:crd")

RECIPE = Recipe(epochs=1, batch_size=16, lr_decay_epochs=())
_elsewhere = itertools.count(1000)  # a fresh global-stream state before every build


@pytest.fixture(scope="module")
def data():
    info, train, test = load_dataset("synthetic", num_train=128, num_test=32, image_size=16)
    return PreparedData(info, train, test, None)


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(1)
    return build_model("resnet14", num_classes=data.info.num_classes, in_chans=data.info.in_chans)


def make_spec(method: str, seed: int, student: str = "resnet8", hp: dict | None = None, **fields) -> RunSpec:
    cls = method_class(method)
    return RunSpec(
        method=method,
        student=student,
        teacher="resnet14" if cls.needs_teacher else None,
        dataset="synthetic",
        hp=cls.resolve_hp(hp),
        recipe=RECIPE,
        seed=seed,
        **fields,
    )


def build(data, teacher, tmp_path, method: str, seed: int, **fields) -> Trainer:
    """The Trainer of a run as the engine builds it, with torch's global stream moved first."""
    torch.manual_seed(next(_elsewhere))
    spec = make_spec(method, seed, **fields)
    needs_teacher = method_class(method).needs_teacher
    return Trainer(
        spec,
        data,
        teacher=teacher if needs_teacher else None,
        device=torch.device("cpu"),
        out=tmp_path / f"{method}-{seed}-{next(_elsewhere)}",
        progress=lambda _: None,
    )


def varies_with_the_seed(draw) -> None:
    """`draw(seed)` -> a list of tensors: equal for one seed drawn twice, different for two seeds."""
    first, again, other = draw(0), draw(0), draw(1)
    assert first, "nothing was drawn"
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True)), "one seed, two draws"
    assert all(not torch.equal(a, b) for a, b in zip(first, other, strict=True)), "two seeds, one draw"


def first_batch(trainer: Trainer):
    return next(iter(trainer.batches()))


def fixed_batch(data):
    """A batch independent of any run's seed: the first 16 training samples, unaugmented."""
    indices = torch.arange(16)
    return normalize(data.train.images[indices], data.info), data.train.labels[indices], indices


# --- construction: the student's, the wrappers' and the methods' initial weights -------------------


def test_the_students_initial_weights_vary_with_the_seed(data, teacher, tmp_path):
    def draw(seed):
        student = build(data, teacher, tmp_path, "student", seed).student
        return [p.detach().clone() for p in student.parameters() if p.dim() > 1]  # conv / linear weights

    varies_with_the_seed(draw)


def test_the_hme_routing_init_varies_with_the_seed(data, teacher, tmp_path):
    """The HME (kdbench/models/hme.py) draws its routing logits U(0, 1) with the student's init."""

    def draw(seed):
        state = build(data, teacher, tmp_path, "student", seed, student="hme_small").student.state_dict()
        return [state[f"routing.{level}"] for level in range(3)]

    varies_with_the_seed(draw)


def _random_module_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The method's trained conv / linear weights (drawn at construction) and CRD's memory banks."""
    weights = {
        f"{name}.weight": module.weight.detach().clone()
        for name, module in trainer.method.named_modules()
        if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.Linear)
        and module.weight.requires_grad
    }
    banks = {name: buffer.clone() for name, buffer in trainer.method.named_buffers() if "memory" in name}
    return weights | banks


def test_every_methods_module_init_varies_with_the_seed(data, teacher, tmp_path):
    checked = set()
    for method in sorted(METHODS.module_dict):
        if not _random_module_weights(build(data, teacher, tmp_path, method, 0)):
            continue  # no module of its own (kd, at, ...) or connectors that are identities here (ab)
        checked.add(method)
        varies_with_the_seed(
            lambda seed, method=method: list(
                _random_module_weights(build(data, teacher, tmp_path, method, seed)).values()
            )
        )
    assert {"cc", "crd", "fitnet", "ft", "ofd", "reviewkd", "semckd", "simkd", "vid"} <= checked


def test_vam_draws_nothing_and_leaves_the_other_draws_of_its_seed(data, teacher, tmp_path):
    """VAM's attention logits start at zero (uniform attention) for every seed, and wrapping draws
    nothing from the global stream: ±VAM runs of one seed start from the same student and modules."""
    vam = VAMConfig()
    for seed in (0, 1):
        plain = build(data, teacher, tmp_path, "fitnet", seed)
        wrapped = build(data, teacher, tmp_path, "fitnet", seed, wrappers={"vam": vam})
        logits = [p for w in wrapped.wrappers for p in w.parameters(wrapped.student)]
        assert logits and all(not p.any() for p in logits)
        assert wrapped.seeds["wrapper_init"] == seed
        unwrapped = {
            name.replace("parametrizations.weight.original", "weight"): value
            for name, value in wrapped.student.state_dict().items()
            if "attention_logits" not in name and not name.endswith("temperature")
        }
        plain_state = plain.student.state_dict()
        assert plain_state.keys() == unwrapped.keys()
        assert all(torch.equal(plain_state[name], unwrapped[name]) for name in plain_state)
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                plain.method.state_dict().values(), wrapped.method.state_dict().values(), strict=True
            )
        )


# --- the batch stream: order and augmentation --------------------------------------------------------


def crop_offsets(images: torch.Tensor, raw: torch.Tensor, info) -> torch.Tensor:
    """The (top, left) crop of each augmented image in the zero-padded raw one (found by matching)."""
    pad, (height, width) = info.crop_padding, raw.shape[-2:]
    padded = F.pad(raw, (pad, pad, pad, pad))
    found = torch.full((len(raw), 2), -1)
    for top, left in itertools.product(range(2 * pad + 1), repeat=2):
        crop = normalize(padded[..., top : top + height, left : left + width].contiguous(), info)
        found[(crop == images).flatten(1).all(dim=1)] = torch.tensor([top, left])
    assert (found >= 0).all(), "an image is no crop of its sample"
    return found


def test_the_batch_order_varies_with_the_seed(data, teacher, tmp_path):
    varies_with_the_seed(lambda seed: [first_batch(build(data, teacher, tmp_path, "student", seed))[2]])


def test_the_crop_offsets_vary_with_the_seed(data, teacher, tmp_path):
    """The first batch's crop offsets by position in the batch (not by sample, which the order moves)."""
    assert data.info.crop_padding > 0

    def draw(seed):
        images, _, indices = first_batch(build(data, teacher, tmp_path, "student", seed))
        return [crop_offsets(images, data.train.images[indices], data.info)]

    varies_with_the_seed(draw)


def test_the_streamed_augmentation_varies_with_the_seed(tmp_path):
    """A streamed split draws one augmentation seed per sample (kdbench/data/streaming.py): each sample's
    crop varies with the run's seed whatever the order."""
    recipe = replace(RECIPE, loader="stream", image_size=32)
    streamed = prepare_data("imagefolder", str(image_folder(tmp_path / "folder")), recipe)

    def draw(seed):
        torch.manual_seed(next(_elsewhere))
        spec = replace(make_spec("student", seed), dataset="imagefolder", recipe=recipe)
        trainer = Trainer(spec, streamed, teacher=None, device=torch.device("cpu"), out=tmp_path)
        by_sample = {}
        for images, _, indices in trainer.batches():
            by_sample.update(zip(indices.tolist(), images, strict=True))
        return [by_sample[i] for i in sorted(by_sample)][:4]

    varies_with_the_seed(draw)


def test_the_data_subset_and_validation_split_are_fixed(data):
    """Every seed trains on the same images: the subset and split come from SUBSET_SEED, not the run."""
    full = load_dataset("synthetic")[1]
    recipe = replace(RECIPE, train_subset=96, val_split=0.25)
    prepared = prepare_data("synthetic", None, recipe)
    for seed in (SUBSET_SEED, SUBSET_SEED + 1):
        train, val = split_validation(stratified_subset(full, 96, seed), 0.25, seed)
        same = torch.equal(prepared.train.images, train.images) and torch.equal(
            prepared.val.images, val.images
        )
        assert same == (seed == SUBSET_SEED)
    assert source_seeds(0, False)["data_subset"] == source_seeds(1, False)["validation_split"] == SUBSET_SEED


# --- training draws: extra views, method sampling, dropout ------------------------------------------


def inputs_of(module: torch.nn.Module, run) -> list[torch.Tensor]:
    """The inputs `module` receives while `run()` runs."""
    seen = []
    handle = module.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_the_extra_views_vary_with_the_seed(data, teacher, tmp_path):
    """MLKD's strong view of a fixed batch, as the first training step draws it: the student's second
    input in that step (its first is the batch itself)."""

    def draw(seed):
        trainer = build(data, teacher, tmp_path, "mlkd", seed)
        trainer.prepare()
        seen = inputs_of(trainer.student, lambda: trainer.step(*fixed_batch(data), "first step"))
        assert len(seen) == 1 + len(trainer.extra_views)
        return seen[1:]

    varies_with_the_seed(draw)


def negatives_drawn(trainer: Trainer, run) -> list[torch.Tensor]:
    """Every CRD negative sample drawn while `run()` runs by runs of `trainer`'s hyper-parameters (the
    method's own sampler, spied on; the cost measurement's copy of the method included)."""
    drawn = []
    method_type = type(trainer.method)
    sampler = method_type.sample_negatives

    def spy(self, indices):
        negatives = sampler(self, indices)
        if self.hp == trainer.method.hp:
            drawn.append(negatives.sort(dim=1).values)  # topk leaves the order of the K unspecified
        return negatives

    method_type.sample_negatives = spy
    try:
        run()
    finally:
        method_type.sample_negatives = sampler
    return drawn


def test_crds_negatives_vary_with_the_seed(data, teacher, tmp_path):
    """The negatives of the first training step on a fixed batch (after `prepare`, as `run` does)."""

    def draw(seed):
        trainer = build(data, teacher, tmp_path, "crd", seed)
        trainer.prepare()
        return negatives_drawn(trainer, lambda: trainer.step(*fixed_batch(data), "first step"))

    varies_with_the_seed(draw)


def test_dropout_masks_vary_with_the_seed(data, teacher, tmp_path):
    """The HME's leaf-head dropout in the first training step: its input replaced by ones, so its
    output's zeros are the mask alone."""

    def draw(seed):
        trainer = build(data, teacher, tmp_path, "student", seed, student="hme_small")
        trainer.prepare()
        dropout = next(m for m in trainer.student.modules() if isinstance(m, torch.nn.Dropout))
        masks = []
        ones = dropout.register_forward_pre_hook(lambda _, args: (torch.ones_like(args[0]),))
        mask = dropout.register_forward_hook(lambda _, __, out: masks.append(out == 0))
        try:
            trainer.step(*fixed_batch(data), "first step")
        finally:
            ones.remove()
            mask.remove()
        return masks

    varies_with_the_seed(draw)


# --- the teacher, cohorts and the record -------------------------------------------------------------


def test_a_teacher_trains_on_its_own_seed_and_records_it(data, tmp_path):
    """A teacher is one fixed checkpoint for every seed of a cell: its spec's seed is 0 whatever the
    students' seeds, and its training draws every source from that seed (a seed-1 teacher differs)."""
    spec = teachers.teacher_spec("resnet8", "synthetic", RECIPE)
    assert spec.seed == 0

    def draw(seed):
        torch.manual_seed(next(_elsewhere))
        out = tmp_path / f"teacher-{seed}-{next(_elsewhere)}"
        path, _ = teachers.train_teacher(replace(spec, seed=seed), data, out, torch.device("cpu"), {}, quiet)
        record = json.loads(next((out / "runs").glob("*.json")).read_text())
        assert record["seeds"] == source_seeds(seed, extra_views=False)
        return list(torch.load(path, weights_only=True)["model"].values())[:1]

    varies_with_the_seed(draw)


def quiet(_line):
    pass


def test_cohort_members_draw_their_own_streams_as_their_solo_runs(data, teacher, tmp_path):
    """A cohort shares one seed and one batch stream by design; each member keeps its own global
    stream: its initial weights and CRD's negatives are those of the same spec trained alone, though
    the member before it draws negatives from its own stream at every step."""

    def solo(seed):
        trainer = build(data, teacher, tmp_path, "crd", seed)
        weights = _random_module_weights(trainer)
        return weights, negatives_drawn(trainer, trainer.run)

    def cohort(seed):
        torch.manual_seed(next(_elsewhere))
        specs = [make_spec("crd", seed, hp={"feat_dim": 64}), make_spec("crd", seed)]
        trained = Cohort(specs, data, teacher=teacher, device=torch.device("cpu"), out=tmp_path / f"c{seed}")
        member = trained.members[1]
        weights = _random_module_weights(member)
        negatives = negatives_drawn(member, trained.run)
        assert all(m.error is None for m in trained.members)
        return weights, negatives

    members = {seed: cohort(seed) for seed in (0, 1)}
    for seed, (member_weights, member_negatives) in members.items():
        solo_weights, solo_negatives = solo(seed)
        assert solo_weights.keys() == member_weights.keys()
        assert all(torch.equal(solo_weights[k], member_weights[k]) for k in solo_weights)
        assert len(solo_negatives) == len(member_negatives) > 1
        assert all(torch.equal(a, b) for a, b in zip(solo_negatives, member_negatives, strict=True))
    assert not torch.equal(members[0][1][1], members[1][1][1])  # the first step's negatives


def test_the_trainer_seeds_its_streams_from_the_recorded_seeds(data, teacher, tmp_path):
    for method, seed in (("student", 3), ("mlkd", 5)):
        trainer = build(data, teacher, tmp_path, method, seed)
        seeds = trainer.seeds
        assert torch.initial_seed() == seeds["student_init"] == seeds["method_sampling"] == seed
        assert trainer.generator.initial_seed() == seeds["batch_order"] == seeds["augmentation"] == seed
        views = trainer.view_generator
        assert (views.initial_seed() if views else None) == seeds["extra_views"]
        assert seeds.keys() == RANDOM_SOURCES.keys()
    views = [source_seeds(seed, extra_views=True)["extra_views"] for seed in range(4)]
    assert len(set(views)) == 4 and not set(views) & {0, 1, 2, 3, None}  # apart from the batch stream


def test_each_record_says_which_seed_drove_which_source(tmp_path, capsys):
    out = tmp_path / "store"
    code, _, err = run_cli(
        capsys, "run", *TINY, "--methods", "mlkd", "--seeds", "2", "--train-subset", "32", "--out", str(out)
    )
    assert code == 0, err
    records = [json.loads(path.read_text()) for path in sorted(Path(out, "runs").glob("*.json"))]
    by_kind = {kind: [r for r in records if r["kind"] == kind] for kind in ("teacher", "distill")}
    assert [r["seeds"] for r in by_kind["teacher"]] == [source_seeds(0, extra_views=False)]
    students = sorted(by_kind["distill"], key=lambda r: r["spec"]["seed"])
    assert [r["seeds"] for r in students] == [source_seeds(seed, extra_views=True) for seed in (0, 1)]
    assert all(students[0]["seeds"][k] != students[1]["seeds"][k] for k in ("student_init", "extra_views"))
