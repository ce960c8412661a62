"""Warm start from DeepMind's BigBiGAN TF Hub module, offline.

Two paths, both usable on a training node without internet once the module's
directory has been copied there (`saved_model.pb`, `variables/`, `tfhub_module.pb`):

(a) `warm_start_encoder`: read the module's checkpoint and copy its encoder weights
    into our Keras encoder (`common.model.bigbigan.build_encoder`) by a name table,
    `ENCODER_NAME_RULES`. The robust way to fine-tune: our optimisers, our BatchNorm.
(b) `HubEncoder`: call the module's `encode` signature, frozen, or fine-tuned
    through it when the module was saved with resource variables (`variable_kind`).

tensorflow_hub is imported inside functions only, so importing this module is cheap.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

log = logging.getLogger(__name__)

DEFAULT_HANDLE = "https://tfhub.dev/deepmind/bigbigan-resnet50/1"
RUN_CONFIG_KEY = "hub-module"
MODULE_FILES = ("saved_model.pb", "variables/variables.index", "tfhub_module.pb")
ENCODE_OUTPUTS = ("z_mean", "z_stdev", "z_sample", "avepool_feat", "bn_crelu_feat")
PARTS = ("encoder", "generator", "discriminator")

# -- the name table ---------------------------------------------------------------
# Our Keras encoder's "<layer>/<weight>" -> the module checkpoint's variable name.
# The trunk follows tf-slim's resnet_v2_50 naming (our best knowledge of the real
# module; it cannot be checked offline). The head's names (bn_crelu, mlp, z_mean,
# z_stdev) are a GUESS. If `fedbigbigan hub-inspect <module>` lists unmapped
# variables, correct the templates here: this table is the only place names live.
_TRUNK = "encoder/resnet_v2_50"
_UNIT = _TRUNK + "/block{s}/unit_{u}/bottleneck_v2"
_BLOCK_UNIT = r"block(?P<s>\d+)_unit(?P<u>\d+)"
ENCODER_NAME_RULES: tuple[tuple[str, str], ...] = (
    (r"stem_conv/kernel", _TRUNK + "/conv1/weights"),
    (r"stem_conv/bias", _TRUNK + "/conv1/biases"),
    (_BLOCK_UNIT + r"_preact/(?P<w>\w+)", _UNIT + "/preact/{w}"),
    (_BLOCK_UNIT + r"_(?P<c>shortcut|conv[123])/kernel", _UNIT + "/{c}/weights"),
    (_BLOCK_UNIT + r"_(?P<c>shortcut|conv3)/bias", _UNIT + "/{c}/biases"),
    (_BLOCK_UNIT + r"_(?P<c>conv[12])_bn/(?P<w>\w+)", _UNIT + "/{c}/BatchNorm/{w}"),
    (r"postnorm/(?P<w>\w+)", _TRUNK + "/postnorm/{w}"),
    # head: guessed names
    (r"bn_crelu_bn/(?P<w>\w+)", "encoder/bn_crelu/BatchNorm/{w}"),
    (r"mlp(?P<i>\d+)/(?P<w>kernel|bias)", "encoder/mlp{i}/dense/{w}"),
    (r"z_mean/(?P<w>kernel|bias)", "encoder/z_mean/dense/{w}"),
    (r"z_stdev_pre/(?P<w>kernel|bias)", "encoder/z_stdev/dense/{w}"),
)
# a name every ResNet module has; finds an extra scope in front of "encoder/"
_ANCHOR = _TRUNK + "/conv1/weights"
_TRUNK_LAYER = re.compile(r"stem_conv|block\d+_unit\d+_\w+|postnorm")


def module_name(ours: str, prefix: str = "") -> str | None:
    """The checkpoint name for our "<layer>/<weight>", or None if no rule matches."""
    for pattern, template in ENCODER_NAME_RULES:
        match = re.fullmatch(pattern, ours)
        if match:
            return prefix + template.format(**match.groupdict())
    return None


# -- errors -----------------------------------------------------------------------
class HubUnavailableError(RuntimeError):
    """The module cannot be reached or is not a complete local copy."""


class HubNotFineTunableError(RuntimeError):
    """Fine-tuning through the module was asked for, but its variables are ref."""


class WarmStartError(ValueError):
    """The checkpoint does not fit our encoder (missing names or wrong shapes)."""


def _local_copy_help(handle: str) -> str:
    return (
        "To use a local copy: on a machine with internet run\n    python -c "
        f"\"import tensorflow_hub as hub; print(hub.resolve('{handle}'))\"\n"
        "(or download and untar "
        f"'{handle}?tf-hub-format=compressed'; tfhub.dev now redirects to Kaggle "
        "Models), copy the module directory (saved_model.pb, variables/, "
        "tfhub_module.pb) to the training node, and set the run config key "
        f"`{RUN_CONFIG_KEY}` to that directory, e.g. "
        f"--run-config {RUN_CONFIG_KEY}='/data/bigbigan-resnet50'. "
        "A handle already in TFHUB_CACHE_DIR resolves offline."
    )


# -- resolving a handle -----------------------------------------------------------
def resolve_module(handle: str | Path) -> Path:
    """A local module directory for a handle (URL) or a directory; checked complete."""
    text = str(handle)
    if "://" in text and not text.startswith("file://"):
        import tensorflow_hub as hub

        try:
            path = Path(hub.resolve(text))
        except Exception as err:  # urllib, OSError, tarfile...: all mean "no module"
            raise HubUnavailableError(
                f"TF Hub module {text!r} cannot be fetched ({type(err).__name__}: "
                f"{err}). {_local_copy_help(text)}"
            ) from err
    else:
        path = Path(text.removeprefix("file://")).expanduser()
        if not path.is_dir():
            raise HubUnavailableError(
                f"{path}: no such module directory. {_local_copy_help(DEFAULT_HANDLE)}"
            )
    missing = [name for name in MODULE_FILES if not (path / name).is_file()]
    if missing:
        raise HubUnavailableError(
            f"{path}: not a complete TF Hub module copy, missing {missing}. "
            f"{_local_copy_help(DEFAULT_HANDLE)}"
        )
    return path


def read_checkpoint(module: str | Path) -> dict[str, np.ndarray]:
    """Every variable of the module's checkpoint by name (ref variables too)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(
        str(resolve_module(module) / "variables/variables")
    )
    return {
        name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
    }


def checkpoint_shapes(module: str | Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes only (no values read)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(
        str(resolve_module(module) / "variables/variables")
    )
    return {n: tuple(s) for n, s in reader.get_variable_to_shape_map().items()}


# -- path (a): checkpoint -> our encoder ------------------------------------------
@dataclass
class WarmStartReport:
    """What a warm start copied, what it could not, and what it left unused."""

    prefix: str = ""
    mapped: dict[str, str] = field(default_factory=dict)  # ours -> module name
    unmapped_ours: list[str] = field(default_factory=list)
    unused_module: list[str] = field(default_factory=list)  # under the encoder scope
    shape_mismatches: list[str] = field(default_factory=list)

    @property
    def unmapped_trunk(self) -> list[str]:
        """Our trunk variables (weights and BatchNorm statistics) left unmapped."""
        return [
            n for n in self.unmapped_ours if _TRUNK_LAYER.fullmatch(n.split("/")[0])
        ]

    def summary(self) -> str:
        lines = [
            f"mapped {len(self.mapped)} encoder variables; "
            f"{len(self.unmapped_ours)} of ours unmapped "
            f"({len(self.unmapped_trunk)} in the trunk); "
            f"{len(self.unused_module)} module encoder variables unused"
        ]
        lines += [f"  shape mismatch: {m}" for m in self.shape_mismatches]
        lines += [f"  unmapped (ours): {n}" for n in self.unmapped_ours]
        lines += [f"  unused (module): {n}" for n in self.unused_module]
        return "\n".join(lines)


def _our_variables(encoder: keras.Model) -> dict[str, Any]:
    """Our encoder's variables as "<layer>/<weight>" (independent of nesting)."""
    return {
        f"{layer.name}/{v.name}": v for layer in encoder.layers for v in layer.weights
    }


def _detect_prefix(names: Iterable[str]) -> str:
    for name in names:
        if name.endswith(_ANCHOR):
            return name[: -len(_ANCHOR)]
    return ""


def plan_encoder_warm_start(
    encoder: keras.Model, shapes: Mapping[str, tuple[int, ...]]
) -> WarmStartReport:
    """Match our encoder's variables to checkpoint names and shapes (nothing copied)."""
    prefix = _detect_prefix(shapes)
    report = WarmStartReport(prefix=prefix)
    for ours, var in _our_variables(encoder).items():
        theirs = module_name(ours, prefix)
        if theirs is None or theirs not in shapes:
            report.unmapped_ours.append(ours)
        elif tuple(shapes[theirs]) != tuple(var.shape):
            report.shape_mismatches.append(
                f"{ours} {tuple(var.shape)} vs {theirs} {tuple(shapes[theirs])}"
            )
        else:
            report.mapped[ours] = theirs
    used = set(report.mapped.values())
    scope = prefix + "encoder/"
    report.unused_module = sorted(
        n for n in shapes if n.startswith(scope) and n not in used
    )
    return report


def warm_start_encoder(
    encoder: keras.Model,
    module: str | Path | Mapping[str, np.ndarray],
    *,
    allow_partial: bool = False,
) -> WarmStartReport:
    """Copy the module's encoder weights into `encoder` (path (a)).

    `module` is a handle, a local module directory or an already read checkpoint.
    Refuses (WarmStartError) on any shape mismatch, and when a trunk variable would
    keep its random initial value unless `allow_partial`; the head's names are a
    guess, so unmapped head variables only log a warning.
    """
    weights = module if isinstance(module, Mapping) else read_checkpoint(module)
    report = plan_encoder_warm_start(
        encoder, {n: np.shape(v) for n, v in weights.items()}
    )
    if report.shape_mismatches:
        raise WarmStartError(
            "the module's encoder does not have our preset's shapes (use the "
            "`paper` preset for deepmind/bigbigan-resnet50):\n  "
            + "\n  ".join(report.shape_mismatches[:10])
        )
    if report.unmapped_trunk and not allow_partial:
        raise WarmStartError(
            f"{len(report.unmapped_trunk)} trunk variables of our encoder have no "
            f"match in the module, e.g. {report.unmapped_trunk[:5]}; module encoder "
            f"names left unused include {report.unused_module[:5]}. Correct "
            "ENCODER_NAME_RULES in common/model/hub.py (see `fedbigbigan hub-inspect`) "
            "or pass allow_partial=True."
        )
    ours = _our_variables(encoder)
    for name, theirs in report.mapped.items():
        ours[name].assign(np.asarray(weights[theirs], dtype=ours[name].dtype))
    if report.unmapped_ours:
        log.warning(
            "warm start left %d encoder variables at their initial values: %s",
            len(report.unmapped_ours),
            report.unmapped_ours[:8],
        )
    log.info("warm start: %s", report.summary().splitlines()[0])
    return report


# -- path (b): the module's `encode` signature -------------------------------------
class _DropRefVariableWarnings(logging.Filter):
    """TF warns once per ref variable per signature; we explain it once instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "because it is a reference variable" not in record.getMessage()


def load_module(handle: str | Path, tags: Iterable[str] = ()) -> Any:
    """`hub.load` on the resolved local directory; tags () = inference, {"train"}."""
    import tensorflow_hub as hub

    path = resolve_module(handle)
    tf_log = logging.getLogger("tensorflow")
    quiet = _DropRefVariableWarnings()
    tf_log.addFilter(quiet)
    try:
        return hub.load(str(path), tags=set(tags))
    finally:
        tf_log.removeFilter(quiet)


def variable_kind(module: Any) -> str:
    """'resource' if the loaded module exposes its variables, else 'ref'."""
    return "resource" if len(module.variables) > 0 else "ref"


VARIABLE_KIND_HELP = {
    "resource": (
        "resource variables: the module's variables are visible to TF2, gradients "
        "reach them through the signatures, so it can be fine-tuned directly (its "
        "BatchNorm statistics still never update through a signature)"
    ),
    "ref": (
        "ref variables (TF1 style): TF2 cannot see them, so nothing in the module can "
        "be trained through its signatures; use it frozen, or warm-start our own "
        "encoder from its checkpoint (common.model.hub.warm_start_encoder) to fine-tune"
    ),
}


class HubEncoder:
    """The module's `encode` signature as an encoder (path (b)).

    `frozen=True` stops gradients and exposes no variables. `frozen=False` needs a
    module saved with resource variables and exposes its `trainable_variables`.
    """

    def __init__(
        self, handle: str | Path, *, tags: Iterable[str] = (), frozen: bool = True
    ) -> None:
        self.tags = frozenset(tags)
        self.module = load_module(handle, self.tags)
        if "encode" not in self.module.signatures:
            raise HubUnavailableError(
                f"{handle}: the module has no `encode` signature (it has "
                f"{sorted(self.module.signatures)}); is it a BigBiGAN module?"
            )
        self._encode = self.module.signatures["encode"]
        self.frozen = frozen
        if not frozen and not self.fine_tunable:
            raise HubNotFineTunableError(f"{handle}: {self.explanation}")

    @property
    def variable_kind(self) -> str:
        return variable_kind(self.module)

    @property
    def fine_tunable(self) -> bool:
        return self.variable_kind == "resource"

    @property
    def explanation(self) -> str:
        """Which kind of variables the module has and what that allows."""
        return f"the module has {VARIABLE_KIND_HELP[self.variable_kind]}"

    @property
    def image_size(self) -> int | None:
        """The square input size the signature expects (None if not fixed)."""
        spec = self._encode.structured_input_signature[1]["x"]
        return spec.shape[1]

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        """The module's trainable encoder variables; empty when frozen."""
        if self.frozen:
            return []
        trainable = [v for v in self.module.variables if v.trainable]
        names = [v.name.split(":")[0] for v in trainable]
        scope = _detect_prefix(names) + "encoder/"
        mine = [v for v, n in zip(trainable, names, strict=True) if n.startswith(scope)]
        if not mine:  # unknown naming: better all of them than none
            log.warning("no module variable under %r; exposing all of them", scope)
            return trainable
        return mine

    def __call__(self, x: Any) -> dict[str, tf.Tensor]:
        """z_mean, z_stdev, z_sample, avepool_feat, bn_crelu_feat of x in [-1, 1]."""
        import tensorflow as tf

        out = self._encode(x=tf.convert_to_tensor(x, tf.float32))
        out = {k: out[k] for k in ENCODE_OUTPUTS if k in out}
        if self.frozen:
            out = {k: tf.stop_gradient(v) for k, v in out.items()}
        return out


# -- inspection -------------------------------------------------------------------
def describe_module(handle: str | Path, encoder: keras.Model | None = None) -> str:
    """A readable listing: variables by part, variable kind, signatures, mapping."""
    path = resolve_module(handle)
    shapes = checkpoint_shapes(path)
    prefix = _detect_prefix(shapes)
    lines = [f"module: {path}"]
    groups: dict[str, list[str]] = {}
    for name in sorted(shapes):
        head = name[len(prefix) :].split("/")[0] if name.startswith(prefix) else ""
        groups.setdefault(head if head in PARTS else "other", []).append(name)
    for part in (*PARTS, "other"):
        names = groups.get(part, [])
        size = sum(int(np.prod(shapes[n])) for n in names)
        lines.append(f"[{part}] {len(names)} variables, {size:,} values")
        lines += [f"  {n} {list(shapes[n])}" for n in names]
    for tags in ((), ("train",)):
        try:
            module = load_module(path, tags)
        except Exception as err:  # a missing tag set is worth a line, not a crash
            lines.append(f"tags {set(tags) or '{}'}: cannot load ({err})")
            continue
        kind = variable_kind(module)
        lines.append(f"tags {set(tags) or '{}'}: {VARIABLE_KIND_HELP[kind]}")
        for sig_name, fn in sorted(module.signatures.items()):
            inputs = {
                k: v.shape.as_list()
                for k, v in fn.structured_input_signature[1].items()
            }
            outputs = {k: v.shape.as_list() for k, v in fn.structured_outputs.items()}
            lines.append(
                f"  signature {sig_name}: inputs {inputs} -> outputs {outputs}"
            )
    if encoder is not None:
        report = plan_encoder_warm_start(encoder, shapes)
        lines.append(f"warm start into encoder {encoder.name!r}: {report.summary()}")
    return "\n".join(lines)
