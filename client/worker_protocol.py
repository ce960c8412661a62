"""The site worker's wire format, and the ClientApp's side of it.

A frame is an 8-byte big-endian header length, the header (UTF-8 JSON), then
each array the header lists (dtype and shape) as raw bytes in C order. Arrays
arrive bit for bit as they were sent, and nothing is unpickled: dtypes come from
a fixed list of numeric ones and config values are JSON's bool/int/float/str
(bytes tagged as hex). A request names its op ("fit", "evaluate", "ping"); a
reply says `ok` and carries the result, or a one-line `error`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
from dataclasses import dataclass, field
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common.logger import log

MAX_HEADER = 16 << 20  # bytes: a run config and metrics are kilobytes
MAX_ARRAYS = 16 << 30  # bytes per frame: far above the paper preset's weights
DTYPES = frozenset(
    np.dtype(t).str
    for t in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
)
CONNECT_TIMEOUT = 5.0  # seconds: a live worker accepts at once
OPS = ("fit", "evaluate", "ping")
# the node-config keys naming the site a worker serves: a request for another
# site's data is refused
SITE_KEYS = ("data-dir", "role", "cache-dir")


class ProtocolError(ValueError):
    """A frame that does not follow the format (the message says how)."""


class WorkerError(RuntimeError):
    """The worker took the request but its work failed (its one-line reason)."""


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (Linux)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return struct.unpack("3i", creds)[1]


def _encode_scalar(key: str, value: Any) -> Any:
    if isinstance(value, np.generic):  # a numpy scalar in metrics
        value = value.item()
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, bool | int | float | str):
        return value
    raise ProtocolError(f"{key}: a {type(value).__name__} is not a scalar")


def encode_values(values: dict[str, Any]) -> dict[str, Any]:
    """Flower's config/metric values (scalars, or lists of them: a CI is a
    pair) as JSON values, bytes as {"hex": ...}."""
    return {
        key: [_encode_scalar(key, v) for v in value]
        if isinstance(value, list)
        else _encode_scalar(key, value)
        for key, value in values.items()
    }


def _decode_scalar(key: str, value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"hex"}:
        try:
            return bytes.fromhex(value["hex"])
        except (TypeError, ValueError) as err:
            raise ProtocolError(f"{key}: bad hex bytes") from err
    if isinstance(value, bool | int | float | str):
        return value
    raise ProtocolError(f"{key}: a {type(value).__name__} is not a scalar")


def decode_values(values: Any) -> dict[str, Any]:
    """The inverse of `encode_values`, refusing anything but scalars and flat
    lists of them."""
    if not isinstance(values, dict):
        raise ProtocolError("config/metrics must be a JSON object")
    return {
        key: [_decode_scalar(key, v) for v in value]
        if isinstance(value, list)
        else _decode_scalar(key, value)
        for key, value in values.items()
    }


def send_frame(sock: socket.socket, header: dict, arrays: list[np.ndarray]) -> None:
    """Write one frame: the header (with the arrays' dtypes and shapes), then them."""
    # C order for the raw bytes (ascontiguousarray would make a 0-d array 1-d)
    arrays = [np.asarray(a) for a in arrays]
    arrays = [a if a.flags.c_contiguous else a.copy(order="C") for a in arrays]
    for a in arrays:
        if a.dtype.str not in DTYPES:
            raise ProtocolError(f"array dtype {a.dtype} is not sent")
    header = {
        **header,
        "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays],
    }
    text = json.dumps(header).encode()
    sock.sendall(struct.pack(">Q", len(text)) + text)
    for a in arrays:
        if a.size:
            sock.sendall(a.reshape(-1).view(np.uint8))


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ProtocolError(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def _array_specs(header: dict) -> list[tuple[np.dtype, tuple[int, ...]]]:
    specs = header.get("arrays", [])
    if not isinstance(specs, list):
        raise ProtocolError("'arrays' must be a list")
    out, total = [], 0
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or spec.get("dtype") not in DTYPES:
            raise ProtocolError(f"array {i}: dtype must be one of {sorted(DTYPES)}")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape
        ):
            raise ProtocolError(f"array {i}: shape must be a list of sizes >= 0")
        dtype = np.dtype(spec["dtype"])
        total += math.prod(shape) * dtype.itemsize
        if total > MAX_ARRAYS:
            raise ProtocolError(f"arrays exceed {MAX_ARRAYS} bytes")
        out.append((dtype, tuple(shape)))
    return out


def recv_frame(sock: socket.socket) -> tuple[dict, list[np.ndarray]]:
    """Read one frame; a malformed one raises ProtocolError (nothing else)."""
    (size,) = struct.unpack(">Q", bytes(_recv_exact(sock, 8)))
    if size > MAX_HEADER:
        raise ProtocolError(f"header of {size} bytes exceeds {MAX_HEADER}")
    try:
        header = json.loads(_recv_exact(sock, size).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"header is not JSON: {err}") from err
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    arrays = []
    for dtype, shape in _array_specs(header):
        n = math.prod(shape) * dtype.itemsize
        arrays.append(np.frombuffer(_recv_exact(sock, n), dtype).reshape(shape))
    return header, arrays


@dataclass
class WorkerReply:
    """A worker's result: a fit's arrays, count and metrics, or an evaluate's
    loss, count and metrics; and the worker's process (its id, peak memory)."""

    arrays: list[np.ndarray]
    n: int
    metrics: dict[str, Any]
    loss: float = 0.0
    worker: dict[str, Any] = field(default_factory=dict)


def connect(path: Path) -> socket.socket:
    """A connection to the worker at `path`; OSError if none listens there, or
    PermissionError if its process is another user's (data never goes there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(str(path))
        if peer_uid(sock) != os.getuid():
            raise PermissionError(f"its process runs as uid {peer_uid(sock)}")
    except OSError:
        sock.close()
        raise
    sock.settimeout(None)  # training takes as long as it takes
    return sock


def request(
    path: Path,
    op: str,
    node_config: dict,
    parameters: list[np.ndarray],
    config: dict,
) -> WorkerReply | None:
    """Hand a message's work to the node's site worker; None (after one warning
    line) when no worker of this user listens there: the caller works itself.
    A worker that took the request but failed raises WorkerError."""
    try:
        sock = connect(path)
    except OSError as err:
        reason = err.strerror or str(err)
        log(WARNING, "site worker %s not used (%s): working in-process", path, reason)
        return None
    with sock:
        header = {
            "op": op,
            "node": {k: node_config.get(k) for k in SITE_KEYS},
            "config": encode_values(config),
        }
        send_frame(sock, header, parameters)
        reply, arrays = recv_frame(sock)
    if not reply.get("ok"):
        raise WorkerError(f"site worker {path}: {reply.get('error', 'no reason')}")
    return WorkerReply(
        arrays,
        int(reply["n"]),
        decode_values(reply.get("metrics", {})),
        float(reply.get("loss", 0.0)),
        dict(reply.get("worker", {})),
    )


def ping(path: Path) -> dict[str, Any]:
    """The worker's status (pid, messages served, models built, peak memory);
    OSError if no worker of this user answers."""
    with connect(path) as sock:
        sock.settimeout(CONNECT_TIMEOUT)
        send_frame(sock, {"op": "ping"}, [])
        reply, _ = recv_frame(sock)
    return dict(reply.get("worker", {}))
