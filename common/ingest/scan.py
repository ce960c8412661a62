"""Walk a site folder (read-only) and check what its DICOMDIR files promise."""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from common.ingest.reasons import Skip


def walk(
    root: Path, exclude: set[Path]
) -> tuple[dict[str, list[int] | None], dict[str, Skip]]:
    """Every file under `root` (sorted, relative) with its stat, and walk errors.

    A stat of None means the file could not be stat'ed (a broken link, say): the
    reader reports why when it tries to open it.
    """
    files: dict[str, list[int] | None] = {}
    errors: dict[str, Skip] = {}
    excluded = {os.path.normpath(p) for p in exclude}

    def visit(folder: str, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            errors[prefix.rstrip("/") or "."] = Skip(
                "unreadable", f"folder cannot be read ({err.strerror or err})"
            )
            return
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                visit(entry.path, rel + "/")
            elif entry.is_symlink() and entry.is_dir():
                # Not followed: a link can loop, or lead out of the export.
                errors[rel] = Skip(
                    "unreadable", "a link to a folder, not followed; copy the folder"
                )
            elif entry.path not in excluded:
                try:
                    st = entry.stat()  # follows links: a file's, not the link's
                    files[rel] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
                except OSError:
                    files[rel] = None

    visit(os.path.normpath(root), "")
    return dict(sorted(files.items())), errors


def missing_references(
    dicomdir: str, references: tuple[tuple[str, ...], ...], present: set[str]
) -> list[str]:
    """Files a DICOMDIR lists that are not in the folder.

    Compared without case: CD file names are upper case, and copies to other
    file systems often lower-case them. `present` holds lower-case posix paths.
    """
    base = PurePath(dicomdir).parent
    missing = []
    for parts in references:
        rel = base.joinpath(*parts).as_posix()
        if rel.lower() not in present:
            missing.append(rel)
    return missing
