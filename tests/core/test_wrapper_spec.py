"""Wrappers as data in a run spec (kdbench/core/spec.py, kdbench/wrappers/base.py): run ids and record
specs as they were before wrappers were data, a wrapper's config read back through its config class, and
names that would clash with a spec's or a record's keys refused at registration."""

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

from kdbench.core.errors import ConfigError
from kdbench.core.registries import WRAPPERS, RegistrationError
from kdbench.core.spec import Recipe, RunSpec
from kdbench.wrappers import build_wrappers
from kdbench.wrappers.base import StudentWrapper, register_wrapper
from kdbench.wrappers.vam import VAM, VAMConfig

RECIPE = Recipe(epochs=2, batch_size=32, lr=0.01, lr_decay_epochs=(1,), train_subset=256)
KD = {
    "teacher": "resnet20",
    "teacher_sha256": "a" * 64,
    "seed": 1,
    "hp": {"temperature": 4.0},
    "recipe": RECIPE,
}
# run ids computed by the code before wrappers were data (commit 9c1e908, where RunSpec had a `vam` field)
PINNED = [
    (RunSpec("student", "resnet8", "synthetic", recipe=RECIPE), "b2e018b3b16e"),
    (RunSpec("kd", "resnet8", "synthetic", **KD), "c9cb4b2fde54"),
    (RunSpec("kd", "resnet8", "synthetic", **KD, wrappers={"vam": VAMConfig()}), "80da56ac47e7"),
    (
        RunSpec(
            "student",
            "resnet8",
            "fashion-mnist",
            wrappers={"vam": VAMConfig(groups=2, lr_scale=5.0)},
            precision="bf16",
            plugin_sha256={"p.py": "b" * 64},
        ),
        "fc57481d1f30",
    ),
    (RunSpec("teacher", "resnet20", "synthetic", kind="teacher"), "8ef228861f24"),
]
VAM_DEFAULTS = {
    "entropy_weight": 0.01,
    "groups": 4,
    "last_stages": 1,
    "lr_scale": 10.0,
    "t0": 1.0,
    "t_min": 0.1,
}


@pytest.mark.parametrize(("spec", "run_id"), PINNED, ids=["student", "kd", "kd+vam", "vam2-bf16", "teacher"])
def test_run_ids_are_those_of_the_code_before_wrappers_were_data(spec, run_id):
    assert spec.run_id == run_id
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_a_record_spec_holds_vam_under_its_name_and_null_without_it():
    """What the code before wrappers were data wrote in every record's "spec" (json.dumps, sort_keys)."""
    plain = RunSpec("kd", "resnet8", "synthetic", **KD).to_dict()
    wrapped = RunSpec("kd", "resnet8", "synthetic", **KD, wrappers={"vam": VAMConfig()}).to_dict()
    assert "wrappers" not in plain and plain["vam"] is None
    assert wrapped["vam"] == VAM_DEFAULTS
    assert set(wrapped) == set(plain) == set(RunSpec.__dataclass_fields__) - {"wrappers"} | {"vam"}


def test_an_old_record_spec_loads_with_its_wrapper_config():
    spec = dict(RunSpec("kd", "resnet8", "synthetic", **KD).to_dict(), vam=dict(VAM_DEFAULTS, groups=2))
    loaded = RunSpec.from_dict(spec)
    assert loaded.wrappers == {"vam": VAMConfig(groups=2)}
    assert loaded.label.startswith("kd +VAM ")
    assert [type(wrapper) for wrapper in build_wrappers(loaded)] == [VAM]
    assert RunSpec.from_dict(dict(spec, vam=None)).wrappers == {}


@pytest.mark.parametrize(
    ("key", "value", "fragments"),
    [
        ("toy", {"scale": 2.0}, ["unknown spec field(s) ['toy']", "registered student wrapper", "--plugin"]),
        ("wrappers", {"vam": {}}, ["unknown spec field(s) ['wrappers']"]),
        ("vam", {"groups": "4"}, ["vam field groups must be a whole number"]),
        ("vam", {"grops": 4}, ["unknown vam field(s) ['grops']"]),
        ("vam", [4], ["vam must be a mapping"]),
        ("vam", {"groups": 0}, ["vam-groups must be a whole number >= 1"]),
    ],
    ids=[
        "unknown-wrapper",
        "nested-wrappers",
        "wrong-type",
        "unknown-field",
        "not-a-mapping",
        "out-of-range",
    ],
)
def test_a_hostile_wrapper_key_is_one_config_error_naming_it(key, value, fragments):
    spec = dict(RunSpec("kd", "resnet8", "synthetic", **KD).to_dict(), **{key: value})
    with pytest.raises(ConfigError) as caught:
        RunSpec.from_dict(spec)
    message = str(caught.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message


@dataclass(frozen=True)
class _Settings:
    scale: float = 1.0


@pytest.mark.parametrize("name", ["seed", "hp", "metrics", "history", "vam"])
def test_a_wrapper_named_as_a_spec_or_record_key_is_refused(name):
    cls = type("Clash", (StudentWrapper,), {"name": name, "config_class": _Settings})
    with pytest.raises(RegistrationError, match=f"'{name}'"):
        register_wrapper(cls)
    assert WRAPPERS.module_dict.get(name) in (None, VAM)


def test_a_wrapper_without_a_frozen_config_class_is_refused():
    for attributes in ({}, {"config_class": dict}, {"config_class": dataclass(type("Loose", (), {}))}):
        cls = type("NoConfig", (StudentWrapper,), {"name": "no_config", **attributes})
        with pytest.raises(RegistrationError, match="no config_class"):
            register_wrapper(cls)
    assert "no_config" not in WRAPPERS.module_dict


def test_reading_a_spec_with_vam_imports_no_torch():
    """Reports read records without torch: the built-in wrappers register from torch-free modules."""
    spec = RunSpec("kd", "resnet8", "synthetic", **KD, wrappers={"vam": VAMConfig()}).to_dict()
    code = (
        "import json, sys\nfrom kdbench.core.spec import RunSpec\n"
        f"spec = RunSpec.from_dict(json.loads({json.dumps(json.dumps(spec))}))\n"
        "print(spec.run_id, sorted(spec.wrappers), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["80da56ac47e7", "['vam']", "False"]


def test_a_plugin_wrapper_not_loaded_here_is_read_as_its_mapping_in_a_spec_that_uses_plugins():
    """A report reads records without running plugins: the wrapper of a plugin the spec names stays data,
    with the same run id; a spec that uses no plugin may name only registered wrappers."""
    with_plugin = dict(
        RunSpec("kd", "resnet8", "synthetic", **KD, plugin_sha256={"toy.py": "c" * 64}).to_dict()
    )
    spec = RunSpec.from_dict(dict(with_plugin, toy={"scale": 2.0, "sizes": [1, 2]}))
    assert spec.wrappers == {"toy": {"scale": 2.0, "sizes": [1, 2]}} and spec.label.startswith("kd +TOY ")
    assert RunSpec.from_dict(spec.to_dict()).run_id == spec.run_id
    with pytest.raises(ConfigError, match=r"unknown spec field\(s\) \['toy'\]"):
        RunSpec.from_dict(dict(with_plugin, toy={"nested": {"a": 1}}))


def test_a_wrapper_outside_kdbench_cannot_put_its_key_in_every_spec():
    """in_every_spec would add a null key to every spec, so every run id would change while it is loaded."""
    cls = type("Everywhere", (StudentWrapper,), {"name": "everywhere", "config_class": _Settings})
    cls.in_every_spec = True
    with pytest.raises(RegistrationError, match="in_every_spec"):
        register_wrapper(cls)
    assert "everywhere" not in WRAPPERS.module_dict
    assert PINNED[0][0].run_id == PINNED[0][1]
