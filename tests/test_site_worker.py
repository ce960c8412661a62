"""The site worker (client/site_worker.py, client/worker_protocol.py): a real
`fedbigbigan site-worker` process on a small phantom site gives the ClientApp's
in-process results bit for bit, message after message, from one warm process;
without a worker the ClientApp warns once and works itself; the socket is the
node user's alone; a bad request gets a one-line error and the worker stays up."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from client import worker_protocol
from client.site_worker import WorkerRefused, listen
from client.worker_protocol import recv_frame, send_frame

pytestmark = pytest.mark.slow

SERVER_KEYS = {"head-clip": 1e4, "run-token": "a0d17e57"}


@pytest.fixture(scope="module")
def short_dir():
    """A 0700 folder with a short path (a Unix socket path has at most 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="fbw-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def site(short_dir) -> Path:
    """One small phantom training site (hospital A's GE fleet at scale 0.15:
    12 patients, 2 slices each)."""
    from simulations.phantoms.dicom_writer import write_sites
    from simulations.phantoms.profiles import paper_sites

    sites = write_sites(short_dir / "data", paper_sites(0.15)[:1], 0, 2)
    return next(iter(sites.values()))


def node_config(site: Path, cache: Path, sock: Path | None = None) -> dict:
    config = {"data-dir": str(site), "role": "train", "cache-dir": str(cache)}
    return config if sock is None else {**config, "site-worker-socket": str(sock)}


def start_worker(config: dict) -> subprocess.Popen:
    """`fedbigbigan site-worker` as its own process; returns once it answers."""
    text = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
    proc = subprocess.Popen(
        [sys.executable, "-m", "common.commands", "site-worker", "--node-config", text],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sock = Path(config["site-worker-socket"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"site worker exited: {proc.communicate()[1][-2000:]}")
        if sock.exists() and ping(sock) is not None:
            return proc
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("site worker did not answer within 120 s")


def ping(sock: Path) -> dict | None:
    try:
        return worker_protocol.ping(sock)
    except OSError:
        return None


@pytest.fixture(scope="module")
def worker(site, short_dir):
    """A running worker for the phantom site, with its own ingest cache."""
    config = node_config(site, short_dir / "worker-cache", short_dir / "w.sock")
    proc = start_worker(config)
    yield config, proc
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def messages():
    """Successive training messages of one run (tiny preset): BigBiGAN rounds 1
    and 2 (round 2 from round 1's result, as the server sends it), then the
    moments message of the head phase (the model's features and both
    baselines'), then round 1 again (a repeat must not see round 2's state)."""
    from common.config import RunConfig
    from common.evaluation import feature_kinds
    from common.model.checkpoint import initial_model

    config = RunConfig.from_flat({"preset": "tiny", "local-epochs": 1})
    flat = {**config.to_flat(), **SERVER_KEYS}
    weights = initial_model(config).get_weights()
    kinds = {feature_kinds.CONFIG_KEY: ",".join(feature_kinds.KINDS)}
    return flat, weights, kinds


def run_messages(client, flat: dict, weights: list, kinds: dict) -> list[tuple]:
    """Fit replies of the messages above through `client` (a HospitalClient)."""
    gan = {**flat, "phase": "gan"}
    first = client.fit(weights, {**gan, "server-round": 1})
    after = [w + d for w, d in zip(weights, first[0], strict=True)]
    second = client.fit(after, {**gan, "server-round": 2})
    moments = client.fit(after, {**flat, **kinds, "phase": "moments", "gan-round": 2})
    again = client.fit(weights, {**gan, "server-round": 1})
    return [first, second, moments, again]


def assert_same(ours: list[tuple], theirs: list[tuple]) -> None:
    """Bit for bit: every array (dtype, shape, bytes), count and metric but
    the node's own cost (seconds, peak memory)."""
    for (a, n, m), (b, k, q) in zip(ours, theirs, strict=True):
        assert n == k
        assert [(x.dtype, x.shape, x.tobytes()) for x in a] == [
            (y.dtype, y.shape, y.tobytes()) for y in b
        ]
        cost = {"seconds", "peak-rss-mb"}
        assert {x: v for x, v in m.items() if x not in cost} == {
            x: v for x, v in q.items() if x not in cost
        }


@pytest.fixture(scope="module")
def in_process(site, short_dir, messages):
    """The same messages in this process, no worker configured."""
    from client.client_app import HospitalClient

    client = HospitalClient(node_config(site, short_dir / "local-cache"))
    return run_messages(client, *messages)


def test_worker_results_equal_in_process_bit_for_bit(worker, messages, in_process):
    from client.client_app import HospitalClient

    config, proc = worker
    replies = run_messages(HospitalClient(config), *messages)
    assert_same(replies, in_process)
    assert replies[0][0] != [] and replies[0][2]["d_loss"] == in_process[0][2]["d_loss"]
    # one warm process served all four, with the model built once
    status = ping(Path(config["site-worker-socket"]))
    assert status["pid"] == proc.pid
    assert status["served"] == 4
    assert status["models"] == 1


@pytest.fixture(scope="module")
def external_worker(site, short_dir):
    """A worker serving the same phantom site as an external one."""
    sock = short_dir / "x.sock"
    config = {**node_config(site, short_dir / "x-cache", sock), "role": "external"}
    proc = start_worker(config)
    yield config, proc
    proc.terminate()
    proc.wait(timeout=30)


def test_external_evaluation_through_the_worker_equals_in_process(
    external_worker, site, short_dir, messages
):
    """The external site's evaluate message (every head's report, the paired
    DeLong differences: lists among the metrics) through the worker and in
    this process: the same report."""
    from client.client_app import HospitalClient
    from common.config import Z_DIM
    from common.evaluation import feature_kinds

    config, proc = external_worker
    flat, weights, kinds = messages
    rng = np.random.default_rng(0)
    heads = [
        rng.normal(0, 0.1, feature_kinds.dim(kind, Z_DIM) + 1)
        for kind in feature_kinds.KINDS
        for _ in feature_kinds.HEADS
    ]
    cutoffs = {"threshold": 0.5, "slice-threshold": 0.5}
    for head in feature_kinds.head_names(feature_kinds.KINDS)[1:]:
        cutoffs |= {f"threshold/{head}": 0.4, f"slice-threshold/{head}": 0.6}
    message = {**flat, **kinds, **cutoffs}
    local = {**node_config(site, short_dir / "x-local-cache"), "role": "external"}
    here = HospitalClient(local).evaluate([*weights, *heads], message)
    there = HospitalClient(config).evaluate([*weights, *heads], message)
    assert there == here
    assert any(isinstance(v, list) for v in here[2].values())
    assert ping(Path(config["site-worker-socket"]))["served"] == 1


def test_values_round_trip_with_their_types():
    values = {"a": True, "b": 3, "c": 0.1, "d": "x", "e": b"\x00\xff", "f": [0.1, 2.5]}
    values |= {"g": [], "h": [b"k"], "i": np.float64(0.3), "j": np.int64(7)}
    back = worker_protocol.decode_values(
        json.loads(json.dumps(worker_protocol.encode_values(values)))
    )
    assert back == values
    assert [type(v) for v in back.values()][:6] == [bool, int, float, str, bytes, list]


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _first_round_logged(client, messages):
    """The client's reply to BigBiGAN round 1, and what it logged meanwhile."""
    lines = Lines()
    logging.getLogger("flwr").addHandler(lines)
    try:
        flat, weights, _ = messages
        reply = client.fit(weights, {**flat, "phase": "gan", "server-round": 1})
    finally:
        logging.getLogger("flwr").removeHandler(lines)
    return reply, lines


def test_no_worker_warns_once_and_works_in_process(
    site, short_dir, messages, in_process
):
    from client.client_app import HospitalClient

    missing = short_dir / "nobody.sock"
    client = HospitalClient(node_config(site, short_dir / "local-cache", missing))
    reply, lines = _first_round_logged(client, messages)
    assert_same([reply], in_process[:1])
    warned = [line for line in lines.lines if "site worker" in line]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert str(missing) in warned[0] and "in-process" in warned[0]


NOBODY = 65534


def _drop_to_nobody() -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _python_for_nobody() -> str | None:
    """An interpreter uid 65534 can start (root can make it that user): this
    one, or the system's when this one lives under /root, which it cannot
    reach. Code run as that user uses the standard library only."""
    if os.getuid() != 0:
        return None
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            started = subprocess.run(
                [python, "-c", "pass"], preexec_fn=_drop_to_nobody, timeout=60
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if started.returncode == 0:
            return python
    return None


def as_nobody(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Standard-library Python `code` run as uid/gid 65534 (another user)."""
    python = _python_for_nobody()
    assert python is not None
    return subprocess.Popen(
        [python, "-c", code, *args],
        preexec_fn=_drop_to_nobody,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def another_user() -> None:
    if _python_for_nobody() is None:
        pytest.skip("needs root and a Python that uid 65534 can run")


def test_another_users_process_cannot_connect(another_user, worker):
    config, proc = worker
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "except PermissionError:\n"
        "    print('refused')\n"
    )
    other = as_nobody(code, config["site-worker-socket"])
    out, err = other.communicate(timeout=60)
    assert out.strip() == "refused", err
    assert ping(Path(config["site-worker-socket"]))["pid"] == proc.pid


def test_a_worker_of_another_user_is_not_used(
    another_user, site, short_dir, messages, in_process
):
    """A socket another user listens on (here: in a folder of theirs) gets
    nothing: the ClientApp sees the peer's uid, warns once and works itself."""
    from client.client_app import HospitalClient

    # their own folder, outside ours (0700: they could not reach into it)
    theirs = Path(tempfile.mkdtemp(prefix="fbw-nobody-"))
    os.chown(theirs, NOBODY, NOBODY)
    sock = theirs / "w.sock"
    code = (  # a listening socket is all a connect needs to see the peer's uid
        "import socket, sys, time\n"
        "server = socket.socket(socket.AF_UNIX)\n"
        "server.bind(sys.argv[1])\n"
        "server.listen()\n"
        "print('listening', flush=True)\n"
        "time.sleep(600)\n"
    )
    other = as_nobody(code, str(sock))
    try:
        assert other.stdout.readline().strip() == "listening"
        client = HospitalClient(node_config(site, short_dir / "local-cache", sock))
        reply, lines = _first_round_logged(client, messages)
    finally:
        other.kill()
        other.wait(timeout=30)
        shutil.rmtree(theirs, ignore_errors=True)
    assert_same([reply], in_process[:1])
    warned = [line for line in lines.lines if "site worker" in line]
    assert len(warned) == 1 and f"uid {NOBODY}" in warned[0], warned


def test_a_peer_of_another_uid_gets_nothing(
    worker, site, short_dir, messages, in_process, monkeypatch
):
    """Where no second user can be made (above), the uid check itself: the
    real worker, seen as another uid's, is not sent the message."""
    from client.client_app import HospitalClient

    config, proc = worker
    served = ping(Path(config["site-worker-socket"]))["served"]
    monkeypatch.setattr(worker_protocol, "peer_uid", lambda sock: os.getuid() + 1)
    lines = Lines()
    logging.getLogger("flwr").addHandler(lines)
    try:
        flat, weights, _ = messages
        sock = Path(config["site-worker-socket"])
        client = HospitalClient(node_config(site, short_dir / "local-cache", sock))
        reply = client.fit(weights, {**flat, "phase": "gan", "server-round": 1})
    finally:
        logging.getLogger("flwr").removeHandler(lines)
    monkeypatch.undo()
    assert_same([reply], in_process[:1])
    warned = [line for line in lines.lines if "site worker" in line]
    assert len(warned) == 1 and f"uid {os.getuid() + 1}" in warned[0], warned
    assert ping(Path(config["site-worker-socket"]))["served"] == served


def test_socket_is_the_users_alone(worker):
    config, _ = worker
    sock = Path(config["site-worker-socket"])
    mode = sock.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) & 0o022 == 0


def test_a_second_worker_on_a_live_socket_is_refused(worker):
    config, proc = worker
    text = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
    second = subprocess.run(
        [sys.executable, "-m", "common.commands", "site-worker", "--node-config", text],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2
    assert "already listens" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert ping(Path(config["site-worker-socket"]))["pid"] == proc.pid


def test_refuses_a_folder_others_can_write_and_a_file_in_the_way(short_dir):
    shared = short_dir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(WorkerRefused, match="writable by group or others"):
        listen(shared / "w.sock")
    os.chmod(shared, 0o775)
    with pytest.raises(WorkerRefused, match="writable by group or others"):
        listen(shared / "w.sock")
    mine = short_dir / "mine"
    mine.mkdir(mode=0o700)
    (mine / "w.sock").write_text("not a socket")
    with pytest.raises(WorkerRefused, match="not a socket"):
        listen(mine / "w.sock")


def test_a_stale_socket_of_its_own_is_replaced(short_dir):
    folder = short_dir / "stale"
    folder.mkdir(mode=0o700)
    path = folder / "w.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a crashed worker's: bound, nobody listening
    dead.close()
    server = listen(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        server.close()


def test_a_missing_socket_folder_is_made_the_users_alone(short_dir):
    path = short_dir / "made" / "w.sock"
    server = listen(path)
    try:
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        server.close()
    with pytest.raises(WorkerRefused, match="no such folder"):
        listen(short_dir / "no" / "such" / "w.sock")


def raw_exchange(sock: Path, payload: bytes) -> dict:
    """Send raw bytes, half-close, read the worker's reply header."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(60)
        conn.connect(str(sock))
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        header, arrays = recv_frame(conn)
    assert arrays == []
    return header


def frame(header: dict) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack(">Q", len(text)) + text


def test_a_bad_request_gets_a_one_line_error_and_the_worker_stays_up(worker, messages):
    config, proc = worker
    flat = {k: v for k, v in messages[0].items()}
    sock = Path(config["site-worker-socket"])
    node = {k: config[k] for k in ("data-dir", "role", "cache-dir")}
    bad = {
        "not JSON": struct.pack(">Q", 5) + b"{nope",
        "exceeds": struct.pack(">Q", 1 << 40),
        "closed after": struct.pack(">Q", 100) + b"{}",
        "op 'train'": frame({"op": "train"}),
        "dtype must be": frame(
            {"op": "fit", "arrays": [{"dtype": "|O", "shape": [1]}]}
        ),
        "shape must be": frame(
            {"op": "fit", "arrays": [{"dtype": "<f4", "shape": [-1]}]}
        ),
        "not this worker's": frame(
            {"op": "fit", "node": {**node, "data-dir": "/elsewhere"}}
        ),
        "is not a scalar": frame({"op": "fit", "node": node, "config": {"x": [[1]]}}),
        # a well-formed request the work itself fails on: no server-round
        "KeyError": frame(
            {"op": "fit", "node": node, "config": {**flat, "phase": "gan"}}
        ),
    }
    for expected, payload in bad.items():
        reply = raw_exchange(sock, payload)
        assert reply["ok"] is False, expected
        assert expected in reply["error"], (expected, reply["error"])
        assert "\n" not in reply["error"]
    assert proc.poll() is None
    assert ping(sock)["pid"] == proc.pid


def test_frames_carry_arrays_bit_for_bit():
    left, right = socket.socketpair()
    arrays = [
        np.array([np.nan, -0.0, 1e-45], np.float32),
        np.arange(6, dtype=np.float16).reshape(2, 3),
        np.array(3.5),
        np.zeros((0, 4), np.int64),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    ]
    with left, right:
        send_frame(left, {"ok": True}, arrays)
        header, back = recv_frame(right)
    assert header["ok"] is True
    assert [(a.dtype, a.shape, a.tobytes()) for a in back] == [
        (a.dtype, a.shape, np.ascontiguousarray(a).tobytes()) for a in arrays
    ]


def test_doctor_checks_the_worker(worker, short_dir):
    from client.doctor import check_site_worker

    config, proc = worker
    found = check_site_worker(Path(config["site-worker-socket"]))
    assert found.status == "ok" and f"pid {proc.pid}" in found.detail
    missing = check_site_worker(short_dir / "nobody.sock")
    assert missing.status == "warn" and "site-worker" in missing.fix
