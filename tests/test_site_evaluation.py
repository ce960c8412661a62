"""The external site's report: its own metrics at the server's cut-offs, as
aggregates. Same numbers as the server would compute from its fine histograms,
and nothing finer than 0.05-wide score bins leaves the site."""

import numpy as np
import pytest
from test_evaluation import make_site_hist

from common.evaluation.metrics import GRID_BINS
from common.evaluation.site_evaluation import (
    COARSE_BINS,
    coarsen,
    read_site_report,
    report_keys,
    site_report,
)
from server.evaluation import cutoffs, summarise


def _external_report(site_hist: dict) -> dict:
    training = {k: v for k, v in site_hist.items() if k != 33}
    cuts = cutoffs(training)
    return site_report(site_hist[33], "external", cuts)


def test_site_report_equals_the_servers_metrics_from_fine_histograms():
    site_hist = make_site_hist(3)
    split, _ = read_site_report(_external_report(site_hist))
    from_histograms = summarise(site_hist)["splits"]["external"]
    assert split.keys() == from_histograms.keys()
    for key, value in from_histograms.items():
        if isinstance(value, dict):  # the slice level
            assert split[key].keys() == value.keys()
            for k, v in value.items():
                assert split[key][k] == pytest.approx(v, abs=1e-12), (key, k)
        else:
            assert split[key] == pytest.approx(value, abs=1e-12), key


def test_summarise_takes_the_external_report_at_validation_cut_offs():
    site_hist = make_site_hist(6)
    training = {k: v for k, v in site_hist.items() if k != 33}
    external, _ = read_site_report(_external_report(site_hist))
    metrics = summarise(training, external=external)
    assert metrics["splits"]["external"] is external
    assert metrics["threshold"] == summarise(site_hist)["threshold"]
    # the report was made at the training sites' validation cut-off, not its own
    own = summarise(
        {33: {k.replace("external/", "val/"): v for k, v in site_hist[33].items()}}
    )
    assert own["threshold"] != metrics["threshold"]


def test_nothing_finer_than_coarse_bins_leaves_the_site():
    report = _external_report(make_site_hist(7))
    assert set(report) == report_keys()
    for key, value in report.items():
        if isinstance(value, list):
            assert len(value) <= COARSE_BINS < GRID_BINS, key
    # the coarse counts are the fine ones summed, so the totals hold
    fine = make_site_hist(7)[33]["external/patient/pos"]
    assert coarsen(fine).sum() == fine.sum() and coarsen(fine).shape == (COARSE_BINS,)
    assert report["patient/coarse_pos"] == coarsen(fine).tolist()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("patient/auc"), "lacks 'patient/auc'"),
        (lambda r: r.update({"slice/auc_ci": [0.5]}), "slice/auc_ci"),
        (lambda r: r.update({"patient/coarse_neg": [1] * GRID_BINS}), "coarse_neg"),
        (lambda r: r.update({"patient/tp": 10**6}), "disagree"),
    ],
)
def test_a_malformed_report_is_refused_with_the_key_named(change, message):
    report = _external_report(make_site_hist(8))
    change(report)
    with pytest.raises(ValueError, match=message):
        read_site_report(report)


def test_histograms_of_a_run_keep_only_coarse_external_counts(tmp_path):
    from server.run_dir import pooled_histograms

    site_hist = make_site_hist(9)
    training = {k: v for k, v in site_hist.items() if k != 33}
    _, coarse = read_site_report(_external_report(site_hist))
    arrays = pooled_histograms(training, {"external": coarse})
    assert arrays["external/coarse"]
    assert arrays["external/patient/pos"].shape == (COARSE_BINS,)
    assert arrays["test/patient/pos"].shape == (GRID_BINS,)
    assert np.array_equal(
        arrays["external/slice/neg"], coarsen(site_hist[33]["external/slice/neg"])
    )


def test_every_heads_report_round_trips_and_names_each_head():
    from common.evaluation.feature_kinds import KINDS, head_names
    from common.evaluation.site_evaluation import (
        heads_report,
        heads_report_keys,
        read_heads_report,
    )

    by_head = {head: make_site_hist(i + 3) for i, head in enumerate(head_names(KINDS))}
    hists = {head: h[33] for head, h in by_head.items()}
    cuts = {
        head: cutoffs({k: v for k, v in h.items() if k != 33})
        for head, h in by_head.items()
    }
    paired = {
        name: {"diff": 0.05 * i, "diff_ci": [-0.1, 0.2], "p": 0.5}
        for i, name in enumerate(("radiomics-lm", "radiomics-ridge"))
    } | {
        name: {"diff": 0.0, "diff_ci": [0.0, 0.0], "p": 1.0}
        for name in ("untrained-lm", "untrained-ridge")
    }
    record = heads_report(hists, "external", cuts, paired)
    assert set(record) == heads_report_keys(KINDS)
    assert set(report_keys()) <= set(record)  # the model's lm keeps plain keys
    heads, back = read_heads_report(record, KINDS)
    assert back == paired
    for head, h in hists.items():
        own, _ = read_site_report(site_report(h, "external", cuts[head]))
        assert heads[head][0] == own, head
    # the heads differ: each got its own histograms
    assert heads["radiomics-lm"][0]["auc"] != heads["model-lm"][0]["auc"]
    del record["paired/untrained-ridge/patient/p"]
    with pytest.raises(ValueError, match="untrained-ridge"):
        read_heads_report(record, KINDS)
