"""The layout's promise: each top-level package serves one kind of user, and
imports only point down. `common` (shared by both sides) imports none of the
others; a hospital's `client` and a coordinator's `server` never import each
other, and neither imports the researchers' `simulations`. The model and ingest
(`common/model/`, `common/ingest/`) know nothing of Flower, and `common/` holds
only a handful of loose modules beside its sub-packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "client", "server", "simulations")
FORBIDDEN = {
    "common": {"client", "server", "simulations"},
    "client": {"server", "simulations"},
    "server": {"client", "simulations"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every import in a module, nested ones too
    (a function-level import is an import all the same)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(a.name.split(".")[0], node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def upward_imports(package: str) -> list[str]:
    return sorted(
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in (ROOT / package).rglob("*.py")
        for target, line in imported_packages(path)
        if target in FORBIDDEN[package]
    )


# plain TensorFlow / numpy / pydicom, testable (and runnable) without Flower
FLOWER_FREE = ("common/model", "common/ingest")
# common's shared basics; everything else lives in a sub-package by subject
COMMON_LOOSE = {
    "__init__.py",
    "commands.py",
    "config.py",
    "config_ranges.py",
    "devices.py",
    "presets.py",
    "splits.py",
    "strict_json.py",
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_point_down(package):
    assert upward_imports(package) == []


@pytest.mark.parametrize("folder", FLOWER_FREE)
def test_model_and_ingest_do_not_import_flower(folder):
    found = sorted(
        f"{path.relative_to(ROOT)}:{line}"
        for path in (ROOT / folder).rglob("*.py")
        for target, line in imported_packages(path)
        if target == "flwr"
    )
    assert found == []


def test_common_has_only_its_basics_loose():
    assert {p.name for p in (ROOT / "common").glob("*.py")} <= COMMON_LOOSE


def test_every_module_says_what_it_is_for():
    """Each module opens with a docstring (its first line says what it is for)."""
    silent = sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.stat().st_size
        and not ast.get_docstring(ast.parse(path.read_text(), filename=str(path)))
    )
    assert silent == []


def test_the_walker_sees_a_nested_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from server.run_dir import x\n")
    assert ("server", 4) in imported_packages(module)
    assert {p for p, _ in imported_packages(module)} == {"os", "server"}


def test_each_command_lives_in_its_users_package():
    """`fedbigbigan` only dispatches: every command is an entry point of the
    package of the one who runs it (a hospital's client, a coordinator's server,
    a researcher's simulations), never of common."""
    from common.commands import Command, declared_commands

    points = declared_commands()
    assert points, "no fedbigbigan.commands entry points"
    for point in points:
        assert point.module.split(".")[0] in {"client", "server", "simulations"}
        assert isinstance(point.load(), Command), point


def test_the_help_lists_every_command(capsys):
    from common.commands import declared_commands, main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for point in declared_commands():
        assert f"\n    {point.name} " in text, point.name
