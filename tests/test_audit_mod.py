"""The message audit mod: our ClientApp's replies pass, through the real SecAgg+
protocol and through ours; a DICOM tag, a pixel array or per-patient scores
never leave, and an exception's text stays on the node."""

import contextlib
import time

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.app.message_type import MessageType
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import (
    EvaluateIns,
    FitIns,
    GetPropertiesIns,
    ndarrays_to_parameters,
)
from flwr.common.constant import MessageTypeLegacy
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)
from flwr.compat.common import recorddict_compat as compat

from client.audit_mod import AuditRefusal, audit_mod
from client.secure_dispatch_mod import secure_dispatch_mod
from common.config import Z_DIM
from common.evaluation import feature_kinds
from common.evaluation.metrics import GRID_BINS, histogram, histogram_keys
from common.evaluation.site_evaluation import (
    heads_report,
    heads_report_keys,
    paired_names,
)
from common.secure_agg import protocol as ours
from server.secure_agg_round import KeysAhead
from server.secure_agg_workflow import SecureAggregationError, SecureAggregator
from simulations.loopback import LoopbackGrid

WEIGHTS = [np.zeros((3, 3, 1, 8), np.float32), np.zeros(8, np.float32)]
EXTERNAL_KEYS = [
    f"external/{level}/{cls}"
    for level in ("slice", "patient")
    for cls in ("pos", "neg")
]
PATIENT_ID = "ANON-PT-0042"  # what a DICOM PatientID tag would hold


def phase_reply(
    phase: str, parameters: list, kinds: tuple = ("model",)
) -> tuple[list, dict]:
    """Arrays and metrics shaped like client.client_app's replies, for the
    feature kinds the message names (the model's alone by default)."""
    z = Z_DIM
    if phase == "gan":
        return [p + 0.01 for p in parameters], {
            "d_loss": 1.0,
            "e_loss": 2.0,
            "g_loss": -1.0,
            "clipped": 0,
        }
    widths = [feature_kinds.dim(k, z) for k in kinds]
    arrays = {
        "moments": [a for d in widths for a in (np.zeros(d), np.ones(d))],
        "head": [a for d in widths for a in (np.eye(d + 1), np.zeros(d + 1)) * 2],
        "logit": [np.zeros(z + 1)],
        "eval": [
            np.zeros(GRID_BINS)
            for _ in feature_kinds.head_names(kinds)
            for _ in histogram_keys()
        ],
    }.get(phase, [np.zeros(3)])
    return arrays, {"clipped": 0}


class FakeSite(NumPyClient):
    """Our ClientApp's reply shapes; `extra` adds what must never leave."""

    def __init__(self, role="train", extra=None):
        self.role, self.extra = role, extra or {}

    def get_properties(self, config):
        return {"role": self.role, "n_train": 12, **self.extra.get("properties", {})}

    def fit(self, parameters, config):
        if "raise" in self.extra:
            raise self.extra["raise"]
        kinds = feature_kinds.parse(config.get(feature_kinds.CONFIG_KEY))
        arrays, metrics = phase_reply(config["phase"], parameters, kinds)
        arrays = self.extra.get("arrays", lambda a: a)(arrays)
        return arrays, 12, {**metrics, **self.extra.get("metrics", {})}

    def evaluate(self, parameters, config):
        if self.role != "external":
            return 0.0, 0, {}
        kinds = feature_kinds.parse(config.get(feature_kinds.CONFIG_KEY))
        report = external_report(kinds)
        return 0.0, 20, {**report, **self.extra.get("metrics", {})}


def external_report(kinds: tuple = ("model",)) -> dict:
    """An external site's report (common.evaluation.site_evaluation) on made-up scores,
    for every head of `kinds`, with the paired differences."""
    rng = np.random.default_rng(0)
    hists = {
        head: {
            f"external/{level}/{cls}": histogram(rng.uniform(0, 1, 9))
            for level in ("patient", "slice")
            for cls in ("pos", "neg")
        }
        for head in feature_kinds.head_names(kinds)
    }
    cut = {"patient": 0.5, "slice": 0.5}
    paired = {
        name: {"diff": 0.1, "diff_ci": [-0.2, 0.4], "p": 0.5}
        for name in paired_names(kinds)
    }
    return heads_report(hists, "external", dict.fromkeys(hists, cut), paired)


def app_for(site: NumPyClient, mods) -> ClientApp:
    return ClientApp(client_fn=lambda context: site.to_client(), mods=mods)


def message(content: RecordDict, mtype: str, dst: int = 1) -> Message:
    return Message(
        content=content,
        metadata=Metadata(
            run_id=1,
            message_id=f"m{time.monotonic_ns()}",
            src_node_id=0,
            dst_node_id=dst,
            reply_to_message_id="",
            group_id="1",
            created_at=time.time(),
            ttl=3600.0,
            message_type=mtype,
        ),
    )


def context(node_id: int = 1) -> Context:
    return Context(1, node_id, {}, RecordDict(), {})


def fit_content(phase: str, parameters=None, preset="tiny", kinds=None) -> RecordDict:
    config = {"phase": phase, "preset": preset, "server-round": 1}
    if kinds is not None:
        config[feature_kinds.CONFIG_KEY] = ",".join(kinds)
    ins = FitIns(ndarrays_to_parameters(parameters or WEIGHTS), config)
    return compat.fitins_to_recorddict(ins, True)


def plain_fit(app, phase, parameters=None):
    """A train message without SecAgg+ (a callable, for `refusal`)."""
    return lambda: app(
        message(fit_content(phase, parameters), MessageType.TRAIN), context()
    )


def secure_round(apps: dict[int, ClientApp], phase: str, fit=None) -> dict:
    """Drive SecAgg+'s four stages over `apps` (node id -> app) as the server's
    SecAggPlusWorkflow does; returns each stage's replies. `fit()` makes the fit
    instructions of the collect stage (default: `fit_content(phase)`)."""
    fit = fit or (lambda: fit_content(phase))
    contexts = {nid: context(nid) for nid in apps}
    nids = sorted(apps)

    def stage(contents: dict[int, RecordDict]) -> dict[int, Message | Exception]:
        out = {}
        for nid in nids:
            try:
                out[nid] = apps[nid](
                    message(contents[nid], MessageType.TRAIN, nid), contexts[nid]
                )
            except Exception as err:  # what Flower turns into an error reply
                out[nid] = err
        return out

    def cfg(values: dict) -> RecordDict:
        return RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(values)})

    setup = {
        Key.STAGE: Stage.SETUP,
        Key.SAMPLE_NUMBER: len(nids),
        Key.SHARE_NUMBER: len(nids),
        Key.THRESHOLD: len(nids),
        Key.CLIPPING_RANGE: 8.0,
        Key.TARGET_RANGE: 2**22,
        Key.MOD_RANGE: 2**32,
        Key.MAX_WEIGHT: 100.0,
    }
    replies = {"setup": stage({n: cfg(setup) for n in nids})}
    keys = {
        str(n): [
            r.content.config_records[RECORD_KEY_CONFIGS][Key.PUBLIC_KEY_1],
            r.content.config_records[RECORD_KEY_CONFIGS][Key.PUBLIC_KEY_2],
        ]
        for n, r in replies["setup"].items()
    }
    replies["share"] = stage(
        {n: cfg({Key.STAGE: Stage.SHARE_KEYS, **keys}) for n in nids}
    )
    forward: dict[int, tuple[list, list]] = {n: ([], []) for n in nids}
    for src, reply in replies["share"].items():
        record = reply.content.config_records[RECORD_KEY_CONFIGS]
        for dst, ctxt in zip(
            record[Key.DESTINATION_LIST], record[Key.CIPHERTEXT_LIST], strict=True
        ):
            forward[dst][0].append(ctxt)
            forward[dst][1].append(src)
    collect = {}
    for n in nids:
        content = fit()
        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(
            {
                Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                Key.CIPHERTEXT_LIST: forward[n][0],
                Key.SOURCE_LIST: forward[n][1],
            }
        )
        collect[n] = content
    replies["collect"] = stage(collect)
    if any(isinstance(r, Exception) for r in replies["collect"].values()):
        return replies
    unmask = {
        Key.STAGE: Stage.UNMASK,
        Key.ACTIVE_NODE_ID_LIST: nids,
        Key.DEAD_NODE_ID_LIST: [],
    }
    replies["unmask"] = stage({n: cfg(unmask) for n in nids})
    return replies


def assert_allowed(replies: dict) -> None:
    for name, by_node in replies.items():
        for nid, reply in by_node.items():
            assert isinstance(reply, Message), (name, nid, reply)
            assert not reply.has_error(), (name, nid, reply.error)


def refusal(outcome) -> str:
    """The text the server would get: an `AuditRefusal` raised by the mod (a
    callable is called first)."""
    if callable(outcome):
        try:
            outcome = outcome()
        except Exception as err:
            outcome = err
    assert isinstance(outcome, AuditRefusal), f"not refused by the audit: {outcome!r}"
    return str(outcome)


@pytest.mark.parametrize("phase", ["gan", "moments", "head", "logit", "eval"])
def test_every_phase_through_secagg_plus_is_allowed(phase):
    apps = {
        n: app_for(FakeSite(), [audit_mod, secaggplus_mod, audit_mod]) for n in (1, 2)
    }
    replies = secure_round(apps, phase)
    assert set(replies) == {"setup", "share", "collect", "unmask"}
    assert_allowed(replies)


def test_properties_and_evaluate_replies_are_allowed():
    for role in ("train", "external"):
        app = app_for(FakeSite(role), [audit_mod, secaggplus_mod])
        props = compat.getpropertiesins_to_recorddict(GetPropertiesIns({}))
        reply = app(message(props, MessageTypeLegacy.GET_PROPERTIES), context())
        assert not reply.has_error(), reply.error
        ins = compat.evaluateins_to_recorddict(
            EvaluateIns(ndarrays_to_parameters(WEIGHTS), {}), True
        )
        reply = app(message(ins, MessageType.EVALUATE), context())
        assert not reply.has_error(), reply.error


def test_a_dicom_tag_value_is_refused_everywhere():
    app = app_for(
        FakeSite(extra={"properties": {"patient_id": PATIENT_ID}}), [audit_mod]
    )
    props = compat.getpropertiesins_to_recorddict(GetPropertiesIns({}))
    reason = refusal(
        lambda: app(message(props, MessageTypeLegacy.GET_PROPERTIES), context())
    )
    assert "getpropertiesres.properties" in reason and PATIENT_ID not in reason

    app = app_for(FakeSite(extra={"metrics": {"PatientID": PATIENT_ID}}), [audit_mod])
    reason = refusal(plain_fit(app, "moments"))
    assert "fitres.metrics" in reason and PATIENT_ID not in reason
    # a tag value as a metric *key* is not echoed to the server either
    app = app_for(FakeSite(extra={"metrics": {PATIENT_ID: 0.9}}), [audit_mod])
    assert PATIENT_ID not in refusal(plain_fit(app, "gan"))
    # and the same through SecAgg+, where it would have travelled in the clear
    apps = {
        n: app_for(
            FakeSite(extra={"metrics": {"StudyDate": "20200301"}}),
            [audit_mod, secaggplus_mod],
        )
        for n in (1, 2)
    }
    replies = secure_round(apps, "gan")
    assert "fitres.metrics" in refusal(replies["collect"][1])


def test_a_pixel_array_is_refused():
    slice_u16 = np.zeros((64, 64), np.uint16)
    slices = np.zeros((6, 64, 64), np.float32)
    for extra, phase in (
        ({"arrays": lambda a: [*a, slice_u16]}, "gan"),  # an extra image array
        ({"arrays": lambda a: [slices, a[1]]}, "moments"),  # slices in place of z
        ({"arrays": lambda a: [a[0].astype(np.int16), a[1]]}, "moments"),
    ):
        reason = refusal(plain_fit(app_for(FakeSite(extra=extra), [audit_mod]), phase))
        assert "fitres.parameters" in reason, reason
    # through SecAgg+: the masked vectors' shapes give it away (outer audit only)
    apps = {
        n: app_for(
            FakeSite(extra={"arrays": lambda a: [*a, slice_u16]}),
            [audit_mod, secaggplus_mod],
        )
        for n in (1, 2)
    }
    reason = refusal(secure_round(apps, "gan")["collect"][1])
    assert Key.MASKED_PARAMETERS in reason
    # and the inner audit stops it before masking
    apps = {
        n: app_for(
            FakeSite(extra={"arrays": lambda a: [*a, slice_u16]}),
            [audit_mod, secaggplus_mod, audit_mod],
        )
        for n in (1, 2)
    }
    assert "refused" in refusal(secure_round(apps, "gan")["collect"][1])


def test_per_patient_scores_are_refused():
    scores = [0.91, 0.12, 0.55]
    app = app_for(FakeSite("external", {"metrics": {"scores": scores}}), [audit_mod])
    ins = compat.evaluateins_to_recorddict(
        EvaluateIns(ndarrays_to_parameters(WEIGHTS), {}), True
    )
    assert "evaluateres.metrics" in refusal(
        lambda: app(message(ins, MessageType.EVALUATE), context())
    )
    # scores, or a fine histogram that places each score to 1/1000, under an
    # allowed key are still not the report's coarse counts
    fine = histogram(np.array(scores)).tolist()
    for value in (scores, fine):
        app = app_for(
            FakeSite("external", {"metrics": {"patient/coarse_pos": value}}),
            [audit_mod],
        )
        reason = refusal(
            lambda app=app: app(message(ins, MessageType.EVALUATE), context())
        )
        assert "patient/coarse_pos" in reason
    # per-patient scores as an array in a train reply
    app = app_for(
        FakeSite(extra={"arrays": lambda a: [*a, np.array(scores)]}), [audit_mod]
    )
    assert "fitres.parameters" in refusal(plain_fit(app, "eval"))


def test_unknown_phase_and_message_type_are_refused():
    app = app_for(FakeSite(), [audit_mod])
    content = fit_content("gan")
    content.config_records["fitins.config"]["phase"] = "debug-dump"
    reason = refusal(lambda: app(message(content, MessageType.TRAIN), context()))
    assert "phase" in reason
    query = message(RecordDict(), MessageType.QUERY)
    answer = RecordDict({"x": ConfigRecord({"a": 1})})
    reason = refusal(
        lambda: audit_mod(query, context(), lambda m, c: Message(answer, reply_to=m))
    )
    assert "'query'" in reason


def test_exception_text_stays_on_the_node(caplog):
    err = ValueError(f"/data/{PATIENT_ID}/IM0001.dcm: Modality is MR, expected CT")
    apps = {
        n: app_for(FakeSite(extra={"raise": err}), [audit_mod, secaggplus_mod])
        for n in (1, 2)
    }
    reason = refusal(secure_round(apps, "gan")["collect"][1])
    assert "ValueError" in reason and PATIENT_ID not in reason
    assert PATIENT_ID in caplog.text  # the node's own log keeps the details


def test_plain_train_message_is_still_refused_by_secagg():
    """secaggplus_mod refuses an unmasked train message; the audit keeps that."""
    app = app_for(FakeSite(), [audit_mod, secaggplus_mod])
    reason = refusal(plain_fit(app, "gan"))
    assert "KeyError" in reason


# what the ServerApp adds to a train message's config (server/server_app.py)
SERVER_FIT_KEYS = {"server-round": 1, "head-clip": 1e4, "run-token": "a0d17e57"}


@pytest.fixture(scope="module")
def phantom_sites(tmp_path_factory):
    from simulations.phantoms import write_study

    return write_study(tmp_path_factory.mktemp("audit-sites"), 0.15, 0, 2)


@pytest.mark.slow
def test_the_real_client_app_replies_pass_the_audit(phantom_sites, tmp_path):
    """client.client_app's own replies, every phase, on phantom DICOM sites."""
    from client.client_app import client_fn
    from common.config import RunConfig
    from common.model.checkpoint import initial_model

    config = RunConfig.from_flat({"preset": "tiny", "local-epochs": 1})
    flat = config.to_flat()
    weights = initial_model(config).get_weights()
    z = Z_DIM

    def node(site: str, role: str) -> ClientApp:
        node_config = {
            "data-dir": str(phantom_sites[site]),
            "role": role,
            "cache-dir": str(tmp_path / site),
        }
        return ClientApp(
            client_fn=lambda ctx: client_fn(
                Context(ctx.run_id, ctx.node_id, node_config, ctx.state, {})
            ),
            mods=[audit_mod, secaggplus_mod, audit_mod],
        )

    train = {1: node("hospital_a_ge", "train"), 2: node("hospital_a_neuviz", "train")}
    external = node("hospital_b", "external")
    props = compat.getpropertiesins_to_recorddict(GetPropertiesIns(dict(flat)))
    for app in (*train.values(), external):
        reply = app(message(props, MessageTypeLegacy.GET_PROPERTIES), context())
        assert not reply.has_error(), reply.error
    kinds = feature_kinds.KINDS  # the model's features and both baselines'
    widths = [feature_kinds.dim(k, z) for k in kinds]
    scales = [a for d in widths for a in (np.zeros(d), np.ones(d))]
    heads = [
        np.zeros(d + 1) for d in widths for _ in feature_kinds.HEADS
    ]  # in head order
    mean, std, beta = np.zeros(z), np.ones(z), np.zeros(z + 1)
    named = {feature_kinds.CONFIG_KEY: ",".join(kinds)}
    for phase, params in (
        ("gan", weights),
        ("moments", weights),
        ("head", [*weights, *scales]),
        ("logit", [*weights, mean, std, beta]),
        ("eval", [*weights, *heads]),
    ):
        ins = FitIns(
            ndarrays_to_parameters(params),
            {**flat, **SERVER_FIT_KEYS, **named, "phase": phase},
        )
        replies = secure_round(
            train, phase, lambda ins=ins: compat.fitins_to_recorddict(ins, True)
        )
        assert_allowed(replies)
    cutoffs = {"threshold": 0.5, "slice-threshold": 0.5}
    for head in feature_kinds.head_names(kinds)[1:]:
        cutoffs |= {f"threshold/{head}": 0.5, f"slice-threshold/{head}": 0.5}
    ins = compat.evaluateins_to_recorddict(
        EvaluateIns(
            ndarrays_to_parameters([*weights, *heads]), {**flat, **named, **cutoffs}
        ),
        True,
    )
    reply = external(message(ins, MessageType.EVALUATE), context(3))
    assert not reply.has_error(), reply.error
    metrics = reply.content.config_records["evaluateres.metrics"]
    assert set(metrics) == heads_report_keys(kinds)


# --- our secure aggregation (common.secure_agg), as the server runs it with
# --- secure-aggregation = "fedbigbigan"; the dispatch mod serves both protocols

STAGE_NAMES = {
    ours.SETUP: "setup",
    ours.SHARE_KEYS: "share",
    ours.COLLECT: "collect",
    ours.UNMASK: "unmask",
}
DISPATCH = [audit_mod, secure_dispatch_mod, audit_mod]


def our_round(site: NumPyClient, mods, phase: str, fit=None, rounds: int = 1) -> dict:
    """Run `rounds` rounds of our protocol (keys sent ahead, as by default)
    over two nodes of `site` behind `mods`, as `SecureAggWorkflow` does;
    returns each stage's replies (or exceptions) like `secure_round`, the last
    of each. `fit()` makes the collect stage's fit instructions."""
    fit = fit or (lambda: fit_content(phase))
    replies: dict[str, dict] = {}

    def record(msg, ctxt, call_next):
        stage = STAGE_NAMES[msg.content.config_records[ours.RECORD][ours.STAGE]]
        node = msg.metadata.dst_node_id
        try:
            reply = call_next(msg, ctxt)
        except Exception as err:  # what Flower turns into an error reply
            replies.setdefault(stage, {})[node] = err
            raise
        replies.setdefault(stage, {})[node] = reply
        return reply

    grid = LoopbackGrid(app_for(site, [record, *mods]), 2)
    aggregator = SecureAggregator(
        2, 2, max_weight=100.0, clipping_range=8.0, keys_ahead=KeysAhead()
    )
    with contextlib.suppress(SecureAggregationError):
        for _ in range(rounds):
            aggregator.run(grid, {n: fit() for n in grid.get_node_ids()})
    return replies


@pytest.mark.parametrize("phase", ["gan", "moments", "head", "logit", "eval"])
def test_every_phase_through_our_protocol_is_allowed(phase):
    replies = our_round(FakeSite(), DISPATCH, phase)
    assert list(replies) == ["setup", "share", "collect", "unmask"]
    assert_allowed(replies)
    for reply in replies["collect"].values():  # nothing but masked uint32 left
        assert set(reply.content.array_records) == {"fitres.parameters", ours.MASKED}
        assert not len(reply.content.array_records["fitres.parameters"])


def test_a_round_set_up_with_keys_sent_ahead_is_allowed():
    """Round 2 starts at share keys; every reply, the unmask replies with the
    next keys among them, passes the audit."""
    replies = our_round(FakeSite(), DISPATCH, "gan", rounds=2)
    assert_allowed(replies)
    for reply in replies["unmask"].values():
        record = reply.content.config_records[ours.RECORD]
        assert len(record[ours.NEXT_PK_MASK]) == len(record[ours.NEXT_PK_ENC]) == 32


def test_the_dispatch_mod_runs_secagg_plus_rounds_too():
    apps = {n: app_for(FakeSite(), DISPATCH) for n in (1, 2)}
    assert_allowed(secure_round(apps, "gan"))


def test_a_plain_train_message_is_refused_by_the_dispatch_mod():
    app = app_for(FakeSite(), DISPATCH)
    assert "SecureAggRefusal" in refusal(plain_fit(app, "gan"))
    both = fit_content("gan")
    both.config_records[ours.RECORD] = ConfigRecord({ours.STAGE: ours.SETUP})
    both.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({Key.STAGE: Stage.SETUP})
    reason = refusal(lambda: app(message(both, MessageType.TRAIN), context()))
    assert "SecureAggRefusal" in reason


def test_a_dicom_tag_value_is_refused_through_our_protocol():
    site = FakeSite(extra={"metrics": {"StudyDate": "20200301"}})
    replies = our_round(site, [audit_mod, secure_dispatch_mod], "gan")
    reasons = [refusal(r) for r in replies["collect"].values()]
    assert all("fitres.metrics" in r and "20200301" not in r for r in reasons)
    assert "unmask" not in replies  # the round stopped: nothing was unmasked


def test_a_pixel_array_is_refused_through_our_protocol():
    # an integer image is refused by the protocol's mod itself (not float)
    slice_u16 = np.zeros((64, 64), np.uint16)
    site = FakeSite(extra={"arrays": lambda a: [*a, slice_u16]})
    replies = our_round(site, [audit_mod, secure_dispatch_mod], "gan")
    assert "SecureAggRefusal" in refusal(replies["collect"][min(replies["collect"])])
    slice_f32 = np.zeros((64, 64), np.float32)
    slices = np.zeros((6, 64, 64), np.float32)
    for extra, phase in (
        ({"arrays": lambda a: [*a, slice_f32]}, "gan"),  # an extra image array
        ({"arrays": lambda a: [slices, a[1]]}, "moments"),  # slices in place of z
    ):
        # the outer audit alone: the layout and the chunks' length give it away
        replies = our_round(
            FakeSite(extra=extra), [audit_mod, secure_dispatch_mod], phase
        )
        reason = refusal(replies["collect"][min(replies["collect"])])
        assert ours.MASKED in reason and ours.RECORD in reason, reason
        # the inner audit stops it before masking
        replies = our_round(FakeSite(extra=extra), DISPATCH, phase)
        assert "refused" in refusal(replies["collect"][min(replies["collect"])])


def test_per_patient_scores_are_refused_through_our_protocol():
    scores = np.array([0.91, 0.12, 0.55])
    site = FakeSite(extra={"arrays": lambda a: [*a, scores]})
    for mods in ([audit_mod, secure_dispatch_mod], DISPATCH):
        replies = our_round(site, mods, "eval")
        reason = refusal(replies["collect"][min(replies["collect"])])
        assert "refused" in reason


def test_exception_text_stays_on_the_node_through_our_protocol(caplog):
    err = ValueError(f"/data/{PATIENT_ID}/IM0001.dcm: Modality is MR, expected CT")
    replies = our_round(FakeSite(extra={"raise": err}), DISPATCH, "gan")
    reason = refusal(replies["collect"][min(replies["collect"])])
    assert "ValueError" in reason and PATIENT_ID not in reason
    assert PATIENT_ID in caplog.text


def _tamper(stage: str, change):
    """A mod inside the outer audit that changes our protocol's reply in one
    stage, as a bug or a debug hook could."""

    def mod(msg, ctxt, call_next):
        asked = msg.content.config_records.get(ours.RECORD, {}).get(ours.STAGE)
        reply = call_next(msg, ctxt)
        if asked == stage:
            change(reply.content)
        return reply

    return mod


def _config(content):
    return content.config_records[ours.RECORD]


@pytest.mark.parametrize(
    ("stage", "change", "names"),
    [
        (ours.SETUP, lambda c: _config(c).__setitem__("debug", 1), ours.RECORD),
        (
            ours.SETUP,
            lambda c: _config(c).__setitem__(ours.PK_MASK, PATIENT_ID.encode() * 2),
            ours.PK_MASK,
        ),
        (
            ours.SHARE_KEYS,
            lambda c: _config(c).__setitem__(
                ours.NODES, [*_config(c)[ours.NODES][:-1], 4242]
            ),
            ours.NODES,
        ),
        (
            ours.SHARE_KEYS,
            lambda c: _config(c).__setitem__(
                ours.CIPHERTEXTS, [b"\0" * 4096 for _ in _config(c)[ours.NODES]]
            ),
            ours.CIPHERTEXTS,
        ),
        (
            ours.COLLECT,
            lambda c: c.array_records[ours.MASKED].__setitem__(
                ours.chunk_key(len(c.array_records[ours.MASKED])),
                Array(np.zeros(4096, np.uint32)),
            ),
            ours.MASKED,
        ),
        (
            ours.COLLECT,
            lambda c: c.array_records["fitres.parameters"].__setitem__(
                "0", Array(np.zeros(8, np.float32))
            ),
            "fitres.parameters",
        ),
        (
            ours.UNMASK,
            lambda c: _config(c).__setitem__(
                ours.SHARES, [b"\0" * 1024 for _ in _config(c)[ours.NODES]]
            ),
            ours.SHARES,
        ),
        (
            ours.UNMASK,
            lambda c: _config(c).__setitem__(ours.STAGE, ours.SETUP),
            ours.STAGE,
        ),
        (
            ours.UNMASK,
            lambda c: _config(c).__setitem__(ours.NEXT_PK_MASK, b"\0" * 1024),
            ours.NEXT_PK_MASK,
        ),
        (
            ours.UNMASK,
            lambda c: _config(c).__delitem__(ours.NEXT_PK_ENC),
            ours.NEXT_PK_ENC,
        ),
    ],
)
def test_our_protocol_records_outside_their_stage_rules_are_refused(
    stage, change, names
):
    mods = [audit_mod, _tamper(stage, change), secure_dispatch_mod, audit_mod]
    replies = our_round(FakeSite(), mods, "gan")
    reason = refusal(replies[STAGE_NAMES[stage]][min(replies[STAGE_NAMES[stage]])])
    assert names in reason, reason
    assert PATIENT_ID not in reason


# --- the baselines' records (common.evaluation.feature_kinds): the same rules, per kind


@pytest.mark.parametrize("phase", ["moments", "head", "eval"])
def test_every_kinds_records_through_secagg_plus_are_allowed(phase):
    kinds = feature_kinds.KINDS
    apps = {
        n: app_for(FakeSite(), [audit_mod, secaggplus_mod, audit_mod]) for n in (1, 2)
    }
    replies = secure_round(apps, phase, lambda: fit_content(phase, kinds=kinds))
    assert set(replies) == {"setup", "share", "collect", "unmask"}
    assert_allowed(replies)


def test_a_baselines_per_patient_array_is_refused():
    """A vector with one radiomics score per patient, added to an eval or
    head reply next to the allowed arrays, never leaves; nor does a
    radiomics feature matrix in place of the statistics."""
    kinds = feature_kinds.KINDS
    per_patient = np.array([0.91, 0.12, 0.55, 0.33])
    for phase in ("eval", "head"):
        app = app_for(
            FakeSite(extra={"arrays": lambda a: [*a, per_patient]}), [audit_mod]
        )
        outcome = lambda app=app, phase=phase: app(  # noqa: E731
            message(fit_content(phase, kinds=kinds), MessageType.TRAIN), context()
        )
        assert "fitres.parameters" in refusal(outcome)
    features = np.zeros((12, feature_kinds.dim("radiomics", Z_DIM)))  # 12 slices
    app = app_for(
        FakeSite(extra={"arrays": lambda a: [*a[:-4], features, *a[-3:]]}),
        [audit_mod],
    )
    assert "shape" in refusal(
        lambda: app(
            message(fit_content("head", kinds=kinds), MessageType.TRAIN), context()
        )
    )


def test_the_external_sites_baseline_report_passes_and_patient_values_do_not():
    kinds = feature_kinds.KINDS
    config = {feature_kinds.CONFIG_KEY: ",".join(kinds)}
    ins = compat.evaluateins_to_recorddict(
        EvaluateIns(ndarrays_to_parameters(WEIGHTS), config), True
    )
    app = app_for(FakeSite("external"), [audit_mod])
    reply = app(message(ins, MessageType.EVALUATE), context())
    assert not reply.has_error(), reply.error
    assert (
        "paired/radiomics-lm/patient/diff"
        in (reply.content.config_records["evaluateres.metrics"])
    )
    # each patient's score difference, under the paired key or a new one
    diffs = [0.2, -0.1, 0.05, 0.4]
    for extra in (
        {"paired/radiomics-lm/patient/diff": diffs},
        {"paired/radiomics-lm/patient/scores": diffs},
        {"radiomics-lm/patient/coarse_pos": histogram(np.array(diffs)).tolist()},
    ):
        app = app_for(FakeSite("external", {"metrics": extra}), [audit_mod])
        reason = refusal(
            lambda app=app: app(message(ins, MessageType.EVALUATE), context())
        )
        assert "evaluateres.metrics" in reason
    # a report of a baseline the server did not ask for
    plain = compat.evaluateins_to_recorddict(
        EvaluateIns(ndarrays_to_parameters(WEIGHTS), {}), True
    )
    extra = {"radiomics-lm/patient/auc": 0.9}
    app = app_for(FakeSite("external", {"metrics": extra}), [audit_mod])
    assert "evaluateres.metrics" in refusal(
        lambda: app(message(plain, MessageType.EVALUATE), context())
    )


class _KindBlindSite(FakeSite):
    """Replies with the model's arrays whatever kinds the message names."""

    def fit(self, parameters, config):
        arrays, metrics = phase_reply(config["phase"], parameters)
        return arrays, 12, metrics


def test_unknown_feature_kinds_are_refused():
    app = app_for(_KindBlindSite(), [audit_mod])
    content = fit_content("moments", kinds=("model", "pixels"))
    assert "feature kinds" in refusal(
        lambda: app(message(content, MessageType.TRAIN), context())
    )
