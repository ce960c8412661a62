"""Test-wide settings (quiet TensorFlow, no Flower telemetry), the `deployment`
layer marker, and phantom studies built once per test run and shared."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

# fixtures that start a real SuperLink (tests/deployment_harness.py)
DEPLOYMENT_FIXTURES = {"federation", "sqlite_federation", "gated_federation"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts real Flower processes is in the `deployment` layer,
    whichever file it lives in: marked by the fixture it uses, not by hand."""
    for item in items:
        if DEPLOYMENT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.deployment)


@pytest.fixture(autouse=True)
def _no_run_folder_left_in_the_current_folder(request):
    """A test writes only under its own temporary folders: a `runs/` that
    appears in the current folder during a test (a config's default out-dir
    used by mistake) fails that test, by name."""
    runs = Path.cwd() / "runs"
    existed = runs.exists()
    yield
    if not existed and runs.exists():
        pytest.fail(f"{request.node.nodeid} left {runs} behind")


@pytest.fixture(scope="session")
def phantom_study(tmp_path_factory) -> Callable[..., Path]:
    """`phantom_study(scale, slices, seed=0)`: the paper scenario's phantom
    sites (`fedbigbigan phantoms`, with the scenario manifest `simulate` reads),
    written once per test run for each size and shared by every test that asks.
    Read-only: a test that runs `simulate` copies it to its run's `data` folder
    (`shutil.copytree`: ~1 s, where writing the 0.3-scale study takes 15-30 s)."""
    from simulations.scenarios import build_scenario, load_scenario

    built: dict[tuple, Path] = {}

    def study(scale: float, slices: int, seed: int = 0) -> Path:
        key = (scale, slices, seed)
        if key not in built:
            root = tmp_path_factory.mktemp(f"phantom-{scale}-{slices}-{seed}")
            build_scenario(load_scenario("paper"), root, scale, seed, slices)
            built[key] = root
        return built[key]

    return study
