"""Image grids: labelled rows keep the images and add a margin with text."""

import numpy as np
import pytest
from PIL import Image

from common.model.grids import save_png


def test_labelled_rows_keep_the_images_beside_a_margin_with_text(tmp_path):
    rows = [np.full((3, 8, 8, 1), v, np.float32) for v in (-1.0, 1.0)]
    save_png(tmp_path / "plain.png", rows)
    save_png(tmp_path / "labelled.png", rows, ["site_a: real", "site_a: G(E(x))"])
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    labelled = np.asarray(Image.open(tmp_path / "labelled.png"))
    margin = labelled.shape[1] - plain.shape[1]
    assert labelled.shape[0] == plain.shape[0] and margin > 0
    np.testing.assert_array_equal(labelled[:, margin:], plain)
    assert (labelled[:, :margin] < 128).any()  # text was drawn in the margin
    with pytest.raises(ValueError, match="1 labels for 2 rows"):
        save_png(tmp_path / "bad.png", rows, ["one"])
