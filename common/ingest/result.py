"""What an ingest run hands to training: patients, their series, cached arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.ingest.cache import read_array
from common.ingest.config import IngestConfig
from common.ingest.report import Summary


@dataclass(frozen=True)
class IngestedSeries:
    """One cached series: every slice in body-axis order, and the ones to use."""

    uid: str
    study_uid: str
    name: str
    array: Path  # .npy of [n, size, size] float16 in [-1, 1]
    sources: tuple[str, ...]  # file of each slice (`path#frame` for multi-frame)
    positions: tuple[float | None, ...]  # mm along the slice normal
    lung: tuple[float, ...]  # share of lung per slice (NaN for image folders)
    keep: tuple[int, ...]  # indices chosen by the slice policy
    # per slice, the HU its -1 and 1 stand for (NaN for image folders): with it
    # a cached slice maps back to HU (common.ingest.policy.from_unit)
    ranges: tuple[tuple[float, float], ...] = ()

    def load(self, mmap: bool = True) -> np.ndarray:
        """The kept slices as [k, size, size] float16 (memory-mapped if all kept)."""
        array = read_array(self.array, mmap=mmap)
        if len(self.keep) == array.shape[0]:
            return array
        return np.asarray(array[list(self.keep)])

    def kept_ranges(self) -> np.ndarray:
        """The kept slices' HU ranges as [k, 2] (NaN where unknown)."""
        if len(self.ranges) != len(self.positions):
            return np.full((len(self.keep), 2), np.nan)
        return np.asarray([self.ranges[i] for i in self.keep], np.float64).reshape(
            -1, 2
        )


@dataclass(frozen=True)
class IngestedPatient:
    patient_id: str
    label: int  # 1 = COVID-19, 0 = other pneumonia
    series: tuple[IngestedSeries, ...]

    @property
    def n_slices(self) -> int:
        return sum(len(s.keep) for s in self.series)

    def load(self, max_slices: int = 0) -> np.ndarray:
        """Kept slices of all series as [n, size, size] float32; central if capped."""
        parts = [s.load() for s in self.series]
        slices = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if 0 < max_slices < len(slices):
            start = (len(slices) - max_slices) // 2
            slices = slices[start : start + max_slices]
        return np.asarray(slices, dtype=np.float32)

    def load_ranges(self, max_slices: int = 0) -> np.ndarray:
        """The HU range of each slice `load(max_slices)` returns, as [n, 2]."""
        ranges = np.concatenate([s.kept_ranges() for s in self.series])
        if 0 < max_slices < len(ranges):
            start = (len(ranges) - max_slices) // 2
            ranges = ranges[start : start + max_slices]
        return ranges


@dataclass(frozen=True)
class IngestResult:
    site_dir: Path
    cache_dir: Path
    config: IngestConfig
    patients: tuple[IngestedPatient, ...]
    summary: Summary
    report_path: Path
    files_read: int  # files opened this run (0 when nothing changed)
    files_decoded: int  # files whose pixels were decoded this run

    @property
    def n_slices(self) -> int:
        return sum(p.n_slices for p in self.patients)
