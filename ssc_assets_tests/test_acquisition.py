"""Acquisition metadata: MetaSeries XML parsing, fallbacks and acquisition groups."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from ssc_assets.core.ingest.acquisition import (
    DEFAULT_PIXEL_SIZE_UM,
    acquisition_frame,
    assign_acquisition_groups,
    fill_acquisition,
    parse_acquisition,
)
from ssc_assets.core.ingest.site_tables import build_raw_sites, plate_readiness
from ssc_assets.core.io.tiff import read_header_description

# Shaped like a real ImageXpress file: PlaneInfo props, custom-props, a MetaSeries block with
# the free-text Description (CR LF as character references), SetInfo.
REAL_XML = (
    '<MetaData><PlaneInfo>'
    '<prop id="camera-binning-x" type="int" value="4"/><prop id="camera-binning-y" type="int" value="4"/>'
    '<prop id="image-name" type="string" value="FITC_05"/>'
    '<prop id="pixel-size-x" type="int" value="512"/><prop id="pixel-size-y" type="int" value="512"/>'
    '<prop id="bits-per-pixel" type="int" value="16"/>'
    '<prop id="spatial-calibration-state" type="bool" value="on"/>'
    '<prop id="spatial-calibration-x" type="float" value="1.3668"/>'
    '<prop id="spatial-calibration-y" type="float" value="1.3668"/>'
    '<prop id="spatial-calibration-units" type="string" value="um"/>'
    '<prop id="stage-position-x" type="float" value="46771.4"/><prop id="stage-position-y" type="float" value="28915.2"/>'
    '<prop id="z-position" type="float" value="9870.37"/>'
    '<prop id="wavelength" type="float" value="536"/>'
    '<prop id="acquisition-time-local" type="time" value="20231107 11:42:09.871"/>'
    '<prop id="stage-label" type="string" value="E07 : Site 1"/>'
    '<custom-prop id="_IllumSetting_" type="string" value="FITC_05"/>'
    '<custom-prop id="_MagNA_" type="float" value="0.75"/>'
    '<custom-prop id="_MagSetting_" type="string" value="20X Plan Apo Lambda"/>'
    '</PlaneInfo><MetaSeries version="1.0">'
    '<prop id="Description" type="string" value="Exposure: 15 ms&#13;&#10;Binning: 4 x 4&#13;&#10;Region: 2048 x 2048, offset at (0, 0)"/>'
    '</MetaSeries><SetInfo/></MetaData>'
)


def test_parse_real_metaseries_xml():
    a = parse_acquisition(REAL_XML)
    assert a["Metadata_Objective"] == "20X Plan Apo Lambda"
    assert a["Metadata_ObjectiveNA"] == 0.75
    assert a["Metadata_PixelSizeUm"] == pytest.approx(1.3668)
    assert a["Metadata_Binning"] == 4
    assert a["Metadata_ExposureMs"] == 15.0
    assert a["Metadata_Illumination"] == "FITC_05"
    assert a["Metadata_WavelengthNm"] == 536.0
    assert a["Metadata_AcquisitionTime"] == "2023-11-07T11:42:09.871000"
    assert a["Metadata_StageLabel"] == "E07 : Site 1"
    assert (a["Metadata_StageXUm"], a["Metadata_StageYUm"], a["Metadata_StageZUm"]) == (46771.4, 28915.2, 9870.37)
    assert a["Metadata_BitDepth"] == 16
    assert a["Metadata_AcquisitionSource"] == "metaseries"


def test_parse_variants():
    # binning only in the Description; exposure in seconds; pixel size in nm
    xml = ('<MetaData><prop id="spatial-calibration-x" value="650"/><prop id="spatial-calibration-units" value="nm"/>'
           '<prop id="Description" value="Exposure: 0.2 s&#13;&#10;Binning: 2 x 2"/></MetaData>')
    a = parse_acquisition(xml)
    assert a["Metadata_PixelSizeUm"] == pytest.approx(0.65)
    assert a["Metadata_Binning"] == 2 and a["Metadata_ExposureMs"] == pytest.approx(200.0)
    # malformed XML (unescaped &): the regex fallback still reads the props
    broken = '<MetaData><prop id="_MagSetting_" value="10X S Fluor & co"/><prop id="spatial-calibration-x" value="0.68"/>'
    b = parse_acquisition(broken)
    assert b["Metadata_PixelSizeUm"] == 0.68 and b["Metadata_Objective"].startswith("10X")
    # calibration switched off: no pixel size
    assert "Metadata_PixelSizeUm" not in parse_acquisition(
        '<MetaData><prop id="spatial-calibration-state" value="off"/><prop id="spatial-calibration-x" value="1"/></MetaData>')
    for desc in (None, "", "ImageJ=1.54f\nimages=1", '{"shape": [64, 64]}'):
        assert parse_acquisition(desc) == {}


def test_description_is_read_from_the_header(tmp_path):
    p = tmp_path / "x.tif"
    tifffile.imwrite(p, np.zeros((8, 8), np.uint16), description=REAL_XML, metadata=None)
    shape, dtype, desc = read_header_description(p)
    assert shape == (8, 8) and dtype == "uint16"
    assert parse_acquisition(desc)["Metadata_PixelSizeUm"] == pytest.approx(1.3668)


def _table(objectives, exposures=None, sites_per_well=4):
    rows = []
    for k, obj in enumerate(objectives):
        for s in range(1, sites_per_well + 1):
            for ch in ("nuclei", "borders", "actin"):
                rows.append({"Metadata_Plate": "P", "Metadata_Well": f"B{k + 1:02d}", "Metadata_Site": s, "channel": ch,
                             "wavelength": {"nuclei": 1, "borders": 2, "actin": 3}[ch],
                             "desc": f'<MetaData><prop id="_MagSetting_" value="{obj}"/><prop id="spatial-calibration-x" value="0.34"/>'
                                     f'<prop id="Description" value="Exposure: {(exposures or {}).get(k, 50)} ms"/></MetaData>'})
    t = pd.DataFrame(rows)
    return pd.concat([t, acquisition_frame(t.pop("desc").tolist())], axis=1)


def test_groups_follow_objectives_and_large_exposure_sets():
    t = fill_acquisition(_table(["20X Plan Apo Lambda"] * 4 + ["20X S Plan Fluor ELWD"] * 4))
    g = assign_acquisition_groups(t)
    assert g.nunique() == 2
    assert (g.groupby(t["Metadata_Well"]).nunique() == 1).all()  # one group per site and well
    assert set(g[t.Metadata_Well == "B01"]) == {"20X Plan Apo Lambda, 0.34 um/px, bin 1"}
    # exposures split a group only when every subset has enough sites (8 by default)
    t2 = fill_acquisition(_table(["A"] * 4, exposures={0: 50, 1: 50, 2: 80, 3: 80}))
    assert assign_acquisition_groups(t2).nunique() == 2
    t3 = fill_acquisition(_table(["A"] * 4, exposures={0: 50, 1: 50, 2: 50, 3: 80}))
    assert assign_acquisition_groups(t3).nunique() == 1


def test_fallbacks_platemap_then_defaults():
    t = _table(["x"] * 2)
    t[[c for c in t.columns if c.startswith("Metadata_") and c not in ("Metadata_Plate", "Metadata_Well", "Metadata_Site")]] = None
    t["Metadata_AcquisitionSource"] = None
    t["Metadata_PixelSizeUm"] = np.nan
    t["Metadata_Binning"] = pd.array([pd.NA] * len(t), dtype="Int64")
    t["Metadata_BitDepth"] = pd.array([pd.NA] * len(t), dtype="Int64")
    t["Metadata_ExposureMs"] = np.nan
    d = fill_acquisition(t, {1: "DAPI", 2: "FITC", 3: "TRITC"})
    assert (d.Metadata_AcquisitionSource == "default").all() and (d.Metadata_PixelSizeUm == DEFAULT_PIXEL_SIZE_UM).all()
    assert (d.Metadata_Objective == "unknown").all() and (d.Metadata_Binning == 1).all()
    assert list(d.Metadata_Illumination[:3]) == ["DAPI", "FITC", "TRITC"]  # from the HTD
    t["Metadata_pixel_size_um"] = "0.65"
    t["Metadata_objective"] = "10X"
    p = fill_acquisition(t)
    assert (p.Metadata_AcquisitionSource == "platemap").all() and (p.Metadata_PixelSizeUm == 0.65).all()
    assert (p.Metadata_Objective == "10X").all()


def test_real_export_ingests_with_defaults(tmp_path):
    """Three wavelengths, binning 4x4, no HTD: ready and indexed with the default settings."""
    from ssc_assets.core.simulate import simulate_real_export

    plate = simulate_real_export(tmp_path / "plates", tmp_path / "truth", seed=2, image_size=96, n_wells=4)
    assert not list(plate.rglob("*.HTD"))
    state = plate_readiness(plate, settle_seconds=0)
    assert state.ready, state.reason
    assert state.n_expected == 4 * 4 * 3
    raw = build_raw_sites(plate)
    t = raw.table
    assert raw.missing == [] and not raw.problems
    assert set(t.channel) == {"nuclei", "borders", "actin"}
    assert (t.Metadata_Objective == "20X Plan Apo Lambda").all()
    assert t.Metadata_PixelSizeUm.round(2).eq(1.36).all() and (t.Metadata_Binning == 4).all()
    assert (t.Metadata_AcquisitionSource == "metaseries").all() and t.Metadata_AcquisitionGroup.nunique() == 1


def test_objective_split_plate_has_two_groups(tmp_path):
    from ssc_assets.core.simulate import PlateSpec, default_wells, load_site_truth, simulate_plate

    spec = PlateSpec(wells=default_wells(6), n_sites=2, image_size=64, objective_split=0.5, n_failed_sites=0)
    plate = simulate_plate(tmp_path / "plates", tmp_path / "truth", "SPLIT", spec, seed=4)
    t = build_raw_sites(plate).table
    truth = load_site_truth(tmp_path / "truth", "SPLIT")
    sites = t.drop_duplicates(["Metadata_Well", "Metadata_Site"]).merge(truth, on=["Metadata_Well", "Metadata_Site"])
    assert sites.Metadata_AcquisitionGroup.nunique() == 2
    # the group is a function of the true objective, and vice versa
    assert (sites.groupby("objective").Metadata_AcquisitionGroup.nunique() == 1).all()
    assert (sites.groupby("Metadata_AcquisitionGroup").objective.nunique() == 1).all()


def test_missing_required_channel_says_why(plate_factory):
    plate = plate_factory(n_wave=2, htd=False)  # nuclei and borders only
    state = plate_readiness(plate, settle_seconds=0)
    assert not state.ready and "actin" in state.reason and "w1" in state.reason
