"""Synthetic chest-CT phantom study, written as real DICOM for three scanner sites.

Each site mimics one scanner (vendor tags, matrix, slice thickness, rescale and
padding convention, reconstruction kernel, noise). Patients are COVID-19 (label 1,
mostly bilateral peripheral lower-lobe ground-glass opacities) or other pneumonia
(label 0, mostly unilateral lobar consolidation). The lesion "HU mass" is balanced
between classes so that global intensity statistics do not separate them; the
signal is in the texture, density and location of the findings.

Everything is a deterministic function of ``seed``: generators are keyed by
(seed, site, purpose, patient, slice) so one patient can be re-rendered alone
(the tests do this to check the HU round trip).

- `profiles`: the sites' scanner profiles and their patients per class.
- `patients`: each patient's anatomy, findings and slice positions.
- `geometry`: drawing helpers (fields, ellipses, splats, trees, masks).
- `thorax`: the anatomy of one slice, and its vessels.
- `lesions`: ground-glass opacities and consolidation.
- `render`: a patient's slices, with kernel blur and noise.
- `dicom_writer`: DICOM files and labels.csv per site.
"""

from __future__ import annotations

# `noqa: F401`: public before the split though outside __all__; still importable here.
from simulations.phantoms.dicom_writer import stored_pixels, write_sites, write_study
from simulations.phantoms.geometry import BoolImage, FloatImage  # noqa: F401
from simulations.phantoms.patients import (
    SLICE_CHOICES,  # noqa: F401
    Anatomy,  # noqa: F401
    Findings,  # noqa: F401
    PatientSpec,
    plan_phantom_site,
    plan_site,
)
from simulations.phantoms.profiles import (
    COVID,
    MIN_HU,  # noqa: F401
    OTHER,
    PROFILES,
    SITE_ROLES,
    PhantomSite,
    SiteProfile,
    paper_sites,
    site_counts,
)
from simulations.phantoms.render import (
    PhantomSlice,
    iter_site,
    phantom_hu,
    render_patient,
)
from simulations.phantoms.thorax import (  # noqa: F401
    AIR_HU,
    BONE_HU,
    FAT_HU,
    LIVER_HU,
    LUNG_HU,
    SOFT_HU,
)

__all__ = [
    "COVID",
    "OTHER",
    "PROFILES",
    "SITE_ROLES",
    "PatientSpec",
    "PhantomSite",
    "PhantomSlice",
    "SiteProfile",
    "iter_site",
    "paper_sites",
    "phantom_hu",
    "plan_phantom_site",
    "plan_site",
    "render_patient",
    "site_counts",
    "stored_pixels",
    "write_sites",
    "write_study",
]
