"""Walk a site folder (read-only) and check what its DICOMDIR files promise."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePath

from common.ingest.reasons import Skip


def walk(
    root: Path, exclude: set[Path]
) -> tuple[dict[str, list[int] | None], dict[str, Skip]]:
    """Every regular file under `root` (sorted, relative) with its stat, and the
    entries not read, each with its reason.

    Only regular files are read: a FIFO would block a reader forever, and a
    device or socket is no export. A link is followed only to a regular file
    inside `root`; a link loop, a link to a folder and a link out of the site
    folder are skipped. A stat of None means the file could not be stat'ed (a
    broken link, say): the reader reports why when it tries to open it.
    """
    files: dict[str, list[int] | None] = {}
    errors: dict[str, Skip] = {}
    excluded = {os.path.normpath(p) for p in exclude}
    top = os.path.realpath(root)

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
            if entry.path in excluded:
                continue
            if entry.is_symlink():
                _link(entry, rel)
            elif entry.is_dir(follow_symlinks=False):
                visit(entry.path, rel + "/")
            else:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    files[rel] = None
                    continue
                if stat.S_ISREG(st.st_mode):
                    files[rel] = _stat_row(st)
                else:
                    errors[rel] = Skip("special-file", special_detail(st.st_mode))

    def _link(entry: os.DirEntry, rel: str) -> None:
        try:
            st = os.stat(entry.path)  # follows the link (and raises on a loop)
        except OSError as err:
            if err.errno == errno.ELOOP:
                errors[rel] = Skip(
                    "link-loop", "a symbolic link loop (links to itself), not followed"
                )
            else:
                files[rel] = None  # broken link: the reader says why
            return
        if stat.S_ISDIR(st.st_mode):
            # Not followed: a link can loop, or lead out of the export.
            errors[rel] = Skip(
                "unreadable", "a link to a folder, not followed; copy the folder"
            )
            return
        target = os.path.realpath(entry.path)
        if not inside(target, top):
            errors[rel] = Skip(
                "link-outside",
                f"a link to {target}, outside the site folder; not followed",
            )
        elif not stat.S_ISREG(st.st_mode):
            errors[rel] = Skip("special-file", special_detail(st.st_mode))
        else:
            files[rel] = _stat_row(st)

    visit(os.path.normpath(root), "")
    return dict(sorted(files.items())), errors


def inside(path: str, folder: str) -> bool:
    """True when the (resolved) `path` is `folder` or below it."""
    return os.path.commonpath([path, folder]) == folder


def special_detail(mode: int) -> str:
    """Why a non-regular file is not read (one line)."""
    kind = (
        "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
        else "an unknown kind of file"
    )
    return f"{kind}: only regular files are read"


def _stat_row(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


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
