"""`fedbigbigan report`: a structurally real run directory (the run writer's own
files from synthetic histograms) renders into one page holding every figure."""

import base64
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from common.commands import main
from common.config import RunConfig
from common.evaluation.metrics import histogram
from common.evaluation.site_evaluation import read_site_report, site_report
from common.model.grids import save_png
from common.strict_json import strict_json
from server.evaluation import cutoffs, summarise
from server.report import write_report
from server.run_dir import HISTOGRAMS, write_run


def _site(rng, splits: dict[str, tuple[int, int, float]]) -> dict:
    """One site's histograms: 3 slices per patient, patient score = their mean."""
    out = {}
    for split, (n_pos, n_neg, shift) in splits.items():
        classes = (("pos", n_pos, 0.5 + shift), ("neg", n_neg, 0.5 - shift))
        for key, n, centre in classes:
            slices = rng.normal(centre, 0.3, (n, 3))
            out[f"{split}/slice/{key}"] = histogram(slices.ravel())
            out[f"{split}/patient/{key}"] = histogram(slices.mean(axis=1))
    return out


@pytest.fixture
def run_dir(tmp_path):
    """What the ServerApp leaves: write_run's files plus G(z) sample grids."""
    rng = np.random.default_rng(0)
    inside = {"train": (33, 33, 0.3), "val": (4, 4, 0.25), "test": (4, 5, 0.25)}
    site_hist = {1: _site(rng, inside), 2: _site(rng, inside)}
    # the external site reports its own metrics at the validation cut-offs
    external_hist = _site(rng, {"external": (15, 20, 0.15)})
    report = site_report(external_hist, "external", cutoffs(site_hist))
    external, coarse = read_site_report(report)
    metrics = summarise(site_hist, external=external)
    metrics["rounds"] = [
        {
            "round": r,
            "d_loss": 2.0 - 0.1 * r,
            "e_loss": 1.0 + 0.05 * r,
            "g_loss": 0.5 * r,
            "clipped": 0,
        }
        for r in (1, 2, 3)
    ]
    metrics["secagg_rounds"] = 4
    out = tmp_path / "run"
    write_run(
        out,
        RunConfig(gan_rounds=3),
        metrics,
        [np.zeros(3)],
        np.zeros(121),
        site_hist,
        coarse={"external": coarse},
    )
    for r in (1, 2, 3):
        save_png(
            out / "samples" / f"round_{r:03d}.png", [rng.uniform(-1, 1, (8, 32, 32, 1))]
        )
    return out


def _embedded_pngs(page: str) -> list[bytes]:
    return [
        base64.b64decode(data)
        for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


def test_report_embeds_every_figure_and_each_decodes(run_dir):
    page_path = write_report(run_dir)
    assert page_path == run_dir / "report.html"
    page = page_path.read_text(encoding="utf-8")
    written = sorted((run_dir / "report").glob("*.png"))
    assert [p.name for p in written] == ["loss_curves.png", "roc_curves.png"]
    embedded = _embedded_pngs(page)
    samples = [run_dir / "samples" / n for n in ("round_003.png", "round_001.png")]
    # ROC, losses, then the last and the first round's samples, in that order
    assert embedded == [p.read_bytes() for p in (*written[::-1], *samples)]
    for png in embedded:
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) >= 32
    assert "<script" not in page.lower()


def test_report_table_has_the_runs_numbers_with_cis(run_dir):
    page = write_report(run_dir).read_text(encoding="utf-8")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ext = metrics["splits"]["external"]
    low, high = ext["auc_ci"]
    assert f"{ext['auc']:.3f} ({low:.3f}–{high:.3f})" in page
    assert f"{100 * ext['sensitivity']:.0f}% (" in page
    assert "Linear (lm), federated" in page and "Song et al. 2020" in page
    assert "cut-off chosen here" in page  # validation's operating point flagged
    sl = ext["slice"]  # the slice level has its own table
    assert f"{sl['auc']:.3f} ({sl['auc_ci'][0]:.3f}–{sl['auc_ci'][1]:.3f})" in page
    assert f"{sl['tp']} / {sl['fn']} / {sl['fp']} / {sl['tn']}" in page
    assert '"tiny"' in page  # the configuration, from config.json


def test_report_of_a_run_without_histograms_still_renders(run_dir):
    (run_dir / HISTOGRAMS).unlink()
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "keeps no pooled histograms" in page
    assert len(_embedded_pngs(page)) == 3  # losses and two sample grids


def test_report_of_a_missing_run_dir_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        write_report(tmp_path)


def test_report_command(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert str(run_dir / "report.html") in capsys.readouterr().out


def test_report_needs_no_tensorflow():
    code = "import sys, server.report; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_metrics_json_is_strict_json_and_round_trips_non_finite_values():
    from common.strict_json import revive_json, strict_json

    metrics = {"threshold": float("inf"), "splits": {"val": {"auc": float("nan")}}}
    text = json.dumps(strict_json(metrics), allow_nan=False)  # raises if not strict
    back = revive_json(json.loads(text))
    assert back["threshold"] == float("inf") and np.isnan(back["splits"]["val"]["auc"])


def test_report_shows_the_comparison_table_of_a_simulated_run(run_dir):
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text())
    assert "Federated, pooled and local heads" not in write_report(run_dir).read_text()
    cell = {"auc": 0.812, "ci": [0.701, 0.923], "n_patients": 30}
    metrics["comparisons"] = {
        "table": {
            "federated lm": {"all test": cell, "hospital_b": cell},
            "local lm (a)": {"all test": cell, "hospital_b": {**cell, "auc": 0.5}},
        },
        "generalisability": {"a": 0.55},
    }
    path.write_text(json.dumps(metrics))
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "Federated, pooled and local heads (simulation only)" in page
    assert "<th>local lm (a)</th>" in page and "0.812 (0.701–0.923)" in page
    assert "a 0.550" in page


def test_reconstructions_appear_only_when_the_run_has_them(run_dir):
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "fedbigbigan reconstruct --model" in page  # a site draws its own
    n_without = len(_embedded_pngs(page))
    rng = np.random.default_rng(1)
    rows = [rng.uniform(-1, 1, (6, 32, 32, 1)) for _ in range(6)]  # 3 sites x 2
    save_png(run_dir / "reconstructions.png", rows)
    page = write_report(run_dir).read_text(encoding="utf-8")
    embedded = _embedded_pngs(page)
    assert len(embedded) == n_without + 1
    assert (run_dir / "reconstructions.png").read_bytes() in embedded
    assert "Simulation only" in page and "hospital_a_ge, hospital_a_neuviz" in page


def test_external_roc_is_drawn_from_the_sites_coarse_counts(run_dir):
    with np.load(run_dir / HISTOGRAMS) as npz:
        assert npz["external/coarse"]
        assert npz["external/patient/pos"].size < npz["test/patient/pos"].size
        ext = int(npz["external/patient/pos"].sum() + npz["external/patient/neg"].sum())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert ext == metrics["splits"]["external"]["n_patients"] == 35
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "0.05-wide score bins" in page


def test_privacy_section_states_the_guarantee_and_shows_the_curve(run_dir):
    from server.run_dir import update_metrics
    from simulations.privacy_curve import plot_curve

    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "<h2>Privacy</h2>" in page and "Privacy against utility" not in page
    update_metrics(
        run_dir,
        federated_parts="e",
        payload={
            "federated_values": 10**6,
            "down_bytes": 4 * 10**6,
            "up_bytes": 8 * 10**6,
        },
        dp={
            "on": True,
            "noise_multiplier": 1.5,
            "clip": 0.1,
            "delta": 1e-5,
            "rounds": 3,
            "epsilon": 7.25,
            "scope": "site-level",
        },
        membership_inference={
            "head_attack_auc": 0.513,
            "discriminator_attack_auc": None,
            "n_members": 100,
            "n_nonmembers": 20,
        },
    )
    rows = [
        {
            "run": f"noise-{s:g}",
            "noise_multiplier": s,
            "epsilon": eps,
            "delta": 1e-5,
            "external_auc": auc,
            "external_auc_ci": [auc - 0.1, auc + 0.1],
            "head_attack_auc": 0.5,
            "discriminator_attack_auc": None,
        }
        for s, eps, auc in (
            (0.0, float("inf"), 0.8),
            (1.0, 12.3, 0.7),
            (4.0, 1.1, 0.55),
        )
    ]
    (run_dir.parent / "privacy_curve.json").write_text(json.dumps(strict_json(rows)))
    plot_curve(run_dir.parent / "privacy_curve.png", rows)
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "E only (G and D stayed at each site)" in page
    assert "(7.25, 1e-05)" in page and "4.0 MB down" in page
    assert "AUC 0.513" in page and "on D" not in page
    assert "Privacy against utility" in page and "noise-4" in page
    assert (run_dir.parent / "privacy_curve.png").read_bytes() in _embedded_pngs(page)


def _with_baselines(run_dir, shift: float, paired_low: float) -> dict:
    """Add `baselines` as the ServerApp writes them: summaries of histograms
    whose classes are `shift` apart, and an external paired difference."""
    from server.run_dir import update_metrics

    rng = np.random.default_rng(7)
    inside = {"train": (33, 33, shift), "val": (4, 4, shift), "test": (4, 5, shift)}
    hist = {1: _site(rng, inside)}
    ext_hist = _site(rng, {"external": (15, 20, shift)})
    external, _ = read_site_report(site_report(ext_hist, "external", cutoffs(hist)))
    summary = summarise(hist, external=external)
    paired = {"diff": 0.12, "diff_ci": [paired_low, 0.3], "p": 0.04}
    baselines = {
        kind: {"lm": summary, "ridge": summary, "external_difference": {"lm": paired}}
        for kind in ("radiomics", "untrained")
    }
    update_metrics(run_dir, baselines=baselines, model_ridge=summary)
    return summary


def test_report_shows_the_baselines_beside_the_model_in_plain_words(run_dir):
    weak = _with_baselines(run_dir, 0.0, 0.02)  # baselines near chance
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "Baselines: the same rounds on simpler features" in page
    ext = weak["splits"]["external"]
    low, high = ext["auc_ci"]
    assert f"{ext['auc']:.3f} ({low:.3f}–{high:.3f})" in page
    assert "+0.120 (0.020–0.300), p 0.04" in page
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics["splits"]["external"]["auc"] > ext["auc"]:
        assert "External site: AUC" in page and "better than a histogram" in page
    # a strong baseline: the model is "not better than" it
    _with_baselines(run_dir, 0.6, -0.1)
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "not better than a histogram of intensities" in page
    assert "Youden&#x27;s J (the score that maximises" in page or (
        "Youden's J (the score that maximises" in page
    )
    assert "DeLong&#x27;s method" in page or "DeLong's method" in page


def test_report_says_when_the_data_are_synthetic(run_dir):
    from server.run_dir import update_metrics

    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "synthetic" not in page.lower()  # a deployment records no data
    assert "not recorded by the run" in page
    update_metrics(run_dir, data={"synthetic": True, "scenario": "paper"})
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "These data are synthetic" in page and "phantoms" in page


def test_verdicts_say_near_chance_when_the_ci_includes_half():
    from server.report_sections import verdicts

    m = {"auc": 0.6, "auc_ci": [0.4, 0.8]}
    metrics = {"splits": {"external": m}, "baselines": {}}
    lines = verdicts(metrics)
    assert any("External site" in x and "near chance" in x for x in lines)
    metrics["splits"]["external"] = {"auc": 0.9, "auc_ci": [0.8, 1.0]}
    assert not any("near chance" in x for x in verdicts(metrics))
