"""`fedbigbigan ingest`: the summary on stdout, --strict fails with the reason."""

from __future__ import annotations

from test_ingest_support import write_site

from common.commands import main


def test_ingest_prints_a_summary(tmp_path, capsys):
    site = write_site(tmp_path / "site", {"A": 1, "B": 0}, n=2)
    (site / "A" / "viewer.exe").write_bytes(b"MZ\x90\x00")
    args = ["ingest", "--site-dir", str(site), "--out", str(tmp_path / "cache")]
    assert main([*args, "--image-size", "32", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 patients, 2 series, 4 slices kept (4 of 5 files used)" in out
    assert "not DICOM files [not-dicom, excluded]" in out
    assert f"details: {tmp_path / 'cache' / 'ingest_report.json'}" in out


def test_strict_exits_with_the_first_problem(tmp_path, capsys):
    site = write_site(tmp_path / "site", {"A": 1}, n=2)
    (site / "A" / "IM0002.dcm").write_bytes(b"")
    args = ["ingest", "--site-dir", str(site), "--out", str(tmp_path / "c"), "--strict"]
    assert main([*args, "--quiet", "--slice-policy", "lung"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {site / 'A' / 'IM0002.dcm'}: empty file (0 bytes)")


def test_bad_options_are_reported(tmp_path, capsys):
    site = write_site(tmp_path / "site", {"A": 1}, n=1)
    args = ["ingest", "--site-dir", str(site), "--out", str(tmp_path / "c")]
    assert main([*args, "--image-size", "2"]) == 2
    assert "image-size must be >= 8" in capsys.readouterr().err
