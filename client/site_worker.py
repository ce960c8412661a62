"""`fedbigbigan site-worker`: a hospital node's long-lived training process.

Flower starts a fresh ClientApp process for every message, which would import
TensorFlow, build the model and load the site's slices each time. The worker
keeps them (the ClientApp's own per-process caches, `client.client_app` and
`client.site`) across messages and rounds; the ClientApp hands it a message's
local work over a Unix socket (`client.worker_protocol`) and falls back to doing
it itself when no worker listens. The work is the ClientApp's own code
(`HospitalClient.fit_here` / `evaluate_here`), so a round stays a function of
(weights, data, seed) whichever process runs it.

Only the node's user may talk to it: the socket is created 0600 in a folder that
user owns and no one else can write to, and every peer's uid is checked.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import stat
import sys
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from client.site import WORKER_SOCKET_KEY
from client.worker_protocol import (
    OPS,
    SITE_KEYS,
    ProtocolError,
    decode_values,
    encode_values,
    peer_uid,
    recv_frame,
    send_frame,
)

RECEIVE_TIMEOUT = 300.0  # seconds a client may take to send its request


class WorkerRefused(RuntimeError):
    """The worker cannot start safely (the message says why and what to do)."""


def check_folder(path: Path) -> None:
    """Refuse a socket folder another user could write to (they could swap the
    socket for their own) or that is not this user's."""
    folder = path.parent
    try:
        st = folder.stat()
    except FileNotFoundError:
        raise WorkerRefused(f"{folder}: no such folder for the socket") from None
    if st.st_uid != os.getuid():
        raise WorkerRefused(
            f"{folder}: owned by uid {st.st_uid}, not this user ({os.getuid()})"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise WorkerRefused(
            f"{folder}: writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):o}): chmod 700 it"
        )


def _live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def claim_path(path: Path) -> None:
    """Make way for our socket: refuse a live worker's or anything not a
    socket; remove a stale socket only if it is this user's."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise WorkerRefused(f"{path}: exists and is not a socket; remove it")
    if _live(path):
        raise WorkerRefused(f"{path}: a site worker already listens there")
    if st.st_uid != os.getuid():
        raise WorkerRefused(f"{path}: a stale socket of uid {st.st_uid}; not removed")
    path.unlink()


def listen(path: Path) -> socket.socket:
    """A listening socket at `path`, created with mode 0600 in a folder only
    this user can write to (made, 0700, if it is missing)."""
    try:  # a missing last folder is made ours (a pod's shared emptyDir is 0777)
        path.parent.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise WorkerRefused(f"{path.parent.parent}: no such folder") from None
    check_folder(path)
    claim_path(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # born 0600: no window in which others could connect
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    server.listen(8)
    return server


class Worker:
    """Serves one node's messages, one at a time, with its state kept warm."""

    def __init__(self, node_config: dict):
        from client.client_app import HospitalClient

        self.node_config = dict(node_config)
        self.client = HospitalClient(self.node_config)
        self.served = 0
        self.run_key: str | None = None

    def status(self) -> dict[str, Any]:
        """What a reply says about the worker: its process, its peak memory,
        messages served and models built (the warm state's evidence)."""
        from client.client_app import models_held

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {
            "pid": os.getpid(),
            "served": self.served,
            "models": models_held(),
            "peak-rss-mb": peak_kb / 1024,
        }

    def handle(self, header: dict, arrays: list) -> tuple[dict, list]:
        """One request's reply header and arrays; raises on a bad request."""
        op = header.get("op")
        if op not in OPS:
            raise ProtocolError(f"op {op!r}: expected one of {list(OPS)}")
        if op == "ping":
            return {"ok": True, "n": 0, "worker": self.status()}, []
        node = header.get("node")
        mine = {k: self.node_config.get(k) for k in SITE_KEYS}
        if node != mine:
            raise ProtocolError(f"node config {node} is not this worker's {mine}")
        config = decode_values(header.get("config"))
        self._forget_other_runs(config)
        if op == "fit":
            out, n, metrics = self.client.fit_here(arrays, config)
            reply = {"ok": True, "n": int(n), "metrics": encode_values(metrics)}
        else:
            loss, n, metrics = self.client.evaluate_here(arrays, config)
            reply = {"ok": True, "loss": float(loss), "n": int(n)}
            reply["metrics"], out = encode_values(metrics), []
        self.served += 1
        return {**reply, "worker": self.status()}, list(out)

    def _forget_other_runs(self, config: dict) -> None:
        """Keep the models and data of one model and data setup, not of every
        run ever served: what the process's caches are keyed by (a new run, or
        a resumed one, of the same setup finds them warm)."""
        from client.client_app import forget_warm_state, run_config_of
        from client.site import ingest_config

        run = run_config_of(config)
        key = repr(
            (
                run.preset,
                run.seed,
                run.devices,
                ingest_config(run),
                run.split,
                run.train.max_slices_per_patient,
            )
        )
        if self.run_key is not None and key != self.run_key:
            log(INFO, "site worker: another model or data setup; warm state dropped")
            forget_warm_state()
        self.run_key = key

    def serve_one(self, conn: socket.socket) -> None:
        """Answer one connection; any failure becomes a one-line error reply."""
        started = time.perf_counter()
        try:
            if peer_uid(conn) != os.getuid():
                raise PermissionError(f"peer uid {peer_uid(conn)} is not this user")
            conn.settimeout(RECEIVE_TIMEOUT)
            header, arrays = recv_frame(conn)
            conn.settimeout(None)
            reply, out = self.handle(header, arrays)
            what = f"{header['op']} {header.get('config', {}).get('phase', '')}"
        except Exception as err:  # the reply names it; the worker stays up
            text = " ".join(f"{type(err).__name__}: {err}".split())
            reply, out, what = {"ok": False, "error": text}, [], "error reply"
            log(WARNING, "site worker: %s", text)
        try:
            send_frame(conn, reply, out)
        except OSError as err:
            log(WARNING, "site worker: reply not delivered (%s)", err)
            return
        log(INFO, "site worker: %s in %.1f s", what, time.perf_counter() - started)


def serve(node_config: dict) -> int:
    """Listen at the node config's `site-worker-socket` until SIGTERM/SIGINT."""
    if WORKER_SOCKET_KEY not in node_config:
        raise WorkerRefused(
            f"the node config has no {WORKER_SOCKET_KEY}: add "
            f'{WORKER_SOCKET_KEY}="/run/fedbigbigan/worker.sock" (as for the SuperNode)'
        )
    path = Path(str(node_config[WORKER_SOCKET_KEY]))
    server = listen(path)  # refused or not, before seconds of imports
    ours = path.stat().st_ino
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        # warm before the first message (a ClientApp connecting meanwhile waits)
        import tensorflow  # noqa: F401

        worker = Worker(node_config)
        log(INFO, "site worker %d listening on %s", os.getpid(), path)
        while True:
            conn, _ = server.accept()
            with conn:
                worker.serve_one(conn)
    except KeyboardInterrupt:
        return 0
    finally:
        server.close()
        # remove our socket only: another worker may have replaced a stale one
        if path.exists() and path.stat().st_ino == ours:
            path.unlink()
