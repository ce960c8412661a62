"""Flower ServerApp: (1) BigBiGAN rounds with secure aggregation, (2) the linear
heads from securely pooled statistics, (3) evaluation of every site from score
histograms. Every secure round runs Flower's SecAgg+ or our protocol
(run config `secure-aggregation`). Phases 2 and 3 fit and evaluate the same
heads (lm and ridge) on the model's features and on two baselines' (first-order
radiomics, the untrained encoder: `common.feature_kinds`) in the same rounds."""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.common import EvaluateIns, GetPropertiesIns, ndarrays_to_parameters
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid, ServerApp

from common import feature_kinds
from common.config import FEDERATED_PARTS, RunConfig
from common.grids import save_samples
from common.metrics import histogram_keys
from common.model_parts import federated_indices, floor_variances, merge, select
from common.secure_agg.quantize import FixedPoint
from common.site_evaluation import read_heads_report
from server import tensorboard
from server.aggregate_checks import check_aggregate, check_declared
from server.checkpointing import (
    ServerCheckpoint,
    config_hash,
    load_checkpoint,
    save_checkpoint,
    stable_config,
)
from server.evaluation import cutoffs, summarise
from server.phase_strategy import PhaseStrategy
from server.privacy_summary import dp_summary, payload_bytes
from server.progress import PROGRESS, gan_round_line, phase_line
from server.roster import (
    admit_rostered,
    claim_of,
    guarded,
    load_roster,
    round_max_weight,
)
from server.run_dir import write_config, write_run
from server.secure_agg_workflow import SecureAggWorkflow
from server.server_optimizer import initial_state, server_step
from server.timing import round_timing, summarise_timing
from server.transport import downcast, lane_bits, next_clips

log = logging.getLogger("flwr")
# score-histogram counts never reach 2**20 per bin, and the step is a power of two
# at most 1 per count, so the rounded sum is exact: SecAgg+ with 28-bit
# quantisation steps 2**-7; ours steps 2**(ceil(log2(n + 1)) - 11) for n sites
# (2**-9 for 2 or 3 sites, 2**-7 up to 15, still <= 1 up to 2047 sites)
EVAL_CLIP = float(2**20)
# a site's per-feature mean and mean square of its features; loose, so features
# far from standardised (tests/test_secagg.py: mean 40, SD 7) pass unclipped.
# The variance is their difference, floored at 8 quantisation steps (SD 0.024
# under SecAgg+ at 28 bits), close to an untrained tiny encoder's feature SDs
# (~0.025): a known limit of one-pass moments, logged when moments are clipped.
MOMENTS_CLIP = 1e4


def run_federation(grid: Grid, context: Context, config: RunConfig, out: Path) -> dict:
    """All three phases; returns the metrics written to the run directory."""
    flat = config.to_flat()
    strategy = PhaseStrategy(set())
    # read first: a bad roster stops the run before any site is asked
    strategy.roster = load_roster(config.roster_file) if config.roster_file else None
    legacy = LegacyContext(
        context, ServerConfig(num_rounds=config.gan_rounds), strategy=strategy
    )
    thread, stop, ready = start_update_client_manager_thread(
        grid, legacy.client_manager
    )
    ready.wait()
    try:
        _wait_for_nodes(grid, len(config.site_roster()), config.secagg.timeout)
        claims: dict = {}  # each node's signed count, for the roster
        roles = _query_roles(grid, flat, config.secagg.timeout, claims)
        train = {n: size for n, (r, size) in roles.items() if r == "train"}
        admitted, refused = admit_rostered(
            strategy.roster, context.run_id, train, claims, config.max_site_weight
        )
        for line in refused:  # never trained, never in a sum
            log.error("training site refused: %s", line)
        strategy.train_node_ids = set(admitted)
        sizes = list(admitted.values())
        top = round_max_weight(strategy, sizes)  # the roster's, or the largest n
        log.info(
            "federation: %d training sites, %d held out for validation",
            len(sizes),
            sum(r != "train" for r, _ in roles.values()),
            extra=PROGRESS,
        )
        if len(strategy.train_node_ids) < 2:
            raise RuntimeError(
                "secure aggregation needs at least 2 training sites, "
                f"got roles {sorted(r for r, _ in roles.values())}"
            )
        from common.checkpoint import initial_model

        model = initial_model(config)
        initial = model.get_weights()
        shared = federated_indices(model, config.federated_parts, config.strategy)
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord()
        state = _resume(config, initial, shared)
        write_config(out, config)
        state = _gan_rounds(grid, legacy, strategy, config, out, model, state, sizes)
        weights, history, secure_rounds = state.weights, state.history, state.round
        gan_rounds = config.gan_rounds if config.trains_encoder else 0
        # FedBN: a site completes its encoder with its own kept BatchNorm arrays
        # of the last BigBiGAN round, named by run token and round
        flat = {**flat, "run-token": state.token, "gan-round": gan_rounds}
        fed = select(weights, shared)  # all that leaves the server from here on
        started = time.monotonic()
        # every head round carries the model's features and both baselines'
        kinds = feature_kinds.KINDS
        heads = feature_kinds.head_names(kinds)
        flat = {**flat, feature_kinds.CONFIG_KEY: ",".join(kinds)}
        fits = _federated_lm(
            grid, legacy, strategy, config, flat, gan_rounds + 1, fed, top, kinds
        )
        coef, head_scale = fits.coefs[feature_kinds.MAIN], fits.scales["model"]
        secure_rounds += 2
        logit = _federated_logistic(
            grid,
            legacy,
            strategy,
            config,
            flat,
            gan_rounds + 3,
            fed,
            top,
            head_scale,
        )
        secure_rounds += config.logit_rounds
        log.info(
            phase_line(
                "linear head",
                time.monotonic() - started,
                f"lm: 2 secure rounds; logistic: {config.logit_rounds}",
            ),
            extra=PROGRESS,
        )
        started = time.monotonic()
        # training sites' histograms of every head: securely summed, never
        # seen one by one (one round for all heads)
        strategy.config = {**flat, "phase": "eval", "head-clip": EVAL_CLIP}
        coefs = [fits.coefs[h] for h in heads]
        mean_hist = _secure_round(
            grid,
            legacy,
            gan_rounds + 3 + config.logit_rounds,
            fed + coefs,
            config,
            clip=EVAL_CLIP,
            max_weight=1,
        )
        secure_rounds += 1
        n_sites = len(strategy.site_metrics)  # sites that completed the round
        keys = histogram_keys()
        head_hist = {
            head: {
                "training sites (secure sum)": {
                    key: np.rint(np.asarray(h, np.float64) * n_sites).astype(np.int64)
                    for key, h in zip(
                        keys,
                        mean_hist[i * len(keys) : (i + 1) * len(keys)],
                        strict=True,
                    )
                }
            }
            for i, head in enumerate(heads)
        }
        site_hist = head_hist[feature_kinds.MAIN]
        # the external site: its own metrics at each head's validation
        # cut-offs, and the paired differences model minus baseline, as aggregates
        cuts = {head: cutoffs(h) for head, h in head_hist.items()}
        eval_config = {**flat}
        for head, cut in cuts.items():
            suffix = "" if head == feature_kinds.MAIN else f"/{head}"
            eval_config[f"threshold{suffix}"] = cut["patient"]
            eval_config[f"slice-threshold{suffix}"] = cut["slice"]
        reports = _evaluate_all(grid, fed + coefs, eval_config, config.secagg.timeout)
        external, paired = _external_split(reports, kinds)
        coarse = external[feature_kinds.MAIN][1] if external else {}
        summaries = {
            head: summarise(h, external=external[head][0] if external else None)
            for head, h in head_hist.items()
        }
        metrics = summaries[feature_kinds.MAIN]
        log.info(
            phase_line(
                "evaluation",
                time.monotonic() - started,
                "training sites: 1 secure round; held-out site: its own metrics",
            ),
            extra=PROGRESS,
        )
        metrics["model_ridge"] = summaries["model-ridge"]
        metrics["ridge"] = fits.ridge
        metrics["baselines"] = {
            kind: {head: summaries[f"{kind}-{head}"] for head in feature_kinds.HEADS}
            | {
                "external_difference": {
                    head: paired.get(f"{kind}-{head}") for head in feature_kinds.HEADS
                }
            }
            for kind in feature_kinds.BASELINES
        }
        metrics["secure_eval_sites"] = n_sites
        metrics["plain_eval_roles"] = sorted({roles[n][0] for n in reports})
        metrics["rounds"] = history
        metrics["secagg_rounds"] = secure_rounds
        metrics["train_message_roles"] = sorted(
            {roles[n][0] for n in strategy.train_messages_to}
        )
        metrics["weights_changed"] = float(
            max(np.abs(a - b).max() for a, b in zip(weights, initial, strict=True))
        )
        metrics["federated_parts"] = config.federated_parts
        metrics["strategy"] = config.strategy
        metrics["secure_aggregation"] = config.secure_aggregation
        metrics["payload"] = payload_bytes(
            fed, config.secure_aggregation, config.transport, strategy.wire
        )
        metrics["timing"] = summarise_timing(strategy.timings)
        metrics["dp"] = dp_summary(config, gan_rounds)
        write_run(
            out,
            config,
            metrics,
            weights,
            coef,
            site_hist,
            head_scale,
            logit=logit,
            coarse={"external": coarse} if coarse else None,
            heads=fits.coefs,
        )
        tensorboard.log_results(out, metrics, gan_rounds)
        return metrics
    finally:
        stop.set()
        thread.join()


def _resume(
    config: RunConfig, initial: list[np.ndarray], shared: list[int]
) -> ServerCheckpoint:
    """Where the BigBiGAN rounds start: round 0 from the initial weights with a
    new run token, or the checkpoint of `config.resume`."""
    if not config.resume:
        token = secrets.token_hex(8)  # names the sites' kept parts for this run
        opt_state = initial_state(config, select(initial, shared))
        return ServerCheckpoint(
            0,
            initial,
            [],
            config_hash(config),
            token,
            opt_state,
            settings=stable_config(config),
        )
    checkpoint = load_checkpoint(Path(config.resume), config)
    if [w.shape for w in checkpoint.weights] != [w.shape for w in initial]:
        raise ValueError(
            f"{config.resume}: the checkpoint's weights do not fit the "
            f"{config.preset} model"
        )
    log.info("resuming %s after BigBiGAN round %d", config.resume, checkpoint.round)
    return checkpoint


def _gan_rounds(grid, legacy, strategy, config, out, model, state, sizes):
    """The BigBiGAN rounds after `state.round`, each one SecAgg+ round over the
    federated parts, checkpointed; returns the state after the last (`round` is
    then the number of SecAgg+ rounds run, resumed ones included)."""
    flat = config.to_flat()
    shared = federated_indices(model, config.federated_parts, config.strategy)
    gan_rounds = config.gan_rounds if config.trains_encoder else 0
    private = config.dp_noise_multiplier > 0
    weights, history, opt_state = state.weights, state.history, state.optimizer_state
    trainable = [model.variables[i].trainable for i in shared]
    half = config.transport == "float16"
    clips: list[float] | None = None  # 16-bit lanes' clips (server.transport)
    top = round_max_weight(strategy, sizes)
    for rnd in range(state.round + 1, gan_rounds + 1):
        strategy.config = {
            **flat,
            "phase": "gan",
            "server-round": rnd,
            "run-token": state.token,
            "dp-sites": len(sizes),
        }
        sent = select(weights, shared)  # the float32 master stays here
        delta = _secure_round(
            grid,
            legacy,
            rnd,
            downcast(sent) if half else sent,
            config,
            clip=config.secagg.delta_clip,
            max_weight=1 if private else top,  # DP: unweighted mean
            lanes=lane_bits(clips) if half else 32,
            tensor_clips=clips if half else None,
        )
        delta = [d.astype(np.float32) for d in delta]
        wire = strategy.wire[-1] if strategy.wire else {}  # this round's, if ours
        if half:
            clips = next_clips(delta, config.secagg.delta_clip)
        new, opt_state = server_step(
            config, select(weights, shared), delta, trainable, opt_state
        )
        new = floor_variances(model, shared, new)
        weights = merge(weights, shared, new)
        entry = {"round": rnd, "sites": len(strategy.site_metrics)}
        if not private:  # with DP the sites send no losses (they are not noised)
            entry |= {
                k: float(np.mean([m[k] for m in strategy.site_metrics]))
                for k in ("d_loss", "e_loss", "g_loss")
            }
            entry["clipped"] = sum(int(m["clipped"]) for m in strategy.site_metrics)
            if half:  # values clipped to the 16-bit lanes' tensor clips
                entry["lane_bits"] = wire.get("lane_bits", 32)
                entry["clipped"] += wire.get("clipped", 0)
            if entry["clipped"]:
                log.warning("round %d: delta values clipped: %s", rnd, entry)
        history.append(entry)
        state = dataclasses.replace(
            state,
            round=rnd,
            weights=weights,
            history=history,
            optimizer_state=opt_state,
        )
        save_checkpoint(out, state)
        samples = None
        if "g" in FEDERATED_PARTS[config.federated_parts]:
            model.set_weights(weights)  # samples G(z): no patient data involved
            samples = out / "samples" / f"round_{rnd:03d}.png"
            save_samples(samples, model)
        tensorboard.log_round(out, entry, samples)
        log.info("round %d: %s", rnd, entry)
        seconds = strategy.timings[-1]["seconds"] if strategy.timings else math.nan
        up = (
            wire.get("up_bytes")
            or payload_bytes(sent, config.secure_aggregation, config.transport)[
                "up_bytes"
            ]
        )
        log.info(gan_round_line(entry, gan_rounds, seconds, up), extra=PROGRESS)
    return state


@dataclasses.dataclass
class HeadFits:
    """The linear heads of every feature kind, fitted from pooled statistics."""

    coefs: dict[str, np.ndarray]  # per head name ("model-lm"): raw coefficients
    scales: dict[str, tuple[np.ndarray, np.ndarray]]  # per kind: mean, SD
    ridge: dict[str, dict]  # per kind: lambda chosen, grid, validation errors


def _federated_lm(
    grid, legacy, strategy, config, flat, rnd, weights, max_weight, kinds=("model",)
) -> HeadFits:
    """The paper's least-squares head and a ridge head per feature kind, in two
    secure rounds for all kinds (see linear_head): pooled feature moments,
    then statistics of standardised features, of training and of validation
    slices (the latter choose the ridge strength)."""
    from common.linear_head import (
        RIDGE_GRID,
        STATS_CLIP,
        pooled_scale,
        rescale,
        ridge_path,
        solve,
        to_raw,
    )

    flat = {**flat, feature_kinds.CONFIG_KEY: ",".join(kinds)}
    strategy.config = {**flat, "phase": "moments", "head-clip": MOMENTS_CLIP}
    moments = _secure_round(
        grid, legacy, rnd, weights, config, clip=MOMENTS_CLIP, max_weight=max_weight
    )
    clipped = sum(int(m["clipped"]) for m in strategy.site_metrics)
    if clipped:
        log.warning(
            "moments: %d feature moments clipped at %g (features far from the "
            "N(0, 1) code scale): the head's standardisation is biased",
            clipped,
            MOMENTS_CLIP,
        )
    # the variance comes from a difference of quantised moments: floor it at
    # the quantisation error, so a feature's SD is never underestimated
    step = quantisation_step(config, MOMENTS_CLIP, len(strategy.train_node_ids))
    scales = {
        kind: pooled_scale(
            *(np.asarray(m, np.float64) for m in moments[2 * i : 2 * i + 2]),
            variance_floor=8 * step,
        )
        for i, kind in enumerate(kinds)
    }
    strategy.config = {**flat, "phase": "head"}
    stats = _secure_round(
        grid,
        legacy,
        rnd + 1,
        weights + [a for kind in kinds for a in scales[kind]],
        config,
        clip=STATS_CLIP,
        max_weight=max_weight,
    )
    clipped = sum(int(m["clipped"]) for m in strategy.site_metrics)
    if clipped:
        log.warning(
            "head: %d standardised feature values beyond 8 SD were clipped to 8 SD "
            "before the secure sum (SecAgg+ needs a fixed range): such outliers "
            "weigh a little less in the fit; the head is still the pooled "
            "least-squares solution of the clipped features",
            clipped,
        )
    fits = HeadFits({}, scales, {})
    for i, kind in enumerate(kinds):
        gram, moment, val_gram, val_moment = (
            np.asarray(a, np.float64) for a in stats[4 * i : 4 * i + 4]
        )
        lam, errors = ridge_path(gram, moment, val_gram, val_moment)
        fits.ridge[kind] = {
            "lambda": lam,
            "grid": list(RIDGE_GRID),
            "val_correlation": errors,
        }
        fits.coefs[f"{kind}-lm"] = to_raw(
            solve(gram, moment, config.head_ridge), *scales[kind]
        )
        # rescaled to the label's scale: a strong ridge's scores would
        # otherwise fall within one bin of the evaluation grid
        ridge = rescale(solve(gram, moment, lam), gram, moment)
        fits.coefs[f"{kind}-ridge"] = to_raw(ridge, *scales[kind])
    return fits


def _federated_logistic(
    grid, legacy, strategy, config, flat, rnd, weights, max_weight, scale
):
    """Logistic regression on the standardised features, for comparison with the
    paper's lm: each round, sites take local gradient steps from the global head
    and SecAgg+ averages their changes (FedAvg). Returns raw-feature coefficients."""
    from common.linear_head import to_raw

    mean, std = scale
    beta = np.zeros(len(mean) + 1)
    strategy.config = {**flat, "phase": "logit"}
    for i in range(config.logit_rounds):
        delta = _secure_round(
            grid,
            legacy,
            rnd + i,
            weights + [mean, std, beta],
            config,
            clip=config.secagg.delta_clip,
            max_weight=max_weight,
        )
        beta = beta + np.asarray(delta[0], np.float64)
    return to_raw(beta, mean, std)


def _wait_for_nodes(grid: Grid, expected: int, timeout: float) -> None:
    """Wait until the roster's nodes are connected, or stop with a clear error."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(list(grid.get_node_ids()))} of {expected} sites connected "
                f"within {timeout:.0f}s"
            )
        time.sleep(1.0)


def _ask_every_node(
    grid: Grid, make_content, message_type: str, timeout: float
) -> list[Message]:
    """Send one message to every node and wait at most `timeout` seconds; a node
    that errs or stays silent stops the run, named (no waiting forever)."""
    messages = [
        Message(content=make_content(), dst_node_id=n, message_type=message_type)
        for n in grid.get_node_ids()
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error}")
    silent = {m.metadata.dst_node_id for m in messages} - {
        r.metadata.src_node_id for r in replies
    }
    if silent:
        raise RuntimeError(
            f"node(s) {sorted(silent)} did not answer a {message_type} message "
            f"within secagg-timeout = {timeout:.0f} s"
        )
    return replies


def _query_roles(
    grid: Grid, flat: dict, timeout: float, claims: dict | None = None
) -> dict[int, tuple[str, int]]:
    """Ask each node its role (train/external) and training-set size (and
    into `claims` its signed claim of that size, for the roster)."""
    ins = GetPropertiesIns(dict(flat))
    roles = {}
    for reply in _ask_every_node(
        grid,
        lambda: compat.getpropertiesins_to_recorddict(ins),
        MessageTypeLegacy.GET_PROPERTIES,
        timeout,
    ):
        props = compat.recorddict_to_getpropertiesres(reply.content).properties
        # n_train as sent: `admit_sites` refuses what is not a usable count
        roles[reply.metadata.src_node_id] = (str(props["role"]), props["n_train"])
        if claims is not None:
            claims[reply.metadata.src_node_id] = claim_of(reply.content)
    log.info("sites: %s", {n: r for n, (r, _) in roles.items()})
    return roles


def quantisation_step(config: RunConfig, clip: float, n_sites: int) -> float:
    """One site's quantisation step for values clipped to +-clip under the run's
    protocol: SecAgg+ splits [-clip, clip] into 2**quantization-bits levels;
    ours keeps headroom for the sum of `n_sites` in 32 bits."""
    if config.secure_aggregation == "fedbigbigan":
        return FixedPoint(clip, max(n_sites, 1)).step
    return 2 * clip / 2**config.secagg.quantization_bits


def _workflow(
    config: RunConfig,
    clip: float,
    max_weight: float,
    lanes: int = 32,
    tensor_clips: list[float] | None = None,
):
    """The secure round's workflow for the run's protocol (same legacy use);
    16-bit lanes with `tensor_clips` are ours only (config validation)."""
    if config.secure_aggregation == "fedbigbigan":
        # precision follows from the number of sites: no quantization range
        return SecureAggWorkflow(
            config.secagg.num_shares,
            config.secagg.reconstruction_threshold,
            max_weight=float(max_weight),
            clipping_range=float(clip),
            timeout=config.secagg.timeout,
            lane_bits=lanes,
            tensor_clips=tensor_clips if lanes == 16 else None,
        )
    if lanes != 32:
        raise ValueError("16-bit lanes need secure-aggregation = 'fedbigbigan'")
    return SecAggPlusWorkflow(
        num_shares=config.secagg.num_shares,
        reconstruction_threshold=config.secagg.reconstruction_threshold,
        max_weight=float(max_weight),
        clipping_range=float(clip),
        quantization_range=2**config.secagg.quantization_bits,
        timeout=config.secagg.timeout,
    )


def _secure_round(
    grid, legacy, rnd, weights, config, clip, max_weight, lanes=32, tensor_clips=None
):
    """One secure round (SecAgg+ or ours, see `secure-aggregation`) over the
    training sites; returns the weighted mean. Ours also appends the round's
    wire figures (bytes per site each way, lanes, clipped values) to
    `legacy.strategy.wire`."""
    legacy.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND] = rnd
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(weights), keep_input=True
    )
    legacy.strategy.aggregate = None
    legacy.strategy.declared = {}
    workflow = _workflow(config, clip, max_weight, lanes, tensor_clips)
    started = time.monotonic()
    workflow(guarded(grid, legacy, rnd), legacy)  # the roster's checks, if any
    stats = getattr(workflow, "last_stats", None)  # SecAgg+ has none
    if legacy.strategy.aggregate is not None and stats is not None:
        legacy.strategy.wire.append(
            wire_figures(stats, rnd, str(legacy.strategy.config.get("phase")), weights)
        )
    if legacy.strategy.aggregate is not None:
        legacy.strategy.timings.append(
            round_timing(
                str(legacy.strategy.config.get("phase")),
                rnd,
                time.monotonic() - started,
                legacy.strategy.site_metrics,
            )
        )
    halted = getattr(workflow, "last_error", None)  # ours says why
    if legacy.strategy.aggregate is None and halted:
        raise RuntimeError(
            f"round {rnd}: secure aggregation ({config.secure_aggregation}) did "
            f"not complete: {halted}. The last completed round is in "
            "checkpoint.npz: fix the sites and resume."
        )
    if legacy.strategy.aggregate is None:
        raise RuntimeError(
            f"round {rnd}: secure aggregation ({config.secure_aggregation}) did "
            "not complete: fewer training sites answered than it needs to unmask "
            "the sum, or a site refused its part (reconstruction "
            f"threshold {config.secagg.reconstruction_threshold} of the sites, at "
            f"least 2) within secagg-timeout = {config.secagg.timeout:.0f} s; "
            "see the log for the sites that dropped. The last completed round is "
            "in checkpoint.npz: fix the sites and resume."
        )
    # what the server can check of a sum it cannot see into (AggregateRejected
    # stops the run before the round is applied or checkpointed)
    check_declared(legacy.strategy.declared, max_weight, rnd)
    check_aggregate(legacy.strategy.aggregate, clip, rnd, tensor_clips)
    return legacy.strategy.aggregate


def wire_figures(stats, rnd: int, phase: str, sent: list[np.ndarray]) -> dict:
    """One round of ours, as payload reports it: measured bytes per site each
    way (all four stages: keys, shares, arrays, headers), and their ratio to
    the float32 size of the arrays the server sent."""
    f32 = 4 * sum(int(np.asarray(a).size) for a in sent)
    down = sum(stats.bytes_down.values()) / max(stats.asked, 1)
    up = sum(stats.bytes_up.values()) / max(stats.uploaded, 1)
    return {
        "round": rnd,
        "phase": phase,
        "lane_bits": stats.lane_bits,
        "down_dtype": str(np.asarray(sent[0]).dtype) if sent else "float32",
        "down_bytes": round(down),
        "up_bytes": round(up),
        "down_ratio": down / f32 if f32 else 0.0,
        "up_ratio": up / f32 if f32 else 0.0,
        "clipped": stats.clipped,
    }


def _evaluate_all(
    grid: Grid, arrays: list[np.ndarray], config: dict, timeout: float
) -> dict:
    """Evaluate messages to every node; only external sites reply, each with its
    own metrics as aggregates (a lone site's histogram cannot hide in a sum)."""
    ins = EvaluateIns(ndarrays_to_parameters(arrays), dict(config))
    out = {}
    for reply in _ask_every_node(
        grid,
        lambda: compat.evaluateins_to_recorddict(ins, True),
        MessageType.EVALUATE,
        timeout,
    ):
        # reports hold lists, which legacy EvaluateRes cannot: read the record
        metrics = reply.content.config_records["evaluateres.metrics"]
        if metrics:  # training sites answer empty: theirs went through SecAgg+
            out[reply.metadata.src_node_id] = dict(metrics)
    return out


def _external_split(reports: dict, kinds: tuple[str, ...]) -> tuple[dict | None, dict]:
    """Per head, the external split's metrics and coarse histograms from the one
    external site's report, and its paired differences model minus baseline;
    (None, {}) for a federation without an external site."""
    if not reports:
        return None, {}
    if len(reports) > 1:
        raise RuntimeError(
            f"{len(reports)} external sites answered (nodes {sorted(reports)}); "
            "one external site per run is supported: their metrics cannot be "
            "pooled without their scores"
        )
    ((node, record),) = reports.items()
    try:
        return read_heads_report(record, kinds)
    except ValueError as err:
        raise RuntimeError(f"external site (node {node}): {err}") from err


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_flat(dict(context.run_config))
    run_federation(grid, context, config, Path(config.out_dir))
