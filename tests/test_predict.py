"""`fedbigbigan predict`: a score per patient from DICOM, as training saw it."""

import json

import numpy as np
import pytest

from client.predict import predict_dicom
from client.site import Site, site_data
from common.commands import main
from common.config import RunConfig
from common.evaluation.linear_head import predict
from common.model.checkpoint import initial_model
from common.strict_json import strict_json
from simulations.phantoms import write_study


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as the ServerApp writes it (weights, head, cut-off)."""
    root = tmp_path_factory.mktemp("predict")
    write_study(root / "data", scale=0.1, seed=0, slices_per_patient=2)
    config = RunConfig(sim_data_root=str(root / "data"), out_dir=str(root / "out"))
    model = initial_model(config)
    head = np.random.default_rng(0).normal(0, 0.05, config.model.z_dim + 1)
    head[0] = 0.5
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config.to_flat()))
    np.savez(run / "global_weights.npz", *model.get_weights(), head=head)
    (run / "metrics.json").write_text(json.dumps(strict_json({"threshold": 0.5})))
    return run, config, model, head


def test_patient_score_is_the_mean_slice_score_of_the_training_preprocessing(
    run_dir, tmp_path
):
    run, config, model, head = run_dir
    site = Site("hospital_b", run.parent / "data" / "hospital_b", "external")
    patient_dir = sorted((site.path / "dicom").iterdir())[0]
    predictions, seconds = predict_dicom(run, patient_dir, tmp_path / "cache")
    assert [p.patient_id for p in predictions] == [patient_dir.name]
    (p,) = predictions
    slices = site_data(site, config)["external"]
    mine = slices.patient == 0  # sorted ids: the first patient of the site
    expected = predict(head, model.encode(slices.images[mine])).mean()
    assert p.n_slices == int(mine.sum())
    assert p.score == pytest.approx(float(np.clip(expected, 0, 1)), abs=1e-5)
    assert p.covid == (expected >= 0.5) and p.threshold == 0.5
    assert seconds < 60


def test_predict_command_prints_a_decision_and_fails_clearly_without_ct(
    run_dir, tmp_path, capsys
):
    run, *_ = run_dir
    patient_dir = sorted((run.parent / "data" / "hospital_b" / "dicom").iterdir())[1]
    assert (
        main(
            [
                "predict",
                "--model",
                str(run),
                "--dicom",
                str(patient_dir),
                "--cache",
                str(tmp_path / "c1"),
            ]
        )
        == 0
    )
    assert f"{patient_dir.name}: score" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "note.txt").write_text("not a DICOM file")
    with pytest.raises(ValueError, match="no usable axial CT slice"):
        predict_dicom(run, empty, tmp_path / "c2")


def test_reconstruct_command_draws_a_sites_slices_and_their_reconstructions(
    run_dir, tmp_path
):
    from PIL import Image

    from common.model.grids import reconstruction_rows

    run, config, model, _ = run_dir
    site_dir = run.parent / "data" / "hospital_b" / "dicom"
    before = {p: p.stat().st_mtime_ns for p in site_dir.rglob("*") if p.is_file()}
    out = tmp_path / "grid.png"
    args = ["reconstruct", "--model", str(run), "--dicom", str(site_dir)]
    assert main([*args, "--out", str(out), "--patients", "3"]) == 0
    labelled = np.asarray(Image.open(out), dtype=np.float32) / 127.5 - 1.0
    side = config.model.gd_size
    # real row, G(E(x)) row; 3 patients, right of a white margin with the labels
    assert labelled.shape[0] == 2 * side and labelled.shape[1] > 3 * side
    margin, grid = labelled[:, : -3 * side], labelled[:, -3 * side :]
    assert margin.max() == 1.0 and margin.min() < 0.0  # white, with dark text
    # the bottom row is G(E(x)) of the top row's slices (8-bit PNG rounding)
    slices = site_data(Site("hospital_b", site_dir.parent, "external"), config)
    images = slices["external"].images
    middle = [
        np.flatnonzero(slices["external"].patient == p)[
            (slices["external"].patient == p).sum() // 2
        ]
        for p in range(3)
    ]
    real, recon = reconstruction_rows(model, images[middle])
    assert np.abs(grid[:side] - np.concatenate(list(real[..., 0]), 1)).max() < 0.01
    assert np.abs(grid[side:] - np.concatenate(list(recon[..., 0]), 1)).max() < 0.01
    after = {p: p.stat().st_mtime_ns for p in site_dir.rglob("*") if p.is_file()}
    assert after == before and not list(site_dir.rglob("*.png"))  # nothing written


def test_after_a_fedbn_run_scores_use_batchnorm_statistics_of_the_scored_slices(
    run_dir, tmp_path
):
    """FedBN's global weights carry no trained BatchNorm statistics: predict
    estimates E's on the patients it scores (AdaBN), as the held-out site did
    in the run, instead of scoring with the initial ones."""
    import shutil

    run, config, model, head = run_dir
    fedbn = tmp_path / "fedbn-run"
    shutil.copytree(run, fedbn)
    flat = {**config.to_flat(), "strategy": "fedbn"}
    (fedbn / "config.json").write_text(json.dumps(flat))
    site = Site("hospital_b", run.parent / "data" / "hospital_b", "external")
    predictions, _ = predict_dicom(fedbn, site.path / "dicom", tmp_path / "cache")
    slices = site_data(site, config)["external"]
    assert len(predictions) == len(np.unique(slices.patient)) >= 2
    adapted = initial_model(config)
    adapted.adapt_batchnorm(slices.images)
    moved = 0.0
    for p, prediction in zip(np.unique(slices.patient), predictions, strict=True):
        mine = slices.patient == p
        expected = predict(head, adapted.encode(slices.images[mine])).mean()
        unadapted = predict(head, model.encode(slices.images[mine])).mean()
        assert prediction.score == pytest.approx(np.clip(expected, 0, 1), abs=1e-4)
        moved = max(moved, abs(expected - unadapted))
    assert moved > 1e-2  # the initial statistics would have scored otherwise


def test_reconstruct_after_a_fedbn_run_adapts_e_and_g_to_the_sites_slices(
    run_dir, tmp_path
):
    import shutil

    from PIL import Image

    run, config, *_ = run_dir
    fedbn = tmp_path / "fedbn-run"
    shutil.copytree(run, fedbn)
    (fedbn / "config.json").write_text(
        json.dumps({**config.to_flat(), "strategy": "fedbn"})
    )
    site_dir = run.parent / "data" / "hospital_b" / "dicom"
    grids = {}
    for name, model_dir in (("plain", run), ("fedbn", fedbn)):
        out = tmp_path / f"{name}.png"
        args = ["reconstruct", "--model", str(model_dir), "--dicom", str(site_dir)]
        assert main([*args, "--out", str(out), "--patients", "2"]) == 0
        grids[name] = np.asarray(Image.open(out), dtype=np.float32)
    side = config.model.gd_size
    # the real slices are the same; their reconstructions are not
    np.testing.assert_array_equal(grids["plain"][:side], grids["fedbn"][:side])
    assert np.abs(grids["plain"][side:] - grids["fedbn"][side:]).max() > 5


def test_predict_scores_png_and_jpeg_as_ingest_preprocessed_them(
    run_dir, tmp_path, capsys
):
    from PIL import Image

    from client.site import ingest_config
    from common.ingest import ingest_site
    from common.model.dataset import slices_from_ingest

    run, config, model, head = run_dir
    rng = np.random.default_rng(3)
    site = tmp_path / "site"
    for name, size, mode in (("a.png", (70, 50), "RGB"), ("b.jpg", (40, 40), "L")):
        pixels = rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)
        (site / "COVID" / "p1").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).convert(mode).save(site / "COVID" / "p1" / name)
    ingested = ingest_site(site, None, tmp_path / "c", ingest_config(config))
    trained_on = slices_from_ingest(ingested.patients, config.model.image_size)
    expected = predict(head, model.encode(trained_on.images)).mean()
    predictions, _ = predict_dicom(run, site / "COVID" / "p1")
    assert [(p.patient_id, p.n_slices) for p in predictions] == [
        ("a.png", 1),
        ("b.jpg", 1),
    ]
    folder, _ = predict_dicom(run, site)  # a folder of patient folders
    assert [(p.patient_id, p.n_slices) for p in folder] == [("COVID/p1", 2)]
    assert folder[0].score == pytest.approx(float(np.clip(expected, 0, 1)), abs=1e-5)
    one = site / "COVID" / "p1" / "a.png"
    assert main(["predict", "--model", str(run), "--input", str(one)]) == 0
    assert "a.png: score" in capsys.readouterr().out


def test_predict_refuses_unusable_input_in_one_line(run_dir, tmp_path, capsys):
    run, *_ = run_dir
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    for path, says in (
        (broken, f"error: {broken}: not a readable image"),
        (tmp_path / "nowhere", f"error: {tmp_path / 'nowhere'}: no such file"),
    ):
        assert main(["predict", "--model", str(run), "--input", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(says) and len(err.splitlines()) == 1
