"""Store an ingest's series: one array per series, from the decoded frames' packs
or older arrays (renamed into place or copied), with the lung share of each
slice the lung policy needs."""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from common.ingest.cache import copy_rows, read_array, row_source
from common.ingest.packs import whole_packs
from common.ingest.policy import from_unit, lung_fraction, select_slices
from common.ingest.report import outcome
from common.ingest.series import SeriesPlan

if TYPE_CHECKING:
    from common.ingest.pipeline import _Run

log = logging.getLogger(__name__)


def assemble(
    run: _Run, plans: list[SeriesPlan], dropped: list[SeriesPlan], outcomes: dict
) -> list[tuple[SeriesPlan, list[int], Path]] | None:
    """One array per series (kept ones, and complete dropped ones so that a
    policy change needs no decoding); None if a cached array was unreadable."""
    kept, index, opened, copies, series = [], {}, {}, [], []
    for plan, chosen in [(p, True) for p in plans] + [(p, False) for p in dropped]:
        refs = [(ref.key, ref.frame) for ref in plan.slices]
        if not chosen and not all(ref in run.stored for ref in refs):
            continue
        series_key = _series_key(run, plan)
        path = run.cache.series_path(run.pixel_key, series_key)
        if series_key not in run.index:
            rows = _series_rows(run, plan, opened)
            if rows is None:
                return None
            copies.append((path, rows))
        series.append((plan, chosen, refs, series_key, path))
    _write_series(run, copies)
    for plan, chosen, refs, series_key, path in series:
        if chosen and run.config.slice_policy == "lung":
            _measure_lungs(run, plan, path)
        index[series_key] = [
            [*ref, *_json_floats(*run.stored[ref][2:], run.lungs.get(ref))]
            for ref in refs
        ]
        if not chosen:
            continue
        lungs = [run.lungs.get(ref, math.nan) for ref in refs]
        keep, why = select_slices(lungs, run.config)
        used = {plan.slices[i].rel for i in keep}
        for rel in {ref.rel for ref in plan.slices} - used:
            outcomes[rel] = outcome(
                run.site,
                rel,
                "slice-policy",
                why,
                plan.patient_id,
                plan.series_uid,
            )
        if keep:
            kept.append((plan, keep, path))
    run.index = index
    return kept


def _measure_lungs(run: _Run, plan: SeriesPlan, path: Path) -> None:
    """Lung shares the lung policy needs, from the cached slices (no decoding)."""
    todo = [
        (index, (ref.key, ref.frame))
        for index, ref in enumerate(plan.slices)
        if (ref.key, ref.frame) not in run.lungs
    ]
    if not todo:
        return
    array = read_array(path)
    for index, ref in todo:
        low, high = run.stored[ref][2:]
        run.lungs[ref] = (
            math.nan  # image folders: no HU
            if math.isnan(low)
            else lung_fraction(from_unit(array[index], low, high))
        )


def _series_rows(
    run: _Run, plan: SeriesPlan, opened: dict
) -> list[tuple[str, int, int]] | None:
    """Where a series' frames are (packs or older arrays); None, after
    forgetting it, if one of those files is unreadable."""
    rows = []
    for ref in plan.slices:
        source, row, _, _ = run.stored[(ref.key, ref.frame)]
        try:
            if source not in opened:
                opened[source] = row_source(source, run.config.image_size)
            base, count = opened[source]
            if not 0 <= row < count:
                raise IndexError(f"row {row} of {count}")
            rows.append((source, base, row))
        except (OSError, ValueError, IndexError) as err:
            log.warning("%s: cached array unreadable (%s); decoding again", source, err)
            run.stored = {k: v for k, v in run.stored.items() if v[0] != source}
            run.index.pop(Path(source).stem, None)
            Path(source).unlink(missing_ok=True)
            return None
    return rows


def _write_series(run: _Run, copies: list[tuple[Path, list]]) -> None:
    """Write series arrays from their rows: a pack that holds exactly one
    series' rows in order is renamed into place (see `SeriesBuffer`); the
    others are copied. The kernel copies the bytes (GIL released), so with
    several workers as many threads copy at once."""
    size = run.config.image_size
    renames, copies = whole_packs(copies, run.cache.packs_dir(run.pixel_key), size)
    threads = min(run.config.workers, len(copies))
    if threads <= 1:
        for path, rows in copies:
            copy_rows(path, rows, size)
    else:
        with ThreadPoolExecutor(threads) as pool:
            jobs = [pool.submit(copy_rows, path, rows, size) for path, rows in copies]
            for job in jobs:
                job.result()
    _rename_packs(run, renames)


def _rename_packs(run: _Run, renames: list[tuple[str, Path]]) -> None:
    """Packs become series arrays; what pointed at a pack points at its array
    (renamed after the copies: none of them reads a renamed pack)."""
    if not renames:
        return
    moved = {}
    for source, path in renames:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, path)
        moved[source] = str(path)
    for ref, (source, row, low, high) in run.stored.items():
        if source in moved:
            run.stored[ref] = (moved[source], row, low, high)


def _series_key(run: _Run, plan: SeriesPlan) -> str:
    members = "\n".join(f"{ref.key}:{ref.frame}" for ref in plan.slices)
    return xxhash.xxh3_128_hexdigest(f"{run.pixel_key}\n{members}".encode())


def _json_floats(*values: float | None) -> list[float | None]:
    return [None if v is None or math.isnan(v) else v for v in values]
