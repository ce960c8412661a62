"""The federation PKI: a CA, a SuperLink certificate whose SANs verify for every
name given, site keys in the format Flower 1.42 reads, safe file modes, and
commands that never overwrite or print a private key."""

import datetime as dt
import ipaddress
import shutil
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store

from common.commands import main
from common.privacy.pki import (
    PKIError,
    add_site,
    init_pki,
    list_pki,
    load_node_private_key,
    parse_hosts,
    register_command,
    renew_server_cert,
)

HOSTS = "superlink.example.org,localhost,127.0.0.1,::1"


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def verify(pki, name: str) -> None:
    """Verify the SuperLink certificate for `name` as a TLS client would."""
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate(
        (pki / "superlink" / "server.crt").read_bytes()
    )
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(subject)
    verifier.verify(leaf, [])


@pytest.fixture
def pki(tmp_path):
    init_pki(tmp_path / "pki", HOSTS)
    return tmp_path / "pki"


def test_init_makes_a_ca_and_a_server_cert_for_every_name(pki):
    for name in ("superlink.example.org", "localhost", "127.0.0.1", "::1"):
        verify(pki, name)
    with pytest.raises(x509.verification.VerificationError):
        verify(pki, "other.example.org")
    listing = list_pki(pki)
    assert listing.server.dns_names == ("superlink.example.org", "localhost")
    assert listing.server.ip_addresses == ("127.0.0.1", "::1")
    assert listing.server.subject == "CN=superlink.example.org"
    now = dt.datetime.now(dt.timezone.utc)
    assert listing.server.not_after < listing.ca.not_after
    assert listing.server.not_after > now + dt.timedelta(days=800)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_private_keys_are_0600_in_private_folders(pki):
    site = add_site(pki, "hospital_a")
    for key in (pki / "ca.key", pki / "superlink" / "server.key", site.key_path):
        assert mode(key) == 0o600, key
    for folder in (pki, pki / "superlink", pki / "sites", site.key_path.parent):
        assert mode(folder) == 0o700, folder
    assert mode(pki / "ca.crt") == 0o644
    assert mode(site.public_key_path) == 0o644


def test_init_refuses_to_replace_a_ca_without_force(pki):
    site = add_site(pki, "hospital_a")
    ca = (pki / "ca.crt").read_bytes()
    with pytest.raises(PKIError, match="--force"):
        init_pki(pki, "localhost")
    assert (pki / "ca.crt").read_bytes() == ca
    init_pki(pki, "localhost", force=True)
    assert (pki / "ca.crt").read_bytes() != ca
    assert [s.fingerprint for s in list_pki(pki).sites] == [site.fingerprint]


def test_site_keys_are_what_flower_reads(pki):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    site = add_site(pki, "hospital_a")
    key = load_node_private_key(site.key_path)  # flower-supernode's loader
    assert isinstance(key.curve, ec.SECP384R1)
    registered = try_load_public_key(pki / "allow-list" / "hospital_a.pub")
    assert registered == public_key_to_bytes(key.public_key())
    assert register_command(pki, "hospital_a", "hospitals") == [
        "flwr",
        "supernode",
        "register",
        str((pki / "allow-list" / "hospital_a.pub").resolve()),
        "hospitals",
        "--name",
        "hospital_a",
    ]


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="no ssh-keygen")
def test_fingerprint_matches_ssh_keygen(pki):
    site = add_site(pki, "hospital_a")
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(site.public_key_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert site.fingerprint in out


def test_add_site_never_reissues_anything_else(pki):
    before = {
        p: p.read_bytes()
        for p in (pki / "ca.crt", pki / "ca.key", pki / "superlink" / "server.crt")
    }
    first = add_site(pki, "hospital_a")
    add_site(pki, "hospital_b")
    key = first.key_path.read_bytes()
    with pytest.raises(PKIError, match="already exists"):
        add_site(pki, "hospital_a")
    assert first.key_path.read_bytes() == key
    assert all(p.read_bytes() == b for p, b in before.items())
    for bad in ("../escape", "", "a b", "-x", "x" * 64):
        with pytest.raises(PKIError):
            add_site(pki, bad)
    assert [s.name for s in list_pki(pki).sites] == ["hospital_a", "hospital_b"]
    assert all(s.in_allow_list for s in list_pki(pki).sites)


def test_renew_server_keeps_the_ca(pki):
    ca = (pki / "ca.crt").read_bytes(), (pki / "ca.key").read_bytes()
    info = renew_server_cert(pki, "link.hospital-net.org,10.1.2.3")
    assert info.dns_names == ("link.hospital-net.org",)
    verify(pki, "10.1.2.3")
    assert ((pki / "ca.crt").read_bytes(), (pki / "ca.key").read_bytes()) == ca


def test_parse_hosts():
    assert parse_hosts("Link.Example.org., 10.0.0.1,*.ex.org") == (
        ["link.example.org", "*.ex.org"],
        ["10.0.0.1"],
    )
    for bad in ("", "under_score.org", "-bad.org", "a..b"):
        with pytest.raises(PKIError):
            parse_hosts(bad)


def test_commands_never_print_a_private_key(tmp_path, capsys):
    pki = tmp_path / "pki"
    assert main(["pki", "init", "--out", str(pki), "--superlink-host", HOSTS]) == 0
    assert main(["pki", "add-site", "hospital_a", "--pki", str(pki)]) == 0
    assert main(["pki", "list", "--pki", str(pki)]) == 0
    out = capsys.readouterr().out
    assert "flwr supernode register" in out and "hospital_a" in out
    assert "expires" in out and "SHA256:" in out
    assert "PRIVATE KEY" not in out
    for key in (pki / "ca.key", pki / "sites" / "hospital_a" / "auth.key"):
        body = key.read_text().splitlines()[1]
        assert body not in out
    assert main(["pki", "init", "--out", str(pki), "--superlink-host", "x"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["pki", "add-site", "hospital_a", "--pki", str(pki)]) == 2
    assert main(["pki", "list", "--pki", str(tmp_path / "none")]) == 2
