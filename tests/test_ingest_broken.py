"""Files broken on purpose: each is skipped with its own reason, the rest is kept."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, MRImageStorage, SecondaryCaptureImageStorage
from test_ingest_support import ct_dataset, save, write_site

from common.ingest import IngestConfig, IngestError, ingest_site

CONFIG = IngestConfig(image_size=32)


def _good_bytes(tmp_path) -> bytes:
    return save(ct_dataset(patient_id="A"), tmp_path / "good.dcm").read_bytes()


@pytest.fixture()
def broken_site(tmp_path):
    """A clean site (patients A, B) plus one broken file per failure mode."""
    site = write_site(tmp_path / "site", {"A": 1, "B": 0}, n=3)
    good = _good_bytes(tmp_path)
    bad = site / "broken"
    bad.mkdir()
    (bad / "empty.dcm").write_bytes(b"")
    (bad / "random.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    (bad / "notes.txt").write_text("exported by PACS viewer 1.2\n")
    (bad / "truncated.dcm").write_bytes(good[: len(good) // 2])
    (bad / "cut_in_header.dcm").write_bytes(good[:700])
    ds = ct_dataset(patient_id="A")
    del ds.PixelData
    save(ds, bad / "no_pixels.dcm")
    ds = ct_dataset(patient_id="A")
    del ds.RescaleSlope, ds.RescaleIntercept
    save(ds, bad / "no_rescale.dcm")
    ds = ct_dataset(patient_id="A")
    ds.Rows = ds.Columns = 65535
    save(ds, bad / "huge.dcm")
    ds = ct_dataset(patient_id="A", modality="MR", sop_class=MRImageStorage)
    save(ds, bad / "mr.dcm")
    ds = ct_dataset(patient_id="A", sop_class=SecondaryCaptureImageStorage)
    save(ds, bad / "dose_screenshot.dcm")
    ds = ct_dataset(patient_id="A")
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # video: no decoder for a CT slice
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    save(ds, bad / "mpeg2.dcm")
    first = sorted((site / "A").glob("*.dcm"))[0]
    (bad / "copy_of_first.dcm").write_bytes(first.read_bytes())
    ds = ct_dataset(patient_id="NOBODY")
    save(ds, bad / "unlabelled.dcm")
    return site


EXPECTED = {
    "broken/empty.dcm": "empty",
    "broken/random.dcm": "bad-dicom",
    "broken/notes.txt": "not-dicom",
    "broken/truncated.dcm": "truncated",
    "broken/cut_in_header.dcm": "truncated",
    "broken/no_pixels.dcm": "no-pixels",
    "broken/no_rescale.dcm": "no-rescale",
    "broken/huge.dcm": "too-large",
    "broken/mr.dcm": "modality",
    "broken/dose_screenshot.dcm": "secondary-capture",
    "broken/mpeg2.dcm": "transfer-syntax",
    "broken/copy_of_first.dcm": "duplicate-uid",
    "broken/unlabelled.dcm": "no-label",
}


def test_each_broken_file_has_its_reason_and_the_rest_is_kept(broken_site, tmp_path):
    tracemalloc.start()
    result = ingest_site(broken_site, cache_dir=tmp_path / "cache", config=CONFIG)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # 65535 x 65535 pixels would be 8 GiB: the header is refused before decoding.
    assert peak < 200 * 2**20
    assert [p.patient_id for p in result.patients] == ["A", "B"]
    assert [p.n_slices for p in result.patients] == [3, 3]
    report = json.loads(result.report_path.read_text())
    files = {f["path"]: f for f in report["files"]}
    for rel, code in EXPECTED.items():
        entry = files[rel]
        assert entry["code"] == code, (rel, entry)
        # one line, naming the full path, saying what is wrong
        assert entry["reason"].startswith(f"{broken_site / rel}: ")
        assert "\n" not in entry["reason"]
    assert files["broken/mr.dcm"]["reason"].endswith("Modality is MR, expected CT")
    assert "65535x65535" in files["broken/huge.dcm"]["reason"]
    assert "MPEG2" in files["broken/mpeg2.dcm"]["reason"]
    assert "A/IM0001.dcm" in files["broken/copy_of_first.dcm"]["reason"]
    assert files["broken/notes.txt"]["status"] == "excluded"
    assert files["broken/empty.dcm"]["status"] == "error"
    assert report["images_without_label"] == ["NOBODY"]
    assert result.summary.skipped["truncated"] == 2


def test_strict_stops_at_the_first_problem_with_its_reason(broken_site, tmp_path):
    with pytest.raises(IngestError) as err:
        ingest_site(
            broken_site, cache_dir=tmp_path / "cache", config=CONFIG, strict=True
        )
    # broken/copy_of_first.dcm is the first error in path order
    assert str(err.value).startswith(str(broken_site / "broken/copy_of_first.dcm"))
    assert "SOPInstanceUID" in str(err.value)
    # the report is still written, so IT can see every problem at once
    assert (tmp_path / "cache" / "ingest_report.json").is_file()


def test_strict_passes_a_clean_site(tmp_path):
    site = write_site(tmp_path / "site", {"A": 1, "B": 0}, n=2)
    result = ingest_site(site, cache_dir=tmp_path / "c", config=CONFIG, strict=True)
    assert result.summary.slices == 4 and result.summary.errors == 0


def test_unreadable_file_is_reported(tmp_path):
    """A dangling link (an export whose target volume is gone) can't be read."""
    site = write_site(tmp_path / "site", {"A": 1}, n=2)
    (site / "A" / "IM0009.dcm").symlink_to(tmp_path / "gone.dcm")
    result = ingest_site(site, cache_dir=tmp_path / "c", config=CONFIG)
    report = json.loads(result.report_path.read_text())
    (entry,) = [f for f in report["files"] if f["path"] == "A/IM0009.dcm"]
    assert entry["code"] == "unreadable"
    assert "No such file" in entry["reason"]
    assert result.summary.slices == 2
