"""Every simulated site checked before Flower starts (`common.ingest.site_checks`).

Each site is ingested here, into the very cache its ClientApp reads later, so
the check costs no extra decoding; a run whose sites cannot all take part is
refused with one line per site.
"""

from __future__ import annotations

from pathlib import Path

from common.config import RunConfig
from common.ingest.site_checks import class_counts, site_problem


class SiteCheckError(ValueError):
    """Sites that cannot take part; one line per site."""


def check_sites(config: RunConfig) -> dict[str, dict[int, int]]:
    """Patients per class of every site of `sim-sites`; raises `SiteCheckError`
    naming each site that cannot take part."""
    from client.site import Site, cache_dir, ingest_config
    from common.ingest import IngestError, ingest_site

    counts: dict[str, dict[int, int]] = {}
    problems: list[str] = []
    for name, role in config.site_roster():
        site = Site(name, Path(config.sim_data_root) / name, role)
        try:
            result = ingest_site(
                site.path,
                None,
                cache_dir(site, config),
                ingest_config(config),
                progress=False,
            )
        except IngestError as err:
            problems.append(f"site {name} ({role}): {err}")
            continue
        counts[name] = class_counts(p.label for p in result.patients)
        problem = site_problem(
            name, role, counts[name], config.train.min_patients_per_class
        )
        if problem:
            problems.append(f"{problem} (see {result.report_path})")
    if problems:
        raise SiteCheckError("\n".join(problems))
    return counts
