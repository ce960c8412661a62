"""What a head is fitted on, and which heads every run reports.

Every run fits the same heads, with the same secure rounds, on three kinds of
slice features, so the model is always seen beside two baselines:

- "model": z_mean of the federated encoder (the paper's features);
- "radiomics": first-order radiomics of the slice (`common.evaluation.radiomics`);
- "untrained": z_mean of the encoder at the run seed's initial weights (the
  seeded random init the sites build themselves, not a hub warm start):
  what the BigBiGAN rounds added.

Each kind gets two heads: "lm" (the paper's least squares, `head-ridge` tiny)
and "ridge" (its strength chosen on the validation patients,
`common.evaluation.linear_head.ridge_path`). A head's name is "kind-head"; "model-lm" is
the run's main result, and comes first wherever heads travel in order.
"""

from __future__ import annotations

from common.evaluation.radiomics import N_FEATURES

KINDS = ("model", "radiomics", "untrained")
BASELINES = KINDS[1:]
HEADS = ("lm", "ridge")
MAIN = "model-lm"
CONFIG_KEY = "feature-kinds"  # the server's messages name the kinds they carry


def dim(kind: str, z: int) -> int:
    """Width of a kind's feature vector (z: the preset's latent size)."""
    return N_FEATURES if kind == "radiomics" else z


def parse(text: object) -> tuple[str, ...]:
    """The kinds a message names ("model,radiomics"); "model" alone when it
    names none. ValueError for an unknown kind, or "model" not first."""
    if text is None or text == "":
        return ("model",)
    kinds = tuple(str(text).split(","))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or kinds[0] != "model" or len(set(kinds)) != len(kinds):
        raise ValueError(
            f"{CONFIG_KEY}={text!r}: expected 'model' first, then any of {BASELINES}"
        )
    return kinds


def head_names(kinds: tuple[str, ...]) -> list[str]:
    """The heads of `kinds`, in the order their arrays travel ("model-lm" first)."""
    return [f"{kind}-{head}" for kind in kinds for head in HEADS]
