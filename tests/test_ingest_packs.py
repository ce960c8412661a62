"""Series packs: a series decoded whole by one process is renamed, not copied,
and the cache is the same bytes whichever way it was written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid
from test_ingest_support import chest_hu, ct_dataset, save, write_labels, write_series

from common.ingest import IngestConfig, ingest_site
from common.ingest import assemble as assemble_module
from common.ingest import packs as packs_module
from common.ingest.cache import copy_rows, write_array, write_rows
from common.ingest.packs import folder_chunks, whole_packs


@pytest.fixture()
def site(tmp_path):
    """A series per folder (A, named against slice order); two series of one
    study mixed in one folder (B); one series over two folders (C), which the
    process of one folder cannot see whole."""
    site = tmp_path / "site"
    write_series(site, "A", 3, seed=1)
    study, other, first, second, split = (generate_uid() for _ in range(5))
    for i in range(3):
        for series, n in ((first, 2), (second, 3)):
            if i < n:
                ds = ct_dataset(
                    chest_hu(seed=i + n), patient_id="B", study=study, series=series
                )
                ds.ImagePositionPatient = [-22.0, -22.0, 2.0 * i]
                save(ds, site / "B" / f"IM{i}{n}.dcm")
    for i, folder in enumerate(("top", "top", "bottom", "bottom")):
        ds = ct_dataset(chest_hu(seed=i), patient_id="C", study=other, series=split)
        ds.ImagePositionPatient = [-22.0, -22.0, 2.0 * i]
        save(ds, site / "C" / folder / f"IM{i}.dcm")
    write_labels(site, [("A", "1"), ("B", "0"), ("C", "1")])
    return site


def _cache_bytes(cache) -> dict[str, bytes]:
    """Series arrays and the index: what training reads."""
    return {
        p.relative_to(cache).as_posix(): p.read_bytes()
        for p in sorted((cache / "pixels").rglob("*"))
        if p.is_file()
    }


def _renames(monkeypatch) -> list[int]:
    counted: list[int] = []
    real = assemble_module.whole_packs

    def counting(*args):
        renames, copies = real(*args)
        counted.append(len(renames))
        return renames, copies

    monkeypatch.setattr(assemble_module, "whole_packs", counting)
    return counted


def test_renamed_and_copied_series_are_the_same_bytes(site, tmp_path, monkeypatch):
    monkeypatch.setattr(packs_module, "MIN_CHUNK", 1)  # a chunk per folder
    config = IngestConfig(image_size=16)
    renames = _renames(monkeypatch)
    one = ingest_site(site, cache_dir=tmp_path / "one", config=config)
    assert renames == [3]  # A, both series of B; C is copied from two packs
    two = ingest_site(
        site, cache_dir=tmp_path / "two", config=IngestConfig(image_size=16, workers=2)
    )
    monkeypatch.setattr(packs_module, "MAX_HELD_BYTES", 2 * 16 * 16 * 2)
    ingest_site(site, cache_dir=tmp_path / "held", config=config)  # written early
    monkeypatch.setattr(assemble_module, "whole_packs", lambda c, _d, _s: ([], c))
    copied = ingest_site(site, cache_dir=tmp_path / "copied", config=config)
    assert one.summary.slices == 10 and len(one.patients[1].series) == 1
    expected = _cache_bytes(tmp_path / "copied")
    assert _cache_bytes(tmp_path / "one") == expected
    assert _cache_bytes(tmp_path / "two") == expected
    assert _cache_bytes(tmp_path / "held") == expected
    assert not list((tmp_path / "one").rglob("packs"))
    for result in (one, two, copied):
        assert result.patients[2].series[0].positions == (0.0, 2.0, 4.0, 6.0)


def test_a_pack_is_renamed_only_when_it_is_exactly_one_series(tmp_path):
    size = 2
    packs = tmp_path / "packs"
    packs.mkdir()
    frames = np.arange(3 * size * size, dtype=np.float16).reshape(3, size, size)
    whole = write_rows(packs, [frames[:1], frames[1:]], size)
    shared = write_rows(packs, [frames], size)
    older = tmp_path / "old.npy"
    write_array(older, frames)
    base = 128  # the .npy header of these small arrays
    rows = [(whole, base, i) for i in range(3)]
    copies = [
        (tmp_path / "a.npy", rows),
        (tmp_path / "b.npy", rows[::-1]),  # another order of the same pack
        (tmp_path / "c.npy", [(shared, base, i) for i in range(3)]),
        (tmp_path / "d.npy", [(str(older), base, i) for i in range(3)]),
        (tmp_path / "e.npy", [(shared, base, 0), (shared, base, 1)]),
    ]
    renames, rest = whole_packs(copies, packs, size)
    assert renames == []  # a: read by b too; c: e reads it too; d: not a pack
    renames, rest = whole_packs(copies[:1] + copies[3:4], packs, size)
    assert renames == [(whole, tmp_path / "a.npy")] and len(rest) == 1
    copy_rows(tmp_path / "copy.npy", rows, size)
    write_array(tmp_path / "numpy.npy", frames)
    assert (tmp_path / "copy.npy").read_bytes() == (tmp_path / "numpy.npy").read_bytes()
    assert Path(whole).read_bytes() == (tmp_path / "numpy.npy").read_bytes()


def test_chunks_are_whole_folders_where_the_work_allows():
    jobs = [(f"{p}/{i:03d}.dcm", True) for p in ("a", "b", "c") for i in range(40)]
    jobs += [(f"d/{i}.dcm", True) for i in range(4)] + [("e/1.dcm", True)]
    one = folder_chunks(jobs, 1)
    assert [len(c) for c in one] == [40, 40, 40, 5]  # small folders joined
    assert [job for chunk in one for job in chunk] == jobs
    two = folder_chunks(jobs, 2)  # 125 jobs: folders above 16 files are cut
    assert sorted(len(c) for c in two) == [5] + [8] * 3 + [16] * 6
    assert sorted(job for chunk in two for job in chunk) == sorted(jobs)
    assert [len(c) for c in two] == sorted((len(c) for c in two), reverse=True)
