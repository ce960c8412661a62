"""The `fedbigbigan` entry point: it only finds each package's commands and
dispatches to them, plus the run-config options several commands share.

Each package declares its own commands as entry points in the group
`fedbigbigan.commands` (pyproject.toml): a hospital's in `client/cli.py`, a
coordinator's in `server/cli.py`, a researcher's in `simulations/`. This module
names none of them, so `common` imports nothing above it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import tomllib

from common.config import ConfigError, RunConfig

GROUP = "fedbigbigan.commands"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

DESCRIPTION = """Federated BigBiGAN features + a linear head for COVID-19 vs other
pneumonia on chest CT (Song et al. 2020), with Flower and secure aggregation.
Hospitals: ingest, doctor, site-worker, predict, reconstruct, privacy-audit, extract.
Coordinators: pki, report. Researchers: simulate, phantoms, scenarios,
train-central. `fedbigbigan COMMAND --help` for each."""


@dataclass(frozen=True)
class Command:
    """One `fedbigbigan` subcommand: its one-line help, its options, and what it
    runs. `run` gets the parsed options, with `usage_error(message)` among them
    (the top-level parser's error: usage, the message, exit status 2)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


def declared_commands() -> list[EntryPoint]:
    """The group's entry points.

    From a checkout (an editable install) pyproject.toml itself is read: the
    installed metadata is only rewritten by a reinstall, so it may lack a command
    added since; an installed wheel has no pyproject.toml and its metadata is
    the same table."""
    if PYPROJECT.is_file():
        project = tomllib.loads(PYPROJECT.read_text())["project"]
        table = project["entry-points"][GROUP]
        return [EntryPoint(name, value, GROUP) for name, value in table.items()]
    return list(entry_points(group=GROUP))


USERS = ("client", "server", "simulations")  # the order `--help` lists them in


def load_commands() -> dict[str, Command]:
    """Command name -> Command, every declared one loaded: a hospital's first,
    then a coordinator's, then a researcher's, by name within each (the same
    order from pyproject.toml and from installed metadata, which sorts them)."""

    def order(point: EntryPoint) -> tuple[int, str]:
        package = point.module.split(".")[0]
        return (USERS.index(package) if package in USERS else len(USERS), point.name)

    commands = {}
    for point in sorted(declared_commands(), key=order):
        command = point.load()
        if not isinstance(command, Command):
            raise TypeError(f"entry point {point.name} = {point.value}: not a Command")
        commands[point.name] = command
    return commands


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help text followed by the option's default, where it has a real one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or not text:
            return text
        if "%(default)" in text or "default:" in text:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Every command's --help shows each option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    """The `fedbigbigan` parser with every command (default: every declared one)."""
    parser = _Parser(prog="fedbigbigan", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, command in (load_commands() if commands is None else commands).items():
        command_parser = sub.add_parser(
            name, help=command.help, description=command.description
        )
        command.add_arguments(command_parser)
        command_parser.set_defaults(run=command.run, usage_error=parser.error)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`fedbigbigan COMMAND ...`: parse, set up logging, run the command."""
    args = build_parser().parse_args(argv)
    configured = bool(logging.getLogger().handlers)  # e.g. pytest's own
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not configured:
        # Flower's own handler prints its INFO and above; its DEBUG lines (the
        # secure rounds' stages) reach the run's log through ours
        logging.getLogger().handlers[0].addFilter(
            lambda r: not (r.name.startswith("flwr") and r.levelno >= logging.INFO)
        )
    try:
        return args.run(args)
    except ConfigError as err:  # one line per problem, no traceback
        print_error(err)
        return 2


def print_error(err: Exception) -> None:
    """`error: ...` on stderr, one line per line of the message."""
    for line in str(err).splitlines():
        print(f"error: {line}", file=sys.stderr)


def default_config() -> RunConfig:
    """pyproject's run config when run from a checkout, else the typed defaults."""
    if PYPROJECT.is_file():
        from flwr.common.config import flatten_dict

        table = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
        return RunConfig.from_flat(flatten_dict(table))
    return RunConfig()


def parse_overrides(items: list[str]) -> dict:
    """`KEY=VALUE` run-config overrides, each value read as TOML."""
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        value = tomllib.loads(f"v = {raw}")["v"] if raw else ""
        out[key.strip()] = value
    return out


def add_run_config(parser: argparse.ArgumentParser) -> None:
    """`--run-config KEY=VALUE ...` of the commands that read the run config."""
    parser.add_argument(
        "--run-config",
        nargs="*",
        default=[],
        help="run-config overrides (pyproject.toml [tool.flwr.app.config]), "
        "e.g. gan-rounds=2 preset='tiny'",
    )


def run_config(args: argparse.Namespace) -> RunConfig:
    """pyproject's run config with the command's --run-config overrides."""
    overrides = parse_overrides(getattr(args, "run_config", []))
    return RunConfig.from_flat({**default_config().to_flat(), **overrides})


if __name__ == "__main__":  # python -m common.commands, like the entry point
    # run as common.commands, not __main__: the commands' Command is that one
    from common.commands import main as _main

    raise SystemExit(_main())
