"""The coordinator's roster: a site cannot inflate its weight (issue 22, part 1).

Sites sign what they declare (`client.roster_signing`); the server admits and,
in every secure round, keeps only counts signed by a roster site's key for
that node and round, at most the site's agreed weight, each site once
(`server.roster`). Rounds run over `tests/hostile_sites.py`'s in-process grid,
both protocols.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import EvaluateIns, GetPropertiesIns, ndarrays_to_parameters
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from hostile_sites import (
    CLIP,
    SHAPES,
    Site,
    honest_update,
    plain_mean,
    secure_round,
)

from client.roster_signing import RosterSigningError, roster_signing_mod, sign_reply
from client.secure_dispatch_mod import secure_dispatch_mod
from common.config import RunConfig
from common.privacy import pki
from common.privacy import roster_claim as rc
from common.secure_agg.quantize import FixedPoint
from server.aggregate_checks import admit_sites
from server.roster import RosterError, admit_rostered, load_roster

PROTOCOLS = ("secaggplus", "fedbigbigan")
RUN = 1  # the in-process grid's run id


def _key_pair(folder: Path, name: str) -> tuple[Path, str]:
    """A node-auth key pair as `pki add-site` writes it: the private key's path
    and the public key's OpenSSH line."""
    key = ec.generate_private_key(pki.NODE_CURVE)
    path = folder / f"{name}.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return path, f"{line.decode()} {name}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Key pairs of the roster's sites a, b, c, d, and of an outsider."""
    folder = tmp_path_factory.mktemp("keys")
    return {name: _key_pair(folder, name) for name in ("a", "b", "c", "d", "mallory")}


def _write_roster(path: Path, keys, weights: dict[str, int]) -> Path:
    path.write_text(
        "".join(
            f'[sites.{name}]\npublic-key = "{keys[name][1]}"\nweight = {w}\n\n'
            for name, w in weights.items()
        )
    )
    return path


def _signing(keys, name: str, as_site: str | None = None) -> dict:
    """Node config of a site signing with `name`'s key as `as_site`."""
    return {"roster-key": str(keys[name][0]), "roster-site": as_site or name}


def _tolerance(weights: list[float]) -> float:
    n = len(weights)
    return max(2 * n * FixedPoint(CLIP, n).step * max(weights) / sum(weights), 1e-6)


# ---- rounds ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_honest_rostered_round_is_the_unrostered_one_bit_for_bit(
    protocol, keys, tmp_path
):
    weights = {"a": 100, "b": 50, "c": 80}
    roster = load_roster(_write_roster(tmp_path / "roster.toml", keys, weights))
    assert roster.max_weight == 100
    signed = [Site(n, node_config=_signing(keys, s)) for s, n in weights.items()]
    mean, strategy = secure_round(signed, protocol, roster=roster)
    plain, _ = secure_round([Site(n) for n in weights.values()], protocol)
    for m, e in zip(mean, plain, strict=True):
        np.testing.assert_array_equal(m, e)
    assert strategy.refused == [] and strategy.dropped == 0
    assert sorted(strategy.declared.values()) == [50, 80, 100]


def _hostile(keys) -> dict[str, tuple[Site, str]]:
    """Per case: node 1000's site (the others are b, c, d honest) and the
    check that refuses it."""

    def replay(msg, ctxt, call_next):
        """Node 1000 sends the claim b (node 1001) makes for the same count."""
        reply = call_next(msg, ctxt)
        if reply.has_content() and rc.RECORD in reply.content.config_records:
            key = pki.load_node_private_key(keys["b"][0])
            rnd = rc.message_round(msg.metadata.group_id)
            data = rc.payload(RUN, rnd, 1001, 50, "b")
            reply.content.config_records[rc.RECORD] = ConfigRecord(
                {rc.SITE: "b", rc.SIGNATURE: rc.sign(key, data)}
            )
        return reply

    return {
        # above a's agreed 60, within max_weight (the largest agreed, 100):
        # above that, our protocol's own client mod already refuses the round
        "above-agreed-weight": (Site(90, node_config=_signing(keys, "a")), "weight"),
        "wrong-key": (
            Site(40, node_config=_signing(keys, "mallory", "a")),
            "signature",
        ),
        "replayed": (
            Site(50, tamper=replay, node_config=_signing(keys, "a")),
            "signature",
        ),
        "not-on-roster": (Site(40, node_config=_signing(keys, "mallory")), "site"),
        "unsigned": (Site(40), "signature"),
    }


CASES = ("above-agreed-weight", "wrong-key", "replayed", "not-on-roster", "unsigned")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_bad_claim_drops_that_node_naming_the_check(protocol, case, keys, tmp_path):
    weights = {"a": 60, "b": 50, "c": 80, "d": 100}
    roster = load_roster(_write_roster(tmp_path / "roster.toml", keys, weights))
    bad, check = _hostile(keys)[case]
    honest = [Site(weights[s], node_config=_signing(keys, s)) for s in "bcd"]
    sites = [bad, *honest]
    mean, strategy = secure_round(sites, protocol, roster=roster)
    assert len(strategy.refused) == 1
    assert strategy.refused[0].startswith(
        f"round 1: node 1000: check 'roster {check}' failed"
    )
    assert strategy.dropped == 1 and set(strategy.declared) == {1001, 1002, 1003}
    for m, e in zip(mean, plain_mean(sites, keep=[1, 2, 3]), strict=True):
        np.testing.assert_allclose(m, e, atol=_tolerance([50, 80, 100]))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_site_answering_twice_in_a_round_is_refused_the_second_time(
    protocol, keys, tmp_path
):
    """Two nodes with d's key (a hospital running two SuperNodes): the later
    reply is dropped, so d weighs once."""
    weights = {"a": 60, "b": 50, "c": 80, "d": 100}
    roster = load_roster(_write_roster(tmp_path / "roster.toml", keys, weights))
    sites = [Site(weights[s], node_config=_signing(keys, s)) for s in "bcd"]
    sites.append(Site(90, node_config=_signing(keys, "d")))
    mean, strategy = secure_round(sites, protocol, roster=roster)
    assert [line.split(" failed")[0] for line in strategy.refused] == [
        "round 1: node 1003: check 'roster once'"
    ]
    assert "already answered this round as node 1002" in strategy.refused[0]
    for m, e in zip(mean, plain_mean(sites, keep=[0, 1, 2]), strict=True):
        np.testing.assert_allclose(m, e, atol=_tolerance([50, 80, 100]))


# ---- admission (the properties reply) ----------------------------------------


def _claim(keys, signer: str, node: int, n, site: str | None = None, rnd: int = 0):
    key = pki.load_node_private_key(keys[signer][0])
    site = site or signer
    return ConfigRecord(
        {rc.SITE: site, rc.SIGNATURE: rc.sign(key, rc.payload(RUN, rnd, node, n, site))}
    )


def test_admission_keeps_honest_sites_and_refuses_each_bad_claim(keys, tmp_path):
    roster = load_roster(
        _write_roster(tmp_path / "r.toml", keys, {"a": 100, "b": 50, "c": 80, "d": 30})
    )
    sizes = {1: 100, 2: 50, 3: 80, 4: 31, 5: 80, 6: 50, 7: 20, 8: 20, 9: 20}
    claims = {
        1: _claim(keys, "a", 1, 100),
        2: _claim(keys, "b", 2, 50),
        3: _claim(keys, "c", 3, 80),
        4: _claim(keys, "d", 4, 31),  # above d's agreed 30
        5: _claim(keys, "c", 3, 80),  # c's claim for node 3, replayed by node 5
        6: _claim(keys, "b", 6, 50),  # b again, as another node
        7: _claim(keys, "mallory", 7, 20),  # not on the roster
        8: _claim(keys, "mallory", 8, 20, site="d"),  # d's name, another key
        9: None,  # no claim
    }
    admitted, refused = admit_rostered(roster, RUN, sizes, claims)
    assert admitted == {1: 100, 2: 50, 3: 80}
    assert admitted == admit_sites({n: sizes[n] for n in (1, 2, 3)}, 0)[0]
    checks = {int(line.split(":")[0][5:]): line.split("'")[1] for line in refused}
    assert checks == {
        4: "roster weight",
        5: "roster signature",
        6: "roster once",
        7: "roster site",
        8: "roster signature",
        9: "roster signature",
    }
    assert all("\n" not in line for line in refused)


def test_admission_still_applies_the_count_checks_and_cap(keys, tmp_path):
    roster = load_roster(_write_roster(tmp_path / "r.toml", keys, {"a": 100}))
    claims = {1: _claim(keys, "a", 1, -5), 2: _claim(keys, "a", 2, 90)}
    admitted, refused = admit_rostered(roster, RUN, {1: -5, 2: 90}, claims, 80)
    assert admitted == {}
    assert "must be a whole number >= 1" in refused[0]
    assert "above the agreed max-site-weight = 80" in refused[1]


def test_a_claim_signed_for_another_round_or_run_is_refused(keys, tmp_path):
    roster = load_roster(_write_roster(tmp_path / "r.toml", keys, {"a": 100}))
    for claim in (_claim(keys, "a", 1, 100, rnd=3), _claim(keys, "a", 1, 99)):
        admitted, refused = admit_rostered(roster, RUN, {1: 100}, {1: claim})
        assert admitted == {} and "check 'roster signature' failed" in refused[0]


# ---- the roster file ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "cannot read the roster"),
        ("[sites.a\nweight = 1", "not valid TOML"),
        ("", "no [sites.NAME] table"),
        (
            "title = 'x'\n[sites.a]\npublic-key = '{a}'\nweight = 1",
            "unknown key 'title'",
        ),
        (
            "[sites.a]\npublic-key = '{a}'\nweight = 0",
            "site 'a': weight must be a whole",
        ),
        ("[sites.a]\npublic-key = '{a}'\nweight = '12'", "site 'a': weight must be"),
        ("[sites.a]\npublic-key = '{a}'\nweight = true", "site 'a': weight must be"),
        ("[sites.a]\npublic-key = '{a}'\nweight = 1.5", "site 'a': weight must be"),
        ("[sites.a]\nweight = 3", "site 'a': no public-key"),
        ("[sites.a]\npublic-key = '{a}'", "site 'a': no weight"),
        ("[sites.a]\npublic-key = 'ssh-rsa AAAA'\nweight = 3", "not an OpenSSH public"),
        ("[sites.a]\npublic-key = '{ed}'\nweight = 3", "expected an ECDSA key"),
        ("[sites.a]\npublic-key = '{a}'\nweight = 3\nextra = 1", "unknown key 'extra'"),
        ("[sites.'a b']\npublic-key = '{a}'\nweight = 3", "not a site name"),
        ("[sites]\na = 3", "site 'a': not a table"),
        (
            "[sites.a]\npublic-key = '{a}'\nweight = 3\n"
            "[sites.b]\npublic-key = '{a}'\nweight = 3",
            "site 'b': the same public key as site 'a'",
        ),
    ],
)
def test_a_bad_roster_file_is_one_line_naming_the_file_and_problem(
    text, problem, keys, tmp_path
):
    path = tmp_path / "roster.toml"
    if text is not None:
        ed = ed25519.Ed25519PrivateKey.generate().public_key()
        ed_line = ed.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()
        path.write_text(text.replace("{a}", keys["a"][1]).replace("{ed}", ed_line))
    with pytest.raises(RosterError) as err:
        load_roster(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ") and problem in message


def test_every_problem_of_a_roster_gets_its_own_line(tmp_path):
    path = tmp_path / "roster.toml"
    path.write_text("[sites.a]\nweight = 0\n[sites.b]\npublic-key = 'x'\nweight = 2\n")
    with pytest.raises(RosterError) as err:
        load_roster(path)
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{path}: site '") for line in lines)


def test_roster_file_is_a_string_key_off_by_default():
    assert RunConfig().roster_file == ""
    with pytest.raises(ValueError, match="roster-file must be a string, got 3"):
        RunConfig.from_flat({"roster-file": 3})


# ---- the site's signing mod --------------------------------------------------


def _properties_exchange(node_config: dict, n: int = 42):
    msg = Message(
        content=RecordDict(),
        dst_node_id=7,
        message_type=MessageTypeLegacy.GET_PROPERTIES,
    )
    context = Context(
        run_id=RUN,
        node_id=7,
        node_config=node_config,
        state=RecordDict(),
        run_config={},
    )

    def app(m, c):
        content = RecordDict(
            {
                "getpropertiesres.properties": ConfigRecord(
                    {"role": "train", "n_train": n}
                )
            }
        )
        return Message(content, reply_to=m)

    return msg, roster_signing_mod(msg, context, app)


def test_without_a_roster_key_the_reply_is_unchanged():
    _, reply = _properties_exchange({"data-dir": "/data"})
    assert rc.RECORD not in reply.content.config_records


def test_the_signed_properties_reply_verifies_for_this_node_round_0(keys):
    msg, reply = _properties_exchange(_signing(keys, "a"))
    claim = reply.content.config_records[rc.RECORD]
    public = pki.load_node_private_key(keys["a"][0]).public_key()
    run = msg.metadata.run_id
    assert claim[rc.SITE] == "a"
    assert rc.verify(public, claim[rc.SIGNATURE], rc.payload(run, 0, 7, 42, "a"))
    assert not rc.verify(public, claim[rc.SIGNATURE], rc.payload(run, 0, 8, 42, "a"))
    assert not rc.verify(public, claim[rc.SIGNATURE], rc.payload(run, 0, 7, 43, "a"))


def test_a_roster_key_without_a_site_name_stops_the_node(keys):
    with pytest.raises(RosterSigningError, match="roster-site = None"):
        _properties_exchange({"roster-key": str(keys["a"][0])})


def test_a_reply_declaring_no_count_is_not_signed(keys):
    msg = Message(content=RecordDict(), dst_node_id=7, message_type="train")
    key = pki.load_node_private_key(keys["a"][0])
    assert not sign_reply(RecordDict(), msg, key, "a")


def test_an_evaluate_reply_passes_the_audit_unsigned(keys):
    """Its count is no averaging weight, and the audit allows no claim there."""
    from test_audit_mod import FakeSite, app_for, context, message

    from client.audit_mod import audit_mod

    for role in ("train", "external"):
        app = app_for(FakeSite(role), [audit_mod, _signing_mod(_signing(keys, "a"))])
        ins = compat.evaluateins_to_recorddict(
            EvaluateIns(ndarrays_to_parameters([np.zeros(3, np.float32)]), {}), True
        )
        reply = app(message(ins, MessageType.EVALUATE), context())
        assert not reply.has_error(), reply.error
        assert rc.RECORD not in reply.content.config_records


# ---- the message audit lets the claim leave, and nothing else beside it -------


def _signing_mod(node_config: dict, edit=None):
    """The roster mod as a node with `node_config` runs it; `edit(record)`
    then changes the claim (what a bug could add)."""

    def mod(msg, ctxt, call_next):
        ctxt = Context(ctxt.run_id, ctxt.node_id, node_config, ctxt.state, {})
        reply = roster_signing_mod(msg, ctxt, call_next)
        if edit and rc.RECORD in reply.content.config_records:
            edit(reply.content.config_records[rc.RECORD])
        return reply

    return mod


def test_the_audit_lets_a_signed_claim_leave_in_every_reply_that_declares(keys):
    from test_audit_mod import FakeSite, app_for, assert_allowed, context, message
    from test_audit_mod import secure_round as secaggplus_stages

    from client.audit_mod import audit_mod

    sign = _signing_mod(_signing(keys, "a"))
    app = app_for(FakeSite(), [audit_mod, sign])
    props = compat.getpropertiesins_to_recorddict(GetPropertiesIns({}))
    reply = app(message(props, MessageTypeLegacy.GET_PROPERTIES), context())
    assert not reply.has_error(), reply.error
    assert reply.content.config_records[rc.RECORD][rc.SITE] == "a"
    apps = {
        n: app_for(FakeSite(), [audit_mod, secaggplus_mod, audit_mod, sign])
        for n in (1, 2)
    }
    replies = secaggplus_stages(apps, "gan")
    assert_allowed(replies)
    collected = replies["collect"].values()
    assert all(rc.RECORD in r.content.config_records for r in collected)
    # ours, through the ClientApp's own mod stack (client/client_app.py)
    from test_audit_mod import our_round

    from client.secure_dispatch_mod import secure_dispatch_mod

    stack = [audit_mod, secure_dispatch_mod, audit_mod, sign]
    replies = our_round(FakeSite(), stack, "moments")
    assert list(replies) == ["setup", "share", "collect", "unmask"]
    assert_allowed(replies)
    collected = replies["collect"].values()
    assert all(rc.RECORD in r.content.config_records for r in collected)


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r.__setitem__("note", "x"),
        lambda r: r.__setitem__(rc.SIGNATURE, b"x" * 400),
        lambda r: r.__setitem__(rc.SITE, "a/../b"),
    ],
    ids=["extra-key", "long-signature", "bad-name"],
)
def test_the_audit_refuses_a_claim_of_another_form(keys, edit):
    from test_audit_mod import FakeSite, app_for, context, message, refusal

    from client.audit_mod import audit_mod

    app = app_for(FakeSite(), [audit_mod, _signing_mod(_signing(keys, "a"), edit)])
    props = compat.getpropertiesins_to_recorddict(GetPropertiesIns({}))
    reason = refusal(
        lambda: app(message(props, MessageTypeLegacy.GET_PROPERTIES), context())
    )
    assert f"config record {rc.RECORD!r}" in reason


# ---- the ServerApp's wiring ----------------------------------------------------


def test_the_server_reads_each_nodes_claim_with_its_role_and_admits_by_it(
    keys, tmp_path
):
    """`_query_roles` over an in-process grid of signing nodes: b, c honest;
    the third signs as b too (refused: once); the fourth is unsigned."""
    from server.server_app import _query_roles
    from simulations.loopback import LoopbackGrid

    class Props(NumPyClient):
        def get_properties(self, config):
            return {"role": "train", "n_train": 40}

    configs = [_signing(keys, "b"), _signing(keys, "c"), _signing(keys, "b"), {}]
    grid = LoopbackGrid(
        ClientApp(client_fn=lambda c: Props().to_client(), mods=[roster_signing_mod]),
        4,
        node_config=lambda i: {"partition-id": i, **configs[i]},
    )
    roster = load_roster(_write_roster(tmp_path / "r.toml", keys, {"b": 50, "c": 40}))
    claims: dict = {}
    roles = _query_roles(grid, {}, 30.0, claims=claims)
    sizes = {n: size for n, (_, size) in roles.items()}
    admitted, refused = admit_rostered(roster, RUN, sizes, claims)
    assert admitted == {1000: 40, 1001: 40}
    assert [line.split(" failed")[0] for line in refused] == [
        "node 1002: check 'roster once'",
        "node 1003: check 'roster signature'",
    ]


def test_a_loopback_node_signs_for_the_grids_run_whatever_ran_before(
    keys, tmp_path, monkeypatch
):
    """An in-process `run_simulation` leaves Flower's process-wide
    TaskIdentity at its own run id; a LoopbackGrid's nodes must still see the
    grid's run (run 1), or every signature is for the wrong run (the order-
    dependent failure of this file after a simulation test)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 987654321)
    weights = {"a": 100, "b": 50}
    roster = load_roster(_write_roster(tmp_path / "roster.toml", keys, weights))
    signed = [Site(n, node_config=_signing(keys, s)) for s, n in weights.items()]
    mean, strategy = secure_round(signed, "secaggplus", roster=roster)
    assert strategy.refused == [] and sorted(strategy.declared.values()) == [50, 100]
    for m, e in zip(mean, plain_mean(signed), strict=True):
        np.testing.assert_allclose(m, e, atol=_tolerance([50, 100]))


def test_a_bad_roster_stops_the_server_before_any_site_is_asked(tmp_path):
    from server.server_app import run_federation

    path = tmp_path / "roster.toml"
    path.write_text("[sites.a]\nweight = 2\n")
    config = RunConfig.from_flat({"roster-file": str(path)})
    # no grid, no context: the roster is read before either is touched
    with pytest.raises(RosterError, match=r"roster.toml: site 'a': no public-key"):
        run_federation(None, None, config, tmp_path / "run")


# ---- `fedbigbigan pki roster` --------------------------------------------------


def test_pki_roster_writes_a_roster_the_server_reads_and_signatures_verify(
    tmp_path, capsys
):
    from common.commands import main

    folder, out = tmp_path / "pki", tmp_path / "roster.toml"
    assert main(["pki", "init", "--out", str(folder), "--superlink-host", "x"]) == 0
    for name in ("hospital_a", "hospital_b"):
        assert main(["pki", "add-site", name, "--pki", str(folder)]) == 0
    capsys.readouterr()
    argv = ["pki", "roster", "--pki", str(folder), "--out", str(out)]
    weights = ["--weight", "hospital_a=812", "--weight", "hospital_b=400"]
    assert main([*argv, *weights]) == 0
    assert "2 sites" in capsys.readouterr().out
    roster = load_roster(out)
    assert {s.name: s.weight for s in roster.sites.values()} == {
        "hospital_a": 812,
        "hospital_b": 400,
    }
    # the key the hospital was given signs what the roster's key verifies
    key = pki.load_node_private_key(folder / "sites" / "hospital_a" / "auth.key")
    data = rc.payload(RUN, 0, 5, 800, "hospital_a")
    public = roster.sites["hospital_a"].public_key
    assert rc.verify(public, rc.sign(key, data), data)
    assert main(["pki", "roster", "--check", str(out)]) == 0
    # never overwritten; bad weights and unknown sites are one line each
    assert main([*argv, *weights]) == 2
    assert "exists" in capsys.readouterr().err
    for bad, problem in (
        ("hospital_a=0", "write NAME=COUNT"),
        ("hospital_a", "write NAME=COUNT"),
        ("hospital_c=3", "no such site in the allow-list"),
    ):
        target = tmp_path / f"r{len(bad)}.toml"
        argv = ["pki", "roster", "--pki", str(folder), "--out", str(target)]
        assert main([*argv, "--weight", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and problem in err
    # neither --check nor both --weight and --out: the usage, exit status 2
    with pytest.raises(SystemExit) as stop:
        main(["pki", "roster", "--pki", str(folder), "--weight", "hospital_a=3"])
    assert stop.value.code == 2
    assert "give --weight NAME=COUNT ... and --out" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[sites.a]\nweight = 0\n")
    assert main(["pki", "roster", "--check", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: {tmp_path / 'bad.toml'}: site 'a': no public-key",
        f"error: {tmp_path / 'bad.toml'}: site 'a': weight must be a whole "
        "number >= 1, got 0",
    ]


def test_runs_checkpointed_before_the_roster_still_resume():
    """The default adds nothing to the run config hash; a roster changes it."""
    from server.checkpointing import config_hash, stable_config

    assert "roster-file" not in stable_config(RunConfig())
    with_roster = RunConfig.from_flat({"roster-file": "/r.toml"})
    assert config_hash(with_roster) != config_hash(RunConfig())


def test_simulate_refuses_a_roster_in_one_line(tmp_path, capsys):
    from common.commands import main

    argv = ["simulate", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--run-config", "roster-file='/r.toml'"])
    assert stop.value.code == 2
    assert "roster-file: a roster needs deployed nodes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---- in Flower's Simulation Engine: real run ids and round group ids ----------


class _Hospital(NumPyClient):
    """A training site: role and count for the properties query, an update for
    the round."""

    def __init__(self, partition: int, n: int):
        self.partition, self.n = partition, n

    def get_properties(self, config):
        return {"role": "train", "n_train": self.n}

    def fit(self, parameters, config):
        return honest_update(self.partition), self.n, {"clipped": 0}


@pytest.mark.simulation
def test_the_roster_in_the_simulation_engine(keys, tmp_path):
    """Sites a, b, c sign with their own keys; c declares more than agreed at
    the start (refused there) and in the round (dropped there, SecAgg+); the
    round is the weighted mean of a and b."""
    from secure_rounds import run_on_legacy

    from server.server_app import _query_roles, _secure_round

    counts = [100, 50, 90]  # c's agreed weight is 60
    roster = load_roster(
        _write_roster(tmp_path / "r.toml", keys, {"a": 100, "b": 50, "c": 60})
    )
    names = "abc"

    def sign_as_partition(msg, ctxt, call_next):
        part = int(ctxt.node_config["partition-id"])
        node_config = {**ctxt.node_config, **_signing(keys, names[part])}
        ctxt = Context(ctxt.run_id, ctxt.node_id, node_config, ctxt.state, {})
        return roster_signing_mod(msg, ctxt, call_next)

    def client_fn(context):
        part = int(context.node_config["partition-id"])
        return _Hospital(part, counts[part]).to_client()

    app = ClientApp(client_fn=client_fn, mods=[secure_dispatch_mod, sign_as_partition])

    def server_step(grid, legacy, strategy):
        claims: dict = {}
        roles = _query_roles(grid, {}, 60.0, claims=claims)
        sizes = {n: size for n, (_, size) in roles.items()}
        admitted, refused = admit_rostered(roster, legacy.run_id, sizes, claims)
        strategy.roster = roster
        strategy.config = {"phase": "gan"}
        weights = [np.zeros(s, np.float32) for s in SHAPES]
        mean = _secure_round(
            grid,
            legacy,
            1,
            weights,
            RunConfig.from_flat({"secagg-delta-clip": CLIP, "secagg-timeout": 60.0}),
            CLIP,
            roster.max_weight,
        )
        by_node = {n: names[counts.index(size)] for n, size in sizes.items()}
        return admitted, refused, list(strategy.refused), mean, by_node

    admitted, refused, dropped, mean, by_node = run_on_legacy(app, 3, server_step)
    assert sorted(by_node[n] for n in admitted) == ["a", "b"]
    (c,) = [n for n, name in by_node.items() if name == "c"]
    assert refused == [
        f"node {c}: check 'roster weight' failed: declared n = 90 above c's "
        "agreed weight 60"
    ]
    assert dropped == [
        f"round 1: node {c}: check 'roster weight' failed: declared n = 90 above "
        "c's agreed weight 60"
    ]
    expected = [
        (100 * a.astype(np.float64) + 50 * b) / 150
        for a, b in zip(honest_update(0), honest_update(1), strict=True)
    ]
    for m, e in zip(mean, expected, strict=True):
        np.testing.assert_allclose(m, e, atol=1e-6)
