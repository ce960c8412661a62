"""pydicom's own test files as a foreign corpus: each file is used or explained.

The folders are ingested in place (they are the "site"), which also shows that
ingest never writes into, or changes, the folder it reads.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from test_ingest_support import tree_hashes, write_labels

from common.ingest import IngestConfig, ingest_site
from common.ingest.checks import check_slice
from common.ingest.header_fields import summarize
from common.ingest.headers import quiet_pydicom, read_complete, read_dataset
from common.ingest.pixels import hu_slices
from common.ingest.reasons import REASONS, Skip

CONFIG = IngestConfig(image_size=32, series="all")


def _corpora() -> list[Path]:
    folders = [Path(get_testdata_file("CT_small.dcm")).parent]
    extra = get_testdata_file("693_UNCR.dcm", download=False)  # pydicom-data
    if extra is not None:
        folders.append(Path(extra).parent)
    return folders


@pytest.mark.parametrize("folder", _corpora(), ids=lambda p: p.parent.name)
def test_every_file_is_used_or_skipped_with_a_reason(tmp_path, folder):
    before = tree_hashes(folder)
    labels = write_labels(tmp_path, [])
    cache = tmp_path / "cache"
    # First pass: find the patients; then label them all and ingest for real.
    first = ingest_site(folder, labels, cache, CONFIG, progress=False)
    patients = sorted(first.summary.images_without_label)
    assert patients, "the corpus has CT images"
    write_labels(tmp_path, [(pid, str(i % 2)) for i, pid in enumerate(patients)])
    result = ingest_site(folder, labels, cache, CONFIG, progress=False)

    report = json.loads(result.report_path.read_text())
    entries = {f["path"]: f for f in report["files"]}
    for path in before:
        entry = entries[path]
        if entry["status"] == "used":
            assert entry["slices"] >= 1
        else:
            assert entry["code"] in REASONS
            assert entry["reason"].startswith(f"{folder / path}: ")
            assert len(entry["reason"].splitlines()) == 1
    used = [f for f in entries.values() if f["status"] == "used"]
    assert used and result.summary.slices >= len(used)
    # Nothing is written into the corpus, and nothing in it changes.
    assert tree_hashes(folder) == before


def test_the_bundled_ct_files_are_ingested(tmp_path):
    folder = Path(get_testdata_file("CT_small.dcm")).parent
    ct_small = pydicom.dcmread(folder / "CT_small.dcm")
    labels = write_labels(tmp_path, [(str(ct_small.PatientID), "1")])
    result = ingest_site(folder, labels, tmp_path / "cache", CONFIG, progress=False)
    entries = {
        f["path"]: f for f in json.loads(result.report_path.read_text())["files"]
    }
    assert entries["CT_small.dcm"]["status"] == "used"
    assert entries["MR_small.dcm"]["reason"].endswith("Modality is MR, expected CT")
    assert entries["dicomdirtests/DICOMDIR"]["code"] == "dicomdir"
    assert entries["rtplan.dcm"]["code"] in ("sop-class", "modality")
    assert entries["test-SR.dcm"]["code"] in ("sop-class", "modality")


def _outcome(read, data: bytes, name: str):
    """(header, HU at 32 px) of one file, or the reason it is skipped."""
    try:
        parsed = read(data, name)
        header = summarize(parsed)
        check_slice(header, CONFIG)
        return header, hu_slices(parsed, header, 32)
    except Skip as skip:
        return skip.code, skip.detail


@pytest.mark.parametrize("folder", _corpora(), ids=lambda p: p.parent.name)
def test_the_usual_file_reader_agrees_with_dcmread(folder):
    """`read_dataset` reads only the elements ingest uses, without `dcmread`:
    the same header summary, the same reason or the same HU for every file."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    usual = 0
    with quiet_pydicom():
        for path in files:
            data = path.read_bytes()
            with contextlib.suppress(Skip):
                usual += len(read_dataset(data, path.name).ds) < len(
                    read_complete(data, path.name).ds
                )
            fast = _outcome(read_dataset, data, path.name)
            full = _outcome(read_complete, data, path.name)
            assert fast[0] == full[0], path
            if isinstance(fast[1], np.ndarray):
                np.testing.assert_array_equal(fast[1], full[1], err_msg=str(path))
            else:
                assert fast[1] == full[1], path
    assert usual > len(files) // 3  # many took the short way


@pytest.mark.parametrize("folder", _corpora(), ids=lambda p: p.parent.name)
def test_the_element_walker_reads_what_pydicom_reads(folder):
    """`usual_elements` gives pydicom's raw elements, or leaves the file to it."""
    from io import BytesIO

    from pydicom.filereader import read_dataset as pydicom_read

    from common.ingest.elements import usual_elements
    from common.ingest.headers import _FAST_TAGS, _usual_syntax

    walked = 0
    with quiet_pydicom():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            fast = usual_elements(data, _FAST_TAGS, _usual_syntax, 1 << 16)
            if fast is None:
                continue
            walked += 1
            stream = BytesIO(data)
            stream.seek(132)
            meta = pydicom_read(
                stream, False, True, stop_when=lambda tag, vr, n: tag >> 16 != 2
            )
            ds = pydicom_read(
                stream,
                _usual_syntax(fast.transfer_syntax),
                True,
                stop_when=lambda tag, vr, n: (
                    tag in (0x7FE00008, 0x7FE00009, 0x7FE00010)
                ),
                specific_tags=list(_FAST_TAGS),
            )
            assert dict(meta._dict) == fast.meta, path
            assert dict(ds._dict) == fast.dataset, path
            assert stream.tell() == fast.pixel_offset, path
    assert walked > 20
