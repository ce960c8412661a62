"""A hospital's `fedbigbigan` commands: ingest, doctor, site-worker, predict,
reconstruct, privacy-audit, extract (entry points in pyproject.toml; common/commands.py
dispatches)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from common.commands import Command, add_run_config, run_config
from common.config import RunConfig
from common.ingest.config import IngestConfig


def _ingest_arguments(ing: argparse.ArgumentParser) -> None:
    """`fedbigbigan ingest`: a site folder (PACS export) into an ingest cache."""
    from common.ingest.config import (
        IMAGE_CROPS,
        INTENSITY_POLICIES,
        SERIES_POLICIES,
        SLICE_POLICIES,
        IngestConfig,
    )

    d = IngestConfig()
    ing.add_argument("--site-dir", type=Path, required=True, help="read-only")
    ing.add_argument(
        "--labels",
        type=Path,
        help="labels CSV: patient_id,label (DICOM); for image files also "
        "file,label with a path relative to the site or a glob (default: "
        "SITE/labels.csv; image folders without one: label folder names)",
    )
    ing.add_argument(
        "--label-map",
        default="",
        help="label words of the CSV, e.g. covid=1,pneumonia=0 (any case; 0/1 "
        "always work)",
    )
    ing.add_argument("--out", type=Path, required=True, help="cache folder")
    ing.add_argument("--strict", action="store_true", help="stop at the first problem")
    ing.add_argument(
        "--image-size", type=int, default=d.image_size, help="cached slice size, px"
    )
    ing.add_argument(
        "--intensity",
        choices=INTENSITY_POLICIES,
        default=d.intensity,
        help="per-image min-max (the paper) or a fixed HU lung window",
    )
    ing.add_argument(
        "--window-center", type=float, default=d.window_center, help="HU, lung-window"
    )
    ing.add_argument(
        "--window-width", type=float, default=d.window_width, help="HU, lung-window"
    )
    ing.add_argument(
        "--image-crop",
        choices=IMAGE_CROPS,
        default=d.image_crop,
        help="image files: pad to square (keeps the aspect) or crop the centre "
        "square (every slice alike, for collections with shortcuts)",
    )
    ing.add_argument(
        "--slice-policy",
        choices=SLICE_POLICIES,
        default=d.slice_policy,
        help="every slice, lung-bearing slices, or N central ones",
    )
    ing.add_argument(
        "--central-slices",
        type=int,
        default=d.central_slices,
        help="N, with --slice-policy central",
    )
    ing.add_argument(
        "--min-lung-fraction",
        type=float,
        default=d.min_lung_fraction,
        help="lung share of a slice to count as lung-bearing",
    )
    ing.add_argument(
        "--series",
        choices=SERIES_POLICIES,
        default=d.series,
        help="keep one axial CT series per study, or all",
    )
    ing.add_argument(
        "--max-decoded-mb",
        type=int,
        default=d.max_decoded_mb,
        help="refuse a file whose pixels decode to more",
    )
    ing.add_argument(
        "--max-file-mb", type=int, default=d.max_file_mb, help="skip larger files"
    )
    ing.add_argument(
        "--workers", type=int, default=d.workers, help="decoding processes"
    )
    ing.add_argument(
        "--rehash", action="store_true", help="hash every file, trust no mtime"
    )
    ing.add_argument("--quiet", action="store_true", help="no progress bar")


def _ingest(args: argparse.Namespace) -> int:
    """Run ingest; print the summary (problems are in the report)."""
    from common.ingest import IngestConfig, IngestError, ingest_site
    from common.ingest.config import IngestConfigError
    from common.ingest.image_labels import parse_label_map

    logging.getLogger("common.ingest").setLevel(logging.WARNING)  # summary below
    try:
        config = IngestConfig(
            image_size=args.image_size,
            intensity=args.intensity,
            window_center=args.window_center,
            window_width=args.window_width,
            slice_policy=args.slice_policy,
            central_slices=args.central_slices,
            min_lung_fraction=args.min_lung_fraction,
            series=args.series,
            max_decoded_mb=args.max_decoded_mb,
            max_file_mb=args.max_file_mb,
            workers=args.workers,
            image_crop=args.image_crop,
        )
        result = ingest_site(
            args.site_dir,
            args.labels,
            args.out,
            config,
            strict=args.strict,
            progress=not args.quiet,
            rehash=args.rehash,
            label_map=parse_label_map(args.label_map),
        )
    except (IngestError, IngestConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary.text(result.report_path))
    if not result.patients:  # nothing to train on is a failed ingest
        print(f"error: {result.summary.why_nothing_kept()}", file=sys.stderr)
        return 1
    return 0


def _doctor_arguments(doc: argparse.ArgumentParser) -> None:
    doc.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    doc.add_argument("--root-certificates", type=Path, help="the federation's ca.crt")
    doc.add_argument(
        "--auth-supernode-private-key", type=Path, help="this site's auth.key"
    )
    doc.add_argument(
        "--node-config",
        default="",
        help='as for flower-supernode: \'data-dir="/data" role="train"\' or a .toml',
    )
    doc.add_argument("--gpu", action="store_true", help="check that a GPU is visible")
    doc.add_argument("--timeout", type=float, default=10.0, help="seconds per connect")
    add_run_config(doc)


def _doctor(args: argparse.Namespace) -> int:
    from flwr.common.config import parse_config_args

    from client.doctor import run_checks

    config = run_config(args)
    logging.getLogger("common.ingest").setLevel(logging.WARNING)
    try:
        node_config = parse_config_args(
            [args.node_config] if args.node_config else None
        )
    except ValueError as err:
        print(f"error: --node-config: {err}", file=sys.stderr)
        return 2
    checks = run_checks(
        args.superlink,
        args.root_certificates,
        args.auth_supernode_private_key,
        node_config,
        config,
        gpu=args.gpu,
        timeout=args.timeout,
    )
    for check in checks:
        print(f"[{check.status.upper():4s}] {check.name}: {check.detail}")
        if check.fix:
            print(f"       fix: {check.fix}")
    failed = [c.name for c in checks if c.failed]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed")
    return 1 if failed else 0


def _site_worker_arguments(work: argparse.ArgumentParser) -> None:
    work.add_argument(
        "--node-config",
        required=True,
        help="the SuperNode's own --node-config, with site-worker-socket: "
        '\'data-dir="/data" role="train" site-worker-socket="/run/fb/worker.sock"\''
        " or a .toml",
    )


def _site_worker(args: argparse.Namespace) -> int:
    """Serve the node's training messages until stopped (SIGTERM or Ctrl-C)."""
    from flwr.common.config import parse_config_args

    from client.site_worker import WorkerRefused, serve

    try:
        node_config = parse_config_args([args.node_config])
        return serve(node_config)
    except (ValueError, WorkerRefused) as err:
        print(f"error: site-worker: {err}", file=sys.stderr)
        return 2


def _predict_arguments(pred: argparse.ArgumentParser) -> None:
    pred.add_argument("--model", type=Path, required=True, help="a run directory")
    pred.add_argument(
        "--input",
        "--dicom",
        dest="dicom",
        type=Path,
        required=True,
        help="a DICOM series or study folder, an image file (PNG/JPEG/...) or a "
        "folder of images (a patient per folder)",
    )
    pred.add_argument("--cache", type=Path, default=None, help="ingest cache to reuse")


def _predict(args: argparse.Namespace) -> int:
    from client.predict import InputError, predict_dicom

    try:
        predictions, seconds = predict_dicom(args.model, args.dicom, args.cache)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for p in predictions:
        decision = "COVID-19" if p.covid else "other pneumonia"
        print(
            f"{p.patient_id}: score {p.score:.3f} -> {decision} "
            f"(cut-off {p.threshold:.3f} from validation; {p.n_slices} slices)"
        )
    print(f"scored {len(predictions)} patient(s) in {seconds:.1f} s")
    return 0


def _reconstruct_arguments(rec: argparse.ArgumentParser) -> None:
    rec.add_argument("--model", type=Path, required=True, help="a run directory")
    rec.add_argument("--dicom", type=Path, required=True, help="the site's DICOM")
    rec.add_argument("--out", type=Path, required=True, help="PNG to write")
    rec.add_argument("--patients", type=int, default=8, help="patients to show")
    rec.add_argument("--cache", type=Path, default=None, help="ingest cache to reuse")


def _reconstruct(args: argparse.Namespace) -> int:
    from client.reconstruct import site_reconstructions

    print(
        site_reconstructions(
            args.model, args.dicom, args.out, args.patients, args.cache
        )
    )
    return 0


def _privacy_audit_arguments(aud: argparse.ArgumentParser) -> None:
    aud.add_argument("--model", type=Path, required=True, help="a run directory")
    aud.add_argument(
        "--site-dir", type=Path, required=True, help="the site folder (labels.csv)"
    )
    aud.add_argument("--samples", type=int, default=256, help="samples G(z) to check")
    aud.add_argument("--out", type=Path, default=None, help="write the summary here")


def _privacy_audit(args: argparse.Namespace) -> int:
    from client.privacy_audit import audit_site

    summary = audit_site(args.model, args.site_dir, args.samples)
    text = json.dumps(summary, indent=2)
    if args.out is not None:
        args.out.write_text(text)
    print(text)
    return 0


def _extract_arguments(extract: argparse.ArgumentParser) -> None:
    extract.add_argument(
        "--model", type=Path, required=True, help="model.npz or a run directory"
    )
    extract.add_argument(
        "--site-dir", type=Path, required=True, help="site folder with labels.csv"
    )
    extract.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="the site's ingest cache (reused: unchanged files are not decoded)",
    )
    extract.add_argument("--out", type=Path, required=True, help="features.npz")
    extract.add_argument(
        "--batch", type=int, default=32, help="slices per encoder call"
    )
    add_run_config(extract)


def recorded_ingest(model: Path, config: RunConfig) -> IngestConfig:
    """A run directory's recorded ingest options (the slices its model was
    trained on: intensity, image crop, ...); else the command's own."""
    recorded = Path(model) / "config.json"
    if not recorded.is_file():
        return config.ingest
    return RunConfig.from_flat(json.loads(recorded.read_text())).ingest


def _extract(args: argparse.Namespace) -> int:
    """Features of every slice with patient ids and labels (they stay at the site)."""
    import os

    import numpy as np

    from client.site import ingest_config
    from common.ingest import IngestError, default_cache_dir, ingest_site
    from common.ingest.config import IngestConfigError
    from common.model.checkpoint import load_model
    from common.model.dataset import slices_from_ingest

    config = run_config(args)
    if not args.site_dir.is_dir():  # before the model: nothing loaded for a typo
        print(f"error: --site-dir {args.site_dir}: not a folder", file=sys.stderr)
        return 2
    try:
        model = load_model(args.model, devices=config.devices, seed=config.seed)
    except (OSError, ValueError) as err:  # no model there, or not ours
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = dataclasses.replace(
        config, preset=model.preset.name, ingest=recorded_ingest(args.model, config)
    )
    ingest = ingest_config(config)
    try:
        result = ingest_site(
            args.site_dir, None, args.cache or default_cache_dir(args.site_dir), ingest
        )
    except (IngestError, IngestConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not result.patients:  # as ingest: nothing to encode is a failure
        print(f"error: {result.summary.why_nothing_kept()}", file=sys.stderr)
        return 1
    patients = list(result.patients)
    slices = slices_from_ingest(patients, ingest.image_size)
    features = model.encode_all(
        slices.images,
        batch=args.batch,
        outputs=("z_mean", "z_stdev", "z_sample", "avepool_feat", "bn_crelu_feat"),
    )
    patient_ids = np.asarray([p.patient_id for p in patients])[slices.patient]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with tmp.open("wb") as handle:
        np.savez(
            handle,
            **{k: v.astype(np.float32) for k, v in features.items()},
            patient_id=patient_ids,
            label=slices.labels,
        )
    os.replace(tmp, args.out)
    shapes = json.dumps({k: list(v.shape) for k, v in features.items()})
    print(f"{len(slices)} slices of {len(patients)} patients -> {args.out}")
    print(shapes)
    return 0


INGEST = Command(
    "read a site folder (DICOM or image folders) into a cache",
    _ingest_arguments,
    _ingest,
)
DOCTOR = Command("pre-flight checks for a hospital node", _doctor_arguments, _doctor)
SITE_WORKER = Command(
    "keep TensorFlow, the model and the site's data warm for the ClientApp",
    _site_worker_arguments,
    _site_worker,
)
PREDICT = Command(
    "a patient's COVID-19 score from DICOM or images with a trained run",
    _predict_arguments,
    _predict,
)
RECONSTRUCT = Command(
    "a site's own real slices and G(E(x)) under a trained run (stays local)",
    _reconstruct_arguments,
    _reconstruct,
)
PRIVACY_AUDIT = Command(
    "at a site: does the run's global G reproduce this site's slices?",
    _privacy_audit_arguments,
    _privacy_audit,
)
EXTRACT = Command(
    "write E's features (z_mean, ...) of a site's slices",
    _extract_arguments,
    _extract,
)
