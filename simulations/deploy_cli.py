"""`fedbigbigan pki ... | doctor`: the deployment's own commands."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from common.config import RunConfig

DEPLOY_COMMANDS = ("pki", "doctor")


def add_deploy_commands(sub, add_run_config) -> None:
    """Register the commands on the main parser's subparsers."""
    pki = sub.add_parser("pki", help="the federation's CA, SuperLink cert, site keys")
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

    doc = sub.add_parser("doctor", help="pre-flight checks for a hospital node")
    doc.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    doc.add_argument("--root-certificates", type=Path, help="the federation's ca.crt")
    doc.add_argument(
        "--auth-supernode-private-key", type=Path, help="this site's auth.key"
    )
    doc.add_argument(
        "--node-config",
        default="",
        help='as for flower-supernode: \'data-dir="/data" role="train"\' or a .toml',
    )
    doc.add_argument("--gpu", action="store_true", help="check that a GPU is visible")
    doc.add_argument("--timeout", type=float, default=10.0, help="seconds per connect")
    add_run_config(doc)


def run_deploy_command(
    args: argparse.Namespace, make_config: Callable[[], RunConfig]
) -> int | None:
    """Run the command if it is one of ours; None otherwise. `make_config` gives
    the run config (pyproject's plus --run-config), read only by `doctor`."""
    if args.command == "pki":
        from common.pki import PKIError

        try:
            return _PKI[args.pki_command](args)
        except PKIError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.command == "doctor":
        return _doctor(args, make_config())
    return None


def _pki_init(args) -> int:
    from common.pki import init_pki

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
    from common.pki import renew_server_cert

    info = renew_server_cert(
        args.pki, args.superlink_host, server_days=args.server_days
    )
    print(f"SuperLink certificate {info.path}: {_names(info)}, until {_date(info)}")
    print("Restart the SuperLink to use it; sites keep their ca.crt.")
    return 0


def _pki_add_site(args) -> int:
    from common.pki import add_site, register_command

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

    from common.pki import ALLOW_LIST_DIR, register_command

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
    from common.pki import list_pki

    _print_listing(list_pki(args.pki))
    return 0


def _pki_roster(args) -> int:
    """Write the roster from the allow-list and --weight, or check one."""
    from common.pki import fingerprint
    from server.roster import RosterError, load_roster, parse_weights, roster_text

    try:
        if args.check:
            path = args.check
        else:
            if not args.weight or not args.out:
                print(
                    "error: pki roster: give --weight NAME=COUNT ... and --out, "
                    "or --check FILE",
                    file=sys.stderr,
                )
                return 2
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


def _doctor(args, config: RunConfig) -> int:
    import logging

    from flwr.common.config import parse_config_args

    from client.doctor import run_checks

    logging.getLogger("common.ingest").setLevel(logging.WARNING)
    try:
        node_config = parse_config_args(
            [args.node_config] if args.node_config else None
        )
    except ValueError as err:
        print(f"error: --node-config: {err}", file=sys.stderr)
        return 2
    checks = run_checks(
        args.superlink,
        args.root_certificates,
        args.auth_supernode_private_key,
        node_config,
        config,
        gpu=args.gpu,
        timeout=args.timeout,
    )
    for check in checks:
        print(f"[{check.status.upper():4s}] {check.name}: {check.detail}")
        if check.fix:
            print(f"       fix: {check.fix}")
    failed = [c.name for c in checks if c.failed]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed")
    return 1 if failed else 0
