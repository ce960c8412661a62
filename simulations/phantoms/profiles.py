"""Scanner profiles of the phantom sites and their patient counts per class."""

from __future__ import annotations

from dataclasses import dataclass

COVID = 1
OTHER = 0

# Lowest HU a slice can hold (air is -1000).
MIN_HU = -1024


@dataclass(frozen=True)
class SiteProfile:
    """Scanner / reconstruction settings of one site."""

    name: str
    id_prefix: str
    role: str
    manufacturer: str
    model: str
    institution: str
    kvp: float
    kernel: str
    matrix: int
    fov_mm: float
    slice_thickness: float
    rescale_intercept: float
    bits_stored: int
    padding_value: int | None  # raw stored value outside the FOV (None: air)
    blur_mm: float  # Gaussian sd emulating the reconstruction kernel
    noise_hu: float  # noise sd for an average-sized patient
    noise_corr_px: float  # Gaussian sd correlating the noise (smooth kernels)

    @property
    def pixel_spacing(self) -> float:
        return self.fov_mm / self.matrix

    @property
    def hu_range(self) -> tuple[int, int]:
        """HU values representable with this BitsStored/intercept (signed data)."""
        top = 2 ** (self.bits_stored - 1) - 1 + int(self.rescale_intercept)
        return MIN_HU, min(top, 3071)


PROFILES: dict[str, SiteProfile] = {
    p.name: p
    for p in (
        SiteProfile(
            name="hospital_a_ge",
            id_prefix="A-GE",
            role="train",
            manufacturer="GE MEDICAL SYSTEMS",
            model="Revolution",
            institution="Hospital A",
            kvp=120.0,
            kernel="LUNG",
            matrix=512,
            fov_mm=360.0,
            slice_thickness=1.0,
            rescale_intercept=-1024.0,
            bits_stored=12,
            padding_value=-2000,
            blur_mm=0.3,
            noise_hu=25.0,
            noise_corr_px=0.0,
        ),
        SiteProfile(
            name="hospital_a_neuviz",
            id_prefix="A-NV",
            role="train",
            manufacturer="Neusoft",
            model="NeuViz 128",
            institution="Hospital A",
            kvp=120.0,
            kernel="F20",
            matrix=512,
            fov_mm=380.0,
            slice_thickness=5.0,
            rescale_intercept=-1024.0,
            bits_stored=16,
            padding_value=-2000,
            blur_mm=1.1,
            noise_hu=12.0,
            noise_corr_px=0.9,
        ),
        SiteProfile(
            name="hospital_b",
            id_prefix="B",
            role="external",
            manufacturer="Neusoft",
            model="NeuViz 64",
            institution="Hospital B",
            kvp=110.0,
            kernel="F30",
            matrix=256,
            fov_mm=350.0,
            slice_thickness=5.0,
            rescale_intercept=0.0,
            bits_stored=16,
            padding_value=None,
            blur_mm=0.8,
            noise_hu=15.0,
            noise_corr_px=0.5,
        ),
    )
}

SITE_ROLES: dict[str, str] = {name: p.role for name, p in PROFILES.items()}
_SITE_INDEX = {name: i for i, name in enumerate(PROFILES)}


@dataclass(frozen=True)
class PhantomSite:
    """One site of a phantom study: its scanner profile (named for the site) and
    its patients per class. Scenarios (simulations/scenarios.py) build these."""

    profile: SiteProfile
    n_covid: int
    n_other: int

    @property
    def name(self) -> str:
        return self.profile.name


# Patient counts of the original study: hospital A (split over its two scanners)
# and the external hospital B, as (n_covid, n_other).
_HOSPITAL_A = (83, 83)
_HOSPITAL_B = (15, 20)
_MIN_PER_CLASS = 2


def site_counts(scale: float = 1.0) -> dict[str, tuple[int, int]]:
    """Return {site: (n_covid, n_other)} for a study scaled by ``scale``."""
    if scale <= 0:
        raise ValueError("scale must be positive")
    a_covid = round(_HOSPITAL_A[0] * scale)
    a_other = round(_HOSPITAL_A[1] * scale)
    counts = {
        # The odd patient of each class goes to a different scanner so the two
        # A sites stay balanced overall.
        "hospital_a_ge": ((a_covid + 1) // 2, a_other // 2),
        "hospital_a_neuviz": (a_covid // 2, (a_other + 1) // 2),
        "hospital_b": (round(_HOSPITAL_B[0] * scale), round(_HOSPITAL_B[1] * scale)),
    }
    return {
        site: (max(_MIN_PER_CLASS, c), max(_MIN_PER_CLASS, o))
        for site, (c, o) in counts.items()
    }


def paper_sites(scale: float = 1.0) -> list[PhantomSite]:
    """The study's three sites (hospital A's two scanners, hospital B)."""
    return [
        PhantomSite(PROFILES[name], *counts)
        for name, counts in site_counts(scale).items()
    ]
