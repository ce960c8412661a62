"""ingest's image-crop "centre": every image slice cut to its square centre
before resizing, the same at ingest and at predict (the run's ingest config)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from client.image_input import image_patients
from common.commands import main
from common.config import RunConfig, flat_problems
from common.ingest import IngestConfig, ingest_site
from common.ingest.config import IngestConfigError
from common.ingest.images import centre_square
from common.ingest.policy import paper_unit_range
from common.model.dataset import slices_from_ingest


def _wide_png(path) -> np.ndarray:
    """60 x 40 (wide): bright bars in the 10 columns at each side, a ramp between."""
    pixels = np.zeros((40, 60), np.uint8)
    pixels[:, 10:50] = np.linspace(20, 120, 40, dtype=np.uint8)[None, :]
    pixels[:, :10] = 250
    pixels[:, 50:] = 250
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def test_centre_square_cuts_the_longer_side_evenly():
    tall = np.arange(7 * 4).reshape(7, 4)
    assert np.array_equal(centre_square(tall), tall[1:5])
    wide = np.arange(4 * 9).reshape(4, 9)
    assert np.array_equal(centre_square(wide), wide[:, 2:6])


def test_a_wide_image_is_cropped_at_ingest_and_at_predict_alike(tmp_path):
    site = tmp_path / "site"
    pixels = _wide_png(site / "COVID" / "p1" / "0.png")
    _wide_png(site / "NonCOVID" / "p2" / "0.png")
    crop = IngestConfig(image_size=40, image_crop="centre")
    expected = paper_unit_range(pixels[:, 10:50].astype(np.float32))
    scored = image_patients(site / "COVID" / "p1" / "0.png", crop)["0.png"][0]
    assert scored.shape == (40, 40)
    np.testing.assert_allclose(scored, expected, atol=1e-2)
    assert crop.pixel_key() != IngestConfig(40).pixel_key()  # caches apart
    # ingest caches the very same pixels
    result = ingest_site(site, None, tmp_path / "c", crop, progress=False)
    p1 = [p for p in result.patients if p.patient_id == "p1"]
    cached = slices_from_ingest(p1, 40).images[0, ..., 0]
    np.testing.assert_allclose(cached, scored, atol=1e-2)
    # padding (the default) keeps the bars: a different slice
    padded = image_patients(site / "COVID" / "p1" / "0.png", IngestConfig(40))
    assert np.abs(padded["0.png"][0] - scored).max() > 0.5


def test_the_option_is_a_checked_run_config_key_and_ingest_flag(tmp_path, capsys):
    assert RunConfig.from_flat({"ingest-image-crop": "centre"}).ingest.image_crop == (
        "centre"
    )
    assert flat_problems({"ingest-image-crop": "middle"}) == [
        "ingest-image-crop must be one of ['pad', 'centre'], got 'middle'"
    ]
    with pytest.raises(IngestConfigError, match="image-crop must be one of"):
        IngestConfig(image_crop="middle")
    site = tmp_path / "site"
    _wide_png(site / "COVID" / "p1" / "0.png")
    _wide_png(site / "NonCOVID" / "p2" / "0.png")
    args = ["ingest", "--site-dir", str(site), "--out", str(tmp_path / "c")]
    assert main([*args, "--image-size", "32", "--image-crop", "centre"]) == 0
    assert "2 patients" in capsys.readouterr().out


def test_extract_takes_the_run_directorys_recorded_ingest_options(tmp_path):
    from client.cli import recorded_ingest

    run = tmp_path / "run"
    run.mkdir()
    flat = RunConfig.from_flat({"ingest-image-crop": "centre"}).to_flat()
    (run / "config.json").write_text(json.dumps(flat))
    assert recorded_ingest(run, RunConfig()).image_crop == "centre"
    # a bare model file has no record: the command's own options
    assert recorded_ingest(run / "model.npz", RunConfig()).image_crop == "pad"
