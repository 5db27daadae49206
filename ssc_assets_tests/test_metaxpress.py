"""MetaXpress classic layout: names, HTD, folder scanning."""

import shutil

import numpy as np
import pytest
import tifffile

from ssc_assets.core.ingest.channels import ChannelMap
from ssc_assets.core.ingest.metaxpress import (
    expected_images,
    normalize_well,
    parse_htd,
    parse_image_name,
    sanitize_plate_name,
    scan_plate,
)
from ssc_assets_tests.conftest import GUID


@pytest.mark.parametrize(
    "name, expected",
    [
        (f"P1_B03_s2_w1{GUID}.tif", ("P1", "B03", 2, 1, False, GUID)),
        ("P1_B03_s2_w3.tif", ("P1", "B03", 2, 3, False, None)),
        ("P1_B03_w2.TIF", ("P1", "B03", 1, 2, False, None)),  # single-site plate
        ("P1_B03_s4.tiff", ("P1", "B03", 4, 1, False, None)),  # single-channel plate
        (f"My_Plate_2_H12_s1_w4_thumb{GUID}.tif", ("My_Plate_2", "H12", 1, 4, True, GUID)),
        (f"p1_b03_s1_w1{GUID.lower()}.tif", ("p1", "B03", 1, 1, False, GUID)),
    ],
)
def test_parse_image_name(name, expected):
    p = parse_image_name(name)
    assert (p.plate, p.well, p.site, p.wavelength, p.thumb, p.guid) == expected


@pytest.mark.parametrize("name", ["notes.txt.tif", "P1_Z03_s1_w1.tif", "P1_B03_s1_w1.png"])
def test_parse_image_name_rejects(name):
    assert parse_image_name(name) is None


def test_wells_and_keys():
    assert normalize_well("b3") == "B03" and normalize_well("H012") == "H12"
    with pytest.raises(ValueError):
        normalize_well("Q1")
    assert sanitize_plate_name("Plate 1 (rep.2)") == "Plate_1_rep_2"


def test_parse_htd(plate_factory):
    plate = plate_factory(wells=("A01", "B03", "H12"), n_sites=3, n_wave=3)
    htd = parse_htd(next(plate.rglob("*.HTD")))
    assert (htd.x_wells, htd.y_wells, htd.n_wavelengths) == (12, 8, 3)
    assert htd.wells == ("A01", "B03", "H12")
    assert htd.sites == (1, 2, 3)
    assert htd.wave_names == {1: "DAPI", 2: "FITC", 3: "TRITC"}
    assert len(expected_images(htd, None, [1, 2, 3])) == 3 * 3 * 3


def test_scan_layout_thumbs_zsteps_timepoints(plate_factory):
    plate = plate_factory(wells=("B02", "B03"), n_sites=2, n_wave=3)
    tp1 = next(plate.rglob("TimePoint_1"))
    # z-planes next to projections are silently ignored
    z = tp1 / "ZStep_1"
    z.mkdir()
    shutil.copy(next(tp1.glob("TESTPLATE_B02_s1_w1*.tif")), z / f"TESTPLATE_B02_s1_w1{GUID}.tif")
    # a z-plane without a projection is reported
    tifffile.imwrite(z / "TESTPLATE_B04_s1_w1.tif", np.zeros((64, 64), np.uint16))
    # a second time point is indexed but not used
    tp2 = tp1.parent / "TimePoint_2"
    tp2.mkdir()
    shutil.copy(next(tp1.glob("TESTPLATE_B02_s1_w1*.tif")), tp2 / "TESTPLATE_B02_s1_w1.tif")
    scan = scan_plate(plate)
    assert len(scan.images) == 2 * 2 * 3
    rel = scan.images["path"].str.slice(len(str(plate)))
    assert not rel.str.contains("thumb|ZStep|TimePoint_2").any()
    assert scan.timepoints == [1, 2]
    reasons = " ".join(scan.excluded["reason"])
    assert "ZStep_1 without a projection" in reasons and "time point 2" in reasons
    assert len(scan.excluded) == 2
    assert scan.htd is not None and scan.problems == []


def test_scan_time_point_selection(plate_factory):
    plate = plate_factory(wells=("B02",), n_sites=1, n_wave=1, thumbs=False)
    tp1 = next(plate.rglob("TimePoint_1"))
    tp2 = tp1.parent / "TimePoint_2"
    tp2.mkdir()
    tifffile.imwrite(tp2 / "TESTPLATE_B02_s1_w1.tif", np.ones((64, 64), np.uint16))
    scan = scan_plate(plate, time_point=2)
    assert scan.images["path"].str.contains("TimePoint_2").all() and len(scan.images) == 1


def test_unknown_wavelength_and_duplicates(plate_factory):
    plate = plate_factory(wells=("B02",), n_sites=1, n_wave=3, thumbs=False)
    tp1 = next(plate.rglob("TimePoint_1"))
    tifffile.imwrite(tp1 / "TESTPLATE_B02_s1_w5.tif", np.ones((64, 64), np.uint16))
    # the same site/channel again in a later acquisition of the same plate
    later = plate / "2024-02-01" / "2000" / "TimePoint_1"
    later.mkdir(parents=True)
    dup = later / "TESTPLATE_B02_s1_w1.tif"
    tifffile.imwrite(dup, np.ones((64, 64), np.uint16))
    scan = scan_plate(plate)
    ex = scan.excluded.set_index("path")["reason"]
    assert "unknown wavelength w5" in ex[str(tp1 / "TESTPLATE_B02_s1_w5.tif")]
    w1 = scan.images[scan.images.wavelength == 1]
    assert w1["path"].tolist() == [str(dup)]  # the later acquisition wins
    assert any("duplicate of " + str(dup) in r for r in ex.values)


def test_channel_map_parsing_and_htd_cross_check():
    cmap = ChannelMap.from_string("w1=nuclei, w2=actin, 3=borders")
    assert cmap.name_of(2) == "actin" and cmap.name_of(4) is None
    problems = cmap.check_against_htd({1: "DAPI", 2: "FITC", 3: "TRITC", 5: "Brightfield"})
    assert any("WaveName2='FITC'" in p and "actin" in p for p in problems)
    assert any("w5" in p for p in problems)
    assert ChannelMap().check_against_htd({1: "DAPI", 2: "FITC", 3: "TRITC", 4: "Cy5"}) == []
