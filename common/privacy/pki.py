"""The federation's keys and certificates, made with `cryptography`.

One folder holds them (`fedbigbigan pki init --out PKI`):

    PKI/ca.crt                    federation CA: every hospital and the coordinator
    PKI/ca.key            0600    the CA's private key: keep it offline
    PKI/superlink/server.crt      the SuperLink's TLS certificate (SANs: its names)
    PKI/superlink/server.key 0600
    PKI/sites/NAME/auth.key 0600  a hospital SuperNode's ECDSA key (OpenSSH format,
                                  `flower-supernode --auth-supernode-private-key`)
    PKI/sites/NAME/auth.pub       its public key (OpenSSH), also in allow-list/
    PKI/allow-list/NAME.pub       every site's public key: what the coordinator
                                  registers with `flwr supernode register`

Flower 1.42 keeps the SuperLink's allow-list in its database (`--database`),
filled through the Control API (`flwr supernode register KEY.pub FEDERATION`);
the old `--auth-list-public-keys` CSV file is refused by the SuperLink. So
`add_site` writes the key pair and the allow-list entry, and registering it
(`register_command`) is a separate step for the coordinator.

Node keys are raw EC keys (NIST P-384), not certificates: they do not expire;
revoke one with `flwr supernode unregister NODE_ID`. Certificates do expire.
Private keys are written 0600 in 0700 folders and never returned as text.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_DIR = "superlink"
SERVER_CERT = "superlink/server.crt"
SERVER_KEY = "superlink/server.key"
SITES_DIR = "sites"
ALLOW_LIST_DIR = "allow-list"
SITE_KEY = "auth.key"
SITE_PUB = "auth.pub"

CA_DAYS = 3650
SERVER_DAYS = 825
NODE_CURVE = ec.SECP384R1()  # Flower's docs use P-384; any NIST curve is accepted
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class PKIError(ValueError):
    """A PKI folder, name or file is missing, malformed or would be overwritten."""


@dataclass(frozen=True)
class CertInfo:
    path: Path
    subject: str
    not_after: dt.datetime
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class SiteInfo:
    name: str
    key_path: Path
    public_key_path: Path
    fingerprint: str  # SHA256:<base64>, as `ssh-keygen -lf` prints it
    created: dt.datetime
    in_allow_list: bool


@dataclass(frozen=True)
class PKIListing:
    ca: CertInfo
    server: CertInfo | None
    sites: tuple[SiteInfo, ...]


def parse_hosts(text: str) -> tuple[list[str], list[str]]:
    """`host[,ip,...]` -> (DNS names, IP addresses), both in the order given."""
    dns, ips = [], []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            ips.append(str(ipaddress.ip_address(item)))
            continue
        except ValueError:
            pass
        name = item.rstrip(".").lower()
        labels = name.split(".")
        if name.startswith("*."):
            labels = labels[1:]
        if not labels or not all(_DNS_LABEL.match(label) for label in labels):
            raise PKIError(
                f"--superlink-host: {item!r} is neither a DNS name nor an IP"
            )
        dns.append(name)
    if not dns and not ips:
        raise PKIError("--superlink-host: give at least one host name or IP address")
    return dns, ips


def init_pki(
    out: Path,
    superlink_hosts: str,
    *,
    force: bool = False,
    ca_days: int = CA_DAYS,
    server_days: int = SERVER_DAYS,
    federation: str = "fedbigbigan",
) -> PKIListing:
    """A new federation CA and the SuperLink's TLS certificate for `superlink_hosts`.

    Refuses to replace an existing CA unless `force` (every hospital's copy of
    ca.crt would then have to be replaced too). Site keys are kept either way:
    they do not depend on the CA.
    """
    out = Path(out)
    if (out / CA_KEY).exists() and not force:
        raise PKIError(
            f"{out / CA_KEY} exists: this folder already has a federation CA. "
            "Use --force to replace it (every site then needs the new ca.crt)."
        )
    dns, ips = parse_hosts(superlink_hosts)
    _private_dir(out)
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} federation CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(out / CA_KEY, _pem_key(ca_key))
    _write_public(out / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
    _issue_server_cert(out, ca_key, ca_cert, dns, ips, server_days)
    (out / SITES_DIR).mkdir(mode=0o700, exist_ok=True)
    (out / ALLOW_LIST_DIR).mkdir(exist_ok=True)
    return list_pki(out)


def renew_server_cert(
    pki: Path, superlink_hosts: str, *, server_days: int = SERVER_DAYS
) -> CertInfo:
    """A new SuperLink certificate under the existing CA (new names or expiry)."""
    pki = Path(pki)
    ca_key, ca_cert = _load_ca(pki)
    dns, ips = parse_hosts(superlink_hosts)
    return _issue_server_cert(pki, ca_key, ca_cert, dns, ips, server_days)


def add_site(pki: Path, name: str) -> SiteInfo:
    """A hospital SuperNode's auth key pair, and its public key in the allow-list.

    Never touches the CA or the SuperLink certificate; refuses an existing site.
    """
    pki = Path(pki)
    if not (pki / CA_CERT).is_file():
        raise PKIError(f"{pki}: no {CA_CERT}; run `fedbigbigan pki init` first")
    if not _SITE_NAME.match(name):
        raise PKIError(
            f"site name {name!r}: use letters, digits, '.', '_' or '-' "
            "(up to 63 characters, starting with a letter or digit)"
        )
    site_dir = pki / SITES_DIR / name
    if (site_dir / SITE_KEY).exists():
        raise PKIError(
            f"site {name!r} already exists ({site_dir / SITE_KEY}); its key is "
            "kept. Pick another name, or delete the folder and unregister the old "
            "key (`flwr supernode unregister NODE_ID`) to replace it."
        )
    _private_dir(pki / SITES_DIR)
    _private_dir(site_dir)
    key = ec.generate_private_key(NODE_CURVE)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public += f" {name}\n".encode()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    _write_private(site_dir / SITE_KEY, private)
    _write_public(site_dir / SITE_PUB, public)
    (pki / ALLOW_LIST_DIR).mkdir(exist_ok=True)
    _write_public(pki / ALLOW_LIST_DIR / f"{name}.pub", public)
    return _site_info(pki, name)


def register_command(pki: Path, name: str, federation: str) -> list[str]:
    """The coordinator's command that puts a site's key on the SuperLink's list."""
    pub = (Path(pki) / ALLOW_LIST_DIR / f"{name}.pub").resolve()
    if not pub.is_file():
        raise PKIError(f"{pub}: no such site in the allow-list; run `pki add-site`")
    return ["flwr", "supernode", "register", str(pub), federation, "--name", name]


def list_pki(pki: Path) -> PKIListing:
    """The CA, the SuperLink certificate and every site, with dates."""
    pki = Path(pki)
    if not (pki / CA_CERT).is_file():
        raise PKIError(f"{pki}: no {CA_CERT}; run `fedbigbigan pki init` first")
    ca = cert_info(pki / CA_CERT)
    server = cert_info(pki / SERVER_CERT) if (pki / SERVER_CERT).is_file() else None
    sites_dir = pki / SITES_DIR
    names = (
        sorted(p.name for p in sites_dir.iterdir() if (p / SITE_PUB).is_file())
        if sites_dir.is_dir()
        else []
    )
    return PKIListing(ca, server, tuple(_site_info(pki, n) for n in names))


def cert_info(path: Path) -> CertInfo:
    """Subject, expiry and SANs of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = tuple(san.value.get_values_for_type(x509.DNSName))
        ips = tuple(str(i) for i in san.value.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    return CertInfo(
        Path(path), cert.subject.rfc4514_string(), _not_after(cert), dns, ips
    )


def load_node_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The SuperNode auth key as flower-supernode reads it (OpenSSH, NIST EC curve)."""
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), None)
    except (ValueError, TypeError) as err:
        raise PKIError(
            f"{path}: not an unencrypted OpenSSH private key ({err}); "
            "flower-supernode needs one made by `fedbigbigan pki add-site` or "
            "`ssh-keygen -t ecdsa -b 384 -N ''`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{path}: a {type(key).__name__}, expected an ECDSA key")
    if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise PKIError(f"{path}: EC curve {key.curve.name} is not a NIST curve")
    return key


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA256:<base64> of the OpenSSH key blob, as `ssh-keygen -lf` shows it."""
    line = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    blob = base64.b64decode(line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _issue_server_cert(pki, ca_key, ca_cert, dns, ips, days) -> CertInfo:
    now = _now()
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(d) for d in dns] + [
        x509.IPAddress(ipaddress.ip_address(i)) for i in ips
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns or ips)[0])])
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), _not_after(ca_cert)))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    _private_dir(pki / SERVER_DIR)
    _write_private(pki / SERVER_KEY, _pem_key(key))
    _write_public(pki / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return cert_info(pki / SERVER_CERT)


def _load_ca(pki: Path):
    try:
        key = serialization.load_pem_private_key((pki / CA_KEY).read_bytes(), None)
        cert = x509.load_pem_x509_certificate((pki / CA_CERT).read_bytes())
    except FileNotFoundError as err:
        raise PKIError(f"{err.filename}: missing; run `fedbigbigan pki init`") from None
    return key, cert


def _site_info(pki: Path, name: str) -> SiteInfo:
    site_dir = pki / SITES_DIR / name
    public = serialization.load_ssh_public_key((site_dir / SITE_PUB).read_bytes())
    allow = pki / ALLOW_LIST_DIR / f"{name}.pub"
    listed = (
        allow.is_file()
        and allow.read_bytes().split()[:2]
        == (site_dir / SITE_PUB).read_bytes().split()[:2]
    )
    created = dt.datetime.fromtimestamp(
        (site_dir / SITE_PUB).stat().st_mtime, dt.timezone.utc
    )
    return SiteInfo(
        name,
        site_dir / SITE_KEY,
        site_dir / SITE_PUB,
        fingerprint(public),
        created,
        listed,
    )


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path: Path, data: bytes) -> None:
    """Write then rename; the file is 0600 from its creation on."""
    _write(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    _write(path, data, 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _not_after(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
