"""--precision and --compile run on CPU (autocast and torch.compile exist there) and are recorded."""

import math

import pytest
from conftest import make_trainer

from kdbench.core.spec import RunSpec


def run(tiny_data, tmp_path, method="kd", **spec_fields):
    trainer = make_trainer(tiny_data, tmp_path, method, **spec_fields)
    return trainer.spec, trainer, trainer.run()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_changes_the_numbers(tiny_data, tmp_path, precision):
    _, _, fp32 = run(tiny_data, tmp_path / "fp32")
    spec, trainer, mixed = run(tiny_data, tmp_path / precision, precision=precision)
    assert math.isfinite(mixed["history"][0]["train_loss"])
    assert mixed["history"][0]["train_loss"] != fp32["history"][0]["train_loss"]  # autocast really ran
    assert (trainer.scaler is not None) == (precision == "fp16")  # a gradient scaler for fp16 only
    assert spec.to_dict()["precision"] == precision


def test_precision_and_compile_are_in_the_run_id_but_defaults_keep_old_ids():
    base = RunSpec("kd", "resnet8", "synthetic")
    assert (
        len(
            {
                base.run_id,
                RunSpec("kd", "resnet8", "synthetic", precision="bf16").run_id,
                RunSpec("kd", "resnet8", "synthetic", compile=True).run_id,
            }
        )
        == 3
    )
    assert base.run_id == "1971671ee8bd"  # the id this spec had before the fields existed


def test_an_unknown_precision_is_refused():
    from kdbench.core.errors import ConfigError

    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, fp16, got 'fp8'"):
        RunSpec("kd", "resnet8", "synthetic", precision="fp8")


@pytest.mark.slow
def test_compile_trains_to_the_eager_numbers_within_float_noise(tiny_data, tmp_path):
    _, _, eager = run(tiny_data, tmp_path / "eager", method="student")
    _, _, compiled = run(tiny_data, tmp_path / "compiled", method="student", compile=True)
    assert compiled["history"][0]["train_loss"] == pytest.approx(eager["history"][0]["train_loss"], rel=1e-3)
