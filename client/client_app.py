"""Flower ClientApp: a hospital node. Trains locally, sends only masked weight
deltas, pooled statistics and score histograms through secure aggregation
(every train message: Flower's SecAgg+ or ours, whichever the server runs),
and, at the external site alone, its metrics as aggregates. Never pixels, tags
or per-patient scores. Head and evaluation phases serve every feature kind the
server names (the model's and the baselines': `common.evaluation.feature_kinds`)."""

from __future__ import annotations

import resource
import time
import zlib
from logging import WARNING

import numpy as np
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import Context
from flwr.common.logger import log

from client import worker_protocol
from client.audit_mod import audit_mod
from client.local_parts import LocalParts
from client.roster_signing import roster_signing_mod
from client.secure_dispatch_mod import secure_dispatch_mod
from client.site import Site, cache_dir, resolve_site, site_data
from common.config import FEDERATED_PARTS, RunConfig
from common.evaluation import feature_kinds
from common.evaluation.linear_head import (
    feature_moments,
    logistic_steps,
    patient_means,
    predict,
    standardize,
    standardized_statistics,
    validation_statistics,
)
from common.evaluation.metrics import (
    GRID_HIGH,
    GRID_LOW,
    bin_edges,
    histogram,
    histogram_keys,
)
from common.evaluation.roc_stats import paired_delong, patient_score
from common.evaluation.site_evaluation import heads_report, paired_names
from common.model.model_parts import federated_indices, local_indices, merge, select
from common.privacy.dp import clip_and_noise

_MODELS: dict[tuple, tuple] = {}
# not part of the run config: set by the server per message
SERVER_KEYS = (
    "phase",
    "head-clip",
    "server-round",
    "threshold",
    "slice-threshold",
    "run-token",
    "dp-sites",
    "gan-round",
    feature_kinds.CONFIG_KEY,
)
# per-head cut-offs of the baselines' heads ("threshold/radiomics-lm", ...)
SERVER_PREFIXES = ("threshold/", "slice-threshold/")


def _model_and_initial(config: RunConfig):
    """One BigBiGAN per process (its traced step is reused across rounds), and
    its initial weights: where the parts a site keeps start from."""
    from common.model.gan_training import BigBiGAN

    key = (config.preset, config.seed, config.devices)
    if key not in _MODELS:
        model = BigBiGAN(config.model, seed=config.seed, devices=config.devices)
        _MODELS[key] = (model, model.get_weights())
    return _MODELS[key]


def _model(config: RunConfig, federated: list[np.ndarray] | None = None):
    """The process's model with the federated arrays set (the parts a site keeps
    at their initial values: only E matters outside the BigBiGAN rounds)."""
    model, initial = _model_and_initial(config)
    if federated is not None:
        indices = federated_indices(model, config.federated_parts, config.strategy)
        model.set_weights(merge(initial, indices, list(federated)))
    return model


def _site_model(run: RunConfig, site, config: dict, federated: list, data: dict):
    """The model a site scores with. Under FedBN the global arrays lack every
    BatchNorm layer's: a training site adds its own from the last BigBiGAN
    round; the external site, which has none, estimates E's statistics on its
    own slices (AdaBN)."""
    model = _model(run, federated)
    last = int(config.get("gan-round", 0))
    if run.strategy != "fedbn" or last == 0:
        return model
    if site.role == "external":
        model.adapt_batchnorm(data["external"].images)
        return model
    store = LocalParts(cache_dir(site, run) / "local-model", str(config["run-token"]))
    own = store.load(last)
    if own is None:
        raise RuntimeError(
            f"{site.name}: FedBN: this site's BatchNorm arrays of round {last} "
            f"are not in {store.directory}; they are written by the site's own "
            "BigBiGAN rounds: was the node's cache-dir changed during the run?"
        )
    kept = local_indices(model, run.federated_parts, run.strategy)
    model.set_weights(merge(model.get_weights(), kept, own))
    return model


def clip_for_secagg(arrays: list[np.ndarray], limit: float) -> tuple[list, int]:
    """SecAgg+ clips silently (ours only logs it); clip here instead and count
    what was clipped."""
    clipped = sum(int((np.abs(a) > limit).sum()) for a in arrays)
    return [np.clip(a, -limit, limit) for a in arrays], clipped


def node_cost(started: float, worker_peak_mb: float = 0.0) -> dict[str, float]:
    """This message's seconds on the node (data, model, work) and the peak memory
    of the process that worked (this one, or the site worker): the server sets
    them against its round's wall time."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "seconds": time.perf_counter() - started,
        "peak-rss-mb": max(peak_kb / 1024, worker_peak_mb),
    }


def run_config_of(config: dict) -> RunConfig:
    """The run config of a message's config (the server's own keys left out)."""
    return RunConfig.from_flat(
        {
            k: v
            for k, v in config.items()
            if k not in SERVER_KEYS and not k.startswith(SERVER_PREFIXES)
        }
    )


def _on_worker(
    site: Site, op: str, node_config: dict, parameters: list, config: dict
) -> worker_protocol.WorkerReply | None:
    """The node's site worker's reply to this message, or None: no worker is
    configured or reachable, and this process does the work itself."""
    if site.worker_socket is None:
        return None
    return worker_protocol.request(
        site.worker_socket, op, node_config, parameters, config
    )


class HospitalClient(NumPyClient):
    def __init__(self, node_config: dict):
        self.node_config = dict(node_config)

    def _setup(self, config: dict):
        run = run_config_of(config)
        site = resolve_site(self.node_config, run)
        return run, site, site_data(site, run)

    def get_properties(self, config):
        run, site, data = self._setup(config)
        n = len(data["train"]) if site.role == "train" else 0
        from client.site_properties import site_properties

        return {"role": site.role, "n_train": n, **site_properties(site, run, data)}

    def fit(self, parameters, config):
        started = time.perf_counter()
        run = run_config_of(config)
        site = resolve_site(self.node_config, run)
        if site.role != "train":
            raise RuntimeError(f"{site.name} is an external site and never trains")
        reply = _on_worker(site, "fit", self.node_config, parameters, config)
        if reply is None:
            arrays, n, metrics = self.fit_here(parameters, config)
            worker_peak = 0.0
        else:
            arrays, n, metrics = reply.arrays, reply.n, reply.metrics
            worker_peak = float(reply.worker.get("peak-rss-mb", 0.0))
        # again: SecAgg+ quantises the reply with NumPy's global generator after
        # this returns (ours seeds its rounding generator from it), and building
        # a model (Keras reseeds it) happens in a fresh process but not in a
        # reused one
        _seed_secagg_rounding(run.seed, site.name, config)
        return arrays, n, {**metrics, **node_cost(started, worker_peak)}

    def fit_here(self, parameters, config):
        """A training message's work in this process: what the site worker runs."""
        run, site, data = self._setup(config)
        _seed_secagg_rounding(run.seed, site.name, config)
        return self._fit_phase(run, site, data, parameters, config)

    def _fit_phase(self, run: RunConfig, site, data: dict, parameters, config):
        train = data["train"]
        kinds = feature_kinds.parse(config.get(feature_kinds.CONFIG_KEY))
        if config["phase"] == "gan":
            return _gan_round(run, site, train, parameters, config)
        if config["phase"] == "moments":  # every kind's moments, in kind order
            x = _features(run, site, config, parameters, data, kinds, ("train",))
            moments = [m for kind in kinds for m in feature_moments(x[kind]["train"])]
            moments, clipped = clip_for_secagg(moments, float(config["head-clip"]))
            return moments, len(train), {"clipped": clipped}
        if config["phase"] == "head":  # weights, then each kind's pooled mean, std
            weights, scales = (
                parameters[: -2 * len(kinds)],
                parameters[-2 * len(kinds) :],
            )
            x = _features(run, site, config, weights, data, kinds, ("train", "val"))
            arrays, clipped = [], 0
            for i, kind in enumerate(kinds):
                mean, std = scales[2 * i : 2 * i + 2]
                stats, n = standardized_statistics(
                    x[kind]["train"], train.labels, mean, std
                )
                # the validation patients' mean features choose the ridge
                # strength (a linear score of the mean: the patient's score)
                val_x, val_y = patient_means(
                    x[kind]["val"], data["val"].patient, data["val"].labels
                )
                val, m = validation_statistics(val_x, val_y, mean, std, len(train))
                arrays += stats + val
                clipped += n + m
            return arrays, len(train), {"clipped": clipped}
        if config["phase"] == "logit":  # weights, mean, std, current logistic head
            model = _site_model(run, site, config, parameters[:-3], data)
            mean, std, beta = parameters[-3:]
            z = standardize(model.encode(train.images), mean, std)
            new = logistic_steps(
                beta, z, train.labels, run.logit_steps, run.logit_lr, run.head_ridge
            )
            delta, clipped = clip_for_secagg([new - beta], run.secagg.delta_clip)
            return delta, len(train), {"clipped": clipped}
        if config["phase"] == "eval":  # every head's histograms, in head order
            hists, _ = _histograms(run, site, config, parameters, data, kinds)
            arrays = [
                h[k].astype(np.float64)
                for h in hists.values()
                for k in histogram_keys()
            ]
            arrays, clipped = clip_for_secagg(arrays, float(config["head-clip"]))
            return arrays, 1, {"clipped": clipped}  # weight 1: the server sums
        raise ValueError(f"unknown phase {config['phase']!r}")

    def evaluate(self, parameters, config):
        """An external site's own metrics at the server's validation cut-offs, as
        aggregates (see common.evaluation.site_evaluation); a training site answers
        nothing: its histograms went through the secure "eval" round."""
        site = resolve_site(self.node_config, run_config_of(config))
        if site.role != "external":
            return 0.0, 0, {}
        reply = _on_worker(site, "evaluate", self.node_config, parameters, config)
        if reply is None:
            return self.evaluate_here(parameters, config)
        return reply.loss, reply.n, reply.metrics

    def evaluate_here(self, parameters, config):
        """The external site's evaluation in this process (the site worker's too)."""
        run, site, data = self._setup(config)
        kinds = feature_kinds.parse(config.get(feature_kinds.CONFIG_KEY))
        thresholds = {}
        for head in feature_kinds.head_names(kinds):
            suffix = "" if head == feature_kinds.MAIN else f"/{head}"
            thresholds[head] = {
                "patient": float(config[f"threshold{suffix}"]),
                "slice": float(config[f"slice-threshold{suffix}"]),
            }
        # histograms and scores stay here: only their aggregates leave
        hists, scores = _histograms(run, site, config, parameters, data, kinds)
        labels = scores.pop("labels")
        paired = {
            name: paired_delong(
                scores[f"model-{name.rsplit('-', 1)[1]}"], scores[name], labels
            )
            for name in paired_names(kinds)
        }
        metrics = heads_report(hists, "external", thresholds, paired)
        return 0.0, sum(len(s) for s in data.values()), metrics


_FIXED_FEATURES: dict[tuple, tuple] = {}  # per process: features that never change


def _fixed_features(kind: str, run: RunConfig, slices) -> np.ndarray:
    """Radiomics or untrained-encoder features of a split, computed once per
    process (they depend on the slices and the run seed alone)."""
    key = (kind, run.preset, run.seed, id(slices))
    if key not in _FIXED_FEATURES:
        if kind == "radiomics":
            from common.evaluation.radiomics import features

            x = features(slices.images, slices.hu_range)
        else:  # the seed's initial weights: BigBiGAN rounds undone
            model, initial = _model_and_initial(run)
            model.set_weights(initial)
            x = model.encode(slices.images)
        _FIXED_FEATURES[key] = (slices, x)  # the slices kept: their id stays theirs
    return _FIXED_FEATURES[key][1]


def models_held() -> int:
    """How many models this process has built and keeps (a warm worker: one)."""
    return len(_MODELS)


def forget_warm_state() -> None:
    """Drop this process's models, fixed features and site data: a long-lived
    site worker does when a message of another run config arrives, so that it
    holds one run's state, not every run's it ever served."""
    import keras

    from client import site as site_module

    _MODELS.clear()
    _FIXED_FEATURES.clear()
    site_module.forget_site_data()
    keras.backend.clear_session()


def _features(
    run: RunConfig,
    site,
    config: dict,
    federated: list,
    data: dict,
    kinds: tuple[str, ...],
    splits: tuple[str, ...],
) -> dict[str, dict[str, np.ndarray]]:
    """Per kind and split, the slice features a head is fitted on or scores."""
    out: dict[str, dict[str, np.ndarray]] = {}
    model = _site_model(run, site, config, federated, data)
    out["model"] = {s: model.encode(data[s].images) for s in splits}
    for kind in kinds[1:]:
        out[kind] = {s: _fixed_features(kind, run, data[s]) for s in splits}
    return out


def _histograms(
    run: RunConfig, site, config: dict, parameters: list, data: dict, kinds: tuple
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Per head, split and level, per-class counts of head scores on the fixed
    grid; and per head the patient scores of the site's last split, each as
    its grid bin's index (what the histograms hold), with their labels under
    "labels": the external site's paired comparison. Both stay at the site."""
    heads = feature_kinds.head_names(kinds)
    coefs = dict(zip(heads, parameters[-len(heads) :], strict=True))
    x = _features(
        run, site, config, parameters[: -len(heads)], data, kinds, tuple(data)
    )
    hists: dict[str, dict[str, np.ndarray]] = {}
    binned: dict[str, np.ndarray] = {}
    for head, coef in coefs.items():
        hists[head] = {}
        for split, slices in data.items():
            scores = predict(coef, x[head.rsplit("-", 1)[0]][split])
            n_patients = int(slices.patient.max()) + 1 if len(slices) else 0
            patient = np.array(
                [
                    patient_score(scores[slices.patient == i], run.patient_score)
                    for i in range(n_patients)
                ]
            )
            patient_label = np.array(
                [slices.labels[slices.patient == i][0] for i in range(n_patients)]
            )
            for level, s, y in (
                ("slice", scores, slices.labels),
                ("patient", patient, patient_label),
            ):
                hists[head][f"{split}/{level}/pos"] = histogram(s[y == 1])
                hists[head][f"{split}/{level}/neg"] = histogram(s[y == 0])
            binned[head], binned["labels"] = _grid_bins(patient), patient_label
    return hists, binned


def _grid_bins(scores: np.ndarray) -> np.ndarray:
    """Each score's bin on the histogram grid (its index, as `histogram` bins
    it): AUCs of binned scores equal those of the histograms."""
    clipped = np.clip(scores, GRID_LOW, GRID_HIGH - 1e-9)
    return np.searchsorted(bin_edges(), clipped, side="right") - 1


def _gan_round(run: RunConfig, site, train, parameters: list, config: dict):
    """One BigBiGAN round at a site: train E, G and D from the global federated
    parts and the site's own kept parts; send the federated parts' change."""
    model, initial = _model_and_initial(run)
    # float16 transport: train from, and send the delta from, exactly what came
    # (float16 -> float32 is exact; float32 arrays pass uncopied)
    parameters = [np.asarray(p, np.float32) for p in parameters]
    rnd = int(config["server-round"])
    shared = federated_indices(model, run.federated_parts, run.strategy)
    kept = local_indices(model, run.federated_parts, run.strategy)
    store = LocalParts(cache_dir(site, run) / "local-model", str(config["run-token"]))
    own = (store.load(rnd - 1) if rnd > 1 else None) if kept else None
    if kept and own is None:
        if rnd > 1:
            log(
                WARNING,
                "%s: no kept parts from round %d; from initial",
                site.name,
                rnd - 1,
            )
        own = select(initial, kept)
    start = merge(merge(initial, shared, list(parameters)), kept, own or [])
    model.set_weights(start)
    losses = model.train_epochs(
        train.images,
        run.train,
        seed=run.seed * 1000 + rnd,  # a new slice order every round
        first_epoch=(rnd - 1) * run.train.local_epochs,
        # FedProx: the federated parts are pulled towards this round's global
        proximal=FEDERATED_PARTS[run.federated_parts]
        if run.strategy == "fedprox"
        else (),
    )
    after = model.get_weights()
    if kept:
        store.save(rnd, select(after, kept))
    delta = [a - p for a, p in zip(select(after, shared), parameters, strict=True)]
    if run.dp_noise_multiplier > 0:
        # noise from the OS, not the run seed: the server must not regenerate it
        delta, _ = clip_and_noise(
            delta,
            run.dp_clip,
            run.dp_noise_multiplier,
            int(config["dp-sites"]),
            np.random.default_rng(),
        )
        delta, _ = clip_for_secagg(delta, run.secagg.delta_clip)
        # unweighted mean, and no per-site losses: they would bypass the noise
        return delta, 1, {}
    delta, clipped = clip_for_secagg(delta, run.secagg.delta_clip)
    metrics = {"d_loss": losses.d, "e_loss": losses.e, "g_loss": losses.g}
    return delta, len(train), {**metrics, "clipped": clipped}


def _seed_secagg_rounding(seed: int, site: str, config: dict) -> None:
    """Both protocols round our reply stochastically from NumPy's global
    generator (SecAgg+ draws from it, ours seeds its own generator with it);
    seed it per (run seed, site, phase, round), so that a resumed run sends
    exactly what the uninterrupted one did. The masks use their own keys."""
    key = (site, str(config["phase"]), str(config.get("server-round", 0)))
    np.random.seed([seed, *(zlib.crc32(part.encode()) for part in key)])


def client_fn(context: Context):
    return HospitalClient(context.node_config).to_client()


# the audit mod checks every reply: outside the secure protocol what actually
# leaves, inside it the plaintext before masking (client/audit_mod.py); the
# dispatch mod runs SecAgg+ or ours, as the server's messages say; the roster
# mod signs the declared count of the ClientApp's own reply (before masking)
app = ClientApp(
    client_fn=client_fn,
    mods=[audit_mod, secure_dispatch_mod, audit_mod, roster_signing_mod],
)
