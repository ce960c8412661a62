"""Pre-flight checks for a hospital node: `fedbigbigan doctor`.

Before a SuperNode joins, check what it will need, with the same inputs it gets
(`--superlink`, `--root-certificates`, `--auth-supernode-private-key`,
`--node-config`):

1. the SuperLink answers over TLS: a real handshake that verifies the
   certificate against the federation's CA *and* the host name, then its
   `/health` endpoint;
2. the node's authentication key is readable only by its owner and is an
   ECDSA key on a NIST curve, as `flower-supernode` reads it; with node config
   `roster-key` (a federation with a roster), that it is the same key and
   `roster-site` a site name;
3. the node config names a data dir and a role, and the data dir ingests
   through the ClientApp's own path (`client.site.site_data`): into the node's
   `cache-dir` when the node config names one (the cache the first round will
   use), else into a temporary folder removed afterwards (a check leaves
   nothing behind);
4. the node's site worker (`fedbigbigan site-worker`) answers on its
   `site-worker-socket`, if the node config names one;
5. TensorFlow sees a GPU, if one is asked for.

Each failed check says what to fix. Nothing here talks to the Fleet API: whether
the key is on the SuperLink's allow-list only the coordinator can see
(`flwr supernode list`); compare the fingerprint shown here with theirs.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from common.config import RunConfig

NODE_CONFIG_KEYS = (
    "data-dir",
    "role",
    "cache-dir",
    "roster-key",
    "roster-site",
    "site-worker-socket",
)
EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def _ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def _warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def run_checks(
    superlink: str,
    root_certificates: Path | None,
    auth_key: Path | None,
    node_config: dict,
    config: RunConfig,
    gpu: bool = False,
    timeout: float = 10.0,
) -> list[Check]:
    """Every check, in the order a node needs them."""
    checks = [check_superlink(superlink, root_certificates, timeout)]
    checks.append(check_auth_key(auth_key))
    if "roster-key" in node_config or "roster-site" in node_config:
        checks.append(check_roster(node_config, auth_key))
    checks.extend(check_site(node_config, config))
    if "site-worker-socket" in node_config:
        checks.append(check_site_worker(Path(str(node_config["site-worker-socket"]))))
    if gpu:
        checks.append(check_gpu())
    return checks


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(
            f"{address!r}: give the SuperLink as HOST:PORT, e.g. link:8000"
        )
    return host.strip("[]"), int(port)


def check_superlink(
    address: str, root_certificates: Path | None, timeout: float = 10.0
) -> Check:
    """TCP connect, TLS handshake verifying the CA and host name, then /health."""
    name = "superlink"
    try:
        host, port = split_address(address)
    except ValueError as err:
        return _fail(name, str(err), "pass --superlink HOST:PORT")
    if root_certificates is not None and not Path(root_certificates).is_file():
        return _fail(
            name,
            f"CA file {root_certificates} not found",
            "copy the federation's ca.crt from the coordinator and pass its path "
            "as --root-certificates",
        )
    try:
        context = ssl.create_default_context(
            cafile=str(root_certificates) if root_certificates else None
        )
    except ssl.SSLError as err:
        return _fail(
            name,
            f"{root_certificates} is not a PEM CA certificate ({err.reason})",
            "use the federation's ca.crt as the coordinator sent it",
        )
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        return _fail(
            name,
            f"cannot resolve {host!r}",
            "check the host name in --superlink, the hospital's DNS, or add it to "
            "/etc/hosts",
        )
    except ConnectionRefusedError:
        return _fail(
            name,
            f"nothing listens at {host}:{port} (connection refused)",
            "ask the coordinator whether the SuperLink is running and on which port",
        )
    except TimeoutError:
        return _fail(
            name,
            f"no answer from {host}:{port} within {timeout:.0f} s",
            f"open outbound TCP port {port} to {host} in the hospital firewall "
            "(or its HTTPS proxy)",
        )
    except OSError as err:
        return _fail(
            name, f"cannot reach {host}:{port}: {err.strerror}", "check the network"
        )
    with raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
                version = tls.version()
                status = _health(tls, host)
        except ssl.SSLCertVerificationError as err:
            return _fail(name, *_verify_problem(err, host, port, root_certificates))
        except ssl.SSLError as err:
            return _fail(
                name,
                f"TLS handshake with {host}:{port} failed ({err.reason})",
                "the port does not speak TLS: check the port, and that the SuperLink "
                "runs with its certificate (not --insecure)",
            )
        except (OSError, ValueError) as err:
            return _fail(
                name,
                f"{host}:{port} closed the connection ({err})",
                "check that the address is the SuperLink's, not another service's",
            )
    if status != 200:
        return _fail(
            name,
            f"TLS works but {host}:{port}/health answered {status}",
            "check that the address is the SuperLink's (Flower 1.42), not a proxy",
        )
    days = (cert.not_valid_after_utc - _now()).days
    detail = (
        f"{host}:{port} over {version}, certificate {cert.subject.rfc4514_string()} "
        f"verified (valid {days} more days)"
    )
    if days < EXPIRY_WARNING_DAYS:
        return _warn(
            name,
            detail,
            "ask the coordinator to renew it: fedbigbigan pki renew-server",
        )
    return _ok(name, detail)


def check_auth_key(path: Path | None) -> Check:
    """The SuperNode's private key: present, private to its owner, a valid EC key."""
    from common.privacy.pki import PKIError, fingerprint, load_node_private_key

    name = "auth key"
    if path is None:
        return _fail(
            name,
            "no --auth-supernode-private-key given",
            "the SuperLink admits authenticated nodes only: pass the auth.key the "
            "coordinator made for this site (fedbigbigan pki add-site)",
        )
    path = Path(path)
    if not path.is_file():
        return _fail(
            name,
            f"{path} not found",
            "copy this site's auth.key from the coordinator over a secure channel",
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return _fail(
            name,
            f"{path} is readable by others (mode {mode:o})",
            f"chmod 600 {path}",
        )
    if not os.access(path, os.R_OK):
        return _fail(
            name,
            f"{path} is not readable by this user",
            f"run the SuperNode as the key's owner, or chown that user {path}",
        )
    try:
        key = load_node_private_key(path)
    except PKIError as err:
        return _fail(name, str(err), "ask the coordinator for this site's auth.key")
    return _ok(
        name,
        f"{path}: ECDSA {key.curve.name}, public key {fingerprint(key.public_key())} "
        "(the coordinator's `fedbigbigan pki list` must show the same)",
    )


def check_roster(node_config: dict, auth_key: Path | None) -> Check:
    """The roster signing key (node config `roster-key`, `roster-site`): a key
    the node can read, the node's own auth key (the one the coordinator's
    roster holds), and a site name."""
    from common.privacy.pki import PKIError, fingerprint, load_node_private_key
    from common.privacy.roster_claim import SITE_NAME

    name = "roster key"
    site = node_config.get("roster-site")
    path = node_config.get("roster-key")
    if not isinstance(site, str) or not SITE_NAME.match(site) or not path:
        return _fail(
            name,
            f"roster-key = {path!r}, roster-site = {site!r}",
            "set both: roster-key the auth.key's path, roster-site the name the "
            "coordinator gave this site",
        )
    try:
        key = load_node_private_key(Path(str(path)))
    except (PKIError, OSError) as err:
        return _fail(name, str(err), "point roster-key at this site's auth.key")
    printed = fingerprint(key.public_key())
    if auth_key is not None:
        try:
            auth = fingerprint(load_node_private_key(Path(auth_key)).public_key())
        except (PKIError, OSError):
            auth = printed  # the auth key check says what is wrong with it
        if auth != printed:
            return _fail(
                name,
                f"{path} ({printed}) is not the auth key ({auth})",
                "the roster holds the node-auth public key: use the same auth.key",
            )
    return _ok(name, f"signs as {site!r} with {printed}")


def check_site(node_config: dict, config: RunConfig) -> list[Check]:
    """Node config keys, the data dir, the cache dir, and a real ingest (into
    a temporary folder unless the node config names its `cache-dir`)."""
    if "cache-dir" in node_config:
        return _check_site(node_config, config)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedbigbigan-doctor-") as tmp:
        return _check_site({**node_config, "cache-dir": tmp}, config)


def _check_site(node_config: dict, config: RunConfig) -> list[Check]:
    from client.site import cache_dir, resolve_site, site_data
    from common.ingest import IngestError
    from common.ingest.site_index import SiteError

    checks = []
    unknown = sorted(set(node_config) - set(NODE_CONFIG_KEYS))
    if unknown:
        checks.append(
            _warn(
                "node config",
                f"keys the ClientApp does not read: {unknown}",
                f"the keys are {list(NODE_CONFIG_KEYS)}; check for typos",
            )
        )
    if "data-dir" not in node_config:
        return [
            *checks,
            _fail(
                "node config",
                "no data-dir",
                'add data-dir="/path/to/site" (and role="train" or '
                'role="external") to --node-config',
            ),
        ]
    try:
        site = resolve_site(node_config, config)
    except ValueError as err:
        return [*checks, _fail("node config", str(err), "fix --node-config")]
    checks.append(_ok("node config", f"data-dir={str(site.path)!r} role={site.role!r}"))
    if not site.path.is_dir() or not os.access(site.path, os.R_OK | os.X_OK):
        return [
            *checks,
            _fail(
                "data dir",
                f"{site.path} is not a readable folder",
                "mount the site's PACS export there (read-only is enough)",
            ),
        ]
    if os.access(site.path, os.W_OK):
        checks.append(
            _warn(
                "data dir",
                f"{site.path} is writable by this user",
                "mount it read-only: ingest never writes there",
            )
        )
    cache = cache_dir(site, config)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = cache / ".doctor-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return [
            *checks,
            _fail(
                "cache dir",
                f"cannot write {cache}: {err.strerror}",
                'give cache-dir="/writable/path" in --node-config, outside the '
                "data dir",
            ),
        ]
    try:
        data = site_data(site, config)
    except (IngestError, SiteError, ValueError) as err:
        return [
            *checks,
            _fail(
                "ingest",
                str(err),
                f"see {cache / 'ingest_report.json'}; `fedbigbigan ingest` shows "
                "each skipped file and why",
            ),
        ]
    counts = ", ".join(
        f"{split} {len(set(s.patient.tolist()))} patients / {len(s)} slices"
        for split, s in data.items()
    )
    detail = f"{site.path} ingests into {cache}: {counts}"
    classes = {int(y) for s in data.values() for y in set(s.labels.tolist())}
    if site.role == "train" and classes != {0, 1}:
        return [
            *checks,
            _fail(
                "ingest",
                f"{detail}; only label(s) {sorted(classes)}",
                "a training site needs COVID-19 (1) and other-pneumonia (0) patients "
                "in labels.csv",
            ),
        ]
    return [*checks, _ok("ingest", detail)]


def check_site_worker(path: Path) -> Check:
    """The site worker answers, as this user: without it every message pays
    TensorFlow's import and the model's build (a warning, not a failure: the
    ClientApp then works itself)."""
    from client.worker_protocol import ping

    start = (
        "start `fedbigbigan site-worker --node-config ...` with the SuperNode's "
        "node config, as this node's user"
    )
    try:
        status = ping(path)
    except PermissionError as err:
        return _fail("site worker", f"{path}: {err}", start)
    except OSError as err:
        return _warn("site worker", f"{path}: {err.strerror or err}", start)
    return _ok(
        "site worker",
        f"{path}: pid {status.get('pid')}, {status.get('served')} messages served",
    )


def check_gpu() -> Check:
    """TensorFlow lists at least one GPU."""
    try:
        import tensorflow as tf
    except ImportError as err:
        return _fail("gpu", f"TensorFlow does not import ({err})", "pip install -e .")
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return _fail(
            "gpu",
            f"TensorFlow {tf.__version__} sees no GPU",
            "install the CUDA build (pip install 'tensorflow[and-cuda]'), check "
            "nvidia-smi and CUDA_VISIBLE_DEVICES; in Docker run with --gpus all "
            "(the GPU image)",
        )
    return _ok("gpu", ", ".join(g.name for g in gpus))


def _health(tls: ssl.SSLSocket, host: str) -> int:
    tls.sendall(
        f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    line = tls.recv(256).split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {line[:40]!r}")
    return int(parts[1])


def _verify_problem(err, host, port, root_certificates) -> tuple[str, str]:
    """What failed in certificate verification, and what to do about it."""
    reason = err.verify_message or str(err)
    names = _presented_names(host, port)
    if "mismatch" in reason.lower() or "hostname" in reason.lower():
        return (
            f"the SuperLink's certificate is not for {host!r} (it names {names})",
            "connect with one of those names, or ask the coordinator to reissue it: "
            f"fedbigbigan pki renew-server --superlink-host {host},...",
        )
    if "expired" in reason.lower():
        return (
            f"the SuperLink's certificate has expired ({reason})",
            "ask the coordinator to renew it: fedbigbigan pki renew-server",
        )
    ca = root_certificates or "the system's CA store"
    return (
        f"the SuperLink's certificate is not signed by {ca} ({reason})",
        "pass the federation's ca.crt as --root-certificates (from the coordinator)",
    )


def _presented_names(host: str, port: int) -> list[str]:
    """The names in the certificate the server presents (read without trusting it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return [*san.value.get_values_for_type(x509.DNSName)] + [
            str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)
        ]
    except (OSError, ssl.SSLError, x509.ExtensionNotFound):
        return []


def _now():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)
