"""Where a process puts the frames it decodes: one file per series where it can.

Frames of a chunk of files are held until the chunk ends, grouped by series
and ordered as `plan_series` orders slices; each group is then written as one
.npy in the packs folder. When a series' slices turn out to be exactly one such
file, the run renames it into place as the series array instead of copying
every byte again (at 256 px the copy was a tenth of a slice's cost, and most of
the parent's serial end with several workers). Anything else (a series split
over chunks, a file whose frames are out of slice order, a lone slice) is
copied from the packs as before: the rename is an optimisation, checked by the
run, never an assumption.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Hashable
from pathlib import Path
from typing import Protocol

import numpy as np

from common.ingest.cache import PACK_DTYPE, PackWriter, write_rows

# Frames held before a process writes them out early (a chunk is usually one
# folder; one of thousands of slices would otherwise stay in memory).
MAX_HELD_BYTES = 128 * 2**20
MIN_CHUNK = 16  # files: fewer cost more in round trips than they save
MAX_CHUNK = 1024  # files of one folder in one chunk, in-process


class Placed(Protocol):
    """A file's result: where its frames went (set when they are written)."""

    pack: str | None
    row: int


class SeriesBuffer:
    """Holds decoded frames by series until `flush`; loose frames go to a pack."""

    def __init__(self, folder: Path | str, size: int):
        self.folder = Path(folder)
        self.size = size
        self.pack = PackWriter(folder, size)  # lone slices and image files
        self._groups: dict[Hashable, list[tuple[tuple, Placed, np.ndarray]]] = {}
        # Held frames live in a reused buffer: a fresh array per file costs
        # page faults (~40 a 256 px slice here) that the decoding does not.
        self._arena = np.empty((0, size, size), PACK_DTYPE)
        self._used = 0  # rows of the arena in use
        self._held = 0  # rows held (in this arena or, after it grew, an older one)
        self._max_rows = max(1, MAX_HELD_BYTES // (size * size * 2))

    def append(self, frames: np.ndarray) -> tuple[str, int]:
        """Write frames now, to the shared pack: (pack path, first row)."""
        return self.pack.append(frames)

    def frames_out(self, count: int) -> np.ndarray:
        """Where the next file's `count` frames are to be decoded (for `add`)."""
        if self._held and self._held + count > self._max_rows:
            self.flush()
        if self._used + count > len(self._arena):
            # Held rows stay in the old arena (their views keep it).
            rows = max(count, 64, min(2 * len(self._arena), self._max_rows))
            self._arena = np.empty((rows, self.size, self.size), PACK_DTYPE)
            self._used = 0
        return self._arena[self._used : self._used + count]

    def add(self, result: Placed, frames: np.ndarray, group: Hashable, order: tuple):
        """Hold a file's frames (the last `frames_out`); `order` sorts files
        within their `group`."""
        self._groups.setdefault(group, []).append((order, result, frames))
        self._used += len(frames)
        self._held += len(frames)

    def flush(self) -> None:
        """Write every held group (sets each result's pack and row)."""
        if self._groups:
            self.folder.mkdir(parents=True, exist_ok=True)
        for entries in self._groups.values():
            entries.sort(key=lambda entry: entry[0])
            if sum(len(frames) for _, _, frames in entries) < 2:
                for _, result, frames in entries:  # a file of its own costs more
                    result.pack, result.row = self.pack.append(frames)
                continue
            path = write_rows(
                self.folder, [frames for _, _, frames in entries], self.size
            )
            row = 0
            for _, result, frames in entries:
                result.pack, result.row = path, row
                row += len(frames)
        self._groups.clear()
        self._used = self._held = 0
        self.pack.flush()

    def close(self) -> None:
        self.flush()
        self.pack.close()


def folder_chunks(
    jobs: list[tuple[str, bool]], workers: int
) -> list[list[tuple[str, bool]]]:
    """Jobs (in walk order) in chunks of whole folders, so that a series, which
    usually is a folder, is decoded by one process into one file.

    Small folders are joined (a chunk costs a round trip); a folder too large
    for the workers to share the work evenly is cut in small chunks, as all
    jobs were before (its series are then copied). With several workers, the
    largest chunks go first, so that the workers finish together.
    """
    whole = MAX_CHUNK if workers <= 1 else max(MIN_CHUNK, len(jobs) // (workers * 4))
    cut = MAX_CHUNK if workers <= 1 else MIN_CHUNK
    folders: dict[str, list[tuple[str, bool]]] = {}
    for job in jobs:
        folders.setdefault(posixpath.dirname(job[0]), []).append(job)
    chunks: list[list[tuple[str, bool]]] = []
    joined: list[tuple[str, bool]] = []
    for members in folders.values():
        if len(members) > whole:
            chunks += [members[i : i + cut] for i in range(0, len(members), cut)]
            continue
        if joined and len(joined) + len(members) > whole:
            chunks.append(joined)
            joined = []
        joined = joined + members
        if len(joined) >= MIN_CHUNK:
            chunks.append(joined)
            joined = []
    if joined:
        chunks.append(joined)
    if workers > 1:
        chunks.sort(key=len, reverse=True)
    return chunks


def whole_packs(
    copies: list[tuple[Path, list[tuple[str, int, int]]]], packs_dir: Path, size: int
) -> tuple[list[tuple[str, Path]], list[tuple[Path, list[tuple[str, int, int]]]]]:
    """Split series to write into (pack, array) renames and copies.

    A series is renamed when its rows are all the rows, in order, of one .npy
    pack that no other series reads.
    """
    row_bytes = size * size * np.dtype(PACK_DTYPE).itemsize
    users: dict[str, int] = {}
    for _, rows in copies:
        for source in {source for source, _, _ in rows}:
            users[source] = users.get(source, 0) + 1
    renames, rest = [], []
    for path, rows in copies:
        source, base, _ = rows[0]
        if (
            users[source] == 1
            and source.endswith(".npy")
            and Path(source).parent == packs_dir
            and all(row == (source, base, index) for index, row in enumerate(rows))
            and os.stat(source).st_size == base + len(rows) * row_bytes
        ):
            renames.append((source, path))
        else:
            rest.append((path, rows))
    return renames, rest
