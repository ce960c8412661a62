"""Stored values -> HU -> cached slices: vendor conventions, padding, policies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from test_ingest_support import (
    chest_hu,
    ct_dataset,
    enhanced_ct_dataset,
    save,
    write_labels,
)

from common.ingest import IngestConfig, ingest_site
from common.ingest.cache import to_pack_dtype
from common.ingest.dicom_io import DicomReadError, read_hu, resize, to_model_input
from common.ingest.header_fields import summarize
from common.ingest.headers import read_dataset
from common.ingest.pixels import hu_full, hu_slices, stored_frames
from common.ingest.policy import lung_fraction, paper_unit_range, to_unit_range


def parse(path: Path):
    parsed = read_dataset(path.read_bytes(), path.name)
    return parsed, summarize(parsed)


@pytest.mark.parametrize(
    ("intercept", "slope", "signed", "bits"),
    [
        (-1024.0, 1.0, True, 16),  # most vendors
        (-1024.0, 1.0, False, 12),  # unsigned 12-bit (older scanners)
        (0.0, 1.0, True, 16),  # stored values are HU already
        (-1024.0, 0.5, True, 16),  # sub-HU steps
        (-8192.0, 4.0, False, 16),  # large intercept, coarse steps
    ],
)
def test_hu_follows_rescale_slope_and_intercept(
    tmp_path, intercept, slope, signed, bits
):
    hu = chest_hu()
    quantum = np.rint((hu - intercept) / slope) * slope + intercept
    path = save(
        ct_dataset(
            hu, intercept=intercept, slope=slope, signed=signed, bits_stored=bits
        ),
        tmp_path / "x.dcm",
    )
    np.testing.assert_allclose(read_hu(path), quantum, atol=1e-3)


def test_bits_above_bits_stored_are_ignored(tmp_path):
    """A 12-bit signed file whose top 4 bits hold overlay garbage."""
    hu = chest_hu()
    ds = ct_dataset(hu, intercept=0.0, bits_stored=12)
    stored = np.frombuffer(ds.PixelData, np.int16).copy()
    garbage = (stored.view(np.uint16) & 0x0FFF) | 0xA000  # bits 13 and 15 set
    ds.PixelData = garbage.astype(np.uint16).tobytes()
    path = save(ds, tmp_path / "x.dcm")
    np.testing.assert_array_equal(read_hu(path), hu.astype(np.float32))


def test_native_fast_path_matches_pydicom(tmp_path):
    paths = [
        save(ct_dataset(bits_stored=12, intercept=0.0), tmp_path / "a.dcm"),
        save(ct_dataset(signed=False), tmp_path / "b.dcm"),
        Path(get_testdata_file("CT_small.dcm")),
    ]
    for path in paths:
        parsed, header = parse(path)
        expected = pydicom.dcmread(path).pixel_array
        np.testing.assert_array_equal(stored_frames(parsed, header)[0], expected)


def _with_fov_padding(hu: np.ndarray, value: int) -> np.ndarray:
    """Stored values (intercept -1024) with `value` outside the scan circle."""
    stored = (hu.astype(np.int32) + 1024).astype(np.int16)
    y, x = np.mgrid[0:64, 0:64] - 31.5
    stored[x**2 + y**2 > 31**2] = value
    return stored


@pytest.mark.parametrize("tagged", [True, False])
def test_outside_fov_padding_becomes_the_smallest_real_value(tmp_path, tagged):
    hu = chest_hu()
    ds = ct_dataset(hu, padding=-2000 if tagged else None)
    ds.PixelData = _with_fov_padding(hu, -2000).tobytes()
    out = read_hu(save(ds, tmp_path / "x.dcm"))
    y, x = np.mgrid[0:64, 0:64] - 31.5
    inside = x**2 + y**2 <= 31**2
    assert out.min() == hu[inside].min()
    np.testing.assert_array_equal(out[inside], hu[inside])
    assert (out[~inside] == hu[inside].min()).all()


def test_padding_value_inside_the_real_range_is_still_padding(tmp_path):
    """Unsigned data padded with 0 (= -1024 HU, a legal air value)."""
    hu = np.clip(chest_hu(), -1000, None)
    ds = ct_dataset(hu, signed=False, padding=0)
    stored = _with_fov_padding(hu, 0)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    out = read_hu(save(ds, tmp_path / "x.dcm"))
    assert out.min() >= -1000
    assert (out[stored == 0] == out[stored != 0].min()).all()


def test_monochrome1_gives_the_same_hu(tmp_path):
    """MONOCHROME1 tells a viewer to invert the display, not to change HU."""
    hu = chest_hu()
    one = save(ct_dataset(hu, photometric="MONOCHROME1"), tmp_path / "m1.dcm")
    two = save(ct_dataset(hu, photometric="MONOCHROME2"), tmp_path / "m2.dcm")
    np.testing.assert_array_equal(read_hu(one), read_hu(two))


def test_multiframe_enhanced_ct_frames_are_ordered_slices(tmp_path):
    frames = [chest_hu(seed=s) for s in range(3)]
    z = [4.0, 0.0, 2.0]  # frames stored out of body-axis order
    site = tmp_path / "site"
    save(enhanced_ct_dataset(frames, z, patient_id="E1"), site / "enh.dcm")
    write_labels(site, [("E1", "1")])
    config = IngestConfig(image_size=64)
    result = ingest_site(site, cache_dir=tmp_path / "cache", config=config)
    (series,) = result.patients[0].series
    assert series.positions == (0.0, 2.0, 4.0)
    assert series.sources == ("enh.dcm#1", "enh.dcm#2", "enh.dcm#0")
    loaded = series.load()
    for row, frame in zip(loaded, (frames[1], frames[2], frames[0]), strict=True):
        expected = paper_unit_range(frame.astype(np.float32))
        np.testing.assert_allclose(row, expected, atol=2e-3)


def test_read_hu_refuses_a_multiframe_file(tmp_path):
    path = save(enhanced_ct_dataset([chest_hu()] * 2, [0.0, 1.0]), tmp_path / "e.dcm")
    with pytest.raises(DicomReadError, match="2 frames"):
        read_hu(path)


@pytest.mark.parametrize("shape", [(48, 80), (80, 48)])
def test_non_square_matrix_keeps_its_aspect_ratio(shape):
    image = np.full(shape, 100.0, np.float32)
    out = resize(image, 16)
    assert out.shape == (16, 16)
    # The padding to a square uses the minimum, so the strips are flat ...
    assert out.min() == pytest.approx(100.0)
    image[0, 0] = -1000.0
    out = resize(image, 16)
    band = out[:, 0] if shape[0] > shape[1] else out[0, :]
    assert band.max() == pytest.approx(-1000.0)  # ... of the smallest value


@pytest.mark.parametrize("matrix", [128, 100, 40])
def test_any_matrix_becomes_the_model_size(matrix):
    hu = chest_hu(matrix).astype(np.float32)
    x = to_model_input(hu, 64)
    assert x.shape == (64, 64, 3)
    assert x.min() == pytest.approx(-1.0) and x.max() == pytest.approx(1.0)


def test_integer_shrink_is_the_area_mean():
    from PIL import Image

    hu = chest_hu(256).astype(np.float32)
    box = np.asarray(
        Image.fromarray(hu, mode="F").resize((64, 64), Image.Resampling.BOX)
    )
    np.testing.assert_allclose(resize(hu, 64), box, atol=1e-3)


def test_cached_slices_follow_the_paper_preprocessing(tmp_path):
    """hu_slices (shrink in stored units, rescale after) == HU first, then shrink."""
    hu = chest_hu(128)
    ds = ct_dataset(hu, intercept=-1024.0, slope=1.0, padding=-2000)
    stored = (hu.astype(np.int32) + 1024).astype(np.int16)
    stored[:10] = -2000
    ds.PixelData = stored.tobytes()
    parsed, header = parse(save(ds, tmp_path / "x.dcm"))
    small = hu_slices(parsed, header, 64)[0]
    reference = to_model_input(hu_full(parsed, header)[0], 64)[..., 0]
    np.testing.assert_allclose(
        to_unit_range(small, IngestConfig()), reference, atol=1e-4
    )


def test_paper_policy_clips_metal_when_the_range_is_wide():
    hu = np.array([[-1000.0, 0.0], [500.0, 3500.0]], np.float32)
    out = paper_unit_range(hu)
    assert out[0, 0] == -1.0 and out[1, 1] == 1.0
    assert out[1, 0] == pytest.approx((500 + 1000) / 4000 * 2 - 1)


def test_lung_window_policy_maps_the_window_to_unit_range():
    config = IngestConfig(
        intensity="lung-window", window_center=-600, window_width=1500
    )
    hu = np.array([[-2000.0, -1350.0], [-600.0, 500.0]], np.float32)
    np.testing.assert_allclose(
        to_unit_range(hu, config), [[-1.0, -1.0], [0.0, 1.0]], atol=1e-6
    )


def test_lung_share_counts_lungs_not_outside_air():
    with_lungs = lung_fraction(chest_hu(seed=1).astype(np.float32))
    abdomen = lung_fraction(chest_hu(seed=1, lung=False).astype(np.float32))
    assert 0.05 < with_lungs < 0.3
    assert abdomen == 0.0


def test_pack_conversion_is_numpys_float16_cast():
    """The bit-level float16 cast gives numpy's bits (rounding ties, subnormals,
    signed zeros, overflow, nan); it was also checked on every float32 below
    65520 in magnitude."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    edges = np.arange(0, 1 << 16, dtype=np.uint32) << np.uint32(13)  # ties/steps
    edges = np.concatenate([edges, edges + 1, edges - 1, edges + 0x1000])
    values = np.concatenate([bits, edges, edges | np.uint32(1 << 31)])
    for x in (values.view(np.float32), rng.uniform(-1, 1, 100_000).astype(np.float32)):
        finite = x[np.abs(x) < 65504]
        for sample in (finite, finite.reshape(-1, 4)[:, :3], x):
            with np.errstate(over="ignore"):
                expected = sample.astype(np.float16)
                got = to_pack_dtype(sample)
            assert got.dtype == np.float16 and got.shape == sample.shape
            assert np.array_equal(got.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_shrink_in_the_stored_integer_type_is_bit_identical(dtype, k):
    """Block sums in int16/uint16 (when they cannot overflow) == float32 sums."""
    from common.ingest.pixels import _block_mean_exact, _block_mean_native

    rng = np.random.default_rng(k)
    info = np.iinfo(dtype)
    n = 24
    for bound in (info.max // (k * k), info.max // k):  # columns in float32 too
        low = 0 if info.min == 0 else -bound
        frame = rng.integers(low, bound + 1, (n * k, n * k)).astype(dtype)
        frame[: k + 1] = low  # some padding below the floor
        floor = None if k == 3 else dtype(low + 7)
        expected = _block_mean_exact(frame, k, n, floor)
        got = _block_mean_native(frame, k, n, floor, bound)
        assert got.dtype == np.float32
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("size", [128, 64, 32, 48])  # 2x2 ... 8x8 blocks, resize
@pytest.mark.parametrize("intensity", ["paper", "lung-window"])
def test_cached_slices_are_the_unit_range_of_hu_slices(tmp_path, size, intensity):
    """`cached_slices` (a lookup table when the block sums are few) gives, bit
    for bit, the float16 of `to_unit` of `hu_slices` under the policy."""
    from common.ingest.pixels import cached_slices
    from common.ingest.policy import intensity_range, to_unit

    config = IngestConfig(image_size=size, intensity=intensity)
    frames = [chest_hu(256, seed=s) for s in range(2)]
    stored = _with_fov_padding(chest_hu(64), -2000)
    cases = [
        ct_dataset(frames[0], bits_stored=12, padding=-2000),
        ct_dataset(frames[0], signed=False, slope=0.5, intercept=-1024.0),
        ct_dataset(frames[0], signed=False, padding=0),  # explicit padding
        enhanced_ct_dataset(frames, [0.0, 1.0]),
    ]
    padded = ct_dataset(chest_hu(64), padding=-2000)
    padded.PixelData = stored.tobytes()
    cases.append(padded)
    for index, ds in enumerate(cases):
        parsed, header = parse(save(ds, tmp_path / f"{index}.dcm"))
        got, ranges = cached_slices(parsed, header, config)
        hu = hu_slices(parsed, header, size)
        assert ranges == [list(intensity_range(frame, config)) for frame in hu]
        expected = np.stack(
            [to_unit(frame, *intensity_range(frame, config)) for frame in hu]
        ).astype(np.float16)
        assert got.dtype == np.float16
        assert np.array_equal(got.view(np.uint16), expected.view(np.uint16)), index
