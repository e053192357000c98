"""What every command shares: the parser with one-line errors, its flags read from the settings schema
(kdbench/execution/settings.py), the one path a command's configuration is resolved by, and the board
printed by `run` and `report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdbench.core.errors import ConfigError
from kdbench.execution import settings
from kdbench.execution.settings import FLAG, PRESET_KEYS, Setting


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (`kdbench: error: argument --epochs: ...`), exit 2."""

    def error(self, message: str):
        self.exit(2, f"kdbench: error: {message}\n")


def _argparse_type(parse):
    """A schema parser as argparse's type: its ConfigError is argparse's one-line error."""

    def convert(text: str):
        try:
            return parse(text)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = parse.__name__
    return convert


def _help(setting: Setting, command: str) -> str:
    """The setting's help for `command`, with the default it resolves to where the text does not say."""
    text = setting.get("help", command)
    default = setting.get("default", command)
    if default is None or default is False or "default" in text:
        return text
    shown = {True: "on"}.get(default, default)
    shown = ",".join(map(str, shown)) if isinstance(shown, tuple) else shown
    return f"{text} (default: {shown})"


def add_settings(parser: argparse.ArgumentParser, command: str) -> None:
    """`command`'s flags, as the schema declares them. A command that resolves its configuration
    (settings.PRESET_KEYS) leaves an unset flag None, so the preset and the sweep file show through;
    its defaults come from `resolve`."""
    resolves = command in PRESET_KEYS
    for setting in settings.for_command(command):
        options: dict = {"help": _help(setting, command)}
        if setting.get("metavar", command):
            options["metavar"] = setting.get("metavar", command)
        if setting.nargs:
            options["nargs"] = setting.nargs
        if setting.action:
            options["action"] = setting.action
        parse = setting.get("parse", command)
        if parse:
            options["type"] = _argparse_type(parse)
        if setting.choices:
            options["choices"] = setting.choices
        if setting.get("required", command):
            options["required"] = True
        options["default"] = _default(setting, command, resolves)
        if setting.positional:
            parser.add_argument(setting.name, **options)
        else:
            parser.add_argument(setting.flag_of(command), dest=setting.name, **options)


def _default(setting: Setting, command: str, resolves: bool):
    """argparse's default: none where `resolve` fills it in, else the schema's."""
    if setting.action == "append":
        return []
    if resolves and setting.kind != FLAG:
        return None
    default = setting.get("default", command)
    return False if default is None and setting.action == "store_true" else default


def resolve(args: argparse.Namespace, command: str) -> dict:
    """THE configuration of a command (run, teacher, explain, bench): its flags as a layer over the sweep
    file, the preset and the schema's defaults (kdbench/execution/config.py `resolve`)."""
    from kdbench.execution import config

    values = vars(args)
    layer = settings.flag_layer(values, command)
    return config.resolve(values.get("config"), layer, values.get("preset"), command)


def command_parser(
    commands, name: str, help_text: str, epilog: str | None, flags_of: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand's parser with its examples kept as written, the flags of command `flags_of` (default:
    `name`; "" for a group of subcommands) from the schema."""
    parser = commands.add_parser(
        name, help=help_text, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if flags_of != "":
        add_settings(parser, flags_of or name)
    return parser


def print_board(out: Path, fmt: str, dataset: str | None = None, published: bool = True) -> bool:
    from kdbench import reporting
    from kdbench.core import store

    records = store.load_records(out)
    if not records:
        print(f"no run records under {out}/runs; run `kdbench run --out {out}` first", file=sys.stderr)
        return False
    board = reporting.leaderboard(records, reporting.load_published() if published else None, dataset=dataset)
    print(reporting.render(board, fmt))
    return True
