"""Every method is registered under its name with its published defaults; hyper-parameters resolve
(defaults < published < overrides, converted to their default's type) and unknown keys are refused."""

from __future__ import annotations

import pytest

import kdbench.methods  # noqa: F401  (registers every method)
from kdbench.core.registries import METHODS, lookup
from kdbench.methods.ab import AB
from kdbench.methods.base import Method
from kdbench.methods.fsp import FSP
from kdbench.methods.ft import FT
from kdbench.methods.reviewkd import ReviewKD

FOUNDATION = ("student", "kd", "fitnet", "at", "crd")
METHOD_NAMES = ("sp", "cc", "vid", "rkd", "pkt", "nst", "dkd", "dist")


def test_the_four_methods_are_registered_with_their_published_defaults():
    expected = {
        "simkd": {"ce_weight": 0.0, "kd_weight": 0.0, "method_weight": 1.0, "factor": 2},
        "semckd": {"ce_weight": 1.0, "kd_weight": 1.0, "method_weight": 400.0, "factor": 4, "soft": 1.0},
        "ctkd": {"ce_weight": 0.1, "kd_weight": 0.0, "method_weight": 0.9, "t_start": 1.0, "t_range": 20.0},
        "mlkd": {"ce_weight": 0.1, "kd_weight": 0.0, "method_weight": 0.9, "temperature": 4.0},
    }
    for name, values in expected.items():
        hp = METHODS.get(name).resolve_hp()
        assert {key: hp[key] for key in values} == values, name
    assert METHODS.get("mlkd").extra_views == ("strong",)
    assert all(not METHODS.get(name).extra_views for name in ("simkd", "semckd", "ctkd", "kd"))


def test_registry_finds_the_five_foundation_methods():
    for name in FOUNDATION:
        method_class = lookup(METHODS, "method", name)
        assert issubclass(method_class, Method) and method_class.name == name


def test_resolve_hp_layers_defaults_and_refuses_unknown_keys():
    kd = lookup(METHODS, "method", "kd")
    assert {k: kd.resolve_hp()[k] for k in ("ce_weight", "kd_weight", "method_weight", "temperature")} == {
        "ce_weight": 0.1,
        "kd_weight": 0.9,
        "method_weight": 0.0,
        "temperature": 4.0,
    }
    assert kd.resolve_hp({"temperature": 2})["temperature"] == 2.0
    with pytest.raises(ValueError, match="nce_kk"):
        lookup(METHODS, "method", "crd").resolve_hp({"nce_kk": 10})


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("student", {"ce_weight": 1.0, "kd_weight": 0.0}),
        ("fitnet", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 100.0, "hint_layer": 2}),
        ("at", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 1000.0, "p": 2.0}),
        (
            "crd",
            {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 0.8, "feat_dim": 128, "nce_k": 16384},
        ),
    ],
)
def test_published_defaults(name, published):
    hp = lookup(METHODS, "method", name).resolve_hp()
    assert {key: hp[key] for key in published} == published


def test_methods_are_registered():
    for name, cls in {"ab": AB, "ft": FT, "fsp": FSP, "reviewkd": ReviewKD}.items():
        assert METHODS.get(name) is cls and cls.name == name


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_is_registered_under_its_name(name):
    cls = METHODS.get(name)
    assert issubclass(cls, Method) and cls.name == name and cls.needs_teacher


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sp", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 3000.0}),
        ("cc", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 0.02, "embed_dim": 128}),
        ("vid", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 1.0, "init_pred_var": 5.0}),
        ("rkd", {"method_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}),
        ("pkt", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 30000.0}),
        ("nst", {"ce_weight": 1.0, "kd_weight": 0.0, "method_weight": 50.0}),
        ("dkd", {"ce_weight": 1.0, "temperature": 4.0, "alpha": 1.0, "beta": 8.0, "warmup_epochs": 20}),
        ("dist", {"ce_weight": 1.0, "kd_weight": 0.0, "temperature": 4.0, "beta": 2.0, "gamma": 2.0}),
    ],
)
def test_published_defaults_resolve(name, expected):
    hp = METHODS.get(name).resolve_hp()
    assert {key: hp[key] for key in expected} == expected
    assert hp["logit_std"] is False


def test_resolve_hp_casts_overrides_and_refuses_unknown_keys():
    dkd = METHODS.get("dkd")
    hp = dkd.resolve_hp({"beta": "6", "warmup_epochs": "5", "logit_std": True})
    assert hp["beta"] == 6.0 and isinstance(hp["beta"], float)
    assert hp["warmup_epochs"] == 5 and hp["logit_std"] is True
    with pytest.raises(ValueError, match="no hyper-parameter 'gamma'"):
        dkd.resolve_hp({"gamma": 1.0})
