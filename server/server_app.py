"""Flower ServerApp: (1) BigBiGAN rounds with secure aggregation, (2) the linear
heads from securely pooled statistics, (3) evaluation of every site from score
histograms. Every secure round runs Flower's SecAgg+ or our protocol
(run config `secure-aggregation`). Phases 2 and 3 fit and evaluate the same
heads (lm and ridge) on the model's features and on two baselines' (first-order
radiomics, the untrained encoder: `common.evaluation.feature_kinds`) in the same
rounds."""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.serverapp import Grid, ServerApp

from common.config import FEDERATED_PARTS, RunConfig
from common.evaluation import feature_kinds
from common.evaluation.metrics import histogram_keys
from common.model.grids import save_samples
from common.model.model_parts import federated_indices, floor_variances, merge, select
from server import tensorboard
from server.checkpointing import (
    ServerCheckpoint,
    config_hash,
    load_checkpoint,
    save_checkpoint,
    stable_config,
)
from server.evaluation import cutoffs, summarise
from server.evaluation_round import _evaluate_all, _external_split  # noqa: F401
from server.phase_strategy import PhaseStrategy
from server.privacy_summary import dp_summary, payload_bytes
from server.progress import PROGRESS, gan_round_line, phase_line
from server.prompt_grid import PromptGrid
from server.roster import admit_rostered, load_roster, round_max_weight
from server.run_dir import write_config, write_run
from server.server_optimizer import initial_state, server_step
from server.site_exchanges import (  # noqa: F401  (re-exported)
    _ask_every_node,
    _query_roles,
    _secure_round,
    _wait_for_nodes,
    _workflow,
    quantisation_step,
    wire_figures,
)
from server.site_properties import shortcut_lines, site_refusals, site_shortcuts
from server.timing import summarise_timing
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
    grid = PromptGrid(grid, config.secagg.poll_interval)
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
        details: dict[int, dict] = {}
        claims: dict = {}  # each node's signed count, for the roster
        roles = _query_roles(
            grid, flat, config.secagg.timeout, details=details, claims=claims
        )
        refusals = site_refusals(roles, details, config.train.min_patients_per_class)
        if refusals:  # the same check `simulate` makes before Flower
            for line in refusals:  # one line per site in the SuperLink's log
                log.error("site refused: %s", line)
            raise RuntimeError("sites cannot take part:\n" + "\n".join(refusals))
        shortcuts = site_shortcuts(roles, details)
        for line in shortcut_lines({"site_shortcuts": shortcuts}):
            log.warning("%s", line)
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
        from common.model.checkpoint import initial_model

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
        metrics["site_shortcuts"] = shortcuts
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
    from common.evaluation.linear_head import (
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
    from common.evaluation.linear_head import to_raw

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


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_flat(dict(context.run_config))
    run_federation(grid, context, config, Path(config.out_dir))
