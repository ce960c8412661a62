"""Reading phantom DICOM back to HU and into the model's input range."""

from pathlib import Path

import numpy as np
import pytest

from common.ingest.dicom_io import DicomReadError, read_hu, to_model_input
from simulations.phantoms import plan_site, render_patient, write_study


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Path]:
    return write_study(
        tmp_path_factory.mktemp("study"), scale=0.05, slices_per_patient=2
    )


@pytest.mark.parametrize("site", ["hospital_a_ge", "hospital_a_neuviz", "hospital_b"])
def test_read_hu_gives_the_written_hu_inside_the_fov(study, site):
    spec = plan_site(site, scale=0.05, seed=0, slices_per_patient=2)[0]
    written = render_patient(spec)[0]
    path = sorted((study[site] / "dicom" / spec.patient_id).glob("*.dcm"))[0]
    hu = read_hu(path)
    assert hu.shape == written.hu.shape
    np.testing.assert_array_equal(hu[written.fov], written.hu[written.fov])
    # outside-FOV padding is replaced by a real value, never left at -2000/-3024
    assert hu.min() >= -1024


def test_model_input_is_three_channels_in_unit_range(study):
    path = next((study["hospital_a_ge"] / "dicom").rglob("*.dcm"))
    x = to_model_input(read_hu(path), 64)
    assert x.shape == (64, 64, 3) and x.dtype == np.float32
    assert x.min() == pytest.approx(-1.0) and x.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_broken_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(DicomReadError, match="broken.dcm"):
        read_hu(bad)
