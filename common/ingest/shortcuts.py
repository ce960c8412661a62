"""Shortcut check: how well file-level metadata alone predicts the label.

Public image collections mix formats, colour modes and sizes, often one way per
class (COVID slices scraped as JPEG from papers, the others PNG from a PACS); DICOM
collections can mix scanners one way per class. A model can learn that instead of
the lungs. Each attribute (format, colour mode, width, height, aspect and source
folder for images; source folder, Manufacturer and ManufacturerModelName for
DICOM) gets a patient-grouped cross-validated AUC of a small tree on it alone, and
all of them together; above `WARN_AUC` the report warns. Values are file-level
metadata only (never a patient identifier), and only AUCs leave the report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WARN_AUC = 0.8  # metadata this predictive is a shortcut the model can take
ATTRIBUTES = ("format", "mode", "width", "height", "aspect", "source")
DICOM_ATTRIBUTES = ("source", "manufacturer", "model")
# every name the check reports, in a fixed order: a site sends the server its
# strongest one as an index into this (a number, like all its other metrics)
SHORTCUT_NAMES = (*ATTRIBUTES, "manufacturer", "model", "all")
LABEL_FOLDER = "(label folder)"  # a first folder whose name gives the label
_FOLDS = 5


def image_metadata(path: Path) -> dict[str, str | float]:
    """An image file's metadata from its header (pixels are not decoded)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            return {
                "format": str(image.format or path.suffix.lower()),
                "mode": image.mode,
                "width": float(width),
                "height": float(height),
                "aspect": round(width / max(height, 1), 2),
            }
    except Exception:  # unreadable here: ingest reports the file itself
        return {}


def source_folder(rel: str, words: dict[str, int] | None = None) -> str:
    """The first folder under the site directory ("." for none); a folder whose
    name gives the label is no source, it is the label itself."""
    from pathlib import PurePath

    from common.ingest.image_labels import label_words

    parts = PurePath(rel).parts
    if len(parts) < 2:
        return "."
    if words is not None and label_words(parts[0], words):
        return LABEL_FOLDER
    return parts[0]


def dicom_metadata(path: Path) -> dict[str, str]:
    """A DICOM file's scanner tags (Manufacturer, ManufacturerModelName)."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["Manufacturer", "ManufacturerModelName"],
        )
    except Exception:  # unreadable here: ingest reports the file itself
        return {}
    return {
        "manufacturer": str(ds.get("Manufacturer", "") or "").strip(),
        "model": str(ds.get("ManufacturerModelName", "") or "").strip(),
    }


def shortcut_check(
    rows: list[dict],
    labels: list[int],
    patients: list[str],
    attributes: tuple[str, ...] = ATTRIBUTES,
) -> dict | None:
    """Cross-validated AUC of metadata -> label, per attribute and together;
    None when there are too few patients of a class to cross-validate."""
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.tree import DecisionTreeClassifier

    y = np.asarray(labels)
    groups = np.asarray(patients)
    per_class = [len(set(groups[y == c])) for c in (0, 1)]
    if min(per_class) < 2 or not rows:
        return None
    folds = GroupKFold(min(_FOLDS, min(per_class)))
    aucs: dict[str, float] = {}
    for name in (*attributes, "all"):
        x = _encode(rows, attributes if name == "all" else (name,))
        tree = DecisionTreeClassifier(max_depth=3, min_samples_leaf=2, random_state=0)
        scores = cross_val_predict(
            tree, x, y, groups=groups, cv=folds, method="predict_proba"
        )[:, 1]
        aucs[name] = round(_auc(y, scores), 3)
    worst = max(attributes, key=lambda a: aucs[a])
    warning = None
    if max(aucs.values()) >= WARN_AUC:
        warning = (
            f"shortcut: file metadata alone predicts the label (cross-validated "
            f"AUC {aucs['all']:.2f}; {worst} alone {aucs[worst]:.2f}); re-encode "
            "the images alike or check how each class was collected"
        )
    return {
        "auc": aucs,
        "threshold": WARN_AUC,
        "warning": warning,
        "worst": worst,
    }


def _encode(rows: list[dict], names: tuple[str, ...]) -> np.ndarray:
    """Numbers as they are; text attributes as one column per value."""
    columns = []
    for name in names:
        values = [row.get(name, "") for row in rows]
        if all(isinstance(v, float) for v in values):
            columns.append(np.asarray(values, dtype=float)[:, None])
        else:
            kinds = sorted({str(v) for v in values})
            columns.append(
                np.asarray([[str(v) == k for k in kinds] for v in values], float)
            )
    return np.hstack(columns)


def _auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count half)."""
    pos, neg = scores[y == 1], scores[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
