"""Which site a node serves, and its preprocessed data (kept in memory per process)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.config import RunConfig
from common.dataset import SliceSet, load_slices
from common.site_index import index_site
from common.splits import split_patients


@dataclass(frozen=True)
class Site:
    name: str
    path: Path
    role: str  # "train" or "external"


def resolve_site(node_config: dict, config: RunConfig) -> Site:
    """A deployed node names its data dir and role; a simulated one its partition."""
    if "data-dir" in node_config:
        role = str(node_config.get("role", "train"))
        if role not in ("train", "external"):
            raise ValueError(f"node config role={role!r}: use 'train' or 'external'")
        path = Path(str(node_config["data-dir"]))
        return Site(path.name, path, role)
    roster = config.site_roster()
    partition = int(node_config["partition-id"])
    if partition >= len(roster):
        raise ValueError(
            f"simulation has {len(roster)} sites in sim-sites but node partition "
            f"{partition} exists: set num-supernodes to {len(roster)}"
        )
    name, role = roster[partition]
    return Site(name, Path(config.sim_data_root) / name, role)


_CACHE: dict[tuple, dict[str, SliceSet]] = {}


def site_data(site: Site, config: RunConfig) -> dict[str, SliceSet]:
    """The site's slices per split: train/val/test, or 'external' for that role."""
    key = (
        str(site.path),
        site.role,
        config.model.image_size,
        config.seed,
        config.split,
        config.train.max_slices_per_patient,
    )
    if key not in _CACHE:
        index = index_site(site.path)
        size, cap = config.model.image_size, config.train.max_slices_per_patient
        if site.role == "external":
            groups = {"external": list(index.patients)}
        else:
            groups = split_patients(
                index.patients, config.split.val, config.split.test, config.seed
            )
        _CACHE[key] = {
            name: load_slices(patients, size, cap) for name, patients in groups.items()
        }
    return _CACHE[key]
