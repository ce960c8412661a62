"""Group usable files into patient / study / series, order slices, pick series."""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass, field

from common.ingest.config import IngestConfig
from common.ingest.headers import Header
from common.ingest.reasons import Skip


@dataclass(frozen=True)
class Candidate:
    """A file that passed the per-file checks."""

    rel: str
    key: str
    header: Header


@dataclass(frozen=True)
class SliceRef:
    """One slice: a frame of a cached file, and where it lies on the body axis."""

    rel: str
    key: str
    frame: int
    position: float | None
    instance: int | None = None


@dataclass
class SeriesPlan:
    """The ordered slices of one series (before any slice policy)."""

    patient_id: str
    study_uid: str
    series_uid: str
    number: int | None
    description: str
    thickness: float | None
    slices: list[SliceRef] = field(default_factory=list)

    @property
    def name(self) -> str:
        """How a person finds the series in a PACS viewer."""
        number = "?" if self.number is None else str(self.number)
        return (
            f"series {number} '{self.description}'"
            if self.description
            else (f"series {number}")
        )


def plan_series(
    candidates: list[Candidate], config: IngestConfig
) -> tuple[list[SeriesPlan], list[SeriesPlan], dict[str, Skip]]:
    """Kept series (slices ordered), series not chosen, and per path why not."""
    skips: dict[str, Skip] = {}
    first_with_uid: dict[str, str] = {}
    groups: dict[tuple[str, str, str], SeriesPlan] = {}
    for cand in sorted(candidates, key=lambda c: c.rel):
        h = cand.header
        if h.sop_uid:
            if h.sop_uid in first_with_uid:
                skips[cand.rel] = Skip(
                    "duplicate-uid",
                    f"same SOPInstanceUID {h.sop_uid} as "
                    f"{first_with_uid[h.sop_uid]}; the image was exported twice, "
                    "this copy is not used",
                )
                continue
            first_with_uid[h.sop_uid] = cand.rel
        group = (h.patient_id, h.study_uid, h.series_uid)
        plan = groups.get(group)
        if plan is None:
            plan = groups[group] = SeriesPlan(
                h.patient_id,
                h.study_uid,
                h.series_uid,
                h.series_number,
                h.series_description,
                h.slice_thickness,
            )
        plan.slices.extend(_slices_of(cand))
    for plan in groups.values():
        plan.slices.sort(key=_order)
    plans, dropped = list(groups.values()), []
    if config.series == "one-per-study":
        plans, dropped = _one_per_study(plans, skips)
    plans.sort(key=lambda p: (p.patient_id, p.study_uid, _number(p), p.series_uid))
    return plans, dropped, skips


def _slices_of(cand: Candidate) -> list[SliceRef]:
    h = cand.header
    normal = _normal(h.orientation)
    out = []
    for frame in range(h.frames):
        position = None
        if h.positions is not None and frame < len(h.positions):
            point = h.positions[frame]
            position = (
                sum(p * n for p, n in zip(point, normal, strict=True))
                if normal is not None
                else point[2]
            )
        out.append(SliceRef(cand.rel, cand.key, frame, position, h.instance_number))
    return out


def file_order(rel: str, key: str, header: Header) -> tuple:
    """Where a file's first slice sorts among its series' slices (`_order`)."""
    return _order(_slices_of(Candidate(rel, key, header))[0])


@functools.lru_cache(maxsize=256)  # a series' slices share one orientation
def _normal(orientation: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """Slice normal: positions projected on it order slices along the body axis."""
    if orientation is None:
        return None
    r, c = orientation[:3], orientation[3:]
    n = (
        r[1] * c[2] - r[2] * c[1],
        r[2] * c[0] - r[0] * c[2],
        r[0] * c[1] - r[1] * c[0],
    )
    length = math.sqrt(sum(v * v for v in n))
    return tuple(v / length for v in n) if length > 1e-6 else None


def _order(ref: SliceRef) -> tuple:
    # Slices with a position first (by position); without geometry, by
    # InstanceNumber, then by path (exports name files in acquisition order).
    instance = ref.instance if ref.instance is not None else math.inf
    return (ref.position is None, ref.position or 0.0, instance, ref.rel, ref.frame)


def _number(plan: SeriesPlan) -> int:
    return plan.number if plan.number is not None else 1 << 30


def _one_per_study(
    plans: list[SeriesPlan], skips: dict[str, Skip]
) -> tuple[list[SeriesPlan], list[SeriesPlan]]:
    """Keep one series per study: most slices, then thinnest, then lowest number."""
    studies: dict[tuple[str, str], list[SeriesPlan]] = defaultdict(list)
    for plan in plans:
        studies[(plan.patient_id, plan.study_uid)].append(plan)
    kept, dropped = [], []
    for group in studies.values():
        group.sort(
            key=lambda p: (
                -len(p.slices),
                p.thickness if p.thickness is not None else math.inf,
                _number(p),
                p.series_uid,
            )
        )
        best = group[0]
        kept.append(best)
        dropped.extend(group[1:])
        for other in group[1:]:
            for ref in other.slices:
                skips[ref.rel] = Skip(
                    "other-series",
                    f"{other.name} ({len(other.slices)} slices) is not used: "
                    f"{best.name} ({len(best.slices)} slices) of the same study is "
                    "kept (series policy 'one-per-study')",
                )
    return kept, dropped
