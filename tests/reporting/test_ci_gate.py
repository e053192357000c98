"""CI's statistical gate covers the catalog: the ci preset trains every registered method, and the
committed baseline (results/baselines/ci.json) holds one cell for each configuration the preset
trains today, so a new method, a changed default or a new spec field cannot pass the gate unseen.
Regenerate the baseline as README "CI tiers" says."""

import json
from pathlib import Path

from kdbench import reporting
from kdbench.core.registries import METHODS
from kdbench.execution import config
from kdbench.execution.sweep import fit_to_data, specs_for_pair

BASELINE = Path(__file__).resolve().parents[2] / "results" / "baselines" / "ci.json"


def _configuration(spec: dict) -> str:
    """A cell's configuration: the spec without its seed and its teacher's checkpoint."""
    return json.dumps({k: v for k, v in spec.items() if k not in ("seed", "teacher_sha256")}, sort_keys=True)


def test_the_ci_preset_trains_every_registered_method():
    request = config.build_request(config.resolve(preset="ci"))
    assert set(request.methods) == {name for name in METHODS.module_dict if "+" not in name}


def test_the_ci_baseline_holds_every_configuration_of_the_ci_preset():
    resolved = config.resolve(preset="ci")
    request = config.prepare(config.build_request(resolved), resolved, write=False)
    request = fit_to_data(request, progress=print)  # the data's identity, as a sweep puts it in each spec
    pair = request.pairs[0]
    specs = specs_for_pair(request, pair, None) + specs_for_pair(request, pair, "0" * 64)
    baseline = reporting.read_baseline(BASELINE)
    assert {_configuration(cell["config"]) for cell in baseline["cells"]} == {
        _configuration(spec.to_dict()) for spec in specs
    }
    assert all(cell["n"] >= 3 for cell in baseline["cells"])
