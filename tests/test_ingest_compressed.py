"""Compressed transfer syntaxes decode to the same HU as their uncompressed source.

Lossless files are made here with pydicom's `Dataset.compress` (its own RLE
encoder; JPEG-LS via pyjpegls; JPEG 2000 via pylibjpeg-openjpeg). pydicom cannot
write lossless JPEG, so that case uses pydicom's own JPEG-lossless CT file and
its decompressed copy. JPEG baseline (lossy, 8-bit) is encoded with Pillow.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from test_ingest_support import chest_hu, ct_dataset, save, write_labels

from common.ingest import IngestConfig, ingest_site
from common.ingest.dicom_io import read_hu

LOSSLESS = [RLELossless, JPEGLSLossless, JPEG2000Lossless]


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda u: u.name)
@pytest.mark.parametrize(("signed", "bits"), [(True, 16), (False, 12)])
def test_lossless_syntaxes_give_the_source_hu(tmp_path, syntax, signed, bits):
    source = ct_dataset(chest_hu(seed=3), signed=signed, bits_stored=bits, padding=None)
    plain = save(source, tmp_path / "plain.dcm")
    source.compress(syntax)
    packed = save(source, tmp_path / "packed.dcm")
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_hu(packed), read_hu(plain))


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # that file's UIDs
def test_jpeg_lossless_gives_the_hu_of_its_decompressed_copy(tmp_path):
    packed = Path(get_testdata_file("bad_sequence.dcm"))  # a CT, JPEG lossless SV1
    ds = pydicom.dcmread(packed)
    assert ds.file_meta.TransferSyntaxUID.name.startswith("JPEG Lossless")
    ds.decompress()
    plain = save(ds, tmp_path / "plain.dcm")
    assert pydicom.dcmread(plain).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(read_hu(packed), read_hu(plain))


def test_jpeg2000_lossless_pair_from_pydicom_data():
    packed = get_testdata_file("693_J2KR.dcm", download=False)
    plain = get_testdata_file("693_UNCR.dcm", download=False)
    if packed is None or plain is None:
        pytest.skip("pydicom-data (the test extra) is not installed")
    np.testing.assert_array_equal(read_hu(Path(packed)), read_hu(Path(plain)))


def test_jpeg_baseline_is_close_to_its_source(tmp_path):
    """8-bit stored values (slope 8): lossy, so close rather than equal."""
    hu = chest_hu(seed=4).astype(np.float64)
    stored = np.clip(np.rint((hu + 1024) / 8), 0, 255).astype(np.uint8)
    ds = ct_dataset(hu.astype(np.int16), signed=False)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.RescaleSlope, ds.RescaleIntercept = 8, -1024
    ds.PixelData = stored.tobytes()
    plain = save(ds, tmp_path / "plain.dcm")
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", quality=95)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    packed = save(ds, tmp_path / "packed.dcm")
    error = np.abs(read_hu(packed) - read_hu(plain))
    assert error.mean() < 12 and error.max() < 120  # a few 8-HU steps


def test_a_site_mixing_syntaxes_caches_the_same_slices(tmp_path):
    """Ingest of the compressed site equals ingest of the plain one."""
    sites = {}
    for kind in ("plain", "mixed"):
        site = tmp_path / kind
        for i, syntax in enumerate([None, *LOSSLESS]):
            ds = ct_dataset(
                chest_hu(seed=i), patient_id="P", sop=f"1.2.3.{i}", z=2.0 * i
            )
            if kind == "mixed" and syntax is not None:
                ds.compress(syntax, generate_instance_uid=False)
            save(ds, site / f"{i}.dcm")
        write_labels(site, [("P", "1")])
        sites[kind] = ingest_site(
            site, cache_dir=tmp_path / f"cache-{kind}", config=IngestConfig(64)
        )
    plain, mixed = (sites[k].patients[0].load() for k in ("plain", "mixed"))
    assert plain.shape == (4, 64, 64)
    np.testing.assert_array_equal(plain, mixed)
