"""First-order radiomics: hand-computed values of known slices, the body mask,
the HU recovered from the cache's [-1, 1] and its range."""

import numpy as np
import pytest

from common.evaluation.radiomics import (
    FEATURES,
    HIST_BINS,
    HU_SCALE,
    N_FEATURES,
    WINDOW_HU,
    body_mask,
    features,
    first_order,
    slice_features,
)
from common.ingest.policy import paper_range, to_unit


def feature(vector: np.ndarray, name: str) -> float:
    return float(vector[FEATURES.index(name)])


def known_slice() -> np.ndarray:
    """32 x 32 HU: air outside, padding in the corners, a 16 x 16 body of soft
    tissue (40 HU) holding a 4 x 4 lung (-860 HU) and a 2 x 2 bone (700 HU)."""
    hu = np.full((32, 32), -1000.0)
    hu[:3, :3] = -2000.0  # padding outside the field of view
    hu[8:24, 8:24] = 40.0
    hu[12:16, 12:16] = -860.0
    hu[18:20, 18:20] = 700.0
    return hu


def test_first_order_of_a_known_vector_equals_hand_computed_values():
    # 4 values inside the window: -1000, -1000, 0, 100 HU
    v = first_order(np.array([-1000.0, -1000.0, 0.0, 100.0]), WINDOW_HU, 1.0)
    assert feature(v, "mean") == pytest.approx(-475.0)
    # population SD: deviations -525, -525, 475, 575; squares sum 1,107,500 / 4
    assert feature(v, "sd") == pytest.approx(np.sqrt(1_107_500 / 4))
    m2 = 1_107_500 / 4
    m3 = (2 * (-525.0) ** 3 + 475.0**3 + 575.0**3) / 4
    m4 = (2 * 525.0**4 + 475.0**4 + 575.0**4) / 4
    assert feature(v, "skewness") == pytest.approx(m3 / m2**1.5)
    assert feature(v, "kurtosis") == pytest.approx(m4 / m2**2)
    # linear-interpolated percentiles of (-1000, -1000, 0, 100)
    assert feature(v, "p50") == pytest.approx(-500.0)
    assert feature(v, "p25") == pytest.approx(-1000.0)
    assert feature(v, "p75") == pytest.approx(25.0)
    # 50 HU bins from -1100: -1000 in bin 2, 0 in bin 22, 100 in bin 24
    share = np.zeros(HIST_BINS)
    share[[2, 22, 24]] = [0.5, 0.25, 0.25]
    np.testing.assert_allclose(v[-HIST_BINS:], share)
    assert feature(v, "entropy") == pytest.approx(1.5)  # -(.5 log .5 + 2 .25 log .25)


def test_values_outside_the_window_are_clipped_and_statistics_scaled():
    v = first_order(np.array([-3000.0, 3000.0]), WINDOW_HU, HU_SCALE)
    assert feature(v, "mean") == pytest.approx((-1100 + 200) / 2 / HU_SCALE)
    assert v[-HIST_BINS] == 0.5 and v[-1] == 0.5  # the end bins


def test_a_constant_slice_has_zero_shape_statistics():
    v = first_order(np.full(10, 40.0), WINDOW_HU, 1.0)
    assert feature(v, "sd") == 0.0
    assert feature(v, "skewness") == 0.0 and feature(v, "kurtosis") == 0.0
    assert feature(v, "entropy") == 0.0


def test_body_mask_is_the_body_with_its_lungs_not_air_or_padding():
    hu = known_slice()
    mask = body_mask(hu)
    expected = np.zeros_like(mask)
    expected[8:24, 8:24] = True
    np.testing.assert_array_equal(mask, expected)
    assert not body_mask(np.full((8, 8), -1000.0)).any()


def test_slice_features_recover_hu_from_the_cached_unit_range():
    hu = known_slice()
    low, high = paper_range(hu)  # the per-image min-max the cache applied
    unit = to_unit(hu, low, high).astype(np.float16).astype(np.float32)
    got = slice_features(np.repeat(unit[..., None], 3, -1), (low, high))
    # by hand: 256 body pixels: 16 lung at -860, 4 bone at 700 (clipped to
    # 200), 236 soft tissue at 40
    mean = (16 * -860 + 4 * 200 + 236 * 40) / 256
    assert feature(got, "mean") == pytest.approx(mean / HU_SCALE, abs=2e-3)
    assert feature(got, "p50") == pytest.approx(40 / HU_SCALE, abs=2e-3)
    share = got[-HIST_BINS:]
    assert share[(-860 + 1100) // 50] == pytest.approx(16 / 256)
    assert share[-1] == pytest.approx(4 / 256)  # bone, clipped at 200 HU
    assert share[(40 + 1100) // 50] == pytest.approx(236 / 256)


def test_without_a_hu_range_features_use_the_intensities_of_the_whole_slice():
    unit = np.linspace(-1, 1, 64).reshape(8, 8)
    got = slice_features(unit, (np.nan, np.nan))
    assert feature(got, "mean") == pytest.approx(0.0, abs=1e-12)
    assert got[-HIST_BINS:].sum() == pytest.approx(1.0)


def test_features_of_a_stack_have_one_row_per_slice():
    stack = np.zeros((3, 16, 16, 3), np.float32)
    got = features(stack, np.array([[-1000.0, 100.0]] * 3))
    assert got.shape == (3, N_FEATURES)
    assert np.isfinite(got).all()
