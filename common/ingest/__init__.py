"""DICOM (and image folder) ingest for a hospital site.

One call does it: `ingest_site(site_dir, labels_csv, cache_dir, config)` reads a
PACS export read-only, keeps the usable axial CT slices, caches them
preprocessed (keyed by file content and config), and writes
`ingest_report.json` saying what happened to every file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.ingest.config import IngestConfig, IngestConfigError
    from common.ingest.pipeline import default_cache_dir, ingest_site
    from common.ingest.reasons import IngestError
    from common.ingest.result import IngestedPatient, IngestedSeries, IngestResult

# Imported on first use (PEP 562): every Flower message starts a fresh
# ClientApp process, and most never ingest; the pipeline pulls in scipy.ndimage.
_WHERE = {
    "IngestConfig": "config",
    "IngestConfigError": "config",
    "default_cache_dir": "pipeline",
    "ingest_site": "pipeline",
    "IngestError": "reasons",
    "IngestResult": "result",
    "IngestedPatient": "result",
    "IngestedSeries": "result",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'common.ingest' has no attribute {name!r}")
    return getattr(importlib.import_module(f"common.ingest.{_WHERE[name]}"), name)


__all__ = [
    "IngestConfig",
    "IngestConfigError",
    "IngestError",
    "IngestResult",
    "IngestedPatient",
    "IngestedSeries",
    "default_cache_dir",
    "ingest_site",
]
