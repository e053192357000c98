"""Heterogeneous pairs: a CNN and a token model (ViT, Swin, MLP-Mixer) through timm
(kdbench/models/timm_adapter.py), the `hetero` group of registry/pairs.json, the pair kinds methods
serve (methods/base.py) and OFA-KD (methods/ofa.py) training such pairs end to end, with VAM where it applies."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.cli import main
from kdbench.core.catalog import registered_pairs
from kdbench.core.errors import ConfigError
from kdbench.core.spec import Recipe, RunSpec
from kdbench.data import PreparedData, load_dataset
from kdbench.methods.base import PairNotSupportedError, method_class, model_family, pair_kind
from kdbench.models import build_model
from kdbench.models.timm_adapter import split_arguments
from kdbench.training.engine import Trainer
from kdbench.wrappers.vam import VAMConfig

TOKEN = "timm:test_vit"  # timm's test ViT: 6 blocks of width 64
CNN = "timm:test_resnet"
TINY_SWIN = "timm:swin_tiny_patch4_window7_224@embed_dim=24@depths=1-1-1-1@num_heads=1-2-4-8"


@pytest.fixture(scope="module")
def data32():
    """64 synthetic 32x32 training images (2 steps of 32), 32 test images."""
    info, train, test = load_dataset("synthetic", num_train=64, num_test=32, image_size=32)
    return PreparedData(info, train, test, None)


def build(name: str, data: PreparedData):
    return build_model(name, num_classes=data.info.num_classes, image_size=data.info.image_size)


def trainer(
    method: str, teacher: str, student: str, data: PreparedData, tmp_path, vam: bool = False
) -> Trainer:
    torch.manual_seed(1)
    teacher_model = build(teacher, data)
    spec = RunSpec(
        method=method,
        student=student,
        teacher=teacher,
        dataset="synthetic",
        wrappers={"vam": VAMConfig()} if vam else {},
        hp=method_class(method).resolve_hp(),
        recipe=Recipe(epochs=1, batch_size=32, lr_decay_epochs=()),
    )
    return Trainer(
        spec, data, teacher=teacher_model, device=torch.device("cpu"), out=tmp_path, progress=lambda _: None
    )


@pytest.mark.parametrize(
    ("name", "family"),
    [
        (TOKEN, "token"),
        (TINY_SWIN, "token"),
        ("timm:gmlp_ti16_224", "token"),
        (CNN, "cnn"),
        ("timm:test_convnext", "cnn"),
    ],
)
def test_a_timm_model_is_a_token_model_when_no_stage_holds_a_convolution(name, family, data32):
    assert model_family(build(name, data32)) == family


def test_zoo_models_are_cnns_and_pairs_have_kinds(data32):
    resnet, vit = build("resnet8", data32), build(TOKEN, data32)
    assert model_family(resnet) == "cnn"
    assert (pair_kind(resnet, vit), pair_kind(vit, resnet), pair_kind(vit, vit), pair_kind(resnet, None)) == (
        "hetero",
        "hetero",
        "token",
        "cnn",
    )


def test_every_hetero_pair_pairs_a_cnn_with_a_token_model(data32):
    pairs = registered_pairs("hetero")
    assert len(pairs) >= 4
    directions = set()
    for pair in pairs:
        teacher, student = build(pair.teacher, data32), build(pair.student, data32)
        assert pair_kind(student, teacher) == "hetero", str(pair)
        directions.add(model_family(teacher))
    assert directions == {"cnn", "token"}  # CNN -> token students and token -> CNN students both


def test_timm_constructor_arguments_follow_the_name():
    assert split_arguments("swin_tiny_patch4_window7_224@embed_dim=24@depths=1-1-1-1@drop_rate=0.5") == (
        "swin_tiny_patch4_window7_224",
        {"embed_dim": 24, "depths": (1, 1, 1, 1), "drop_rate": 0.5},
    )
    model = build_model(TINY_SWIN, num_classes=3, image_size=(32, 32))
    assert model.model.embed_dim == 24 and [len(layer.blocks) for layer in model.model.layers] == [1, 1, 1, 1]
    assert model.architecture == TINY_SWIN  # what a refusal names it by
    with pytest.raises(ConfigError, match="argument 'depths' is not key=value"):
        build_model("timm:test_vit@depths", num_classes=3)
    with pytest.raises(ConfigError, match="timm:test_resnet@bogus=1.*bogus"):
        build_model("timm:test_resnet@bogus=1", num_classes=3)


@pytest.mark.parametrize("vam", [False, True], ids=["plain", "vam"])
def test_ofa_trains_a_cnn_student_from_a_vit_teacher(vam, data32, tmp_path):
    run = trainer("ofa", TOKEN, CNN, data32, tmp_path, vam=vam)
    before = {k: v.clone() for k, v in run.student.state_dict().items()}
    result = run.run()
    assert math.isfinite(result["history"][0]["train_loss"])
    assert any(not torch.equal(before[k], v) for k, v in run.student.state_dict().items())
    assert (result["vam"] is not None) == vam


def test_ofa_trains_a_vit_student_from_a_cnn_teacher_and_vam_refuses_it(data32, tmp_path):
    result = trainer("ofa", "timm:test_convnext", TOKEN, data32, tmp_path).run()
    assert math.isfinite(result["history"][0]["train_loss"])
    # VAM re-weights convolutions, and a token model's stages hold none: that run is refused, with the
    # reason, as a method refuses a pair (recorded as its failure; the sweep's other runs go on)
    with pytest.raises(PairNotSupportedError, match="VAM re-weights convolutions .* token model"):
        trainer("ofa", "timm:test_convnext", TOKEN, data32, tmp_path / "vam", vam=True)


@pytest.mark.parametrize("method", ["kd", "dkd", "crd", "bkd"])
def test_logit_and_embedding_methods_train_a_hetero_pair(method, data32, tmp_path):
    result = trainer(method, TOKEN, CNN, data32, tmp_path).run()
    assert math.isfinite(result["history"][0]["train_loss"])


@pytest.mark.parametrize(
    ("method", "teacher", "student", "reason"),
    [
        ("fitnet", TOKEN, CNN, "fitnet reads CNN stage maps and the teacher timm:test_vit is a token model"),
        ("sp", CNN, TOKEN, "sp reads CNN stage maps and the student timm:test_vit is a token model"),
        ("at", TOKEN, CNN, "at: the student has 4 stages and the teacher 6"),  # its own shape check, first
    ],
)
def test_methods_that_read_cnn_stage_maps_refuse_a_hetero_pair_before_training(
    method, teacher, student, reason, data32, tmp_path
):
    with pytest.raises(PairNotSupportedError) as refused:
        trainer(method, teacher, student, data32, tmp_path)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(reason)
    if "reads CNN stage maps" in reason:
        assert message.endswith("it serves cnn pairs, not hetero")


def test_list_methods_verbose_shows_the_pair_kinds_each_serves(capsys):
    assert main(["list", "methods", "--verbose"]) == 0
    lines = capsys.readouterr().out.splitlines()

    def kinds(name: str) -> str:
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} "))
        return (
            next(line for line in lines[start + 1 :] if "pair kinds:" in line).split("pair kinds:")[1].strip()
        )

    assert kinds("ofa") == "cnn, hetero, token" and kinds("kd") == "cnn, hetero, token"
    assert kinds("fitnet") == "cnn" and kinds("at") == "cnn"
