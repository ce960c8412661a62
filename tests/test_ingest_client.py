"""The ClientApp's site data comes through ingest and its cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import client.site as site_module
from client.site import Site, cache_dir, resolve_site, site_data
from common.config import RunConfig
from common.ingest import ingest_site
from common.ingest.site_index import index_site
from common.model.dataset import load_slices
from common.splits import split_patients
from simulations.phantoms import write_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    sites = write_study(root / "data", scale=0.05, slices_per_patient=2)
    config = dataclasses.replace(
        RunConfig(), sim_data_root=str(root / "data"), out_dir=str(root / "run")
    )
    return sites, config


def test_site_data_reads_the_site_through_the_ingest_cache(study):
    sites, config = study
    site = resolve_site({"partition-id": 0}, config)
    assert cache_dir(site, config) == (
        site_module.Path(config.out_dir) / "ingest-cache" / site.name
    )
    site_module._CACHE.clear()
    data = site_data(site, config)
    assert set(data) == {"train", "val", "test"}
    size = config.model.image_size
    for split in data.values():
        assert split.images.shape[1:] == (size, size, 3)
        assert split.images.dtype == np.float32
        assert len(split.labels) == len(split.patient) == len(split.images)
    # the same slices as preprocessing each file on its own (no cache)
    index = index_site(sites[site.name])
    groups = split_patients(index.patients, config.split.val, config.split.test, 0)
    direct = load_slices(groups["train"], size)
    np.testing.assert_allclose(data["train"].images, direct.images, atol=2e-3)
    np.testing.assert_array_equal(data["train"].labels, direct.labels)


def test_an_external_site_has_one_split_and_a_second_process_decodes_nothing(study):
    sites, config = study
    external = Site("hospital_b", sites["hospital_b"], "external")
    site_module._CACHE.clear()
    first = site_data(external, config)
    assert set(first) == {"external"}
    site_module._CACHE.clear()  # a new process: only the disk cache is left
    result = ingest_site(
        external.path,
        cache_dir=cache_dir(external, config),
        config=site_module.ingest_config(config),
        progress=False,
    )
    assert result.files_decoded == 0 and result.files_read == 0


def test_a_deployed_node_names_its_cache(tmp_path):
    node = {"data-dir": str(tmp_path / "site"), "role": "train", "cache-dir": "/c"}
    site = resolve_site(node, RunConfig())
    assert cache_dir(site, RunConfig()) == site_module.Path("/c")
