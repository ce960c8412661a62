"""`train-central --site-dir DIR ...`: any image or DICOM site folders as the
sites of a central run, hard-linked under the run's data folder (as the
`real-images` scenario links its sites: ingest reads regular files only)."""

from __future__ import annotations

from pathlib import Path

from simulations.image_sites import _link


class SiteDirError(ValueError):
    """A --site-dir that cannot be used; the message names it."""


def link_site_dirs(train: list[Path], external: list[Path], data: Path) -> str:
    """Each folder's files hard-linked into `data/<folder name>`; the roster
    (`sim-sites`) with their roles."""
    roster, names = [], set()
    for role, dirs in (("train", train), ("external", external)):
        for source in dirs:
            source = Path(source)
            if not source.is_dir():
                raise SiteDirError(f"--site-dir {source}: not a folder")
            name = source.resolve().name
            if name in names:
                raise SiteDirError(
                    f"--site-dir {source}: another site folder is named {name!r}"
                )
            names.add(name)
            files = [f for f in sorted(source.rglob("*")) if f.is_file()]
            if not files:
                raise SiteDirError(f"--site-dir {source}: no file in it")
            for file in files:
                target = data / name / file.relative_to(source)
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _link(file, target)
            roster.append(f"{name}:{role}")
    return ",".join(sorted(roster))
