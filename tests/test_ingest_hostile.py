"""Ingest never deletes or follows what is not its own (issue 22, part 2).

Every case checks that the site folder is unchanged (contents, links and
special files, by lstat) and that no file outside the cache was removed; each
runs under an alarm, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import signal
import stat
from pathlib import Path

import pytest
from test_ingest_support import write_labels, write_site

from common.commands import main
from common.ingest import IngestConfig, IngestError, ingest_site
from common.ingest.labels import read_labels
from common.ingest.worker import WorkerSetup, read_file

CONFIG = IngestConfig(image_size=32, workers=1)
SECONDS = 60  # far above what any case takes (a few seconds); a hang fails


@contextlib.contextmanager
def deadline(seconds: int = SECONDS):
    def fail(*_):
        raise TimeoutError(f"ingest still running after {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` by lstat: file hashes, link targets, FIFOs.

    Never opens a special file or follows a link (so it cannot hang itself).
    """
    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                out[rel] = ("file", digest, st.st_mtime_ns)
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode), st.st_mtime_ns)
    return out


def report_codes(cache: Path) -> dict[str, str]:
    report = json.loads((cache / "ingest_report.json").read_text())
    return {f["path"]: f["code"] for f in report["files"] if f["code"]}


def cli_ingest(site: Path, cache: Path, *extra: str) -> int:
    args = ["ingest", "--site-dir", str(site), "--out", str(cache), "--quiet"]
    with deadline():
        return main([*args, "--image-size", "32", "--workers", "1", *extra])


# ---- the cache folder: only our own files, never around the site ------------


def test_a_cache_folder_that_holds_the_site_is_refused_in_one_line(tmp_path, capsys):
    site = write_site(tmp_path / "p" / "site", {"A": 1}, n=2)
    (site / "A" / ".tmp-keep").write_bytes(b"the hospital's")
    (site / ".tmp-mine").write_bytes(b"also theirs")
    before = snapshot(tmp_path)
    assert cli_ingest(site, tmp_path / "p") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'p'}: the cache folder must not")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(tmp_path) == before  # nothing written, nothing removed
    with pytest.raises(IngestError, match="must not contain the site folder"):
        ingest_site(site, cache_dir=tmp_path, config=CONFIG)  # any level above
    assert snapshot(tmp_path) == before


def test_a_cache_inside_the_site_is_still_refused(tmp_path, capsys):
    site = write_site(tmp_path / "site", {"A": 1}, n=2)
    before = snapshot(site)
    assert cli_ingest(site, site / "A" / "cache") == 2
    assert "must not be inside the site folder" in capsys.readouterr().err
    assert snapshot(site) == before


def test_a_shared_cache_folder_keeps_every_file_ingest_did_not_write(tmp_path):
    """A cache folder given as an existing folder with other content (a home
    folder, say): its `.tmp-*` files, at any depth, are not ours and stay; a
    temporary file of ours that a dead ingest left is removed."""
    site = write_site(tmp_path / "site", {"A": 1, "B": 0}, n=2)
    home = tmp_path / "home"
    theirs = [home / ".tmp-editor", home / "docs" / ".tmp-draft.txt"]
    theirs += [home / "pixels" / ".tmp-photo", home / "docs" / "series" / ".tmp-x"]
    for path in theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not ingest's")
    ours = home / ".tmp-ingest-deadbeef.json"
    ours.write_text("{")  # what a killed ingest leaves beside state.json
    before = snapshot(site)
    with deadline():
        result = ingest_site(site, cache_dir=home, config=CONFIG)
        ingest_site(site, cache_dir=home, config=CONFIG)
    assert len(result.patients) == 2
    assert all(path.read_bytes() == b"not ingest's" for path in theirs)
    assert not ours.exists()
    assert snapshot(site) == before


# ---- what the walk must not follow or open -----------------------------------


def test_a_symlink_loop_is_skipped_with_its_reason(tmp_path):
    site = write_site(tmp_path / "site", {"A": 1, "B": 0}, n=2)
    (site / "A" / "a.dcm").symlink_to("b.dcm")
    (site / "A" / "b.dcm").symlink_to("a.dcm")
    (site / "B" / "self.dcm").symlink_to("self.dcm")
    before = snapshot(site)
    with deadline():
        result = ingest_site(site, cache_dir=tmp_path / "cache", config=CONFIG)
    assert [p.n_slices for p in result.patients] == [2, 2]
    codes = report_codes(tmp_path / "cache")
    assert {codes[k] for k in ("A/a.dcm", "A/b.dcm", "B/self.dcm")} == {"link-loop"}
    assert snapshot(site) == before


def test_a_fifo_is_skipped_not_read(tmp_path):
    site = write_site(tmp_path / "site", {"A": 1}, n=2)
    os.mkfifo(site / "A" / "pipe.dcm")
    before = snapshot(site)
    with deadline():
        result = ingest_site(site, cache_dir=tmp_path / "cache", config=CONFIG)
    assert [p.n_slices for p in result.patients] == [2]
    assert report_codes(tmp_path / "cache")["A/pipe.dcm"] == "special-file"
    assert snapshot(site) == before


def test_a_fifo_that_appears_after_the_walk_does_not_block_the_reader(tmp_path):
    site = write_site(tmp_path / "site", {"A": 1}, n=1)
    os.mkfifo(site / "A" / "late.dcm")
    setup = WorkerSetup(str(site), str(tmp_path / "packs"), CONFIG, None)
    with deadline(10):
        result = read_file("A/late.dcm", setup)
    assert result.record["skip"][0] == "special-file"


def test_a_link_to_a_file_outside_the_export_is_not_followed(tmp_path):
    site = write_site(tmp_path / "site", {"A": 1}, n=2)
    other = write_site(tmp_path / "elsewhere", {"Z": 0}, n=1)
    target = next((other / "Z").glob("*.dcm"))
    (site / "A" / "out.dcm").symlink_to(target)
    (site / "A" / "passwd.dcm").symlink_to("/etc/passwd")
    write_labels(site, [("A", "1"), ("Z", "0")])
    before, outside = snapshot(site), snapshot(other)
    with deadline():
        result = ingest_site(site, cache_dir=tmp_path / "cache", config=CONFIG)
    assert [p.patient_id for p in result.patients] == ["A"]  # Z's file not read
    codes = report_codes(tmp_path / "cache")
    assert codes["A/out.dcm"] == codes["A/passwd.dcm"] == "link-outside"
    assert snapshot(site) == before and snapshot(other) == outside


def test_a_link_to_a_file_inside_the_export_is_still_read(tmp_path):
    site = write_site(tmp_path / "site", {"A": 1}, n=2)
    first = sorted((site / "A").glob("*.dcm"))[0]
    (site / "A" / "copy").mkdir()
    (site / "A" / "copy" / "same.dcm").symlink_to(first)
    with deadline():
        ingest_site(site, cache_dir=tmp_path / "cache", config=CONFIG)
    # read (its content is a duplicate of the file it points to), not refused
    assert report_codes(tmp_path / "cache").get("A/copy/same.dcm") != "link-outside"


# ---- labels.csv as spreadsheets save it --------------------------------------

ROWS = "patient_id;label\r\nMüller-1;1\r\nCœur-2;0\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        ROWS.encode("utf-8"),
        codecs.BOM_UTF8 + ROWS.encode("utf-8"),
        codecs.BOM_UTF16_LE + ROWS.encode("utf-16-le"),
        codecs.BOM_UTF16_BE + ROWS.encode("utf-16-be"),
        ROWS.encode("cp1252"),
    ],
    ids=["utf8", "utf8-bom", "utf16le-bom", "utf16be-bom", "cp1252"],
)
def test_labels_saved_by_excel_are_read_in_their_encoding(tmp_path, raw):
    path = tmp_path / "labels.csv"
    path.write_bytes(raw)
    labels = read_labels(path)
    assert {pid: row.label for pid, row in labels.rows.items()} == {
        "Müller-1": 1,
        "Cœur-2": 0,
    }
    assert labels.problems == []


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (ROWS.encode("utf-16-le"), "NUL bytes"),  # UTF-16 without its BOM
        (b"patient_id,label\nA\x81,1\n", "cannot be read as cp1252"),
    ],
    ids=["utf16-no-bom", "not-cp1252"],
)
def test_labels_that_cannot_be_decoded_are_named_in_one_line(tmp_path, raw, says):
    site = write_site(tmp_path / "site", {"A": 1}, n=1)
    (site / "labels.csv").write_bytes(raw)
    with pytest.raises(IngestError, match=says) as err:
        read_labels(site / "labels.csv")
    assert "\n" not in str(err.value) and str(site / "labels.csv") in str(err.value)


def test_the_cli_reads_a_cp1252_labels_file(tmp_path, capsys):
    site = write_site(tmp_path / "site", {"Müller": 1}, n=2)
    (site / "labels.csv").write_bytes("patient_id,label\nMüller,1\n".encode("cp1252"))
    assert cli_ingest(site, tmp_path / "cache") == 0
    assert "1 patients, 1 series, 2 slices kept" in capsys.readouterr().out


# ---- an ingest that keeps nothing fails ---------------------------------------


def test_an_ingest_that_keeps_no_patient_exits_non_zero_with_the_reason(
    tmp_path, capsys
):
    site = write_site(tmp_path / "site", {"A": 1}, n=2)
    write_labels(site, [("nobody", "1")])
    assert cli_ingest(site, tmp_path / "cache") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {site}: no patient kept: ")
    assert "[no-label]" in err and err.count("\n") == 1


def test_an_empty_site_folder_exits_non_zero(tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    write_labels(site, [("A", "1")])
    assert cli_ingest(site, tmp_path / "cache") == 1
    assert "no patient kept: the folder holds no file" in capsys.readouterr().err
