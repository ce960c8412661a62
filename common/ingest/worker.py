"""Read one file once: hash it, parse its header and, if usable, decode its slices.

This runs in worker processes, so it takes and returns plain picklable data and
writes only into the cache's pack folder of the running ingest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from stat import S_ISREG
from typing import Any

import xxhash

from common.ingest.checks import check_usable
from common.ingest.config import IngestConfig
from common.ingest.header_fields import summarize
from common.ingest.headers import Header, quiet_pydicom, read_dataset
from common.ingest.packs import SeriesBuffer
from common.ingest.pixels import cached_slices
from common.ingest.reasons import Skip, short_error
from common.ingest.scan import inside, special_detail
from common.ingest.series import file_order


@dataclass(frozen=True)
class WorkerSetup:
    """What every job of one run shares (sent once to each worker process)."""

    site_dir: str
    packs_dir: str
    config: IngestConfig
    labelled: frozenset[str] | None  # decode only these patients; None: all
    have: frozenset[str] = field(default_factory=frozenset)  # keys already cached
    kind: str = "dicom"  # or "images"


@dataclass
class FileResult:
    """One file's outcome; `record` is cached under `key` (content hash).

    A parsed header travels as the `Header` itself (the run decides from it);
    `FileResult.remembered` puts its JSON into the record.
    """

    rel: str
    stat: list[int]
    key: str
    record: dict[str, Any]
    header: Header | None = None
    pack: str | None = None  # set when frames were decoded by this call ...
    row: int = 0  # ... at this row of the pack
    ranges: list[list[float]] | None = None  # HU at -1 and 1, per frame

    @property
    def decoded(self) -> bool:
        return self.pack is not None

    def remembered(self) -> dict[str, Any]:
        """The record as cached: with the header's JSON."""
        if self.header is not None and self.record["header"] is None:
            self.record["header"] = self.header.to_json()
        return self.record


def file_stat(path: str | int) -> list[int]:
    """What says a file is unchanged since it was hashed (of a path or an fd)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def content_key(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def process_chunk(
    jobs: list[tuple[str, bool]],
    setup: WorkerSetup | None = None,
    sink: SeriesBuffer | None = None,
) -> list[FileResult]:
    """A batch of (path, decode) jobs; their frames are written through `sink`.

    In a worker process (no `setup`), one sink serves all of the process's
    batches (its pack: a file per batch costs more to create, read and delete
    than the batch's IPC). Called in-process without a `sink`, the batch gets
    its own. Every frame is on disk when this returns: the caller reads them.
    """
    global _SINK
    own = False
    if setup is None:
        setup = _SETUP
        if setup is None:  # pragma: no cover - the pool initializer sets it
            raise RuntimeError("worker used before init_worker")
        if _SINK is None:
            _SINK = SeriesBuffer(setup.packs_dir, setup.config.image_size)
        sink = _SINK
    elif sink is None:
        sink, own = SeriesBuffer(setup.packs_dir, setup.config.image_size), True
    try:
        with quiet_pydicom():
            results = [process_file(rel, setup, decode, sink) for rel, decode in jobs]
        sink.flush()
        return results
    finally:
        if own:
            sink.close()


def read_file(rel: str, setup: WorkerSetup) -> tuple[list[int], bytes] | FileResult:
    """(stat, bytes) of one file, or the result saying why it cannot be read."""
    path = os.path.join(setup.site_dir, rel)
    # The walk read only regular files inside the site; the file may have been
    # replaced since, so this is checked again on what is opened. O_NONBLOCK:
    # opening a FIFO that appeared meanwhile must not wait for a writer.
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        target = os.path.realpath(path)  # a dangling link fails below as such
        if os.path.exists(target) and not inside(
            target, os.path.realpath(setup.site_dir)
        ):
            return _unread(
                rel, [0, 0, 0, 0], Skip("link-outside", "leads outside the site folder")
            )
        fd = os.open(path, flags)
        try:
            st = os.fstat(fd)
            if not S_ISREG(st.st_mode):
                return _unread(
                    rel, [0, 0, 0, 0], Skip("special-file", special_detail(st.st_mode))
                )
            stat = file_stat(fd)  # of what is read, not of the path again
            if stat[0] > setup.config.max_file_mb * 2**20:
                return _unread(
                    rel,
                    stat,
                    Skip(
                        "too-large",
                        f"file is {stat[0] / 2**20:.0f} MB, above the "
                        f"{setup.config.max_file_mb} MB limit (max-file-mb)",
                    ),
                )
            with open(fd, "rb", closefd=False) as handle:
                return stat, handle.read()
        finally:
            os.close(fd)
    except OSError as err:
        return _unread(
            rel,
            [0, 0, 0, 0],
            Skip("unreadable", f"cannot be read ({err.strerror or short_error(err)})"),
        )


def process_file(
    rel: str, setup: WorkerSetup, decode: bool, sink: SeriesBuffer
) -> FileResult:
    """Read, hash, parse and (when `decode` and usable) decode one file."""
    loaded = read_file(rel, setup)
    if isinstance(loaded, FileResult):
        return loaded
    return process_data(rel, *loaded, setup, decode, sink)


def process_data(
    rel: str,
    stat: list[int],
    data: bytes,
    setup: WorkerSetup,
    decode: bool,
    sink: SeriesBuffer,
) -> FileResult:
    """Hash, parse and (when `decode` and usable) decode one file's bytes; the
    frames reach disk (and the result its pack and row) at `sink.flush()`."""
    key = content_key(data)
    if setup.kind == "images":
        from common.ingest.images import process_image

        return process_image(rel, stat, key, data, setup, decode, sink)
    try:
        parsed = read_dataset(data, rel)
        header = summarize(parsed)
    except Skip as skip:
        return FileResult(rel, stat, key, {"header": None, "skip": skip_record(skip)})
    result = FileResult(rel, stat, key, {"header": None, "skip": None}, header)
    if not decode or key in setup.have:
        return result
    try:
        check_usable(header, setup.config)
    except Skip:
        return result  # config-dependent: decided again by the caller each run
    if setup.labelled is not None and header.patient_id not in setup.labelled:
        return result  # no label: decoding it would be wasted work
    try:
        frames, result.ranges = cached_slices(
            parsed, header, setup.config, sink.frames_out(header.frames)
        )
    except Skip as skip:  # the bytes themselves are bad: remember it
        result.record["skip"] = skip_record(skip)
        return result
    group = (header.patient_id, header.study_uid, header.series_uid)
    sink.add(result, frames, group, file_order(rel, key, header))
    return result


_SETUP: WorkerSetup | None = None
_SINK: SeriesBuffer | None = None  # this worker process's (see process_chunk)


def init_worker(setup: WorkerSetup) -> None:
    """Pool initializer: keep the run's shared setup in the worker process."""
    global _SETUP, _SINK
    _SETUP, _SINK = setup, None


def _unread(rel: str, stat: list[int], skip: Skip) -> FileResult:
    # Not read, so no content key: key the record by path and stat instead.
    key = "!" + content_key(f"{rel}|{stat}".encode())
    return FileResult(rel, stat, key, {"header": None, "skip": skip_record(skip)})


def skip_record(skip: Skip) -> list[str]:
    """How a skip is cached in a file record (JSON)."""
    return [skip.code, skip.detail]
