"""Ingest throughput against plain pydicom, on the same phantom DICOM files.

    python benchmarks/bench_ingest.py [--files 960] [--size 64] [--repeats 3]

Rates (slices/s) of: `pydicom.dcmread(f).pixel_array` over every file; our
ingest on a cold cache (hash, header, decode, HU, padding, resize, intensity,
lung share, atomic writes, report) with 1 and 2 worker processes; a re-run on
the unchanged folder. Goals: cold 1 worker >= 0.9x raw, 2 workers >= 1.7x raw.
Every timing is the best of `--repeats` (the machine may be shared), with the
files in the page cache for all contenders.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from common.ingest import IngestConfig, ingest_site
from simulations.phantoms import write_study


def make_site(root: Path, site: str, n_files: int) -> Path:
    """A site of `n_files` phantom slices: a few rendered, copied with new UIDs.

    Rendering phantoms is slow (~0.1 s a slice); copies with new patient, study,
    series and instance UIDs are byte-distinct files, which is all ingest sees.
    """
    seed_dir = write_study(root / "seed", scale=0.05, slices_per_patient=6)[site]
    sources = sorted((seed_dir / "dicom").rglob("*.dcm"))
    out = root / site
    rows = []
    per_patient = len(sources)
    for patient in range(max(1, n_files // per_patient)):
        pid = f"BENCH-{patient:04d}"
        study, series = generate_uid(), generate_uid()
        for index, src in enumerate(sources):
            ds = pydicom.dcmread(src)
            ds.PatientID = pid
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = index + 1
            ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(index)]
            target = out / "dicom" / pid / f"{index:03d}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target, enforce_file_format=True)
        rows.append((pid, patient % 2))
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "label"])
        writer.writerows(rows)
    shutil.rmtree(root / "seed")
    return out


def raw_rate(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        pydicom.dcmread(path).pixel_array  # noqa: B018 - the work being timed
    return len(files) / (time.perf_counter() - start)


def ingest_rate(site: Path, cache: Path, config: IngestConfig, cold: bool) -> float:
    if cold:
        shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    result = ingest_site(site, cache_dir=cache, config=config, progress=False)
    elapsed = time.perf_counter() - start
    if cold and result.files_decoded != result.summary.files:
        raise RuntimeError("cold run did not decode every file")
    return result.summary.slices / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=960)
    parser.add_argument("--site", default="hospital_a_ge", help="phantom scanner")
    parser.add_argument("--size", type=int, default=64, help="cached image size")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        site = make_site(root, args.site, args.files)
        files = sorted((site / "dicom").rglob("*.dcm"))
        for path in files:  # page cache warm for every contender
            path.read_bytes()
        cache = root / "cache"
        one = IngestConfig(image_size=args.size, workers=1)
        two = IngestConfig(image_size=args.size, workers=2)
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, rate in (
                ("raw pydicom", lambda: raw_rate(files)),
                ("ingest cold, 1 worker", lambda: ingest_rate(site, cache, one, True)),
                ("ingest cold, 2 workers", lambda: ingest_rate(site, cache, two, True)),
                (
                    "ingest re-run (cached)",
                    lambda: ingest_rate(site, cache, one, False),
                ),
            ):
                best[name] = max(best.get(name, 0.0), rate())
    raw = best["raw pydicom"]
    print(f"{len(files)} files, {args.site}, cached at {args.size} px")
    for name, rate in best.items():
        print(f"  {name:24s} {rate:9.0f} slices/s   {rate / raw:5.2f}x raw")
    print(
        f"goals: 1 worker >= 0.9x raw: {best['ingest cold, 1 worker'] / raw:.2f}; "
        f"2 workers >= 1.7x raw: {best['ingest cold, 2 workers'] / raw:.2f}"
    )


if __name__ == "__main__":
    main()
