"""Scenarios build their sites with the right patients, by patient, with one
external site that never trains."""

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from common.splits import split_patients
from simulations.scenarios import (
    MANIFEST,
    ScenarioError,
    build_scenario,
    load_scenario,
    parse_override,
    phantom_sites,
    scenario_names,
)

SCALE = 0.1  # 4-10 patients a site, one slice each: seconds


def _labels(site_dir: Path) -> dict[str, int]:
    with open(site_dir / "labels.csv", newline="") as fh:
        return {row["patient_id"]: int(row["label"]) for row in csv.DictReader(fh)}


def _roster(sim_sites: str) -> list[tuple[str, str]]:
    return [tuple(item.split(":")) for item in sim_sites.split(",")]


def test_every_built_in_scenario_loads_with_one_external_and_two_or_more_trainers():
    assert {"paper", "scanner-shift", "label-skew", "size-skew", "real-images"} <= set(
        scenario_names()
    )
    for name in ("scanner-shift", "label-skew", "size-skew"):
        roles = [s.role for s in load_scenario(name).sites]
        assert roles.count("external") == 1 and roles.count("train") >= 2, name


@pytest.mark.parametrize("name", ["scanner-shift", "label-skew", "size-skew"])
def test_phantom_scenarios_write_their_sites_by_patient(tmp_path, name):
    scenario = load_scenario(name)
    roster = _roster(build_scenario(scenario, tmp_path, SCALE, seed=3, slices=1))
    assert roster == [(s.name, s.role) for s in scenario.sites]
    planned = {s.name: s for s in phantom_sites(scenario, SCALE, seed=3)}
    seen: set[str] = set()
    for site, _ in roster:
        labels = _labels(tmp_path / site)
        folders = {p.name for p in (tmp_path / site / "dicom").iterdir()}
        assert folders == set(labels)  # every patient folder is labelled
        assert not seen & set(labels), f"{site} shares patients with another site"
        seen |= set(labels)
        n_covid = sum(labels.values())
        assert (n_covid, len(labels) - n_covid) == (
            planned[site].n_covid,
            planned[site].n_other,
        )
        # each training site's split is by patient: no patient in two splits
        if dict(roster)[site] == "train":
            groups = split_patients(
                [
                    type("P", (), {"patient_id": p, "label": y})
                    for p, y in labels.items()
                ],
                0.1,
                0.1,
                0,
            )
            ids = [p.patient_id for g in groups.values() for p in g]
            assert len(ids) == len(set(ids)) == len(labels)
    # the same data dir is reused for the same scenario, refused for another
    assert build_scenario(scenario, tmp_path, SCALE, 3, 1) == ",".join(
        f"{n}:{r}" for n, r in roster
    )
    with pytest.raises(ScenarioError, match="another scenario or setting"):
        build_scenario(scenario, tmp_path, SCALE, seed=4, slices=1)


def test_findings_slice_choice_keeps_the_patients_and_moves_the_slices(tmp_path):
    scenario = load_scenario("label-skew")
    dirs = {c: tmp_path / c for c in ("even", "findings")}
    for choice, data in dirs.items():
        build_scenario(scenario, data, SCALE, 0, 2, slice_choice=choice)

    def heights(data: Path, site: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for f in sorted((data / site / "dicom").rglob("*.dcm")):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            out.setdefault(f.parent.name, []).append(float(ds.ImagePositionPatient[2]))
        return {k: sorted(v) for k, v in sorted(out.items())}

    moved = 0
    for site in scenario.sites:
        assert _labels(dirs["even"] / site.name) == _labels(
            dirs["findings"] / site.name
        )
        even, findings = (heights(d, site.name) for d in dirs.values())
        assert even.keys() == findings.keys()
        moved += sum(even[p] != findings[p] for p in even)
    assert moved > 0
    with pytest.raises(ScenarioError, match="another scenario or setting"):
        build_scenario(scenario, dirs["findings"], SCALE, 0, 2)  # even asked


def test_scanner_shift_sites_carry_their_scanners_conventions(tmp_path):
    scenario = load_scenario("scanner-shift")
    build_scenario(scenario, tmp_path, SCALE, seed=0, slices=1)
    seen = set()
    for site in scenario.sites:
        first = next((tmp_path / site.name / "dicom").rglob("*.dcm"))
        ds = pydicom.dcmread(first, stop_before_pixels=True)
        profile = scenario.scanners[site.scanner]
        assert ds.Manufacturer == profile.manufacturer
        assert float(ds.SliceThickness) == profile.slice_thickness
        assert ds.Rows == profile.matrix
        assert float(ds.RescaleIntercept) == profile.rescale_intercept
        assert ds.get("PixelPaddingValue") == profile.padding_value
        seen.add(
            (ds.Manufacturer, float(ds.SliceThickness), ds.Rows, ds.ConvolutionKernel)
        )
    assert len(seen) == 5  # five different scanners
    thickness = {t for _, t, _, _ in seen}
    matrices = {r for _, _, r, _ in seen}
    assert {1.0, 5.0} <= thickness and {256, 512} <= matrices


def test_label_skew_draws_each_training_sites_mix_and_alpha_controls_it():
    def covid_shares(alpha: float, seed: int) -> list[float]:
        scenario = load_scenario(
            "label-skew", parse_override(f"label-skew.alpha={alpha}")
        )
        sites = phantom_sites(scenario, 1.0, seed)
        return [
            s.n_covid / (s.n_covid + s.n_other)
            for s in sites
            if s.profile.role == "train"
        ]

    skewed = [abs(f - 0.5) for seed in range(5) for f in covid_shares(0.1, seed)]
    mild = [abs(f - 0.5) for seed in range(5) for f in covid_shares(100.0, seed)]
    assert np.mean(skewed) > 0.3 > 0.1 > np.mean(mild)
    assert covid_shares(0.5, 1) == covid_shares(0.5, 1)  # a function of the seed


def test_size_skew_has_one_large_site():
    sites = [
        s
        for s in phantom_sites(load_scenario("size-skew"), 1.0, 0)
        if s.profile.role == "train"
    ]
    sizes = sorted(s.n_covid + s.n_other for s in sites)
    assert sizes[-1] >= 5 * sizes[0]


def _image_collection(root: Path) -> Path:
    """<root>/<label>/<patient>/*.png for 3 hospitals x 4 patients, + manifest."""
    rng = np.random.default_rng(0)
    rows = []
    for h, hospital in enumerate(("north", "south", "east")):
        for i in range(4):
            patient = f"{hospital}-{i}"
            folder = root / "images" / ("covid" if i % 2 else "other") / patient
            folder.mkdir(parents=True)
            for j in range(2):
                pixels = rng.integers(0, 255, (32, 32), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{j}.png")
            rows.append((patient, hospital, h))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient", "hospital", "source"])
        writer.writerows(rows)
    return manifest


def _images_settings(tmp_path, manifest) -> dict:
    """real-images settings: the collection under tmp_path/images, east held out."""
    return {
        "images": {
            "root": str(tmp_path / "images"),
            "manifest": str(manifest),
            "external": "east",
        }
    }


def test_real_images_split_into_sites_by_manifest_without_touching_the_source(tmp_path):
    manifest = _image_collection(tmp_path)
    before = {p: p.read_bytes() for p in (tmp_path / "images").rglob("*.png")}
    settings = _images_settings(tmp_path, manifest)
    data = tmp_path / "data"
    roster = _roster(
        build_scenario(load_scenario("real-images", settings), data, 1.0, 0, 1)
    )
    assert roster == [("east", "external"), ("north", "train"), ("south", "train")]
    for site, _ in roster:
        patients = {p.name for p in (data / site).glob("*/*")}
        assert patients == {f"{site}-{i}" for i in range(4)}
        files = list((data / site).rglob("*.png"))
        # regular files (ingest follows no link out of a site): hard links
        assert len(files) == 8 and not any(f.is_symlink() for f in files)
        assert all(f.stat().st_nlink == 2 for f in files)
    assert (data / MANIFEST).is_file()
    assert before == {p: p.read_bytes() for p in (tmp_path / "images").rglob("*.png")}


def test_real_images_errors_name_what_is_wrong(tmp_path):
    manifest = _image_collection(tmp_path)
    root = str(tmp_path / "images")

    def build(**images):
        settings = {"images": {"root": root, "manifest": str(manifest), **images}}
        return build_scenario(
            load_scenario("real-images", settings), tmp_path / "d", 1.0, 0, 1
        )

    with pytest.raises(ScenarioError, match="images.external 'west' is not a site"):
        build(external="west")
    with pytest.raises(ScenarioError, match="slice choice 'findings'"):
        build_scenario(
            load_scenario("real-images", {"images": {"root": root}}),
            tmp_path / "d",
            1.0,
            0,
            1,
            slice_choice="findings",
        )
    with pytest.raises(ScenarioError, match="images.root"):
        build(root=str(tmp_path / "nowhere"), external="east")
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:-1]) + "\n")  # east-3 unlisted
    with pytest.raises(ScenarioError, match="does not list 1 patient"):
        build(external="east")


def test_bad_scenario_files_are_refused_with_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[sites]]\nname = "a"\nrole = "train"\nscaner = "x"\n')
    with pytest.raises(ScenarioError, match="unknown key 'scaner'"):
        load_scenario(str(bad))
    bad.write_text(
        '[[sites]]\nname = "a"\nrole = "train"\n[[sites]]\nname = "b"\nrole = "train"\n'
    )
    with pytest.raises(ScenarioError, match="exactly one external"):
        load_scenario(str(bad))
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario("no-such-scenario")


def test_real_images_take_labels_from_the_manifests_label_column(tmp_path):
    """Per-patient folders without any label in their names: the manifest's
    label column (0/1 or words) labels them; a bad value names its line."""
    rng = np.random.default_rng(1)
    rows = []
    for h, hospital in enumerate(("north", "south", "east")):
        for i in range(4):
            patient = f"person{h}{i}"
            (tmp_path / "images" / patient).mkdir(parents=True)
            pixels = rng.integers(0, 255, (32, 32), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / patient / "1.png")
            rows.append((patient, hospital, "COVID" if i % 2 else "0"))
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([("patient", "hospital", "label"), *rows])
    settings = _images_settings(tmp_path, manifest)
    data = tmp_path / "data"
    build_scenario(load_scenario("real-images", settings), data, 1.0, 0, 1)
    assert {p.name for p in (data / "north" / "COVID").iterdir()} == {
        "person01",
        "person03",
    }
    assert {p.name for p in (data / "north" / "NonCOVID").iterdir()} == {
        "person00",
        "person02",
    }
    manifest.write_text(
        manifest.read_text().replace("person10,south,0", "person10,south,maybe")
    )
    with pytest.raises(ScenarioError, match=r"manifest.csv:6: label 'maybe'"):
        build_scenario(
            load_scenario("real-images", settings), tmp_path / "d", 1.0, 0, 1
        )
