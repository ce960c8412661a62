"""`fedbigbigan doctor` against a real local TLS server made from our PKI: each
broken piece is found and comes with what to fix."""

import csv
import os
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from client.doctor import (
    check_auth_key,
    check_gpu,
    check_roster,
    check_site,
    check_superlink,
)
from common.commands import main
from common.config import RunConfig
from common.privacy.pki import add_site, init_pki


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class _NotFound(_Health):
    def do_GET(self):  # noqa: N802
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


def serve(pki: Path | None, handler=_Health):
    """An HTTPS server (HTTP if `pki` is None) on 127.0.0.1 with the PKI's
    SuperLink certificate; returns (port, stop)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if pki is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(
            pki / "superlink" / "server.crt", pki / "superlink" / "server.key"
        )
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(5)

    return server.server_address[1], stop


@pytest.fixture
def pki(tmp_path):
    init_pki(tmp_path / "pki", "localhost,127.0.0.1")
    return tmp_path / "pki"


@pytest.fixture
def superlink(pki):
    port, stop = serve(pki)
    yield port
    stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reachable_over_tls_with_the_ca(pki, superlink):
    for host in ("127.0.0.1", "localhost"):
        check = check_superlink(f"{host}:{superlink}", pki / "ca.crt")
        assert check.status == "ok", check
        assert "verified" in check.detail


def test_a_foreign_ca_is_refused(pki, superlink, tmp_path):
    init_pki(tmp_path / "other", "localhost")
    check = check_superlink(f"127.0.0.1:{superlink}", tmp_path / "other" / "ca.crt")
    assert check.failed and "not signed by" in check.detail
    assert "ca.crt" in check.fix
    # no CA at all: the system store does not know our federation CA either
    check = check_superlink(f"127.0.0.1:{superlink}", None)
    assert check.failed and "not signed by" in check.detail


def test_a_certificate_for_another_name_is_refused(tmp_path):
    init_pki(tmp_path / "pki", "superlink.example.org,10.0.0.7")
    port, stop = serve(tmp_path / "pki")
    try:
        check = check_superlink(f"127.0.0.1:{port}", tmp_path / "pki" / "ca.crt")
    finally:
        stop()
    assert check.failed and "not for '127.0.0.1'" in check.detail
    assert "superlink.example.org" in check.detail and "10.0.0.7" in check.detail
    assert "renew-server" in check.fix


def test_plain_http_refused_port_and_wrong_service(pki):
    port, stop = serve(None)
    try:
        check = check_superlink(f"127.0.0.1:{port}", pki / "ca.crt")
    finally:
        stop()
    assert check.failed and "TLS" in check.detail
    check = check_superlink(f"127.0.0.1:{closed_port()}", pki / "ca.crt")
    assert check.failed and "refused" in check.detail
    port, stop = serve(pki, _NotFound)
    try:
        check = check_superlink(f"127.0.0.1:{port}", pki / "ca.crt")
    finally:
        stop()
    assert check.failed and "/health answered 404" in check.detail
    check = check_superlink("no-port-here", pki / "ca.crt")
    assert check.failed and "HOST:PORT" in check.fix
    check = check_superlink("127.0.0.1:8000", pki / "missing.crt")
    assert check.failed and "not found" in check.detail


def test_auth_key_checks(pki, tmp_path):
    key = add_site(pki, "hospital_a").key_path
    check = check_auth_key(key)
    assert check.status == "ok" and "secp384r1" in check.detail
    assert "SHA256:" in check.detail
    os.chmod(key, 0o644)
    check = check_auth_key(key)
    assert check.failed and check.fix == f"chmod 600 {key}"
    os.chmod(key, 0o600)
    assert check_auth_key(None).failed
    assert "not found" in check_auth_key(tmp_path / "nope.key").detail
    pem = tmp_path / "server.key"  # a PEM key, not the OpenSSH one Flower reads
    pem.write_bytes((pki / "superlink" / "server.key").read_bytes())
    os.chmod(pem, 0o600)
    check = check_auth_key(pem)
    assert check.failed and "OpenSSH" in check.detail
    assert "never" not in check.detail and "BEGIN" not in check.detail


def test_roster_key_checks(pki, tmp_path):
    key = add_site(pki, "hospital_a").key_path
    other = add_site(pki, "hospital_b").key_path
    good = {"roster-key": str(key), "roster-site": "hospital_a"}
    check = check_roster(good, key)
    assert check.status == "ok" and "'hospital_a'" in check.detail
    check = check_roster({**good, "roster-key": str(other)}, key)
    assert check.failed and "is not the auth key" in check.detail
    assert check_roster({"roster-key": str(key)}, key).failed  # no site name
    check = check_roster({**good, "roster-key": str(tmp_path / "nope")}, key)
    assert check.failed and "nope" in check.detail


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    from simulations.phantoms import write_study

    return write_study(tmp_path_factory.mktemp("doctor-sites"), 0.1, 0, 1)


def test_data_dir_ingests_into_the_cache(sites, tmp_path):
    node = {
        "data-dir": str(sites["hospital_a_ge"]),
        "role": "train",
        "cache-dir": str(tmp_path / "cache"),
    }
    checks = check_site(node, RunConfig())
    ingest = checks[-1]
    assert ingest.name == "ingest" and ingest.status == "ok", checks
    assert "train" in ingest.detail and "val" in ingest.detail
    assert (tmp_path / "cache" / "ingest_report.json").is_file()


def test_without_a_cache_dir_the_check_leaves_nothing_behind(
    sites, tmp_path, monkeypatch
):
    """No cache-dir in the node config: the ingest check runs in a temporary
    folder, and neither the current folder nor the temporary root keeps a file."""
    import tempfile

    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = RunConfig(sim_data_root=str(sites["hospital_b"].parent))  # the demo's
    node = {"data-dir": str(sites["hospital_b"]), "role": "external"}
    checks = check_site(node, config)
    assert checks[-1].name == "ingest" and checks[-1].status == "ok", checks
    assert "fedbigbigan-doctor-" in checks[-1].detail  # it said where it ingested
    assert list(tmp_path.iterdir()) == [scratch]
    assert list(scratch.iterdir()) == []


def test_node_config_and_data_problems(sites, tmp_path):
    config = RunConfig()
    checks = check_site({"role": "train"}, config)
    assert checks[-1].failed and "data-dir" in checks[-1].fix
    checks = check_site({"data-dir": str(sites["hospital_b"]), "role": "test"}, config)
    assert checks[-1].failed and "role" in checks[-1].detail
    checks = check_site(
        {"data-dir": str(tmp_path / "missing"), "role": "train"}, config
    )
    assert checks[-1].failed and checks[-1].name == "data dir"
    blocker = tmp_path / "file"
    blocker.write_text("")
    checks = check_site(
        {
            "data-dir": str(sites["hospital_b"]),
            "role": "external",
            "cache-dir": str(blocker / "cache"),
        },
        config,
    )
    assert checks[-1].failed and checks[-1].name == "cache dir"
    checks = check_site(
        {"data_dir": "typo", "data-dir": str(tmp_path / "missing")}, config
    )
    assert checks[0].status == "warn" and "data_dir" in checks[0].detail
    # a training site whose labels hold one class cannot fit the head
    empty = tmp_path / "site"
    empty.mkdir()
    (empty / "labels.csv").write_text("patient_id,label\n")
    checks = check_site(
        {"data-dir": str(empty), "role": "train", "cache-dir": str(tmp_path / "c2")},
        config,
    )
    assert checks[-1].failed and checks[-1].name == "ingest"


def test_training_site_with_one_class_fails(sites, tmp_path):
    import shutil

    site = tmp_path / "one_class"
    shutil.copytree(sites["hospital_a_ge"], site)
    rows = list(csv.reader((site / "labels.csv").read_text().splitlines()))
    with open(site / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([rows[0], *[[r[0], "1"] for r in rows[1:]]])
    node = {"data-dir": str(site), "role": "train", "cache-dir": str(tmp_path / "c")}
    check = check_site(node, RunConfig())[-1]
    assert check.failed and "only label(s) [1]" in check.detail


def test_gpu_check_says_how_to_get_one():
    import tensorflow as tf

    check = check_gpu()
    if tf.config.list_physical_devices("GPU"):
        assert check.status == "ok"
    else:
        assert check.failed and "and-cuda" in check.fix


def test_cli_exit_codes(pki, superlink, sites, tmp_path, capsys):
    key = add_site(pki, "hospital_b").key_path
    args = [
        "doctor",
        "--superlink",
        f"localhost:{superlink}",
        "--root-certificates",
        str(pki / "ca.crt"),
        "--auth-supernode-private-key",
        str(key),
        "--node-config",
        f'data-dir="{sites["hospital_b"]}" role="external" '
        f'cache-dir="{tmp_path / "cache"}"',
    ]
    assert main(args) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "[OK  ] superlink" in out and "[OK  ] ingest" in out
    os.chmod(key, 0o640)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "[FAIL] auth key" in out and "fix: chmod 600" in out
    assert main([*args[:2], f"127.0.0.1:{closed_port()}", *args[3:]]) == 1
