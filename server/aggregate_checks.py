"""What the server checks of a secure round before it uses the aggregate.

Secure aggregation hides every site's update, so a site running modified code
can send anything within the protocol's lanes; the server checks what it can:
the sites' declared example counts (in clear beside the masked vector), and
the aggregate itself. A round that fails a check is discarded: nothing is
applied or checkpointed, and the run stops naming the check (its last
checkpoint stays, for a resume once the site is dealt with). What a hostile
site can still do within these bounds is in PRIVACY.md.
"""

from __future__ import annotations

import math

import numpy as np

# Rounding of the weighted mean (float32 arrays, float64 arithmetic): the mean
# of values within +-clip is within +-clip, up to this relative slack.
RELATIVE_SLACK = 1e-5


class AggregateRejected(RuntimeError):
    """A secure round's aggregate failed a check; the message names it."""


def admit_sites(
    sizes: dict[int, object], max_site_weight: int
) -> tuple[dict[int, int], list[str]]:
    """The training sites whose declared example counts are usable, and one line
    per site refused: a count that is not a whole number >= 1 (negative, zero,
    NaN, a fraction, a boolean) or above `max_site_weight` (the agreed cap;
    0 = none)."""
    admitted, refused = {}, []
    for node, n in sorted(sizes.items()):
        problem = _count_problem(n, max_site_weight)
        if problem:
            refused.append(f"node {node}: declared n_train = {n!r}: {problem}")
        else:
            admitted[node] = int(n)
    return admitted, refused


def _count_problem(n: object, cap: int) -> str | None:
    if isinstance(n, bool) or not isinstance(n, int | float):
        return "not a number"
    if not math.isfinite(n) or n != int(n) or n < 1:
        return "must be a whole number >= 1"
    if cap and n > cap:
        return f"above the agreed max-site-weight = {cap}"
    return None


def check_declared(declared: dict[int, object], max_weight: float, rnd: int) -> None:
    """Every site's declared example count of the round is in [1, max_weight],
    so the total weight is in [1, max_weight x sites] (SecAgg+ and ours)."""
    bad = [
        f"node {node}: {n!r}"
        for node, n in sorted(declared.items())
        if isinstance(n, bool)
        or not isinstance(n, int | float)
        or not (math.isfinite(n) and 1 <= n <= max_weight)
    ]
    if bad:
        raise AggregateRejected(
            f"round {rnd}: check 'declared weights' failed: example counts outside "
            f"[1, max_weight = {max_weight:g}]: {', '.join(bad)}; the round is "
            "discarded"
        )


def check_aggregate(
    arrays: list[np.ndarray],
    clip: float,
    rnd: int,
    tensor_clips: list[float] | None = None,
) -> None:
    """The aggregate is finite, every value within the clip the protocol
    promised (each site's values were clipped to +-clip, so their weighted mean
    is too), and its L2 norm within clip x sqrt(values), the bound the clip
    implies. Raises `AggregateRejected` naming the first check that fails."""
    clips = tensor_clips or [clip] * len(arrays)
    if len(clips) != len(arrays):
        raise AggregateRejected(
            f"round {rnd}: check 'form' failed: {len(arrays)} arrays for "
            f"{len(clips)} clips"
        )
    squares, bound = 0.0, 0.0
    for i, (array, c) in enumerate(zip(arrays, clips, strict=True)):
        values = np.asarray(array, np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            raise AggregateRejected(
                f"round {rnd}: check 'finite' failed: array {i} holds "
                f"{int((~finite).sum())} NaN or infinite values; the round is "
                "discarded"
            )
        peak = float(np.abs(values).max()) if values.size else 0.0
        if peak > c * (1 + RELATIVE_SLACK):
            raise AggregateRejected(
                f"round {rnd}: check 'clip' failed: array {i} reaches {peak:.6g}, "
                f"outside the +-{c:g} every site's values were clipped to; the "
                "round is discarded"
            )
        squares += float(np.square(values).sum())
        bound += c * c * values.size
    if math.sqrt(squares) > math.sqrt(bound) * (1 + RELATIVE_SLACK):
        raise AggregateRejected(
            f"round {rnd}: check 'norm' failed: the update's L2 norm "
            f"{math.sqrt(squares):.6g} exceeds {math.sqrt(bound):.6g} (clip x "
            "sqrt(values)); the round is discarded"
        )
