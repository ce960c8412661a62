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

    def load(self, mmap: bool = True) -> np.ndarray:
        """The kept slices as [k, size, size] float16 (memory-mapped if all kept)."""
        array = read_array(self.array, mmap=mmap)
        if len(self.keep) == array.shape[0]:
            return array
        return np.asarray(array[list(self.keep)])


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
