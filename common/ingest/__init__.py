"""DICOM (and image folder) ingest for a hospital site.

One call does it: `ingest_site(site_dir, labels_csv, cache_dir, config)` reads a
PACS export read-only, keeps the usable axial CT slices, caches them
preprocessed (keyed by file content and config), and writes
`ingest_report.json` saying what happened to every file.
"""

from common.ingest.config import IngestConfig, IngestConfigError
from common.ingest.pipeline import default_cache_dir, ingest_site
from common.ingest.reasons import IngestError
from common.ingest.result import IngestedPatient, IngestedSeries, IngestResult

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
