"""A coordinator's `fedbigbigan` commands: pki (the federation's CA, SuperLink
certificate and site keys) and report (entry points in pyproject.toml;
common/commands.py dispatches)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from common.commands import Command


def _pki_arguments(pki: argparse.ArgumentParser) -> None:
    pki_sub = pki.add_subparsers(dest="pki_command", required=True)
    init = pki_sub.add_parser(
        "init", help="a federation CA and the SuperLink's TLS certificate"
    )
    init.add_argument("--out", type=Path, required=True, help="the PKI folder")
    init.add_argument(
        "--superlink-host",
        required=True,
        help="names the SuperLink is reached by: HOST[,IP,...] (all go in the SANs)",
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.add_argument(
        "--ca-days", type=int, default=3650, help="the CA certificate's validity"
    )
    init.add_argument(
        "--server-days", type=int, default=825, help="the SuperLink certificate's"
    )
    renew = pki_sub.add_parser(
        "renew-server", help="a new SuperLink certificate under the existing CA"
    )
    renew.add_argument(
        "--pki", type=Path, default=Path("pki"), help="the federation's PKI folder"
    )
    renew.add_argument("--superlink-host", required=True, help="HOST[,IP,...]")
    renew.add_argument(
        "--server-days", type=int, default=825, help="the new certificate's validity"
    )
    site = pki_sub.add_parser(
        "add-site", help="a hospital SuperNode's auth key pair, on the allow-list"
    )
    site.add_argument("name", help="the site's name, e.g. hospital_a")
    site.add_argument(
        "--pki", type=Path, default=Path("pki"), help="the federation's PKI folder"
    )
    site.add_argument(
        "--federation",
        default="<federation>",
        help="the federation in $FLWR_HOME/config.toml (for the printed command)",
    )
    reg = pki_sub.add_parser(
        "register",
        help="put sites' keys on the running SuperLink (flwr supernode register)",
    )
    reg.add_argument("federation", help="the federation in $FLWR_HOME/config.toml")
    reg.add_argument("names", nargs="*", help="sites (default: all)")
    reg.add_argument(
        "--pki", type=Path, default=Path("pki"), help="the federation's PKI folder"
    )
    roster = pki_sub.add_parser(
        "roster",
        help="write or check the roster of sites' keys and agreed weights",
    )
    roster.add_argument(
        "--pki", type=Path, default=Path("pki"), help="the federation's PKI folder"
    )
    roster.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="NAME=COUNT",
        help="a site and its agreed weight (training slices); once per site",
    )
    roster.add_argument("--out", type=Path, help="the roster file to write (new)")
    roster.add_argument("--check", type=Path, help="check this roster file instead")
    listing = pki_sub.add_parser("list", help="the CA, SuperLink cert and sites")
    listing.add_argument(
        "--pki", type=Path, default=Path("pki"), help="the federation's PKI folder"
    )


def _pki(args: argparse.Namespace) -> int:
    from common.privacy.pki import PKIError

    try:
        return _PKI[args.pki_command](args)
    except PKIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _pki_init(args) -> int:
    from common.privacy.pki import init_pki

    listing = init_pki(
        args.out,
        args.superlink_host,
        force=args.force,
        ca_days=args.ca_days,
        server_days=args.server_days,
    )
    _print_listing(listing)
    print(
        f"\nSuperLink: --ssl-ca-certfile {args.out}/ca.crt "
        f"--ssl-certfile {args.out}/superlink/server.crt "
        f"--ssl-keyfile {args.out}/superlink/server.key --enable-supernode-auth"
        f"\nKeep {args.out}/ca.key offline; give every site {args.out}/ca.crt."
    )
    return 0


def _pki_renew(args) -> int:
    from common.privacy.pki import renew_server_cert

    info = renew_server_cert(
        args.pki, args.superlink_host, server_days=args.server_days
    )
    print(f"SuperLink certificate {info.path}: {_names(info)}, until {_date(info)}")
    print("Restart the SuperLink to use it; sites keep their ca.crt.")
    return 0


def _pki_add_site(args) -> int:
    from common.privacy.pki import add_site, register_command

    info = add_site(args.pki, args.name)
    print(f"site {info.name}: key {info.fingerprint}")
    print(f"  private key (0600, give to the site only): {info.key_path}")
    print(f"  public key (allow-list):                   {info.public_key_path}")
    cmd = register_command(args.pki, args.name, args.federation)
    print("Register it on the running SuperLink (Flower 1.42 keeps the allow-list")
    print("in the SuperLink's database):")
    print("  " + " ".join(cmd))
    print(
        f"  or: fedbigbigan pki register {args.federation} {args.name} --pki {args.pki}"
    )
    return 0


def _pki_register(args) -> int:
    """`flwr supernode register` for each allow-list key; one already on the
    SuperLink's list counts as registered (so this can run at every start)."""
    import json

    from common.privacy.pki import ALLOW_LIST_DIR, register_command

    allow = Path(args.pki) / ALLOW_LIST_DIR
    names = args.names or sorted(p.stem for p in allow.glob("*.pub"))
    if not names:
        print(f"error: no public keys in {allow}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        cmd = [*register_command(args.pki, name, args.federation), "--format", "json"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError:
            answer = {"success": False, "error-message": done.stderr or done.stdout}
        message = str(answer.get("error-message", "")).strip().splitlines()
        if answer.get("success"):
            print(f"{name}: registered as node {answer.get('node-id')}")
        elif message and "already in use" in message[-1]:
            print(f"{name}: already registered")
        else:
            failed += 1
            print(
                f"{name}: not registered: {message[-1] if message else done.returncode}"
            )
    return 1 if failed else 0


def _pki_list(args) -> int:
    from common.privacy.pki import list_pki

    _print_listing(list_pki(args.pki))
    return 0


def _pki_roster(args) -> int:
    """Write the roster from the allow-list and --weight, or check one."""
    from common.privacy.pki import fingerprint
    from server.roster import RosterError, load_roster, parse_weights, roster_text

    try:
        if args.check:
            path = args.check
        else:
            if not args.weight or not args.out:
                args.usage_error(
                    "pki roster: give --weight NAME=COUNT ... and --out, "
                    "or --check FILE"
                )
            if args.out.exists():
                print(
                    f"error: {args.out}: exists; the roster is not overwritten",
                    file=sys.stderr,
                )
                return 2
            args.out.write_text(roster_text(args.pki, parse_weights(args.weight)))
            path = args.out
        roster = load_roster(path)
    except RosterError as err:
        for line in str(err).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    for site in roster.sites.values():
        key = fingerprint(site.public_key)
        print(f"site {site.name:20s} {key}  weight {site.weight}")
    print(f"{path}: {len(roster.sites)} sites; run config roster-file='{path}'")
    return 0


_PKI = {
    "init": _pki_init,
    "renew-server": _pki_renew,
    "add-site": _pki_add_site,
    "register": _pki_register,
    "list": _pki_list,
    "roster": _pki_roster,
}


def _print_listing(listing) -> None:
    print(f"CA         {listing.ca.subject}  expires {_date(listing.ca)}")
    if listing.server is not None:
        print(f"SuperLink  {_names(listing.server)}  expires {_date(listing.server)}")
    if not listing.sites:
        print("sites      none yet (fedbigbigan pki add-site NAME)")
    for site in listing.sites:
        listed = "allow-list" if site.in_allow_list else "NOT in allow-list"
        print(
            f"site       {site.name:20s} {site.fingerprint}  created "
            f"{site.created:%Y-%m-%d}  key does not expire  {listed}"
        )


def _names(info) -> str:
    return ",".join([*info.dns_names, *info.ip_addresses])


def _date(info) -> str:
    return f"{info.not_after:%Y-%m-%d}"


def _report_arguments(rep: argparse.ArgumentParser) -> None:
    rep.add_argument("run_dir", type=Path, help="a run directory (simulate --out)")


def _report(args: argparse.Namespace) -> int:
    from server.report import write_report

    print(write_report(args.run_dir))
    return 0


PKI = Command("the federation's CA, SuperLink cert, site keys", _pki_arguments, _pki)
REPORT = Command(
    "write RUN_DIR/report.html with its figures", _report_arguments, _report
)
