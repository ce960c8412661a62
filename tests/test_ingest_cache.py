"""The cache: keyed by content and config, only what changed is decoded again."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_ingest_support import chest_hu, ct_dataset, save, tree_hashes, write_site

from common.ingest import IngestConfig, IngestError, ingest_site
from common.ingest import pixels as pixels_module
from common.ingest.cache import copy_rows, row_source, write_array

CONFIG = IngestConfig(image_size=32)


@pytest.fixture()
def site(tmp_path):
    return write_site(tmp_path / "site", {"A": 1, "B": 0, "C": 1}, n=3)


def _no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded a file that was cached")

    monkeypatch.setattr(pixels_module, "stored_frames", refuse)


def _arrays(result) -> dict[str, np.ndarray]:
    return {p.patient_id: np.asarray(p.load()) for p in result.patients}


def test_rerun_on_an_unchanged_folder_reads_and_decodes_nothing(
    site, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    first = ingest_site(site, cache_dir=cache, config=CONFIG)
    assert (first.files_read, first.files_decoded) == (9, 9)
    _no_decoding(monkeypatch)
    again = ingest_site(site, cache_dir=cache, config=CONFIG)
    assert (again.files_read, again.files_decoded) == (0, 0)
    for pid, array in _arrays(first).items():
        np.testing.assert_array_equal(array, _arrays(again)[pid])
    # a new slice policy is a selection over cached slices: still no decoding
    central = IngestConfig(image_size=32, slice_policy="central", central_slices=1)
    picked = ingest_site(site, cache_dir=cache, config=central)
    assert picked.files_decoded == 0 and picked.summary.slices == 3


def test_a_new_config_decodes_again_and_the_old_one_stays_cached(
    site, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    ingest_site(site, cache_dir=cache, config=CONFIG)
    bigger = ingest_site(site, cache_dir=cache, config=IngestConfig(image_size=64))
    assert bigger.files_decoded == 9
    assert bigger.patients[0].load().shape == (3, 64, 64)
    window = IngestConfig(image_size=32, intensity="lung-window")
    assert ingest_site(site, cache_dir=cache, config=window).files_decoded == 9
    _no_decoding(monkeypatch)
    back = ingest_site(site, cache_dir=cache, config=CONFIG)
    assert back.files_decoded == 0 and back.patients[0].load().shape == (3, 32, 32)


def test_a_new_file_is_the_only_one_decoded(site, tmp_path):
    cache = tmp_path / "cache"
    first = ingest_site(site, cache_dir=cache, config=CONFIG)
    a = first.patients[0].series[0]
    ds = ct_dataset(chest_hu(seed=99), patient_id="A", study="1.9", series="1.9.1")
    save(ds, site / "A" / "late.dcm")  # a new study of patient A
    new_slice = ct_dataset(chest_hu(seed=98), patient_id="B", z=-2.0)
    b_series = first.patients[1].series[0]
    b_before = np.array(b_series.load())  # its array is replaced below
    new_slice.StudyInstanceUID = b_series.study_uid
    new_slice.SeriesInstanceUID = b_series.uid
    save(new_slice, site / "B" / "IM0000.dcm")
    again = ingest_site(site, cache_dir=cache, config=CONFIG)
    assert (again.files_read, again.files_decoded) == (2, 2)
    b = again.patients[1].series[0]
    assert b.positions[0] == -2.0 and len(b.sources) == 4  # sorted in, rebuilt
    np.testing.assert_array_equal(b.load()[1:], b_before)
    assert a.array in [s.array for s in again.patients[0].series]  # reused as is
    assert len(again.patients[0].series) == 2


def test_touched_files_are_rehashed_but_not_decoded(site, tmp_path):
    cache = tmp_path / "cache"
    ingest_site(site, cache_dir=cache, config=CONFIG)
    path = site / "A" / "IM0001.dcm"
    os.utime(path, ns=(1, 1))  # same bytes, new mtime (e.g. a copy)
    touched = ingest_site(site, cache_dir=cache, config=CONFIG)
    assert (touched.files_read, touched.files_decoded) == (1, 0)
    path.write_bytes(
        save(ct_dataset(chest_hu(seed=7), patient_id="A"), tmp_path / "x").read_bytes()
    )
    changed = ingest_site(site, cache_dir=cache, config=CONFIG)
    assert (changed.files_read, changed.files_decoded) == (1, 1)
    rehashed = ingest_site(site, cache_dir=cache, config=CONFIG, rehash=True)
    assert (rehashed.files_read, rehashed.files_decoded) == (9, 0)


def test_a_deleted_file_leaves_its_series(site, tmp_path):
    cache = tmp_path / "cache"
    ingest_site(site, cache_dir=cache, config=CONFIG)
    (site / "C" / "IM0002.dcm").unlink()
    again = ingest_site(site, cache_dir=cache, config=CONFIG)
    assert again.files_decoded == 0
    assert [p.n_slices for p in again.patients] == [3, 3, 2]


def test_the_source_folder_is_never_written_or_changed(site, tmp_path):
    before = tree_hashes(site)
    cache = tmp_path / "cache"
    ingest_site(site, cache_dir=cache, config=CONFIG)
    ingest_site(site, cache_dir=cache, config=IngestConfig(image_size=16))
    ingest_site(site, cache_dir=cache, config=CONFIG, rehash=True)
    assert tree_hashes(site) == before
    with pytest.raises(IngestError, match="must not be inside the site folder"):
        ingest_site(site, cache_dir=site / "cache", config=CONFIG)
    assert tree_hashes(site) == before


def test_writes_leave_no_temporary_files_and_a_broken_array_is_rebuilt(site, tmp_path):
    cache = tmp_path / "cache"
    first = ingest_site(site, cache_dir=cache, config=CONFIG)
    assert not list(cache.rglob(".tmp-*")) and not list(cache.rglob("pack-*"))
    broken = first.patients[0].series[0].array
    broken.write_bytes(broken.read_bytes()[:100])  # a disk that filled up
    again = ingest_site(site, cache_dir=cache, config=CONFIG)
    assert again.files_decoded == 3
    np.testing.assert_array_equal(_arrays(again)["A"], _arrays(first)["A"])


def test_two_workers_give_the_same_cache(site, tmp_path):
    one = ingest_site(site, cache_dir=tmp_path / "one", config=CONFIG)
    two = ingest_site(
        site, cache_dir=tmp_path / "two", config=IngestConfig(image_size=32, workers=2)
    )
    assert two.files_decoded == 9
    for pid, array in _arrays(one).items():
        np.testing.assert_array_equal(array, _arrays(two)[pid])


def test_training_reads_memory_mapped_arrays(site, tmp_path):
    result = ingest_site(site, cache_dir=tmp_path / "cache", config=CONFIG)
    array = result.patients[0].series[0].load()
    assert isinstance(array, np.memmap) and array.dtype == np.float16


def test_series_arrays_are_copied_file_to_file_as_numpy_writes_them(tmp_path):
    size = 4
    rng = np.random.default_rng(0)
    frames = rng.uniform(-1, 1, (7, size, size)).astype(np.float16)
    pack = tmp_path / "pack-1.f16"
    pack.write_bytes(frames[:5].tobytes())
    older = tmp_path / "old.npy"
    write_array(older, frames[5:])
    assert row_source(pack, size) == (0, 5)
    rows = [(str(pack), 0, row) for row in (3, 4, 0)]
    rows.append((str(older), row_source(older, size)[0], 1))
    copy_rows(tmp_path / "series.npy", rows, size)
    expected = tmp_path / "expected.npy"
    write_array(expected, frames[[3, 4, 0, 6]])
    assert (tmp_path / "series.npy").read_bytes() == expected.read_bytes()
    assert row_source(older, size)[1] == 2
    pack.write_bytes(frames[:2].tobytes()[:-1])  # cut short: not whole rows
    with pytest.raises(ValueError):
        row_source(pack, size)
    with pytest.raises(ValueError):  # a different size
        row_source(older, size * 2)


def test_files_saved_together_appear_at_the_end_or_not_at_all(tmp_path):
    from common.ingest.cache import durable_together, write_text

    (tmp_path / "b.json").write_text("old")
    with durable_together():
        write_text(tmp_path / "a.json", "1")
        write_text(tmp_path / "b.json", "2")
        assert not (tmp_path / "a.json").exists()  # not before the fsyncs
    assert (tmp_path / "a.json").read_text() == "1"
    assert (tmp_path / "b.json").read_text() == "2"
    with pytest.raises(RuntimeError), durable_together():
        write_text(tmp_path / "b.json", "3")
        raise RuntimeError("the run failed")
    assert (tmp_path / "b.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


@pytest.mark.parametrize("rows", [0, 1, 2, 9, 10, 99, 100, 1000])
def test_row_source_reads_arrays_as_numpy_does(tmp_path, rows):
    """The fast header check agrees with numpy's parser, whole, extended or cut."""
    size = 8
    path = tmp_path / "a.npy"
    write_array(path, np.zeros((rows, size, size), np.float16))
    offset = len(path.read_bytes()) - rows * size * size * 2
    assert row_source(path, size) == (offset, rows)
    whole = path.read_bytes()
    path.write_bytes(whole + b"\0" * 5)  # a partial row more: still `rows` rows
    assert row_source(path, size) == (offset, rows)
    path.write_bytes(whole + b"\0" * (size * size * 2))  # a whole row more
    assert row_source(path, size) == (offset, rows)
    if rows:
        path.write_bytes(whole[:-1])
        with pytest.raises(ValueError):
            row_source(path, size)


def test_state_text_is_what_json_gives(tmp_path):
    """Records encoded as they arrived give the text of encoding it whole."""
    import json

    from common.ingest.cache import Cache, State

    cache = Cache(tmp_path / "cache", tmp_path / "site")
    records = {"k1": {"header": {"a": [1.5, None]}, "skip": None}, "k2": {"x": "é"}}
    state = State(files={"a/b.dcm": [1, 2, 3, 4, "k1"]}, records=records)
    expected = json.dumps({"version": 1, "files": state.files, "records": records})
    for encoded in (None, {}, {"k1": json.dumps(records["k1"])}):
        cache.save_state(state, encoded)
        assert (tmp_path / "cache" / "state.json").read_text() == expected
    cache.save_state(State())
    assert json.loads((tmp_path / "cache" / "state.json").read_text())["records"] == {}
