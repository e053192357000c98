"""One settings schema (kdbench/execution/settings.py): every CLI flag of every command, every sweep key,
the API's keywords and the requests' setting fields come from it, and nothing is declared beside it."""

import argparse
import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

import kdbench
from kdbench.cli import build_parser
from kdbench.core.spec import Recipe
from kdbench.execution import config, settings
from kdbench.execution.settings import FIELD, SETTINGS
from kdbench.execution.sweep import SweepRequest
from kdbench.execution.worker_settings import WorkerSettings
from kdbench.explain import ExplainRequest

PACKAGE = Path(kdbench.__file__).parent


def _commands(parser: argparse.ArgumentParser, prefix: str = ""):
    """(schema command, its parser) for every command, `teacher train` as `teacher`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                if nested:
                    yield from _commands(sub, name)
                else:
                    yield prefix or name, sub


def undeclared_flags(parser: argparse.ArgumentParser) -> list[str]:
    """Every flag (and positional) of every command that the schema does not declare for it, spelled as
    the schema spells it, and every setting the schema gives a command that its parser lacks."""
    problems = []
    for command, sub in _commands(parser):
        given = set()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            setting = SETTINGS.get(action.dest)
            spelled = action.option_strings[0] if action.option_strings else action.dest
            if setting is None or setting.flag_of(command) != spelled or len(action.option_strings) > 1:
                problems.append(f"{command} {spelled}: not declared in kdbench/execution/settings.py")
            given.add(action.dest)
        problems += [
            f"{command} {setting.flag_of(command)}: declared but not a flag of the command"
            for setting in settings.for_command(command)
            if setting.name not in given
        ]
    return problems


def test_every_flag_of_every_command_comes_from_the_schema():
    assert undeclared_flags(build_parser()) == []


def test_a_stray_flag_is_caught():
    """The check above fails on a flag added beside the schema, and on a flag spelled another way."""
    parser = build_parser()
    report = dict(_commands(parser))["report"]
    report.add_argument("--stray", help="declared here only")
    report.add_argument("--no-published-rows", dest="no_published", action="store_true")
    assert undeclared_flags(parser) == [
        "report --stray: not declared in kdbench/execution/settings.py",
        "report --no-published-rows: not declared in kdbench/execution/settings.py",
    ]


def test_the_sweep_keys_are_the_schemas():
    swept = settings.sweep_settings()
    assert set(config.KEYS) == set(swept)
    assert {key: text for key, text in config.KEYS.items()} == {key: s.help for key, s in swept.items()}
    assert set(config.MAPPING_KEYS) == {key for key, s in swept.items() if s.mapping}
    # the user-facing spellings that differ from the setting's name (existing sweep files use them)
    assert swept["log"].name == "trackers" and swept["custom_imports"].name == "plugins"


def _keys_read(function) -> set[str]:
    """The string keys `function` reads from its `config` argument (config["x"], config.get("x"))."""
    found = set()
    for node in ast.walk(ast.parse(inspect.getsource(function))):
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "config":
            key = node.slice
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and getattr(node.func.value, "id", None) == "config"
            and node.func.attr == "get"
        ):
            key = node.args[0]
        else:
            continue
        if isinstance(key, ast.Constant):
            found.add(key.value)
    return found


@pytest.mark.parametrize(
    "function", [config.build_request, config.prepare, config._with_data_choices, config._max_runs]
)
def test_a_resolved_configuration_is_read_by_the_schemas_keys_only(function):
    assert _keys_read(function) <= set(config.KEYS)


def test_every_flag_field_is_a_field_of_its_sweep_keys_mapping():
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    mappings = {key for key, s in settings.sweep_settings().items() if s.mapping}
    for setting in SETTINGS.values():
        paths = [*setting.into, *(p for own in setting.per_command.values() for p in own.get("into", ()))]
        assert (setting.kind == FIELD) == bool(setting.into), setting.name
        for key, name in paths:
            assert key in mappings, (setting.name, key)
            if key in ("recipe", "teacher_recipe"):
                assert name in recipe_fields, (setting.name, name)


def test_the_api_takes_the_sweep_keys():
    parameters = inspect.signature(kdbench.run).parameters
    assert set(parameters) - {"config", "progress"} == set(config.KEYS)
    assert "keys" not in parameters  # every keyword is named


@pytest.mark.parametrize("request_class", [SweepRequest, ExplainRequest, WorkerSettings])
def test_request_fields_of_settings_come_from_the_schema(request_class):
    """A request's setting fields are added by `with_settings` with the schema's type and default; none is
    declared again by hand (a name of settings.SWEEP_REQUEST among its own fields)."""
    fields = {f.name: f for f in dataclasses.fields(request_class)}
    own = set(fields) - set(request_class.__settings__)
    assert not own & set(settings.SWEEP_REQUEST), own & set(settings.SWEEP_REQUEST)
    for name in request_class.__settings__:
        expected = SETTINGS[name].dataclass_field()
        assert fields[name].type == SETTINGS[name].annotation
        assert (fields[name].default, fields[name].default_factory) == (
            expected.default,
            expected.default_factory,
        ), name


def test_a_setting_declared_by_hand_beside_the_schema_is_refused():
    with pytest.raises(TypeError, match="Twin.device is a setting"):

        @settings.with_settings("device")
        class Twin:
            device: str = "cuda"


def test_a_sweeps_settings_reach_its_workers_and_explains_its_sweeps():
    request = SweepRequest([], [], "synthetic", Recipe(), Recipe(), threads=3, trackers=("aim",), jobs=4)
    worker = WorkerSettings(**settings.carried(request, WorkerSettings))
    assert (worker.threads, worker.trackers, worker.out) == (3, ("aim",), Path(settings.DEFAULT_STORE))
    assert set(WorkerSettings.__settings__) <= set(SweepRequest.__settings__)
    assert set(ExplainRequest.__settings__) <= set(SweepRequest.__settings__)


def _string_constants(text: str):
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def test_the_default_store_is_written_once():
    holders = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        for value in _string_constants(path.read_text())
        if value == "kdbench-results"
    ]
    assert holders == ["execution/settings.py"]


def test_commands_resolve_through_config_resolve_alone():
    """run, teacher, explain and bench take their presets, recipes and parallelism from
    config.resolve (kdbench/cli/common.py `resolve`), not from helpers of their own."""
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, (ast.Attribute, ast.Name)):
                names.add(node.attr if isinstance(node, ast.Attribute) else node.id)
        assert not names & {"preset", "default_jobs", "explain_recipe", "with_epochs"}, path.name
    for command in settings.PRESET_KEYS:
        source = (PACKAGE / "cli" / f"{command}.py").read_text()
        assert f'common.resolve(args, "{command}")' in source, command


def test_explain_and_teacher_resolve_their_own_defaults_over_the_preset():
    parser = build_parser()
    explain = config.resolve(
        None,
        settings.flag_layer(vars(parser.parse_args(["explain", "--teacher", "x"])), "explain"),
        None,
        "explain",
    )
    assert (explain["dataset"], explain["seeds"], explain["student"]) == ("fashion-mnist", 2, "hme_small")
    assert explain["recipe"] == {"epochs": 4, "train_subset": 6000}  # not the preset's student recipe
    values = vars(
        parser.parse_args(["teacher", "train", "resnet8", "--teacher-epochs", "2", "--train-subset", "0"])
    )
    teacher = config.resolve(None, settings.flag_layer(values, "teacher"), None, "teacher")
    quick = Recipe.from_dict(config.catalog.preset("quick")["teacher_recipe"])
    expected = dataclasses.replace(quick.with_epochs(2), train_subset=None)
    assert Recipe.from_dict(teacher["teacher_recipe"]) == expected
