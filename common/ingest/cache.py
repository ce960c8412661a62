"""The ingest cache: what was read (by file content) and the preprocessed pixels.

Layout of a cache folder (never inside the site folder, never holding it):

    state.json                     per path: size, mtime, ctime, inode -> content key;
                                   per content key: header summary or skip reason
    pixels/<pixel key>/index.json  per series array, each row's content key,
                                   frame, the HU mapped to -1 and 1, lung share
    pixels/<pixel key>/series/<series key>.npy   one series, [n, size, size] f16
    pixels/<pixel key>/packs/      frames decoded by the running ingest (renamed
                                   into series arrays, or deleted once copied)
    ingest_report.json             what the last run did, file by file

The content key is XXH3-128 of the file's bytes: fast (~10 GB/s, a tenth of the
time SHA-256 takes here) and, with 128 bits, free of accidental collisions for
any number of files a hospital holds; nobody attacks their own cache. Hashing
every byte on every run would cost as much I/O as the first ingest, so a path
whose size, mtime, ctime and inode are unchanged keeps its key (ctime and inode
change on any rewrite, even one that restores mtime); a changed stat re-hashes,
and an unchanged hash still decodes nothing. `rehash=True` trusts no stat.

Decoded frames are written to the packs folder, one .npy per series and chunk
of files where they can be (lone slices go to one pack file per process:
creating a file per slice costs more than decoding it); at the end of the run a
pack that is exactly one series becomes its array by a rename, and other series
are copied, file to file in the kernel (see `common.ingest.packs`). A series
that gains a file is rebuilt from the old array plus the new frames. Arrays and
JSON are written to a temporary name in the same folder and renamed, so a
reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.ingest.reasons import IngestError

try:  # advisory lock: two ingests of one cache wait for each other
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

STATE_VERSION = 1
# Every temporary file ingest writes is named so; only such names, and only in
# the cache's own places, are ever deleted (the cache folder may be shared).
TMP_PREFIX = ".tmp-ingest-"
PACK_DTYPE = np.float16  # [-1, 1] to ~5e-4: plenty for CT inputs, half the disk
log = logging.getLogger(__name__)

# float32 -> float16 by integer ops on the bits, round to nearest even: 1.3-2x
# faster than numpy's cast here, and bit for bit the same (checked on every
# float32 below 65520 in magnitude); anything larger goes through numpy.
_F16_OVERFLOW = np.uint32((127 + 16) << 23)  # |x| from here: inf or nan in f16
_F16_SUBNORMAL = np.uint32(113 << 23)  # |x| below here: subnormal or zero in f16
_F16_MAGIC = np.uint32(((127 - 15) + (23 - 10) + 1) << 23)
_F16_BIAS = np.uint32((((15 - 127) << 23) + 0xFFF) % (1 << 32))


@dataclass
class State:
    """What earlier runs learnt about the files (see the module docstring)."""

    files: dict[str, list[Any]] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


class Cache:
    """One cache folder; refuses to live inside the source folder or to hold it."""

    def __init__(self, root: Path, source: Path):
        self.root = Path(root).resolve()
        source = Path(source).resolve()
        if self.root == source or self.root.is_relative_to(source):
            raise IngestError(
                f"{self.root}: the cache must not be inside the site folder "
                f"{source}; ingest never writes there"
            )
        if source.is_relative_to(self.root):
            raise IngestError(
                f"{self.root}: the cache folder must not contain the site folder "
                f"{source}; give a cache folder of its own"
            )
        self.root.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cache for this process (other ingests of it wait)."""
        with open(self.root / ".lock", "a+") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # ---- state -------------------------------------------------------------

    def load_state(self) -> State:
        data = self._read_json(self.root / "state.json")
        if not data or data.get("version") != STATE_VERSION:
            return State()
        return State(files=data.get("files", {}), records=data.get("records", {}))

    def save_state(self, state: State, encoded: dict[str, str] | None = None) -> None:
        """Save the state; `encoded` holds records already in JSON (encoded as
        they arrived, while workers ran), so only the others are encoded here.
        The text is what `json.dumps` gives for the whole state."""
        encoded = encoded or {}
        records = ", ".join(
            f"{json.dumps(key)}: {encoded.get(key) or json.dumps(record)}"
            for key, record in state.records.items()
        )
        head = json.dumps({"version": STATE_VERSION, "files": state.files})[:-1]
        write_text(self.root / "state.json", f'{head}, "records": {{{records}}}}}')

    # ---- pixels -------------------------------------------------------------

    def pixel_dir(self, pixel_key: str) -> Path:
        return self.root / "pixels" / pixel_key

    def packs_dir(self, pixel_key: str) -> Path:
        return self.pixel_dir(pixel_key) / "packs"

    def series_path(self, pixel_key: str, series_key: str) -> Path:
        return self.pixel_dir(pixel_key) / "series" / f"{series_key}.npy"

    def load_index(self, pixel_key: str) -> dict[str, list[list[Any]]]:
        """Series arrays of this config: rows as [key, frame, low, high, lung].

        An array that is missing or cannot be mapped with its expected rows (a
        disk that filled up, a copy cut short) is left out, so it is rebuilt.
        """
        data = self._read_json(self.pixel_dir(pixel_key) / "index.json") or {}
        index = {}
        for key, rows in data.items():
            path = self.series_path(pixel_key, key)
            try:
                valid = len(read_array(path)) == len(rows)
            except (OSError, ValueError):
                valid = False
            if valid:
                index[key] = rows
            else:
                log.warning("%s: missing or damaged; it is rebuilt", path)
        return index

    def save_index(self, pixel_key: str, index: dict[str, list[list[Any]]]) -> None:
        write_json(self.pixel_dir(pixel_key) / "index.json", index)

    def prune(self, pixel_key: str, series: set[str]) -> None:
        """Delete this config's packs, and series arrays no current series uses."""
        shutil.rmtree(self.packs_dir(pixel_key), ignore_errors=True)
        folder = self.pixel_dir(pixel_key) / "series"
        for path in folder.glob("*.npy") if folder.is_dir() else ():
            if path.stem not in series:
                path.unlink(missing_ok=True)
        # Temporary files a process that died left: only our names, only where
        # this cache writes them (never a walk of the whole folder).
        for own in (self.root, self.pixel_dir(pixel_key), folder):
            for path in own.glob(f"{TMP_PREFIX}*") if own.is_dir() else ():
                if path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.warning("%s: unreadable (%s); it is rebuilt", path, err)
            return None


def write_array(path: Path, array: np.ndarray) -> None:
    """Save an .npy atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.lib.format.write_array(handle, np.ascontiguousarray(array))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, payload: Any) -> None:
    """Save JSON atomically and durably (it says which cached arrays are valid)."""
    # One write: json.dump writes each token separately.
    write_text(path, json.dumps(payload))


def write_text(path: Path, text: str) -> None:
    """Save a text file atomically (temporary file, fsync, rename); inside
    `durable_together`, the fsync and rename wait for the end of the block."""
    pending = getattr(_DURABLE, "pending", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            if pending is None:
                os.fsync(handle.fileno())
        if pending is not None:
            pending.append((tmp, path))
            # Its fsync starts now, in a thread (the GIL is released while it
            # waits for the disk): the block's next files are encoded meanwhile.
            _DURABLE.syncs.append(_DURABLE.pool.submit(_fsync_path, tmp))
            return
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_DURABLE = threading.local()


@contextlib.contextmanager
def durable_together() -> Iterator[None]:
    """Files saved by `write_text` in this block are made durable by its end,
    each fsync started as the file is written and all running at once (each
    waits for the disk; in a row, they add up), then renamed into place in
    order once every fsync is done. Nothing is renamed if the block fails."""
    pending: list[tuple[str, Path]] = []
    syncs: list = []
    with ThreadPoolExecutor(4) as pool:
        _DURABLE.pending, _DURABLE.syncs, _DURABLE.pool = pending, syncs, pool
        try:
            try:
                yield
            finally:
                _DURABLE.pending = _DURABLE.syncs = _DURABLE.pool = None
                errors = [done.exception() for done in syncs]  # waits for all
            for error in errors:
                if error is not None:
                    raise error
            for tmp, path in pending:
                os.replace(tmp, path)
        except BaseException:
            for tmp, _ in pending:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_array(path: Path, mmap: bool = True) -> np.ndarray:
    """Load an .npy, memory-mapped by default (training reads slices from it)."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


class PackWriter:
    """Appends decoded frames to one raw float16 file (opened on first use)."""

    def __init__(self, folder: Path | str, size: int):
        self.folder = Path(folder)
        self.size = size
        self.path: Path | None = None
        self.rows = 0
        self._handle = None

    def append(self, frames: np.ndarray) -> tuple[str, int]:
        """Write [n, size, size] float16 frames; return (pack path, first row)."""
        if self._handle is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.folder, prefix="pack-", suffix=".f16")
            self._handle = os.fdopen(fd, "wb")
            self.path = Path(name)
        first = self.rows
        self._handle.write(np.ascontiguousarray(frames, dtype=PACK_DTYPE).data)
        self.rows += len(frames)
        return str(self.path), first

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@functools.lru_cache(maxsize=256)
def npy_header(rows: int, size: int) -> bytes:
    """The .npy header `write_array` writes for [rows, size, size] float16."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(PACK_DTYPE)),
        "fortran_order": False,
        "shape": (rows, size, size),
    }
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue()


def write_rows(folder: Path | str, frames: list[np.ndarray], size: int) -> str:
    """Write float16 frame blocks ([n, size, size] each), in order, as one new
    .npy in `folder` (not atomic: packs are the running ingest's own files).

    A series whose slices are exactly such a file's rows becomes its array by
    a rename, not a copy (see `SeriesBuffer`)."""
    rows = sum(len(block) for block in frames)
    fd, name = tempfile.mkstemp(dir=folder, prefix="series-", suffix=".npy")
    with os.fdopen(fd, "wb") as handle:
        handle.write(npy_header(rows, size))
        for block in frames:
            handle.write(np.ascontiguousarray(block, dtype=PACK_DTYPE).data)
    return name


def read_pack(path: Path | str, size: int) -> np.ndarray:
    """A pack as [rows, size, size] float16, memory-mapped."""
    return np.memmap(path, dtype=PACK_DTYPE, mode="r").reshape(-1, size, size)


def to_pack_dtype(values: np.ndarray) -> np.ndarray:
    """`values.astype(PACK_DTYPE)`, faster (see `_F16_OVERFLOW`)."""
    x = np.ascontiguousarray(values, dtype=np.float32)
    bits = x.view(np.uint32)
    sign = bits & np.uint32(0x80000000)
    mag = bits ^ sign
    if mag.size < 16384 or mag.max() >= _F16_OVERFLOW:  # small: numpy is faster
        return x.astype(PACK_DTYPE)
    out = mag >> np.uint32(13)  # the lowest kept mantissa bit: ties go to even
    out &= np.uint32(1)
    out += mag
    out += _F16_BIAS  # rebias the exponent; 0xFFF rounds half up
    out >>= np.uint32(13)
    tiny = mag < _F16_SUBNORMAL
    if tiny.any():  # adding a magic float aligns the bits (FPU rounds to even)
        magic = _F16_MAGIC.view(np.float32)
        out[tiny] = (mag.view(np.float32)[tiny] + magic).view(np.uint32) - _F16_MAGIC
    sign >>= np.uint32(16)
    out |= sign
    return out.astype(np.uint16).view(PACK_DTYPE)


def row_source(path: Path | str, size: int) -> tuple[int, int]:
    """(offset of row 0, rows) of a pack or a series array of `size` slices.

    Raises OSError or ValueError when the file is missing, cut short or holds
    something else, as reading it would.
    """
    row_bytes = size * size * np.dtype(PACK_DTYPE).itemsize
    with open(path, "rb") as handle:
        length = os.fstat(handle.fileno()).st_size
        if not str(path).endswith(".npy"):
            if length % row_bytes:
                raise ValueError(f"pack of {length} bytes is not whole rows")
            return 0, length // row_bytes
        # The arrays this module writes: their header is `npy_header` of the
        # rows the length implies, found without numpy's header parser (it
        # evaluates the header's text, tens of us for each of a run's arrays).
        head = handle.read(128)
        if len(head) >= 10 and head[:8] == b"\x93NUMPY\x01\x00":
            offset = 10 + int.from_bytes(head[8:10], "little")
            rows = (length - offset) // row_bytes
            if rows >= 0 and head[:offset] == npy_header(rows, size):
                return offset, rows
        handle.seek(0)
        version = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(handle)
        offset = handle.tell()
    if fortran or dtype != PACK_DTYPE or len(shape) != 3 or shape[1:] != (size, size):
        raise ValueError(f"holds {dtype} {shape}, not [n, {size}, {size}] float16")
    if length < offset + shape[0] * row_bytes:
        raise ValueError("array file is cut short")
    return offset, shape[0]


def copy_rows(path: Path, rows: list[tuple[str, int, int]], size: int) -> None:
    """Write a series array from (source file, offset of row 0, row) triples.

    Bytes go file to file in the kernel (copy_file_range; runs of consecutive
    rows in one call), so the process assembling the cache copies nothing; the
    result is the .npy that `write_array` writes for the same rows. Atomic.
    """
    row_bytes = size * size * np.dtype(PACK_DTYPE).itemsize
    runs: list[list] = []  # [source, first byte, bytes]
    for source, base, row in rows:
        start = base + row * row_bytes
        last = runs[-1] if runs else None
        if last is not None and last[0] == source and last[1] + last[2] == start:
            last[2] += row_bytes
        else:
            runs.append([source, start, row_bytes])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=".npy")
    sources: dict[str, int] = {}
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(npy_header(len(rows), size))
            out.flush()
            for source, start, count in runs:
                if source not in sources:
                    sources[source] = os.open(source, os.O_RDONLY)
                _copy_range(sources[source], out.fileno(), start, count)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        for source_fd in sources.values():
            os.close(source_fd)


def _copy_range(src: int, dst: int, start: int, count: int) -> None:
    """`count` bytes of `src` from `start` to `dst` at its current position."""
    while count > 0:
        try:
            done = os.copy_file_range(src, dst, count, start)
        except (AttributeError, OSError):  # no such call, or not between these
            data = os.pread(src, count, start)
            done = os.write(dst, data)
        if done <= 0:
            raise OSError(f"source ended {count} bytes early")
        start += done
        count -= done
