"""What ingest keeps and how it preprocesses: one typed config with defaults."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

SLICE_POLICIES = ("all", "lung", "central")
INTENSITY_POLICIES = ("paper", "lung-window")
SERIES_POLICIES = ("one-per-study", "all")
# image files: "pad" keeps the aspect ratio (padding with the minimum), "centre"
# re-encodes every slice alike: the square centre crop, so no aspect ratio (a
# shortcut in mixed collections) survives into the pixels
IMAGE_CROPS = ("pad", "centre")

# Bump when the cached pixels would change for the same config (a new resampling,
# a fixed bug): every cache entry written by an older version is then ignored.
PREPROCESS_VERSION = 2


class IngestConfigError(ValueError):
    """An ingest option is out of range; the message names the option."""


@dataclass(frozen=True)
class IngestConfig:
    """Options of one ingest run. Only scalar fields, so it maps to a run config."""

    image_size: int = 256  # cached slices are image_size x image_size
    intensity: str = "paper"  # "paper": per-image min-max; "lung-window": fixed
    window_center: float = -600.0  # HU, for intensity="lung-window"
    window_width: float = 1500.0  # HU, for intensity="lung-window"
    slice_policy: str = "all"  # "all", "lung" (lung-bearing) or "central"
    central_slices: int = 16  # N for slice_policy="central"
    min_lung_fraction: float = 0.04  # share of lung-density pixels, for "lung"
    series: str = "one-per-study"  # or "all": every axial CT series of a study
    max_decoded_mb: int = 1024  # refuse files whose header claims more pixels
    max_file_mb: int = 2048  # refuse files larger than this (not read at all)
    workers: int = 1  # processes reading and decoding files
    image_crop: str = "pad"  # image files: "pad" or "centre" (square centre crop)

    def __post_init__(self) -> None:
        checks = [
            (self.image_size >= 8, "image-size must be >= 8"),
            (
                self.intensity in INTENSITY_POLICIES,
                f"intensity must be one of {list(INTENSITY_POLICIES)}",
            ),
            (self.window_width > 0, "window-width must be > 0"),
            (
                self.slice_policy in SLICE_POLICIES,
                f"slice-policy must be one of {list(SLICE_POLICIES)}",
            ),
            (self.central_slices >= 1, "central-slices must be >= 1"),
            (
                0.0 <= self.min_lung_fraction < 1.0,
                "min-lung-fraction must be in [0, 1)",
            ),
            (
                self.series in SERIES_POLICIES,
                f"series must be one of {list(SERIES_POLICIES)}",
            ),
            (self.max_decoded_mb >= 1, "max-decoded-mb must be >= 1"),
            (self.max_file_mb >= 1, "max-file-mb must be >= 1"),
            (self.workers >= 1, "workers must be >= 1"),
            (
                self.image_crop in IMAGE_CROPS,
                f"image-crop must be one of {list(IMAGE_CROPS)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise IngestConfigError(f"ingest config: {message}")

    def pixel_key(self) -> str:
        """Name of the cache folder for pixels made with this config.

        Only the fields that change the cached arrays are part of it: a new slice
        policy or worker count reuses every decoded slice.
        """
        fields: dict[str, object] = {
            "version": PREPROCESS_VERSION,
            "size": self.image_size,
            "intensity": self.intensity,
        }
        if self.intensity == "lung-window":
            fields["window"] = [self.window_center, self.window_width]
        if self.image_crop != "pad":  # the default keeps its caches' names
            fields["crop"] = self.image_crop
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
        return f"{self.image_size}px-{self.intensity}-{digest.hexdigest()[:10]}"

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)
