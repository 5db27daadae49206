"""Every bad input gets a clear error or a QC flag naming the file; the plate folder never changes."""

import shutil

import numpy as np
import pytest
import tifffile

from ssc_assets.core.ingest.platemap import PlateMapError
from ssc_assets.core.ingest.site_tables import (
    PlateError,
    build_raw_sites,
    plate_readiness,
    site_qc_in_process,
    site_table,
)
from ssc_assets_tests.conftest import tree_digest


def run_qc(plate):
    raw = build_raw_sites(plate)
    qc = site_qc_in_process(raw.table)
    return raw, qc, site_table(qc)


def first(plate, pattern):
    return next(plate.rglob(pattern))


@pytest.fixture
def plate(plate_factory):
    return plate_factory(wells=("B02", "B03", "C02", "C03"), n_sites=2, n_wave=4)


def test_good_plate_passes(plate):
    before = tree_digest(plate)
    raw, qc, sites = run_qc(plate)
    assert len(raw.table) == 4 * 2 * 4 and raw.missing == [] and raw.problems == []
    assert sites.passed_qc.all() and len(sites) == 8
    assert set(qc.channel) == {"nuclei", "borders", "actin"}  # mitochondria is not QC-ed
    assert tree_digest(plate) == before


def _damage(path, how):
    if how == "corrupt":
        path.write_bytes(b"this is not a tiff" * 10)
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif how == "uint8":
        tifffile.imwrite(path, np.ones((64, 64), np.uint8))
    elif how == "wrong_shape":
        tifffile.imwrite(path, np.ones((32, 64), np.uint16))
    elif how == "rgb":
        tifffile.imwrite(path, np.ones((64, 64, 3), np.uint16), photometric="rgb")


@pytest.mark.parametrize(
    "how, message",
    [
        ("corrupt", "not a readable TIFF"),
        ("truncated", ""),
        ("uint8", "expected 16-bit (uint16) pixels, got uint8"),
        ("wrong_shape", "shape differs from the plate's image shape (64, 64)"),
        ("rgb", "expected a 2-D single-channel image"),
    ],
)
def test_bad_image_is_flagged_by_name(plate, how, message):
    target = first(plate, "TESTPLATE_C02_s2_w2*[0-9A-F].tif")
    _damage(target, how)
    before = tree_digest(plate)
    raw, qc, sites = run_qc(plate)
    row = qc[qc.path == str(target)].iloc[0]
    assert not row.image_passed and str(target) in row.image_reason and message in row.image_reason
    failed = sites[~sites.passed_qc]
    assert failed[["Metadata_Well", "Metadata_Site"]].values.tolist() == [["C02", 2]]
    assert str(target) in failed.qc_reason.iloc[0]
    assert tree_digest(plate) == before


def test_missing_channel_fails_site_and_check(plate):
    target = first(plate, "TESTPLATE_B03_s1_w3*[0-9A-F].tif")
    target.unlink()
    raw, qc, sites = run_qc(plate)
    assert raw.missing == [("B03", 1, 3)]
    bad = sites[~sites.passed_qc]
    assert bad[["Metadata_Well", "Metadata_Site"]].values.tolist() == [["B03", 1]]
    assert "has no actin file" in bad.qc_reason.iloc[0]


def test_missing_site_reported(plate):
    for f in plate.rglob("TESTPLATE_C03_s2_w*"):
        f.unlink()
    raw, qc, sites = run_qc(plate)
    assert sorted(raw.missing) == [("C03", 2, w) for w in (1, 2, 3, 4)]
    assert len(sites) == 7


def test_duplicate_file_is_excluded_with_reason(plate):
    src = first(plate, "TESTPLATE_B02_s1_w1*[0-9A-F].tif")
    dup = src.parent / "TESTPLATE_B02_s1_w1.tif"
    shutil.copy(src, dup)
    raw = build_raw_sites(plate)
    assert len(raw.table) == 32
    reasons = raw.excluded.set_index("path").reason
    assert any("duplicate of" in r for r in reasons) and (str(dup) in reasons.index or str(src) in reasons.index)


def test_platemap_missing_columns_is_a_clear_error(plate):
    (plate / "platemap.csv").write_text("well,donor\nB02,D1\n")
    with pytest.raises(PlateMapError, match="missing required column"):
        build_raw_sites(plate)


def test_platemap_unknown_wells_and_wells_without_images(plate):
    pm = plate / "platemap.csv"
    pm.write_text(pm.read_text() + "H12,D9,HC,HC,b0\n")
    raw = build_raw_sites(plate)
    assert raw.wells_without_images == ["H12"]
    assert any("not acquired according to" in p and "H12" in p for p in raw.problems)


def test_images_of_wells_not_in_platemap_are_excluded(plate):
    pm = plate / "platemap.csv"
    pm.write_text("\n".join(line for line in pm.read_text().splitlines() if not line.startswith("C03")) + "\n")
    raw = build_raw_sites(plate)
    assert "C03" not in set(raw.table.Metadata_Well)
    assert (raw.excluded.reason == "well C03 is not in platemap.csv").sum() == 8


def test_empty_plate_folder(plate_factory):
    empty = plate_factory.root / "EMPTY"
    empty.mkdir()
    (empty / "platemap.csv").write_text("well,donor_id,condition,group\nB02,D1,HC,HC\n")
    with pytest.raises(PlateError, match="no usable images"):
        build_raw_sites(empty)
    assert not plate_readiness(empty, settle_seconds=0).ready


def test_missing_platemap_is_a_clear_error(plate_factory):
    p = plate_factory(platemap=False)
    with pytest.raises(PlateError, match="no platemap.csv"):
        build_raw_sites(p)
    assert plate_readiness(p, settle_seconds=0).reason == "no platemap.csv yet"


def test_half_copied_plate_is_not_ready(plate):
    files = sorted(plate.rglob("TESTPLATE_C0*_w*[0-9A-F].tif"))
    for f in files[: len(files) // 2]:
        f.unlink()
    state = plate_readiness(plate, settle_seconds=0)
    assert not state.complete and not state.ready and "expected images missing" in state.reason


def test_unsettled_plate_is_not_ready(plate):
    state = plate_readiness(plate, settle_seconds=3600)
    assert state.complete and not state.settled and not state.ready
    assert plate_readiness(plate, settle_seconds=0).ready


def test_unknown_wavelength_is_excluded_and_reported(plate):
    src = first(plate, "TESTPLATE_B02_s1_w1*[0-9A-F].tif")
    shutil.copy(src, src.parent / "TESTPLATE_B02_s1_w6.tif")
    raw = build_raw_sites(plate)
    assert any("unknown wavelength w6" in r for r in raw.excluded.reason)
    assert len(raw.table) == 32


def test_qc_overrides_file(plate):
    """A user's qc_overrides.csv changes the plate's version and the site decisions; bad rows
    are reported with the file and line, never silently applied."""
    before = build_raw_sites(plate).scan.fingerprint
    (plate / "qc_overrides.csv").write_text(
        "well,site,decision,note\nB02,1,fail,scratch in the well\nb3,2,pass,\nC02,1,maybe,unsure\n")
    raw, qc, sites = run_qc(plate)
    assert raw.scan.fingerprint != before  # the sensor sees a new plate version
    assert any("qc_overrides.csv line 4" in p and "maybe" in p for p in raw.problems)
    s = sites.set_index(["Metadata_Well", "Metadata_Site"])
    assert not s.loc[("B02", 1), "passed_qc"] and s.loc[("B02", 1), "qc_reason"].startswith("user decision: fail (scratch")
    assert s.loc[("B03", 2), "qc_decision"] == "user pass" and s.loc[("B03", 2), "passed_qc"]
    assert s.loc[("C02", 1), "qc_decision"] == "auto"
    assert s.passed_qc.sum() == len(s) - 1


def test_override_cannot_pass_an_unreadable_image(plate):
    target = first(plate, "TESTPLATE_B02_s1_w2[0-9A-F]*.tif")
    target.write_bytes(b"not a tiff")
    (plate / "qc_overrides.csv").write_text("well,site,decision\nB02,1,pass\n")
    _, _, sites = run_qc(plate)
    row = sites[(sites.Metadata_Well == "B02") & (sites.Metadata_Site == 1)].iloc[0]
    assert not row.passed_qc and str(target) in row.qc_reason


def test_override_note_with_an_unquoted_comma(plate):
    (plate / "qc_overrides.csv").write_text("well,site,decision,note\nB02,1,pass,bright mitosis, not debris\nB03,1,fail,scratch\n")
    raw, _, sites = run_qc(plate)
    assert not [p for p in raw.problems if "qc_overrides" in p]
    s = sites.set_index(["Metadata_Well", "Metadata_Site"])
    assert s.loc[("B02", 1), "qc_decision"] == "user pass" and s.loc[("B03", 1), "qc_decision"] == "user fail"
    notes = raw.table.drop_duplicates(["Metadata_Well", "Metadata_Site"]).set_index(["Metadata_Well", "Metadata_Site"]).qc_override_note
    assert notes[("B02", 1)] == "bright mitosis, not debris"
