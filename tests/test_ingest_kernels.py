"""Compiled pixel kernels == the numpy steps they replace, integer for integer."""

from __future__ import annotations

import numpy as np
import pytest
from test_ingest_support import chest_hu, ct_dataset, enhanced_ct_dataset, save

from common.ingest import IngestConfig, kernels
from common.ingest.header_fields import summarize
from common.ingest.headers import read_dataset
from common.ingest.pixels import cached_slices

DTYPES = [np.int16, np.uint16]


def _frames(dtype, side: int, seed: int) -> list[np.ndarray]:
    """Random frames over the whole type, narrow ones, and with padding."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    wide = rng.integers(info.min, int(info.max) + 1, (side, side)).astype(dtype)
    narrow = rng.integers(0, 4096, (side, side)).astype(dtype)
    padded = narrow.copy()
    padded[: side // 3, : side // 2] = info.min if info.min else 0
    extreme = np.full((side, side), info.max, dtype)
    extreme[0, 0] = info.min
    return [wide, narrow, padded, extreme]


def _read_only(frame: np.ndarray) -> np.ndarray:
    """As native pixels arrive: a view of a file's bytes."""
    return np.frombuffer(frame.tobytes(), frame.dtype).reshape(frame.shape)


@pytest.mark.parametrize("dtype", DTYPES)
def test_range_and_floor_match_numpy(dtype):
    info = np.iinfo(dtype)
    for frame in _frames(dtype, 48, 1):
        for array in (frame, _read_only(frame)):
            assert kernels.stored_range(array) == (int(frame.min()), int(frame.max()))
            for low in (int(info.min) - 5, int(info.min), -3, 0, 7, 4095, 70000):
                clamped = min(max(low, int(info.min)), int(info.max))
                above = frame[frame >= clamped]
                expected = int(above.min()) if above.size else None
                assert kernels.min_at_or_above(array, low) == expected, low


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 8, 16])
def test_block_sums_match_numpy(dtype, k):
    for seed, frame in enumerate(_frames(dtype, 16 * k, k)):
        n = frame.shape[0] // k
        for floor in (None, frame.dtype.type(100 + seed)):
            filled = frame if floor is None else np.maximum(frame, floor)
            expected = filled.astype(np.int64).reshape(n, k, n, k).sum(axis=(1, 3))
            got, first, last = kernels.block_sums(_read_only(frame), k, floor)
            assert got.dtype == np.int32
            assert np.array_equal(got, expected)
            assert (first, last) == (int(expected.min()), int(expected.max()))


def test_kernels_take_only_what_they_are_built_for():
    frame = np.zeros((4, 4), np.int16)
    assert kernels.fits(frame)
    assert not kernels.fits(frame[:, ::2])  # not C order
    assert not kernels.fits(frame.astype(">i2"))  # big-endian
    assert not kernels.fits(frame.astype(np.uint8))
    assert not kernels.fits(frame[:0])  # empty: numpy's error is reported


def test_lookup_is_take():
    rng = np.random.default_rng(3)
    sums = rng.integers(-500, 900, (32, 32)).astype(np.int32)
    table = rng.integers(0, 65536, 1400).astype(np.uint16)
    out = np.empty((32, 32), np.uint16)
    kernels.lookup(sums, table, -500, out)
    assert np.array_equal(out, table[sums + 500])


@pytest.mark.parametrize("size", [256, 128, 64, 48])
@pytest.mark.parametrize("intensity", ["paper", "lung-window"])
def test_cached_slices_are_the_same_without_kernels(
    tmp_path, monkeypatch, size, intensity
):
    """What is cached does not depend on the kernels, bit for bit."""
    config = IngestConfig(image_size=size, intensity=intensity)
    frames = [chest_hu(256, seed=s) for s in range(2)]
    cases = [
        ct_dataset(frames[0], bits_stored=12, padding=-2000),
        ct_dataset(frames[1], signed=False, slope=0.5, intercept=-1024.0),
        ct_dataset(frames[0], signed=False, padding=0),
        enhanced_ct_dataset(frames, [0.0, 1.0]),
    ]
    wide = ct_dataset(chest_hu(512, seed=3), padding=-2000)
    stored = np.frombuffer(wide.PixelData, np.int16).reshape(512, 512).copy()
    y, x = np.mgrid[0:512, 0:512] - 255.5
    stored[x**2 + y**2 > 250**2] = -2000
    wide.PixelData = stored.tobytes()
    cases.append(wide)
    for index, ds in enumerate(cases):
        path = save(ds, tmp_path / f"{index}.dcm")
        results = []
        for fits in (kernels.fits, lambda frame: False):
            monkeypatch.setattr(kernels, "fits", fits)
            parsed = read_dataset(path.read_bytes(), path.name)
            results.append(cached_slices(parsed, summarize(parsed), config))
        (got, got_ranges), (expected, ranges) = results
        assert got_ranges == ranges, index
        assert np.array_equal(got.view(np.uint16), expected.view(np.uint16)), index
