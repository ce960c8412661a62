"""The layout's promise: each top-level package serves one kind of user, and
imports only point down. `common` (shared by both sides) imports none of the
others; a hospital's `client` and a coordinator's `server` never import each
other, and neither imports the researchers' `simulations`."""

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


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_point_down(package):
    assert upward_imports(package) == []


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
