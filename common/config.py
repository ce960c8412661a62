"""Typed configuration: the run config, built and checked in one place.

The run config is Flower's flat `[tool.flwr.app.config]` table (kebab-case keys,
bool/int/float/str values). `RunConfig.from_flat` is the only place that reads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.config_ranges import RANGES, Range  # noqa: F401  (re-exported)
from common.ingest.config import (
    IMAGE_CROPS,
    INTENSITY_POLICIES,
    SERIES_POLICIES,
    SLICE_POLICIES,
    IngestConfig,
)
from common.presets import PRESETS, Z_DIM, ModelPreset  # noqa: F401  (re-exported)

PRECISIONS = {
    "off": "float32",
    "float16": "mixed_float16",
    "bfloat16": "mixed_bfloat16",
}


@dataclass(frozen=True)
class DeviceConfig:
    mixed_precision: str = "off"  # "off", "float16" (GPUs) or "bfloat16" (TPU/new CPUs)
    xla: bool = False  # compile the training step with XLA (jit_compile)
    memory_growth: bool = True  # let TensorFlow share the GPU with other processes
    multi_gpu: bool = False  # mirror the step over every visible GPU

    @property
    def policy(self) -> str:
        try:
            return PRECISIONS[self.mixed_precision]
        except KeyError:
            raise ValueError(
                f"mixed-precision={self.mixed_precision!r}: use one of "
                f"{sorted(PRECISIONS)}"
            ) from None


class ConfigError(ValueError):
    """A run config value is missing, of the wrong type, or out of range."""


def get_preset(name: str) -> ModelPreset:
    """Return the preset called `name`, or say which ones exist."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"preset {name!r} is unknown; choose one of {sorted(PRESETS)}"
        ) from None


@dataclass(frozen=True)
class TrainConfig:
    """Local BigBiGAN training at a site, per round."""

    local_epochs: int = 1
    batch_size: int = 16
    lr_d: float = 2e-4
    lr_eg: float = 2e-4
    lr_e_multiplier: float = 1.0  # E's rate = lr_eg * this (BigBiGAN raised E's)
    d_steps: int = 1
    # BigBiGAN's unary scores s_x and s_z; off = BiGAN's joint score s_xz alone
    # (the paper's ablation)
    unary_scores: bool = True
    lr_halve_every: int = 0  # epochs; 0 = constant (the authors meant 4)
    max_slices_per_patient: int = 0  # 0 = all slices
    # a training site's fewest patients of each class (checked before any round)
    min_patients_per_class: int = 2
    # FedProx's mu (strategy "fedprox" only): a site's losses get
    # mu/2 ||w - w_global||^2 on the federated parts, which keeps sites near
    # the global model when their data differ
    fedprox_mu: float = 0.01
    # auxiliary losses beside BigBiGAN's objective (0 = the paper's setting),
    # added to both E's and G's losses: the reconstruction error
    # mean (G(E(x)) - x)^2 at G's size, and the latent regression error
    # mean (E(G(z)) - z)^2 (Rubenstein et al. 2018: they make a BiGAN's
    # encoder learn where the adversarial gradient alone does not)
    aux_reconstruction: float = 0.0
    aux_latent: float = 0.0
    # DiffAugment policies for D's image inputs, comma-separated ("" = off, the
    # paper's setting): common.model.diff_augment.POLICIES
    diff_augment: str = ""
    # E's latent in D's real pair: z_mean + z_stdev * noise (BigBiGAN's, the
    # paper's) or z_mean alone (false: BiGAN's deterministic encoder). At
    # initialisation z_stdev ~0.7 against a spread of z_mean across images of
    # ~0.003, so a sampled E meets the prior with noise alone
    encoder_sampling: bool = True


# DiffAugment's transforms of D's image inputs (common.model.diff_augment)
DIFF_AUGMENT_POLICIES = ("translation", "cutout", "color")


def diff_augment_policies(text: str) -> tuple[str, ...]:
    """The policies of a diff-augment value ("translation,cutout"; "" = none).
    ValueError names an unknown one."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in DIFF_AUGMENT_POLICIES]
    if unknown:
        raise ValueError(
            f"diff-augment: unknown {unknown}; expected a comma-separated list "
            f"of {list(DIFF_AUGMENT_POLICIES)} or '' (off)"
        )
    return names


# federated-parts values: which of E, G and D leave a site
FEDERATED_PARTS = {"egd": ("e", "g", "d"), "eg": ("e", "g"), "e": ("e",)}
# how the BigBiGAN rounds combine sites: the server's step on the SecAgg+ mean
# update (FedAvg, FedAvgM, FedAdam), FedProx's proximal local step, or FedBN
# (BatchNorm parameters and statistics never leave a site)
STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedbn")
# secure-aggregation values: the protocol of every securely aggregated round.
# "secaggplus" is Flower's SecAgg+ (int64 uploads, 32-bit seeds into NumPy's
# generator); "fedbigbigan" is ours (common.secure_agg: uint32 uploads, AES-CTR
# masks from 256-bit seeds, chunked vectors)
SECURE_AGGREGATIONS = ("secaggplus", "fedbigbigan")
# transport values: how the BigBiGAN rounds' weights travel. "float32": the
# global weights down as float32, updates up in 32-bit lanes; "float16" (ours
# only): the global weights down as float16, the deltas from them up in
# 16-bit lanes with public per-array clips (server/transport.py)
TRANSPORTS = ("float32", "float16")


@dataclass(frozen=True)
class ServerOptConfig:
    """The server optimiser's settings (strategies fedavgm and fedadam)."""

    avgm_lr: float = 1.0
    avgm_momentum: float = 0.9
    adam_lr: float = 0.01  # per-coordinate step: small against weights of ~0.05
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_tau: float = 1e-3  # Reddi et al.'s adaptivity floor


@dataclass(frozen=True)
class SecAggConfig:
    """Settings of every securely aggregated round (SecAgg+ or ours)."""

    num_shares: float = 1.0
    reconstruction_threshold: float = 0.67
    delta_clip: float = 4.0  # clipping range for weight deltas (not raw weights)
    quantization_bits: int = 28  # 2**28 levels; sums of up to 16 sites fit 2**32
    timeout: float = 600.0  # longest wait for the sites' replies to one message
    # seconds between the server's looks for replies (Flower's own loop: 3 s)
    poll_interval: float = 0.1
    # ours only: a round's unmask reply carries each site's keys for the next
    # round, which then skips its setup stage (three round trips, not four)
    keys_ahead: bool = True


@dataclass(frozen=True)
class SplitConfig:
    """Patient-level train/val/test fractions (the paper: 80/10/10)."""

    val: float = 0.1
    test: float = 0.1


@dataclass(frozen=True)
class RunConfig:
    """Everything one federated run needs; mirrors pyproject's run config."""

    preset: str = "tiny"
    seed: int = 0
    gan_rounds: int = 3
    head_ridge: float = 1e-3
    patient_score: str = "mean"  # a patient's score from its slices': mean/median/max
    logit_rounds: int = 5  # SecAgg+ rounds of the logistic head (0 = none)
    logit_steps: int = 20  # local gradient steps per round
    logit_lr: float = 0.5
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: str = "fedavg"
    server_opt: ServerOptConfig = field(default_factory=ServerOptConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    # which protocol carries the secure rounds (SECURE_AGGREGATIONS); the
    # secagg-* settings apply to both, but for quantization-bits (SecAgg+ only:
    # ours derives its precision from the number of sites)
    secure_aggregation: str = "secaggplus"
    transport: str = "float32"  # TRANSPORTS: BigBiGAN rounds' weights and deltas
    split: SplitConfig = field(default_factory=SplitConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    encoder_mode: str = "trained"  # "trained" (BigBiGAN rounds) or "frozen"
    hub_module: str = ""  # TF Hub handle or local copy to warm-start E from
    mixed_precision: str = "off"  # "off", "float16" or "bfloat16"
    xla: bool = False
    memory_growth: bool = True
    multi_gpu: bool = False
    sim_data_root: str = "runs/demo/data"
    sim_sites: str = "hospital_a_ge:train,hospital_a_neuviz:train,hospital_b:external"
    out_dir: str = "runs/flwr"
    # Simulation Engine: each simulated site's share of the machine (a site
    # with 0.5 GPU lets two sites train on one GPU: memory growth must be on)
    sim_client_cpus: float = 1.0
    sim_client_gpus: float = 0.0
    resume: str = ""  # a run directory whose checkpoint.npz to continue from
    # what leaves a site in the BigBiGAN rounds: E, G and D ("egd"), E and G with
    # D kept at home ("eg"), or E alone ("e": the generator stays home)
    federated_parts: str = "egd"
    # differential privacy of the BigBiGAN rounds' updates (site level): each
    # site clips its update to dp_clip (L2) and adds Gaussian noise before
    # masking; 0 = off
    dp_noise_multiplier: float = 0.0
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    # the largest example count (averaging weight) a training site may declare,
    # as the consortium agreed; a site declaring more is refused. 0 = no cap
    # (the largest declared count is the round's max_weight)
    max_site_weight: int = 0
    # the coordinator's roster of enrolled sites, keys and agreed weights
    # (server.roster): sites sign their counts; "" = none
    roster_file: str = ""

    @property
    def model(self) -> ModelPreset:
        return get_preset(self.preset)

    @property
    def devices(self) -> DeviceConfig:
        return DeviceConfig(
            self.mixed_precision, self.xla, self.memory_growth, self.multi_gpu
        )

    @property
    def trains_encoder(self) -> bool:
        """False in the frozen-encoder baseline: no BigBiGAN rounds, head only."""
        return self.encoder_mode == "trained"

    def site_roster(self) -> list[tuple[str, str]]:
        """The simulated sites as (name, role) pairs, in partition order."""
        roster = []
        for item in self.sim_sites.split(","):
            name, _, role = item.strip().partition(":")
            if role not in ("train", "external") or not name:
                raise ConfigError(
                    f"sim-sites entry {item!r} must look like 'name:train' or "
                    "'name:external'"
                )
            roster.append((name, role))
        return roster

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> RunConfig:
        """Build from Flower's flat run config; unknown keys are an error."""
        sections = {
            "train": TrainConfig,
            "server_opt": ServerOptConfig,
            "secagg": SecAggConfig,
            "split": SplitConfig,
            "ingest": IngestConfig,
        }
        prefixes = {
            "server_opt": "server-",
            "secagg": "secagg-",
            "split": "split-",
            "ingest": "ingest-",
        }
        problems = flat_problems(flat)
        if problems:
            raise ConfigError("\n".join(problems))
        values: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {k: {} for k in sections}
        top = {f.name for f in dataclasses.fields(cls)} - set(sections)
        train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
        for key, value in flat.items():
            name = key.replace("-", "_")
            if name in top:
                values[name] = value
            elif name in train_keys:
                nested["train"][name] = value
            else:
                for section, prefix in prefixes.items():
                    if key.startswith(prefix):
                        nested[section][key[len(prefix) :].replace("-", "_")] = value
                        break
                else:
                    raise ConfigError(f"run config key {key!r} is unknown")
        for section, kind in sections.items():
            try:
                values[section] = _typed(kind, nested[section], section)
            except ValueError as err:  # a section's own range checks
                raise ConfigError(str(err)) from None
        config = _typed(cls, values, "run config")
        config.validate()
        return config

    def to_flat(self) -> dict[str, bool | int | float | str]:
        """The inverse of `from_flat` (what goes into config.json and messages)."""
        flat: dict[str, bool | int | float | str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                prefix = {"train": "", "server_opt": "server-"}.get(
                    f.name, f"{f.name}-"
                )
                for sub in dataclasses.fields(value):
                    if (f.name, sub.name) == ("ingest", "image_size"):
                        continue  # the preset decides it
                    key = prefix + sub.name.replace("_", "-")
                    flat[key] = getattr(value, sub.name)
            else:
                flat[f.name.replace("_", "-")] = value
        return flat

    def validate(self) -> None:
        """Every key in range (the same table as `from_flat`), then the checks
        that involve several keys; all problems in one error, one per line."""
        flat = self.to_flat()
        problems = [
            problem for key in flat if (problem := _value_problem(key, flat[key]))
        ]
        try:
            self.site_roster()
        except ConfigError as err:
            problems.append(str(err))
        checks = [
            (
                self.transport == "float32" or self.secure_aggregation == "fedbigbigan",
                f"transport={self.transport!r} needs secure-aggregation = "
                "'fedbigbigan' (our protocol's 16-bit lanes; Flower's SecAgg+ "
                f"sends int64), got {self.secure_aggregation!r}",
            ),
            (
                self.split.val + self.split.test < 0.9,
                f"split-val + split-test must be < 0.9, got "
                f"{self.split.val + self.split.test:g}",
            ),
        ]
        problems += [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError("\n".join(problems))


CHOICES: dict[str, tuple[str, ...]] = {
    "preset": tuple(PRESETS),
    "patient-score": ("mean", "median", "max"),
    "strategy": STRATEGIES,
    "secure-aggregation": SECURE_AGGREGATIONS,
    "transport": TRANSPORTS,
    "encoder-mode": ("trained", "frozen"),
    "mixed-precision": tuple(PRECISIONS),
    "federated-parts": tuple(FEDERATED_PARTS),
    "ingest-intensity": INTENSITY_POLICIES,
    "ingest-slice-policy": SLICE_POLICIES,
    "ingest-series": SERIES_POLICIES,
    "ingest-image-crop": IMAGE_CROPS,
}


def flat_problems(flat: dict[str, Any]) -> list[str]:
    """One line per key of a flat run config that is unknown, of the wrong type
    or out of range (each naming key, value and what it accepts)."""
    defaults = RunConfig().to_flat()
    problems = []
    for key, value in flat.items():
        if key == "ingest-image-size":
            problems.append("ingest-image-size is set by the preset's image size")
        elif key not in defaults:
            problems.append(f"run config key {key!r} is unknown")
        else:
            problem = _type_problem(key, value, defaults[key]) or _value_problem(
                key, value
            )
            if problem:
                problems.append(problem)
    return problems


def _type_problem(key: str, value: Any, default: Any) -> str | None:
    """A value of another type than the key's (bool is not a number here)."""
    kind = type(default)
    if isinstance(value, bool) != (kind is bool):
        ok = False
    elif kind is float:
        ok = isinstance(value, int | float)
    else:
        ok = isinstance(value, kind)
    if ok:
        return None
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    allowed = RANGES[key] if key in RANGES else names[kind]
    return f"{key} must be {allowed}, got {value!r}"


def _value_problem(key: str, value: Any) -> str | None:
    """A value outside the key's range or choices (None: fine or unchecked)."""
    if key in RANGES:
        allowed = RANGES[key]
        if value not in allowed or (allowed.integer and value != int(value)):
            return f"{key} must be {allowed}, got {value!r}"
    elif key in CHOICES and value not in CHOICES[key]:
        return f"{key} must be one of {list(CHOICES[key])}, got {value!r}"
    elif key == "diff-augment" and isinstance(value, str):
        try:
            diff_augment_policies(value)
        except ValueError as err:
            return str(err)
    return None


def _typed(kind: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate a dataclass, coercing ints to floats and checking types."""
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(kind)}
    for name, value in values.items():
        if name not in fields:
            raise ConfigError(f"{where}: key {name.replace('_', '-')!r} is unknown")
        default = getattr(kind(), name)
        if isinstance(default, float) and isinstance(value, int):
            value = float(value)
        if not isinstance(value, type(default)):
            raise ConfigError(
                f"{where}: {name.replace('_', '-')} must be "
                f"{type(default).__name__}, got {value!r}"
            )
        kwargs[name] = value
    return kind(**kwargs)
