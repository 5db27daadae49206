"""The plate simulator: default output unchanged, and the adversarial options do what they claim.

Expectations are independent of the implementation: digests recorded before the adversarial
options existed, physical ratios (4x less light, 16x smaller nuclei at binning 4), fractions
and the MetaSeries XML read back with ElementTree.
"""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy.ndimage import gaussian_filter

from ssc_assets.core.ingest.platemap import read_platemap
from ssc_assets.core.simulate import (
    FAILURES,
    OBJECTIVES,
    PlateSpec,
    default_wells,
    load_site_truth,
    render_site,
    simulate_adversarial,
    simulate_demo,
    simulate_plate,
    simulate_real_export,
    strong_donors,
)

STEM = re.compile(r"^(?P<plate>.+)_(?P<well>[A-P]\d{2})(?:_s(?P<site>\d+))?(?:_w(?P<w>\d))?")


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def _main_images(plate_dir: Path) -> list[Path]:
    """Site images of time point 1 (no thumbnails, no Z planes), in acquisition order."""
    files = [p for p in plate_dir.glob("*/*/TimePoint_1/*.tif") if "_thumb" not in p.name]
    return sorted(files, key=lambda p: STEM.match(p.name).group(0))


def _pick(plate_dir: Path, well: str, w: int) -> list[Path]:
    return [p for p in _main_images(plate_dir) if STEM.match(p.name)["well"] == well and STEM.match(p.name)["w"] == str(w)]


def _props(path: Path) -> dict[str, str]:
    desc = tifffile.TiffFile(path).pages[0].description
    root = ET.fromstring(desc)
    return {e.get("id"): e.get("value") for e in root.iter() if e.get("id")}


def _plate_digests(plate_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(plate_dir)): _digest(tifffile.imread(p)) for p in sorted(plate_dir.rglob("*.tif"))}


# --------------------------------------------------------------------------- default path


# recorded with the simulator as it was BEFORE the adversarial options (commit 0119cc6)
TINY_DIGESTS = {
    "TINY_B02_s1_w16313B0A9-FF59-10DB-28E0-51237EEC0559.tif": "e6a6ca0ba570834d8a3a016715c73f04c31ceb77",
    "TINY_B02_s1_w27EF6BCC9-D764-643F-51C0-9CABC2A78075.tif": "b453fe4f81b83900668ada04fa9e5420aa8b1c13",
    "TINY_B02_s1_w3BF7C2B83-02B7-F7F0-99A3-15D19EDED3D6.tif": "1a9f4286eeb9fc612149d18809c0a52d7f0417e3",
    "TINY_B02_s1_w46232908C-37E3-75FB-0028-1DFBDF359722.tif": "e0f7783a7c977748ba493d162947ddb4bb943fb3",
}
RENDER_5_128_DIGESTS = {
    "nuclei": "47d2e6d612522be0e3bdca989340e86fd96f473d",
    "borders": "501c351af71dcb2e968a5028109d29f07d65391e",
    "actin": "9a3671714478fda3930d75be60602a23f9fc7720",
    "mitochondria": "3abc8ded425388fa3b9bdd3b5dac60b065a59f80",
}


def test_default_plate_is_byte_identical_to_before(tmp_path):
    plate = simulate_plate(tmp_path / "plates", tmp_path / "truth", "TINY", PlateSpec(wells=("B02",), n_sites=1, image_size=64), seed=11)
    got = {p.name: _digest(tifffile.imread(p)) for p in _main_images(plate)}
    assert got == TINY_DIGESTS  # same pixels AND same file names (GUIDs come from the same generator)
    assert _digest(np.load(tmp_path / "truth" / "TINY" / "flatfield_nuclei.npy")) == "bbf0d2b73c0face0c8de1b9aa9ecb811964677a9"
    assert _digest(np.load(tmp_path / "truth" / "TINY" / "nuclei_labels" / "B02_s1.npy")) == "2c86e329008ce7eda5795705c3e91a3aed8673b2"
    # the main objective's flatfield is also saved under its objective key
    np.testing.assert_array_equal(
        np.load(tmp_path / "truth" / "TINY" / "flatfield_PlanApo-0.75_nuclei.npy"), np.load(tmp_path / "truth" / "TINY" / "flatfield_nuclei.npy")
    )
    imgs, _ = render_site(5, 128, 0.9)
    assert {ch: _digest(v) for ch, v in imgs.items()} == RENDER_5_128_DIGESTS
    # an explicit default pixel size / binning / phenotype gain 0 is the same arithmetic
    imgs2, _ = render_site(5, 128, 0.9, pixel_size_um=0.34, binning=1, exposure_scale=1.0, phenotype_gain=0.0)
    assert {ch: _digest(v) for ch, v in imgs2.items()} == RENDER_5_128_DIGESTS


def test_objectives_keep_historical_values_and_demo_alternates_the_two_demo_objectives(tmp_path):
    assert (OBJECTIVES["PlanApo-0.75"].name, OBJECTIVES["PlanApo-0.75"].na, *OBJECTIVES["PlanApo-0.75"]) == ("20X Plan Apo Lambda", 0.75, 1.0, 6.0)
    assert (OBJECTIVES["ELWD-0.45"].name, OBJECTIVES["ELWD-0.45"].na, *OBJECTIVES["ELWD-0.45"]) == ("20X S Plan Fluor ELWD", 0.45, 0.55, 18.0)
    dim = OBJECTIVES["ELWD-0.45-dim"]
    assert (dim.name, dim.na, dim.gain, dim.read_sd) == ("20X S Plan Fluor ELWD", 0.45, 0.25, 18.0)
    plates = simulate_demo(tmp_path / "p", tmp_path / "t", n_plates=3, seed=0, image_size=32, n_wells=2)
    objectives = [set(read_platemap(p / "platemap.csv")["Metadata_objective"]) for p in plates]
    assert objectives == [{"PlanApo-0.75"}, {"ELWD-0.45"}, {"PlanApo-0.75"}]


# --------------------------------------------------------------------------- adversarial options


def test_adversarial_preset_is_deterministic_and_seed_dependent(tmp_path):
    kw = dict(image_size=48, n_wells=4, n_sites=2)
    a = simulate_adversarial(tmp_path / "a", tmp_path / "ta", seed=5, **kw)
    b = simulate_adversarial(tmp_path / "b", tmp_path / "tb", seed=5, **kw)
    c = simulate_adversarial(tmp_path / "c", tmp_path / "tc", seed=6, **kw)
    assert [p.name for p in a] == ["SSC-ADV-5-SPLIT", "SSC-ADV-5-BLANK", "SSC-ADV-5-SATURATED", "SSC-ADV-5-BLURRED"]
    for pa, pb in zip(a, b):
        assert _plate_digests(pa) == _plate_digests(pb)
        ta = json.loads((tmp_path / "ta" / pa.name / "truth.json").read_text())
        tb = json.loads((tmp_path / "tb" / pb.name / "truth.json").read_text())
        assert ta == tb
    digests_a = {_digest(tifffile.imread(p)) for p in _main_images(a[0])}
    assert digests_a.isdisjoint({_digest(tifffile.imread(p)) for p in _main_images(c[0])})
    offset = json.loads((tmp_path / "ta" / a[0].name / "truth.json").read_text())["camera_offset"]
    assert 100 <= offset <= 200


def test_objective_split_last_wells_use_the_dim_objective(tmp_path):
    wells = ("B02", "B03", "B04", "B05")
    spec = PlateSpec(wells=wells, n_sites=2, image_size=96, objective_split=0.5, n_failed_sites=0, debris_probability=0.0, donors=strong_donors())
    plate = simulate_plate(tmp_path / "p", tmp_path / "t", "SPLIT", spec, seed=4)
    expected = {"B02": "PlanApo-0.75", "B03": "PlanApo-0.75", "B04": "ELWD-0.45-dim", "B05": "ELWD-0.45-dim"}
    pm = read_platemap(plate / "platemap.csv")  # the pipeline's own plate-map reader accepts it
    assert dict(zip(pm["Metadata_Well"], pm["Metadata_objective"])) == expected
    st = load_site_truth(tmp_path / "t", "SPLIT")
    assert dict(zip(st["Metadata_Well"], st["objective"])) == expected
    truth = json.loads((tmp_path / "t" / "SPLIT" / "truth.json").read_text())
    assert {w: v["objective"] for w, v in truth["wells"].items()} == expected
    for well, key in expected.items():
        props = _props(_pick(plate, well, 1)[0])
        assert props["_MagSetting_"] == OBJECTIVES[key].name
        assert float(props["_MagNA_"]) == OBJECTIVES[key].na
    # own vignetting: a flatfield per objective and channel, different from the main one
    tdir = tmp_path / "t" / "SPLIT"
    for ch in ("nuclei", "borders", "actin", "mitochondria"):
        main, second = np.load(tdir / f"flatfield_PlanApo-0.75_{ch}.npy"), np.load(tdir / f"flatfield_ELWD-0.45-dim_{ch}.npy")
        assert second.shape == (96, 96) and abs(float(second.mean()) - 1) < 1e-3
        assert np.abs(main - second).max() > 0.05
    # 4x less light: median signal above the camera offset is ~0.25x in every channel
    for w in (1, 2, 3):
        def above(ws, w=w):
            return np.mean([np.median(tifffile.imread(p).astype(float)) - 100.0 for well in ws for p in _pick(plate, well, w)])
        ratio = above(("B04", "B05")) / above(("B02", "B03"))
        assert 0.18 < ratio < 0.33, (w, ratio)


def test_binning_keeps_the_physical_cell_size():
    # same field of view (256 px at 0.34 um = 64 px at 1.36 um): nuclei cut by the frame alike
    def mean_area(binning: int, size: int) -> float:
        areas = []
        for seed in range(6):
            _, truth = render_site(seed, size, 0.3, pixel_size_um=0.34 * binning, binning=binning)
            counts = np.bincount(truth["nuclei_labels"].ravel())[1:]
            areas.extend(counts[counts > 0])
        return float(np.mean(areas))

    ratio = mean_area(1, 256) / mean_area(4, 64)
    assert 16 / 1.3 < ratio < 16 * 1.3, ratio
    # binning collects b*b more light per pixel: median background above offset ~16x
    img1, _ = render_site(2, 64, 0.3, pixel_size_um=1.36, binning=1)
    img4, _ = render_site(2, 64, 0.3, pixel_size_um=1.36, binning=4)
    r = (np.median(img4["nuclei"]) - 100) / (np.median(img1["nuclei"]) - 100)
    assert 13 < r < 19, r


def test_debris_artifact_covers_2_to_6_percent_and_is_bright_in_every_channel():
    for seed in range(6):
        imgs, truth = render_site(seed, 128, 0.5, failure="debris")
        mask = truth["debris_mask"]
        assert 0.02 <= mask.mean() <= 0.06, mask.mean()
        for ch, img in imgs.items():
            img = img.astype(float)
            bg = np.median(img[~mask])
            brightest_cells = np.quantile(img[~mask], 0.999) - bg
            assert np.median(img[mask]) - bg > 1.2 * brightest_cells, (seed, ch)
    # deterministic
    again, truth2 = render_site(5, 128, 0.5, failure="debris")
    assert _digest(again["actin"]) == _digest(imgs["actin"]) and np.array_equal(truth2["debris_mask"], mask)


def test_strong_phenotype_moves_intensities_with_severity():
    base, _ = render_site(3, 128, 1.0)
    strong, _ = render_site(3, 128, 1.0, phenotype_gain=1.5)

    def signal(img, ch):  # mean counts above camera offset and background
        return float(img[ch].mean()) - 100.0 - {"borders": 350.0, "actin": 300.0}[ch]

    assert 2.2 < signal(strong, "actin") / signal(base, "actin") < 2.8  # x (1 + 1.5 * 1)
    assert 0.5 < signal(strong, "borders") / signal(base, "borders") < 0.7  # x (1 - 0.4 * 1)
    healthy, _ = render_site(3, 128, 0.0)
    healthy_gain, _ = render_site(3, 128, 0.0, phenotype_gain=1.5)
    assert all(np.array_equal(healthy[ch], healthy_gain[ch]) for ch in healthy)  # severity 0: no effect

    donors = strong_donors()
    assert len({d.donor_id for d in donors}) == len(donors) == 9
    severe = [d for d in donors if d.severity >= 0.9]
    assert len(severe) == 3 and all(d.group == "SSCHL" and d.condition == "SSc" for d in severe)
    assert sum(d.condition == "HC" for d in donors) == 3
    assert sum(d.group == "SSC" for d in donors) == 3


def test_plate_failures(tmp_path):
    kw = dict(wells=("B02", "B03"), n_sites=2, image_size=96, n_failed_sites=0)
    clean = simulate_plate(tmp_path / "p", tmp_path / "t", "CLEAN", PlateSpec(**kw), seed=9)
    blank = simulate_plate(tmp_path / "p", tmp_path / "t", "BLANK", PlateSpec(plate_failure="blank", **kw), seed=9)
    sat = simulate_plate(tmp_path / "p", tmp_path / "t", "SAT", PlateSpec(plate_failure="saturated", **kw), seed=9)
    blur = simulate_plate(tmp_path / "p", tmp_path / "t", "BLUR", PlateSpec(plate_failure="blurred", **kw), seed=9)
    read_sd = OBJECTIVES["PlanApo-0.75"].read_sd
    for p in _main_images(blank):
        img = tifffile.imread(p).astype(float)
        assert np.quantile(img, 0.99) - np.median(img) < 4 * read_sd  # camera noise only
        assert abs(np.median(img) - 100.0) < 10
    for p in _main_images(sat):
        assert (tifffile.imread(p) == 65535).mean() > 0.15

    def band(img):  # band-pass (DoG 1.5-4 px): nuclear/junction detail, little pixel noise
        img = img.astype(float)
        return float(np.std(gaussian_filter(img, 1.5) - gaussian_filter(img, 4)))

    for pc, pb in zip(_pick(clean, "B02", 1) + _pick(clean, "B03", 3), _pick(blur, "B02", 1) + _pick(blur, "B03", 3)):
        assert band(tifffile.imread(pb)) < 0.3 * band(tifffile.imread(pc))
    for name, kind in (("BLANK", "blank"), ("SAT", "saturated"), ("BLUR", "blurred"), ("CLEAN", "")):
        st = load_site_truth(tmp_path / "t", name)
        assert len(st) == 4 and set(st["artifact"]) == {kind}
        assert json.loads((tmp_path / "t" / name / "truth.json").read_text())["plate_failure"] == (kind or None)


def test_site_truth_counts_every_artifact_kind(tmp_path):
    spec = PlateSpec(wells=default_wells(6), n_sites=3, image_size=32, n_failed_sites=8, failure_kinds=FAILURES)
    simulate_plate(tmp_path / "p", tmp_path / "t", "ART", spec, seed=2)
    st = load_site_truth(tmp_path / "t", "ART")
    assert list(st.columns) == ["Metadata_Well", "Metadata_Site", "objective", "donor_id", "group", "severity", "artifact"]
    assert len(st) == 18 and len(st.drop_duplicates(["Metadata_Well", "Metadata_Site"])) == 18
    assert st["artifact"].value_counts().to_dict() == {"": 10, "blur": 2, "saturated": 2, "empty": 2, "debris": 2}
    debris_sites = st.loc[st["artifact"] == "debris", ["Metadata_Well", "Metadata_Site"]].itertuples(index=False)
    for well, site in debris_sites:
        assert (tmp_path / "t" / "ART" / "debris_masks" / f"{well}_s{site}.npy").exists()
    truth = json.loads((tmp_path / "t" / "ART" / "truth.json").read_text())
    assert {(f["well"], f["site"], f["kind"]) for f in truth["failed_sites"]} == {
        (r.Metadata_Well, r.Metadata_Site, r.artifact) for r in st.itertuples() if r.artifact
    }
    assert truth["pixel_size_um"] == pytest.approx(0.34) and truth["binning"] == 1


def test_metaseries_xml_and_real_export(tmp_path):
    plate = simulate_real_export(tmp_path / "p", tmp_path / "t", seed=0, image_size=64, n_wells=2)
    assert not list(plate.rglob("*.HTD")) and not list(plate.rglob("*.htd"))
    images = _main_images(plate)
    assert {STEM.match(p.name)["w"] for p in images} == {"1", "2", "3"} and len(images) == 2 * 4 * 3
    times = []
    for p in images:
        props = _props(p)
        m = STEM.match(p.name)
        assert props["_MagSetting_"] == "20X Plan Apo Lambda" and float(props["_MagNA_"]) == 0.75
        assert float(props["spatial-calibration-x"]) == pytest.approx(0.34 * 4)
        assert float(props["spatial-calibration-y"]) == pytest.approx(1.36) and props["spatial-calibration-units"] == "um"
        assert props["pixel-size-x"] == "64" and props["camera-binning-x"] == props["camera-binning-y"] == "4"
        assert props["_IllumSetting_"] == ("DAPI", "FITC", "TRITC")[int(m["w"]) - 1]
        assert float(props["wavelength"]) == (452, 536, 624)[int(m["w"]) - 1]
        assert props["stage-label"] == f"{m['well']} : Site {m['site']}"
        desc = props["Description"]
        assert "Binning: 4 x 4" in desc
        exposure = float(re.search(r"Exposure: ([\d.]+) ms", desc).group(1))
        assert exposure > 0 and "\r\n" in desc  # &#13;&#10; separators decode to CRLF
        times.append(props["acquisition-time-local"])
    assert all(re.fullmatch(r"\d{8} \d\d:\d\d:\d\d\.\d{3}", t) for t in times)
    assert times == sorted(times) and len(set(times)) == len(times)  # increasing per image
    truth = json.loads((tmp_path / "t" / plate.name / "truth.json").read_text())
    assert truth["pixel_size_um"] == pytest.approx(1.36) and truth["binning"] == 4
    # nuclei ~11 px across at 1.36 um/px
    labels = np.load(tmp_path / "t" / plate.name / "nuclei_labels" / "B02_s1.npy")
    counts = np.bincount(labels.ravel())[1:]
    assert 6 < 2 * np.sqrt(np.median(counts[counts > 0]) / np.pi) < 16


def test_metadata_off_and_illum_names(tmp_path):
    spec = PlateSpec(wells=("B02",), n_sites=1, image_size=32, write_metadata=False, write_htd=False, n_failed_sites=0)
    plate = simulate_plate(tmp_path / "p", tmp_path / "t", "BARE", spec, seed=1)
    assert not list(plate.rglob("*.HTD"))
    for p in plate.rglob("*.tif"):
        with tifffile.TiffFile(p) as tf:
            assert 270 not in tf.pages[0].tags  # observed: no ImageDescription tag at all
    spec = PlateSpec(wells=("B02",), n_sites=1, n_channels=2, image_size=32, illum_names=("Hoechst", "GFP"), n_failed_sites=0)
    plate = simulate_plate(tmp_path / "p", tmp_path / "t", "NAMED", spec, seed=1)
    assert [_props(p)["_IllumSetting_"] for p in _main_images(plate)] == ["Hoechst", "GFP"]
    assert '"WaveName1", "Hoechst"' in next(plate.rglob("*.HTD")).read_text()


@pytest.mark.parametrize(
    "kwargs",
    [{"objective": "40X"}, {"second_objective": "nope"}, {"plate_failure": "melted"}, {"failure_kinds": ("fire",)},
     {"objective_split": 1.5}, {"binning": 0}],
)
def test_bad_spec_is_rejected(tmp_path, kwargs):
    with pytest.raises(ValueError):
        simulate_plate(tmp_path / "p", tmp_path / "t", "BAD", PlateSpec(wells=("B02",), n_sites=1, image_size=16, **kwargs), seed=0)
