"""Which site a node serves, and its preprocessed data (kept in memory per process).

The site folder is read through the ingest library: the first round of a run
decodes it into a cache outside the folder, later runs (and rounds) only load
the cached arrays. Every skipped file is explained in the cache's
`ingest_report.json`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from logging import INFO
from pathlib import Path

from flwr.common.logger import log

from common.config import RunConfig
from common.ingest.config import IngestConfig
from common.model.dataset import SliceSet, slices_from_ingest
from common.splits import split_patients

# node-config key: the Unix socket of the node's site worker
WORKER_SOCKET_KEY = "site-worker-socket"


@dataclass(frozen=True)
class Site:
    name: str
    path: Path
    role: str  # "train" or "external"
    cache: Path | None = None  # ingest cache folder; None: the default for the site
    # the node's warm site worker (`fedbigbigan site-worker`); None: work in-process
    worker_socket: Path | None = None


def resolve_site(node_config: dict, config: RunConfig) -> Site:
    """A deployed node names its data dir and role; a simulated one its partition."""
    if "data-dir" in node_config:
        role = str(node_config.get("role", "train"))
        if role not in ("train", "external"):
            raise ValueError(f"node config role={role!r}: use 'train' or 'external'")
        path = Path(str(node_config["data-dir"]))
        cache = node_config.get("cache-dir")
        worker = node_config.get(WORKER_SOCKET_KEY)
        return Site(
            path.name,
            path,
            role,
            Path(str(cache)) if cache else None,
            Path(str(worker)) if worker else None,
        )
    roster = config.site_roster()
    partition = int(node_config["partition-id"])
    if partition >= len(roster):
        raise ValueError(
            f"simulation has {len(roster)} sites in sim-sites but node partition "
            f"{partition} exists: set num-supernodes to {len(roster)}"
        )
    name, role = roster[partition]
    return Site(name, Path(config.sim_data_root) / name, role)


def ingest_config(config: RunConfig) -> IngestConfig:
    """The run's ingest options, at the size the model's encoder takes."""
    base = getattr(config, "ingest", None) or IngestConfig()
    return dataclasses.replace(base, image_size=config.model.image_size)


def cache_dir(site: Site, config: RunConfig) -> Path:
    """Where a site's ingest cache lives: never inside the site folder.

    A deployed node uses its `cache-dir` (or the user cache folder); a simulated
    site one folder per site under the run's output directory.
    """
    if site.cache is not None:
        return site.cache
    if site.path.resolve().parent == Path(config.sim_data_root).resolve():
        return Path(config.out_dir) / "ingest-cache" / site.name
    from common.ingest import default_cache_dir

    return default_cache_dir(site.path)


_CACHE: dict[tuple, dict[str, SliceSet]] = {}


def site_data(site: Site, config: RunConfig) -> dict[str, SliceSet]:
    """The site's slices per split: train/val/test, or 'external' for that role."""
    # imported here: most of a run's messages (SecAgg+'s key stages) never read data
    from common.ingest import ingest_site
    from common.ingest.site_index import SiteError

    ingest = ingest_config(config)
    key = (
        str(site.path),
        site.role,
        ingest,
        config.seed,
        config.split,
        config.train.max_slices_per_patient,
    )
    if key not in _CACHE:
        result = ingest_site(
            site.path,
            None,  # SITE/labels.csv, or an image folder's label folders
            cache_dir(site, config),
            ingest,
            progress=False,
        )
        log(INFO, "%s", result.summary.text(result.report_path))
        if not result.patients:
            raise SiteError(
                f"{site.path}: no labelled patient has a usable CT slice "
                f"(see {result.report_path})"
            )
        size, cap = ingest.image_size, config.train.max_slices_per_patient
        if site.role == "external":
            groups = {"external": list(result.patients)}
        else:
            groups = split_patients(
                result.patients, config.split.val, config.split.test, config.seed
            )
        _CACHE[key] = {
            name: slices_from_ingest(patients, size, cap)
            for name, patients in groups.items()
        }
    return _CACHE[key]


def forget_site_data() -> None:
    """Drop every site's slices held by this process (the ingest cache stays)."""
    _CACHE.clear()
