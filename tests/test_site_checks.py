"""Sites that cannot take part are refused before Flower starts, one line each."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common.config import ConfigError, RunConfig
from common.ingest.site_checks import site_problem
from simulations.site_checks import SiteCheckError, check_sites


def _site(root, name: str, covid: int, other: int) -> None:
    rng = np.random.default_rng(len(name))
    for label, n in (("COVID", covid), ("NonCOVID", other)):
        for i in range(n):
            folder = root / name / label / f"{name}-{label}-{i}"
            folder.mkdir(parents=True)
            pixels = rng.integers(0, 255, (24, 24), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "1.png")


def test_site_problem_lines():
    assert site_problem("a", "train", {0: 2, 1: 2}, 2) is None
    assert site_problem("x", "external", {0: 1, 1: 1}, 5) is None
    line = site_problem("a", "train", {0: 3, 1: 1}, 2)
    assert line == (
        "site a (train): 1 COVID-19, 3 other pneumonia patients; training needs "
        "at least 2 of each class (min-patients-per-class)"
    )
    assert "AUC" in site_problem("x", "external", {0: 4, 1: 0}, 2)


def test_single_class_sites_are_refused_one_line_each(tmp_path):
    data = tmp_path / "data"
    _site(data, "good", 2, 2)
    _site(data, "single", 3, 0)
    _site(data, "ext", 0, 2)
    config = RunConfig(
        sim_data_root=str(data),
        out_dir=str(tmp_path / "out"),
        sim_sites="good:train,single:train,ext:external",
    )
    with pytest.raises(SiteCheckError) as caught:
        check_sites(config)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("site single (train): 3 COVID-19, 0 other")
    assert lines[1].startswith("site ext (external): 0 COVID-19, 2 other")
    _site(data, "ext2", 1, 1)
    ok = RunConfig(
        sim_data_root=str(data),
        out_dir=str(tmp_path / "out"),
        sim_sites="good:train,single:train,ext2:external",
        **{"train": RunConfig().train.__class__(min_patients_per_class=1)},
    )
    with pytest.raises(SiteCheckError, match="site single"):
        check_sites(ok)  # one class is never enough


def test_min_patients_per_class_is_validated():
    with pytest.raises(ConfigError, match="min-patients-per-class"):
        RunConfig.from_flat({"min-patients-per-class": 0})
