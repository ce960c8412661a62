"""The coordinator's roster: enrolled sites, their keys and agreed weights, and
the server's checks of every count a site declares against it.

Flower 1.42 does not tell the ServerApp which enrolled hospital a node id
belongs to (the SuperLink assigns node ids; the node-auth key stays there), so
a site proves it at the application level: it signs what it declares with its
node-auth key (`client.roster_signing`, `common.privacy.roster_claim`), and the
server checks the signature against the public key the coordinator collected at
enrolment. A site that cannot sign as a roster site, or declares more than the
weight agreed for it, is refused: at the start (never trained), and in every
secure round (dropped as a dropout, see `RosterGrid`).

The roster file (TOML, run config `roster-file`), one table per site:

    [sites.hospital_a]
    # the line of pki/allow-list/hospital_a.pub
    public-key = "ecdsa-sha2-nistp384 AAAA... hospital_a"
    # training slices agreed at enrolment: the count the site declares
    weight = 812
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import tomllib
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.app.message import make_message
from flwr.app.message_type import MessageType
from flwr.common.constant import ErrorCode

from common.privacy import roster_claim as rc
from common.secure_agg import protocol as p
from server.aggregate_checks import admit_sites

log = logging.getLogger("flwr")
SITE_KEYS = ("public-key", "weight")
NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what pki and Flower accept


class RosterError(ValueError):
    """A roster file that cannot be used; one line per problem, each naming it."""


@dataclass(frozen=True)
class RosterSite:
    """One enrolled site: its name, node-auth public key and agreed weight."""

    name: str
    public_key: ec.EllipticCurvePublicKey
    weight: int


@dataclass(frozen=True)
class Roster:
    """The enrolled sites, by name, as read from `path`."""

    path: Path
    sites: dict[str, RosterSite]

    @property
    def max_weight(self) -> int:
        """Every round's max_weight: the largest agreed weight."""
        return max(site.weight for site in self.sites.values())


def load_roster(path: str | Path) -> Roster:
    """Read and check a roster file; `RosterError` lists every problem, one
    line each, naming the file (and the site)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise RosterError(f"{path}: cannot read the roster: {err.strerror}") from None
    except UnicodeDecodeError:
        raise RosterError(f"{path}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as err:
        raise RosterError(f"{path}: not valid TOML: {err}") from None
    problems = [
        f"unknown key {key!r} (only [sites.NAME] tables)"
        for key in data
        if key != "sites"
    ]
    tables = data.get("sites")
    sites: dict[str, RosterSite] = {}
    if not isinstance(tables, dict) or not tables:
        problems.append("no [sites.NAME] table: the roster names no site")
        tables = {}
    seen_keys: dict[bytes, str] = {}
    for name, table in tables.items():
        site, site_problems = _site(name, table)
        problems += site_problems
        if site is None:
            continue
        blob = _blob(site.public_key)
        if blob in seen_keys:
            problems.append(
                f"site {name!r}: the same public key as site {seen_keys[blob]!r} "
                "(each site signs with its own key)"
            )
            continue
        seen_keys[blob] = name
        sites[name] = site
    if problems:
        raise RosterError("\n".join(f"{path}: {q}" for q in problems))
    return Roster(path, sites)


def _site(name: str, table: object) -> tuple[RosterSite | None, list[str]]:
    """One [sites.NAME] table read, or the problems that stop it."""
    where = f"site {name!r}"
    if not rc.SITE_NAME.match(name):
        return None, [
            f"{where}: not a site name (letters, digits, '.', '_', '-'; up to 63)"
        ]
    if not isinstance(table, dict):
        return None, [f"{where}: not a table (write [sites.{name}])"]
    problems = [
        f"{where}: unknown key {k!r} (allowed: {', '.join(SITE_KEYS)})"
        for k in table
        if k not in SITE_KEYS
    ]
    problems += [f"{where}: no {k}" for k in SITE_KEYS if k not in table]
    weight = table.get("weight")
    if "weight" in table and (
        isinstance(weight, bool) or not isinstance(weight, int) or weight < 1
    ):
        problems.append(f"{where}: weight must be a whole number >= 1, got {weight!r}")
    key = None
    if "public-key" in table:
        key, problem = _public_key(table["public-key"])
        if problem:
            problems.append(f"{where}: public-key {problem}")
    if problems:
        return None, problems
    return RosterSite(name, key, int(weight)), []


def _public_key(text: object) -> tuple[ec.EllipticCurvePublicKey | None, str | None]:
    if not isinstance(text, str):
        return None, "must be a string: the line of the site's .pub file"
    try:
        key = serialization.load_ssh_public_key(text.strip().encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None, "is not an OpenSSH public key line (copy the site's auth.pub)"
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return None, f"is a {type(key).__name__}, expected an ECDSA key"
    if key.curve.name not in NIST_CURVES:
        return None, f"is on curve {key.curve.name}, not a NIST curve"
    return key, None


def _blob(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


def claim_of(content: RecordDict) -> ConfigRecord | None:
    """A reply's signed claim (its `roster` record), if any."""
    return content.config_records.get(rc.RECORD)


def claim_problem(
    roster: Roster,
    claim: ConfigRecord | None,
    *,
    run_id: int,
    rnd: int,
    node: int,
    n: object,
    seen: dict[str, int],
) -> str | None:
    """Why node `node`'s declared count `n` in round `rnd` is refused (None:
    admitted; `seen`, this round's site -> node, then records it)."""
    if claim is None:
        return (
            "check 'roster signature' failed: the reply has no signed claim (set "
            "the node's roster-key and roster-site node config)"
        )
    site = claim.get(rc.SITE)
    entry = roster.sites.get(site) if isinstance(site, str) else None
    if entry is None:
        return f"check 'roster site' failed: site {site!r} is not on {roster.path}"
    data = rc.payload(run_id, rnd, node, n, site)
    if not rc.verify(entry.public_key, claim.get(rc.SIGNATURE), data):
        return (
            f"check 'roster signature' failed: not {site}'s signature of (run "
            f"{run_id}, round {rnd}, node {node}, n = {n!r})"
        )
    if (
        isinstance(n, bool)
        or not isinstance(n, int | float)
        or not (math.isfinite(n) and n <= entry.weight)
    ):
        return (
            f"check 'roster weight' failed: declared n = {n!r} above {site}'s "
            f"agreed weight {entry.weight}"
        )
    if seen.get(site, node) != node:
        return (
            f"check 'roster once' failed: site {site} already answered this round "
            f"as node {seen[site]}"
        )
    seen[site] = node
    return None


def admit_rostered(
    roster: Roster | None,
    run_id: int,
    sizes: dict[int, object],
    claims: dict[int, ConfigRecord | None],
    max_site_weight: int = 0,
) -> tuple[dict[int, int], list[str]]:
    """`admit_sites` (usable counts, the `max-site-weight` cap), then each
    remaining node's signed claim (round 0: the properties reply) if there is
    a roster; the admitted nodes' counts and one line per node refused, naming
    the check."""
    admitted, refused = admit_sites(sizes, max_site_weight)
    if roster is None:
        return admitted, refused
    seen: dict[str, int] = {}
    for node in sorted(admitted):
        problem = claim_problem(
            roster,
            claims.get(node),
            run_id=run_id,
            rnd=0,
            node=node,
            n=sizes[node],
            seen=seen,
        )
        if problem:
            del admitted[node]
            refused.append(f"node {node}: {problem}")
    return admitted, refused


class RosterGrid:
    """A Grid for one secure round that checks every train reply declaring a
    count against the roster before the workflow (SecAgg+ or ours) sees it; a
    reply that fails becomes an error reply naming the check, so the workflow
    drops that node as a dropout (its masked vector never joins the sum)."""

    def __init__(
        self,
        grid,
        roster: Roster,
        run_id: int,
        rnd: int,
        refused: list[str] | None = None,
    ) -> None:
        self._grid, self._roster, self._run_id, self._rnd = grid, roster, run_id, rnd
        self._seen: dict[str, int] = {}  # one node per roster site this round
        self.refused = [] if refused is None else refused  # one line per node

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        replies = self._grid.send_and_receive(messages, timeout=timeout)
        return [self._checked(reply) for reply in replies]

    def _checked(self, reply: Message) -> Message:
        if reply.has_error() or reply.metadata.message_type != MessageType.TRAIN:
            return reply
        n = p.declared_examples(reply.content)
        if n is None:  # a key-exchange stage: no count declared
            return reply
        node = reply.metadata.src_node_id
        problem = claim_problem(
            self._roster,
            claim_of(reply.content),
            run_id=self._run_id,
            rnd=self._rnd,
            node=node,
            n=n,
            seen=self._seen,
        )
        if problem is None:
            return reply
        line = f"node {node}: {problem}"
        self.refused.append(f"round {self._rnd}: {line}")
        log.error("round %d: training site refused: %s", self._rnd, line)
        return make_message(
            reply.metadata, error=Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, problem)
        )


def guarded(grid, legacy, rnd: int):
    """`grid` checked against the strategy's roster in round `rnd` (unchanged
    without a roster)."""
    strategy = legacy.strategy
    roster = getattr(strategy, "roster", None)
    if roster is None:
        return grid
    refused = getattr(strategy, "refused", None)
    return RosterGrid(grid, roster, legacy.run_id, rnd, refused)


def round_max_weight(strategy, sizes: list[int]) -> int:
    """A round's max_weight: the roster's largest agreed weight, or without a
    roster the largest count the admitted sites declared."""
    roster = getattr(strategy, "roster", None)
    return roster.max_weight if roster is not None else max(sizes)


def roster_text(pki_dir: str | Path, weights: dict[str, int]) -> str:
    """The roster (TOML) of `weights` (site -> agreed weight), each site's
    public key read from PKI/allow-list/NAME.pub, as `pki add-site` wrote it."""
    from common.privacy.pki import ALLOW_LIST_DIR

    parts = [
        "# fedbigbigan roster: the coordinator's record of enrolled sites, their\n"
        "# node-auth public keys and agreed weights (run config roster-file)\n"
    ]
    for name, weight in weights.items():
        pub = Path(pki_dir) / ALLOW_LIST_DIR / f"{name}.pub"
        if not pub.is_file():
            raise RosterError(f"{pub}: no such site in the allow-list (pki add-site)")
        line = pub.read_text(encoding="utf-8").strip()
        parts.append(f'\n[sites.{name}]\npublic-key = "{line}"\nweight = {weight}\n')
    return "".join(parts)


def parse_weights(items: list[str]) -> dict[str, int]:
    """`NAME=COUNT` items (the CLI's --weight) as site -> weight."""
    weights: dict[str, int] = {}
    for item in items:
        name, _, count = item.partition("=")
        if not rc.SITE_NAME.match(name) or not count.isdigit() or int(count) < 1:
            raise RosterError(
                f"--weight {item!r}: write NAME=COUNT (a site name, a whole "
                "number >= 1)"
            )
        if name in weights:
            raise RosterError(f"--weight {item!r}: site {name} is given twice")
        weights[name] = int(count)
    return weights
