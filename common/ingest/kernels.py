"""Compiled loops for the pixel steps of a 16-bit frame (numba).

In numpy each step of shrinking a slice is a pass over the whole 512x512 frame
(its range, the padding floor, the fill, the row sums, the column sums, the
lookup's index conversion), and at 256 px those passes were about half of a
slice's cost. Here the range is one read, the floor one read, and fill, row and
column sums one read that writes only the small image. Integer arithmetic only:
every result is the same integer numpy gives (tests compare them), so what is
cached does not change by a bit.

Compiled once per machine into numba's cache; `warm_up` loads them when the
module is imported, so that worker processes forked from a preloaded server
start with them (loading in each worker would cost more than a small chunk).
"""

from __future__ import annotations

import numba
import numpy as np

KERNEL_DTYPES = (np.dtype(np.int16), np.dtype(np.uint16))
_JIT = {"cache": True, "nogil": True, "boundscheck": False}


@numba.njit(**_JIT)
def _range(values):
    # Indexed loops: numba vectorises these, not `for v in values`.
    smallest = values[0]
    largest = values[0]
    for i in range(values.size):
        smallest = min(smallest, values[i])
        largest = max(largest, values[i])
    return smallest, largest


@numba.njit(**_JIT)
def _wrapped_min(values, offset):
    # Subtracting in uint16 wraps values below the offset to the top of the
    # range: the minimum is then the smallest value at or above it (a plain
    # compare-and-select loop does not vectorise).
    smallest = np.uint16(0xFFFF)
    for i in range(values.size):
        smallest = min(smallest, np.uint16(np.uint16(values[i]) - offset))
    return smallest


@numba.njit(**_JIT)
def _block_sums(frame, k, floor, out):
    n = out.shape[0]
    cols = frame.shape[1]
    acc = np.empty(cols, np.int32)  # one row of column sums, in L1
    for i in range(n):
        if k == 2:  # the usual 512 -> 256: both rows at once
            top, bottom = frame[2 * i], frame[2 * i + 1]
            for c in range(cols):
                acc[c] = np.int32(max(top[c], floor)) + np.int32(max(bottom[c], floor))
        else:
            row = frame[k * i]
            for c in range(cols):
                acc[c] = np.int32(max(row[c], floor))
            for r in range(1, k):
                row = frame[k * i + r]
                for c in range(cols):
                    acc[c] += np.int32(max(row[c], floor))
        sums = out[i]
        for j in range(n):
            sums[j] = acc[k * j]
        for c in range(1, k):
            for j in range(n):
                sums[j] += acc[k * j + c]
    smallest = out[0, 0]
    largest = out[0, 0]
    for i in range(n):
        for j in range(n):
            smallest = min(smallest, out[i, j])
            largest = max(largest, out[i, j])
    return smallest, largest


@numba.njit(**_JIT)
def _lookup(sums, table, first, out):
    for i in range(sums.shape[0]):
        for j in range(sums.shape[1]):
            out[i, j] = table[sums[i, j] - first]


def fits(frame: np.ndarray) -> bool:
    """Whether the kernels take this frame (16-bit integers, C order, not
    empty: numpy raises on an empty one, and the caller reports it)."""
    return frame.dtype in KERNEL_DTYPES and frame.flags.c_contiguous and frame.size > 0


def stored_range(values: np.ndarray) -> tuple[int, int]:
    """(min, max) of a C-ordered 16-bit array, in one read."""
    smallest, largest = _range(values.reshape(-1))
    return int(smallest), int(largest)


def min_at_or_above(frame: np.ndarray, low: int) -> int | None:
    """The smallest value >= `low` of a C-ordered 16-bit frame; None if none is."""
    info = np.iinfo(frame.dtype)
    low = min(max(low, int(info.min)), int(info.max))
    smallest = int(_wrapped_min(frame.reshape(-1), np.uint16(low & 0xFFFF)))
    if smallest > int(info.max) - low:
        return None  # every value wrapped: all of them are below `low`
    return smallest + low


def block_sums(
    frame: np.ndarray, k: int, floor: int | None
) -> tuple[np.ndarray, int, int]:
    """Sums of k x k blocks of a square C-ordered 16-bit frame whose values
    below `floor` count as `floor`: (int32 sums, their min, their max)."""
    n = frame.shape[0] // k
    out = np.empty((n, n), np.int32)
    fill = np.iinfo(frame.dtype).min if floor is None else floor
    smallest, largest = _block_sums(frame, k, frame.dtype.type(fill), out)
    return out, int(smallest), int(largest)


def lookup(sums: np.ndarray, table: np.ndarray, first: int, out: np.ndarray) -> None:
    """out = table[sums - first]: int32 sums, 16-bit table and out (C order);
    every sum is in the table."""
    _lookup(sums, table, first, out)


def warm_up() -> None:
    """Load (or, the first time on a machine, compile) the kernels for the
    arrays ingest passes: 16-bit frames, writable or views of a file's bytes."""
    for dtype in KERNEL_DTYPES:
        frame = np.zeros((4, 4), dtype)
        for array in (frame, np.frombuffer(frame.tobytes(), dtype).reshape(4, 4)):
            stored_range(array)
            min_at_or_above(array, 0)
            block_sums(array, 2, None)
    sums = np.zeros((2, 2), np.int32)
    lookup(sums, np.zeros(1, np.uint16), 0, np.empty((2, 2), np.uint16))


warm_up()
