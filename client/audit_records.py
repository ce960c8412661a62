"""Small checks the message audit builds on: the refusal, exact keys, node id
lists, bounded bytes, and a serialised array's dtype and shape (header only)."""

from __future__ import annotations

import io

import numpy as np


class AuditRefusal(Exception):
    """One reason a reply may not leave; `public` is what the server may read."""

    # Flower sends the server str(type(exception)): keep the name it has always had.
    __module__ = "client.audit_mod"

    def __init__(self, public: str, local: str | None = None):
        super().__init__(public)
        self.public = public
        self.local = local or public


def _exact_keys(record, keys: set[str]) -> None:
    _known_keys(record, keys)
    missing = set(keys) - set(record.keys())
    if missing:
        raise AuditRefusal(f"missing {sorted(missing)}")


def _known_keys(record, allowed) -> None:
    extra = sorted(set(record.keys()) - set(allowed))
    if extra:
        raise AuditRefusal(
            f"{len(extra)} key(s) not allowed (allowed: {sorted(allowed)})",
            f"keys not allowed: {extra} (allowed: {sorted(allowed)})",
        )


def _node_list(key: str, record, allowed: frozenset[int]) -> None:
    ids = record[key]
    if not _list_of(ids, int) or not set(ids) <= allowed:
        raise AuditRefusal(f"{key}: not a list of the node ids the server named")


def _distinct_node_list(key: str, record, allowed: frozenset[int]) -> None:
    _node_list(key, record, allowed)
    if len(set(record[key])) != len(record[key]):
        raise AuditRefusal(f"{key}: a node id named twice")


def _bounded_bytes(key: str, values, limit: int) -> None:
    if not _list_of(values, bytes) or any(len(v) > limit for v in values):
        raise AuditRefusal(f"{key}: not bytes of at most {limit} each")


def _same_length(record, a: str, b: str) -> None:
    if len(record[a]) != len(record[b]):
        raise AuditRefusal(f"{a} and {b} differ in length")


def _list_of(value, kind: type) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value
    )


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _array_header(array) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and shape of a record's array. Arrays made from legacy `Parameters`
    carry no dtype/shape of their own: the serialised bytes are the truth."""
    if array.stype != "numpy.ndarray":
        raise AuditRefusal(f"an array serialised as {array.stype!r}, not numpy")
    return _npy_header(array.data)


def _npy_header(blob: bytes) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and shape of a serialised array, read from its header only."""
    try:
        f = io.BytesIO(blob)
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(f)
    except (ValueError, OSError) as err:
        raise AuditRefusal("not a serialised numpy array") from err
    return np.dtype(dtype), tuple(shape)
