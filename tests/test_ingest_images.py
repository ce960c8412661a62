"""Image folders `<root>/<label>/<patient>/*.png` go through the same path."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from common.ingest import IngestConfig, ingest_site

CONFIG = IngestConfig(image_size=32)


def _png(path, value: int, bits: int = 8, size=(40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros(size, np.uint16 if bits == 16 else np.uint8)
    array[8:-8, 8:-8] = value
    array[:4] = value // 2  # some structure, so min-max is defined
    Image.fromarray(array).save(path)


def test_image_folders_are_ingested_by_label_and_patient(tmp_path):
    root = tmp_path / "public"
    for name in ("1.png", "2.png", "10.png"):
        _png(root / "COVID" / "p1" / name, 200)
    _png(root / "NonCOVID" / "p2" / "a.png", 40000, bits=16, size=(30, 50))
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(
        root / "NonCOVID" / "p2" / "b.jpg"
    )
    _png(root / "COVID" / "loose.png", 10)  # flat: the image is its own patient
    (root / "README.md").write_text("CT slices, see paper")
    (root / "COVID" / "p1" / "broken.png").write_bytes(b"\x89PNG broken")
    _png(root / "COVID" / "p3" / "1.png", 100)
    _png(root / "0" / "p3" / "1.png", 100)  # the same patient under two labels
    result = ingest_site(root, cache_dir=tmp_path / "cache", config=CONFIG)
    assert [(p.patient_id, p.label, p.n_slices) for p in result.patients] == [
        ("COVID/loose.png", 1, 1),
        ("p1", 1, 3),
        ("p2", 0, 2),
    ]
    (series,) = result.patients[1].series
    assert series.sources == ("COVID/p1/1.png", "COVID/p1/2.png", "COVID/p1/10.png")
    slices = result.patients[2].load()
    assert slices.shape == (2, 32, 32)
    assert slices[0].min() == -1.0 and slices[0].max() == 1.0
    files = {f["path"]: f for f in json.loads(result.report_path.read_text())["files"]}
    assert files["COVID/loose.png"]["status"] == "used"
    assert files["README.md"]["code"] == "not-image"
    assert files["COVID/p1/broken.png"]["code"] == "decode"
    assert files["COVID/p3/1.png"]["code"] == "label-conflict"
    assert files["0/p3/1.png"]["code"] == "label-conflict"


def test_lung_policy_keeps_every_image_slice(tmp_path):
    root = tmp_path / "public"
    _png(root / "covid" / "p1" / "1.png", 200)
    config = IngestConfig(image_size=32, slice_policy="lung")
    result = ingest_site(root, cache_dir=tmp_path / "cache", config=config)
    assert result.summary.slices == 1
    assert np.isnan(result.patients[0].series[0].lung[0])
