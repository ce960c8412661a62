"""Stored pixel values -> Hounsfield units at the cached size, as the paper does.

The paper's steps: HU via RescaleSlope/Intercept; outside-field-of-view padding
(PixelPaddingValue, or vendor fill values such as -2000/-2048 that lie far below
air) replaced by the smallest real value; resize to the model's size.

Two facts keep this fast enough to run at the rate of a plain `pixel_array`:
- the rescale is affine and area/bilinear resampling is linear, so padding is
  filled and the image shrunk in stored units, and the rescale is applied to the
  small image only (same result, 16-64x fewer multiplications);
- native (uncompressed) little-endian pixels are a view on the file's bytes;
  compressed ones go through pydicom's decoders (pylibjpeg, openjpeg, rle).

MONOCHROME1 needs no inversion here: it only tells a viewer to show low values
bright, after the modality LUT; the HU that RescaleSlope/Intercept give are the
same for MONOCHROME1 and MONOCHROME2.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from common.ingest import kernels
from common.ingest.cache import PACK_DTYPE, to_pack_dtype
from common.ingest.config import IngestConfig
from common.ingest.header_fields import Fields
from common.ingest.headers import Header, Parsed
from common.ingest.policy import intensity_range, to_unit
from common.ingest.reasons import Skip, short_error

# Real tissue and air are never below about -1024 HU; vendors fill the area
# outside the reconstruction circle with -2000, -2048 or -3024.
PADDING_HU = -1500.0
NATIVE_LITTLE_ENDIAN = {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)}


def stored_frames(parsed: Parsed, header: Header) -> np.ndarray:
    """Stored values as [frames, rows, cols] integers (unused high bits cleared)."""
    shape = (header.frames, header.rows, header.columns)
    ts = header.transfer_syntax or str(ImplicitVRLittleEndian)
    try:
        if ts in NATIVE_LITTLE_ENDIAN and parsed.pixels is not None:
            return _native_frames(parsed, header, shape)
        return np.asarray(parsed.full().pixel_array).reshape(shape)
    except Skip:
        raise
    except Exception as err:
        raise Skip(
            "decode", f"pixel data cannot be decoded ({short_error(err)})"
        ) from None


def _native_frames(
    parsed: Parsed, header: Header, shape: tuple[int, ...]
) -> np.ndarray:
    ds = parsed.ds
    fields = Fields(ds)
    signed = fields.us(0x00280103) == 1  # PixelRepresentation
    dtype = np.dtype(f"<{'i' if signed else 'u'}{header.bits_allocated // 8}")
    count = shape[0] * shape[1] * shape[2]
    arr = np.frombuffer(parsed.pixels, dtype=dtype, count=count).reshape(shape)
    # The range is measured once: it also says whether there is padding and
    # how the shrink can sum (see `hu_slices`).
    smallest, largest = _range(arr)
    bits = fields.us(0x00280101) or header.bits_allocated  # BitsStored
    if 0 < bits < header.bits_allocated:
        low, high = (
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
            if signed
            else (
                0,
                (1 << bits) - 1,
            )
        )
        # Most vendors sign-extend; some leave overlay or garbage bits above
        # BitsStored. Clear them only when they are there.
        if smallest < low or largest > high:
            shift = header.bits_allocated - bits
            arr = np.right_shift(np.left_shift(arr, shift), shift)
            smallest, largest = _range(arr)
    parsed.stored_range = (smallest, largest)
    return arr


def _range(values: np.ndarray) -> tuple[int, int]:
    """(min, max) of integer values: one compiled read for 16-bit ones."""
    if kernels.fits(values):
        return kernels.stored_range(values)
    return int(values.min()), int(values.max())


def frame_rescales(ds: Dataset, frames: int) -> list[tuple[float, float]]:
    """(slope, intercept) of each frame: top level or enhanced functional groups."""
    fields = Fields(ds)
    if fields.has(0x00281053) or fields.has(0x00281052):
        slope, intercept = fields.number(0x00281053), fields.number(0x00281052)
        if slope is None or intercept is None:
            raise Skip("no-rescale", "RescaleSlope/RescaleIntercept unusable")
        pairs = [(slope, intercept)] * frames
    else:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        shared = ds.get("SharedFunctionalGroupsSequence") or []
        shared_item = _transformation(shared[0]) if shared else None
        pairs = []
        for index in range(frames):
            item = None
            if index < len(per_frame):
                item = _transformation(per_frame[index])
            item = item if item is not None else shared_item
            if item is None:
                raise Skip(
                    "no-rescale",
                    f"frame {index + 1} has no RescaleSlope/RescaleIntercept",
                )
            pairs.append(_rescale_of(item))
    for slope, _ in pairs:
        if not slope > 0:
            raise Skip(
                "no-rescale",
                f"RescaleSlope is {slope}; a CT slice needs a positive slope",
            )
    return pairs


def _transformation(group: Dataset) -> Dataset | None:
    seq = group.get("PixelValueTransformationSequence")
    return seq[0] if seq else None


def _rescale_of(item: Dataset) -> tuple[float, float]:
    try:
        return float(item.RescaleSlope), float(item.RescaleIntercept)
    except (AttributeError, TypeError, ValueError) as err:
        raise Skip(
            "no-rescale", f"RescaleSlope/RescaleIntercept unusable ({short_error(err)})"
        ) from None


def padding_range(ds: Dataset, dtype: np.dtype) -> tuple[int, int] | None:
    """PixelPaddingValue (and RangeLimit) in the stored values' own integer type.

    Their VR is US or SS after the data's signedness; read in that type, a
    value written the other way (65535 for -1) lands on the same stored value.
    """
    fields = Fields(ds)
    signed = dtype.kind == "i"
    first = fields.us(0x00280120, signed=signed)  # PixelPaddingValue
    if first is None:
        return None
    limit = fields.us(0x00280121, signed=signed)  # PixelPaddingRangeLimit
    last = first if limit is None else limit
    if signed:  # a value pydicom already converted as US
        first, last = (v - 65536 if v > 32767 else v for v in (first, last))
    return min(first, last), max(first, last)


def padding_fill(
    frame: np.ndarray,
    slope: float,
    intercept: float,
    padding: tuple[int, int] | None,
    scratch: np.ndarray,
    smallest: int | None = None,
) -> tuple[int | None, np.ndarray | None]:
    """How to fill outside-FOV padding: (floor, explicit).

    `floor` is the smallest real stored value: every value below it is padding
    and becomes it; `explicit` marks padding inside the real range (it becomes
    the floor too). (None, None): no padding, or a blank slice. `smallest` is
    the frame's minimum, when known.
    """
    info = np.iinfo(frame.dtype)
    # Stored values below `low` map below PADDING_HU: padding, whatever the tag.
    low = math.ceil((PADDING_HU - intercept) / slope)
    low = min(max(low, info.min), info.max)
    if padding is not None and padding[1] >= low:
        # The padding value is in the range of real values: only its mask knows.
        explicit = (
            frame == padding[0]
            if padding[0] == padding[1]
            else (frame >= padding[0]) & (frame <= padding[1])
        )
        if explicit.any():
            real = (frame >= low) & ~explicit
            if not real.any():
                return None, None
            return np.min(frame, where=real, initial=info.max), explicit
    if (frame.min() if smallest is None else smallest) >= low:
        return None, None
    return _min_at_or_above(frame, low, scratch), None


def fill_padding(
    frame: np.ndarray,
    slope: float,
    intercept: float,
    padding: tuple[int, int] | None,
) -> np.ndarray:
    """The frame with outside-FOV padding replaced by the smallest real value."""
    out = np.empty_like(frame)
    floor, explicit = padding_fill(frame, slope, intercept, padding, out)
    if floor is None:
        return frame
    np.maximum(frame, _row(frame, floor), out=out)
    if explicit is not None:
        np.putmask(out, explicit, floor)
    return out


def _row(frame: np.ndarray, value) -> np.ndarray:
    """A row of `value`: numpy's scalar path of maximum is 4x slower here."""
    return np.full(frame.shape[-1], value, frame.dtype)


def _min_at_or_above(frame: np.ndarray, low: int, scratch: np.ndarray):
    """Smallest value >= low, without a masked reduction (3x slower in numpy).

    Subtracting `low` in the unsigned type of the same width wraps every value
    below `low` to the top of the range, above every value at or above it.
    16-bit frames: the same in one compiled read, with no scratch written.
    """
    if kernels.fits(frame):
        found = kernels.min_at_or_above(frame, low)
        return None if found is None else frame.dtype.type(found)
    unsigned = np.dtype(f"u{frame.itemsize}")
    shifted = scratch.view(unsigned)
    offset = np.full(frame.shape[-1], low % (1 << (8 * frame.itemsize)), unsigned)
    np.subtract(frame.view(unsigned), offset, out=shifted)
    smallest = int(shifted.min())
    if smallest > int(np.iinfo(frame.dtype).max) - low:
        return None  # every value wrapped: all of them are below `low`
    return frame.dtype.type(smallest + low)


def resize_stored(frame: np.ndarray, size: int) -> np.ndarray:
    """A filled frame as size x size float32 (area mean shrinking, else bilinear).

    A non-square matrix is padded to a square with its smallest value first, so
    the anatomy keeps its aspect ratio.
    """
    rows, cols = frame.shape
    if rows != cols:
        side = max(rows, cols)
        square = np.full((side, side), frame.min(), dtype=frame.dtype)
        top, left = (side - rows) // 2, (side - cols) // 2
        square[top : top + rows, left : left + cols] = frame
        frame, rows = square, side
    if rows == size:
        return frame.astype(np.float32)
    if rows > size and rows % size == 0:
        return _block_mean(frame, rows // size)
    method = Image.Resampling.BOX if rows > size else Image.Resampling.BILINEAR
    image = Image.fromarray(frame.astype(np.float32), mode="F")
    return np.asarray(image.resize((size, size), method), dtype=np.float32)


def _block_mean(
    frame: np.ndarray, k: int, floor=None, bound: int | None = None
) -> np.ndarray:
    """Mean of k x k blocks: the same as PIL's BOX filter for an integer factor.

    Values below `floor` count as `floor` (the padding fill, done here in the
    same pass). `bound`: no value's magnitude exceeds it. Row-wise adds of
    strided views beat both PIL and `reshape(...).mean()`.
    """
    n = frame.shape[0] // k
    if frame.dtype.kind in "iu" and frame.itemsize <= 2 and k <= 16:
        if bound is not None and k * bound <= np.iinfo(frame.dtype).max:
            return _block_mean_native(frame, k, n, floor, bound)
        return _block_mean_exact(frame, k, n, floor)
    small = frame.itemsize <= 2 and k <= 128  # k*k*65535 fits in int32
    acc_type = np.int32 if small and frame.dtype.kind in "iu" else np.float64
    rows = frame.reshape(n, k, frame.shape[1])
    acc = np.zeros((n, frame.shape[1]), acc_type)
    slab = np.empty((n, frame.shape[1]), frame.dtype)
    floor_row = None if floor is None else _row(frame, floor)
    for i in range(k):
        if floor_row is None:
            acc += rows[:, i, :]
        else:
            acc += np.maximum(rows[:, i, :], floor_row, out=slab)
    cols = acc.reshape(n, n, k)
    out = cols[:, :, 0].copy()
    for i in range(1, k):
        out += cols[:, :, i]
    return (out * (1.0 / (k * k))).astype(np.float32)


def _block_mean_exact(frame: np.ndarray, k: int, n: int, floor) -> np.ndarray:
    """`_block_mean` of 8/16-bit integers with float32 sums, which are exact
    here (k*k*65535 < 2**24), so the result is bit for bit the same, ~1.5x faster.

    The fill is one full-size pass into the scratch buffer; summing float32
    slabs avoids numpy's slow mixed int16 + int32 loops.
    """
    if floor is not None:
        frame = np.maximum(
            frame, _row(frame, floor), out=_scratch(frame.shape, frame.dtype)
        )
    rows = frame.reshape(n, k, frame.shape[1])
    acc = rows[:, 0, :].astype(np.float32)
    for i in range(1, k):
        np.add(acc, rows[:, i, :], out=acc, casting="unsafe")
    cols = acc.reshape(n, n, k)
    out = np.add(cols[:, :, 0], cols[:, :, 1]) if k > 1 else cols[:, :, 0].copy()
    for i in range(2, k):
        out += cols[:, :, i]
    if k & (k - 1) == 0:  # a power of two: the scale is exact in float32
        out *= np.float32(1.0 / (k * k))
        return out
    return (out.astype(np.float64) * (1.0 / (k * k))).astype(np.float32)


def _block_mean_native(frame: np.ndarray, k: int, n: int, floor, bound: int):
    """`_block_mean_exact` summing in the frame's own integer type (see
    `_block_sums`); the sums are the same integers, so the result is bit for
    bit the same."""
    return _means(_block_sums(frame, k, n, floor, bound), k)


def _block_sums(frame: np.ndarray, k: int, n: int, floor, bound: int) -> np.ndarray:
    """Sums of k x k blocks of the filled frame, in the frame's integer type
    where they cannot overflow (k * `bound` fits): half the bytes of float32
    sums and no casts. Columns stay integers when k * k * `bound` fits, else
    they are summed in float32 (exact: k*k*65535 < 2**24)."""
    if floor is not None:
        frame = np.maximum(
            frame, _row(frame, floor), out=_scratch(frame.shape, frame.dtype)
        )
    if k == 1:
        return frame
    rows = frame.reshape(n, k, frame.shape[1])
    acc = np.add(rows[:, 0, :], rows[:, 1, :])
    for i in range(2, k):
        acc += rows[:, i, :]
    if k * k * bound > np.iinfo(frame.dtype).max:
        acc = acc.astype(np.float32)
    cols = acc.reshape(n, n, k)
    out = np.add(cols[:, :, 0], cols[:, :, 1])
    for i in range(2, k):
        out += cols[:, :, i]
    return out


def _means(sums: np.ndarray, k: int) -> np.ndarray:
    """Block sums -> float32 block means, rounded as `_block_mean_exact` does."""
    out = sums.astype(np.float32)
    if k & (k - 1) == 0:  # a power of two: the scale is exact in float32
        out *= np.float32(1.0 / (k * k))
        return out
    return (out.astype(np.float64) * (1.0 / (k * k))).astype(np.float32)


def _shrunk(
    parsed: Parsed, header: Header, size: int
) -> Iterator[tuple[np.ndarray, int, float, float, tuple[int, int] | None]]:
    """Each frame filled and shrunk in stored units, with its rescale:
    (values, k, slope, intercept, span), where values are the integer sums of
    k x k blocks, or (k = 0) float32 means already; span is the sums' (min,
    max) when already known."""
    ds = parsed.ds
    stored = stored_frames(parsed, header)
    rescales = frame_rescales(ds, header.frames)
    padding = padding_range(ds, stored.dtype)
    scratch = _scratch(stored.shape[1:], stored.dtype)
    rows, cols = stored.shape[1:]
    block = rows == cols and rows >= size and rows % size == 0
    k = rows // size
    native = stored.dtype.kind in "iu" and stored.itemsize <= 2 and k <= 16
    # (min, max) of all frames: one frame's own minimum, and a bound on the
    # magnitude of every frame's values.
    span = parsed.stored_range
    for index, (slope, intercept) in enumerate(rescales):
        frame = stored[index]
        if span is None:
            span = _range(stored)
        smallest = span[0] if len(stored) == 1 else None
        floor, explicit = padding_fill(
            frame, slope, intercept, padding, scratch, smallest
        )
        if block and explicit is None:  # the common case: fill while shrinking
            if kernels.fits(frame):  # one compiled pass, int32 sums
                sums, first, last = kernels.block_sums(frame, k, floor)
                yield sums, k, slope, intercept, (first, last)
                continue
            bound = max(abs(span[0] if floor is None else floor), abs(span[1]))
            if native and k * bound <= np.iinfo(stored.dtype).max:
                sums = _block_sums(frame, k, size, floor, bound)
                yield sums, k, slope, intercept, None
                continue
            if k > 1:
                yield _block_mean(frame, k, floor), 0, slope, intercept, None
                continue
        if floor is not None:
            frame = np.maximum(frame, _row(frame, floor), out=scratch)
            if explicit is not None:
                np.putmask(frame, explicit, floor)
        yield resize_stored(frame, size), 0, slope, intercept, None


def _to_hu(small: np.ndarray, slope: float, intercept: float, out=None):
    out = np.multiply(small, np.float32(slope), out=out)
    out += np.float32(intercept)
    return out


def hu_slices(parsed: Parsed, header: Header, size: int) -> np.ndarray:
    """All frames as [frames, size, size] float32 HU, padding filled."""
    out = np.empty((header.frames, size, size), np.float32)
    for index, (values, k, slope, intercept, _) in enumerate(
        _shrunk(parsed, header, size)
    ):
        _to_hu(_means(values, k) if k else values, slope, intercept, out[index])
    return out


def cached_slices(
    parsed: Parsed, header: Header, config: IngestConfig, out: np.ndarray | None = None
) -> tuple[np.ndarray, list[list[float]]]:
    """All frames as the cache holds them: [frames, size, size] float16 in the
    intensity policy's [-1, 1], and per frame the HU mapped to -1 and to 1.

    The same as `to_unit` of `hu_slices` under `intensity_range`, cast by
    `to_pack_dtype`, bit for bit (written into `out` when given). When a
    frame's block sums take fewer distinct integer values than it has pixels
    (e.g. 2 x 2 blocks of 12-bit data), every step after the sums is done once
    per possible sum, on a table, and the frame is a lookup in it: float16
    casts are slow in numpy.
    """
    size = config.image_size
    if out is None:
        out = np.empty((header.frames, size, size), PACK_DTYPE)
    ranges = []
    for index, (values, k, slope, intercept, span) in enumerate(
        _shrunk(parsed, header, size)
    ):
        if k and values.dtype.kind in "iu":
            first, last = span or (int(values.min()), int(values.max()))
            table = last - first < min(values.size // 2, np.iinfo(values.dtype).max)
        else:
            table = False
        if table:
            # hu is monotonic in the sum: the table's ends are the frame's
            # min and max, so the intensity range is the frame's (and theirs).
            sums = np.arange(first, last + 1, dtype=np.int32)
            hu = _to_hu(_means(sums, k), slope, intercept)
            low, high = intensity_range(hu[[0, -1]], config)
            codes = to_pack_dtype(to_unit(hu, low, high)).view(np.uint16)
            target = out[index].view(np.uint16)
            if values.dtype == np.int32 and target.flags.c_contiguous:
                kernels.lookup(values, np.ascontiguousarray(codes), first, target)
            else:
                # Every index is in the table: "clip" changes none, and unlike
                # "raise" it writes `out` directly, without a buffer.
                np.take(codes, values - first, out=target, mode="clip")
        else:
            hu = _to_hu(_means(values, k) if k else values, slope, intercept)
            low, high = intensity_range(hu, config)
            out[index] = to_pack_dtype(to_unit(hu, low, high))
        ranges.append([low, high])
    return out, ranges


_SCRATCH = threading.local()


def _scratch(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A reused full-size buffer: a fresh 512x512 array costs as much as a pass
    over it (page faults), and a slice makes several."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (tuple(shape), np.dtype(dtype).str)
    if key not in buffers:
        buffers.clear()  # one matrix size at a time is the common case
        buffers[key] = np.empty(shape, dtype)
    return buffers[key]


def hu_full(parsed: Parsed, header: Header) -> np.ndarray:
    """All frames at full resolution as [frames, rows, cols] float32 HU."""
    ds = parsed.ds
    stored = stored_frames(parsed, header)
    rescales = frame_rescales(ds, header.frames)
    padding = padding_range(ds, stored.dtype)
    out = np.empty(stored.shape, np.float32)
    for index, (slope, intercept) in enumerate(rescales):
        filled = fill_padding(stored[index], slope, intercept, padding)
        out[index] = filled.astype(np.float32) * np.float32(slope) + np.float32(
            intercept
        )
    return out
