"""Fault injection on the ingest side (issue 13): one bad plate folder never costs the good
plates their run, and every bad input is refused with a message naming the file, folder or
column. Each test here failed (or crashed) before the fix it guards."""

import json
import os
import re

import dagster as dg
import pytest

from ssc_assets import settings
from ssc_assets.core.ingest.channels import DEFAULT_CHANNEL_MAP, ChannelMap
from ssc_assets.core.ingest.metaxpress import (
    HtdError,
    discover_plate_folders,
    list_plate_files,
    missing_images,
    parse_htd,
    scan_plate,
    walk_plate_files,
)
from ssc_assets.core.ingest.platemap import PlateMapError, read_platemap
from ssc_assets.core.ingest.site_tables import PlateError, build_raw_sites, plate_readiness
from ssc_assets.defs.partitions import plates
from ssc_assets.defs.resources import PlateSource
from ssc_assets.defs.sensors import evaluate_plates, plate_sensor
from ssc_assets_tests.conftest import make_definitions, tree_digest


def tick(instance, source, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"plate_source": source})
    result = plate_sensor(ctx)
    for req in result.dynamic_partitions_requests:  # as the daemon does
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


class ListLog:
    def __init__(self):
        self.lines = []

    def info(self, msg):
        self.lines.append(("info", msg))

    def error(self, msg):
        self.lines.append(("error", msg))


def evaluate(source):
    """(requested plate keys, waiting reasons, log lines) of one sensor evaluation."""
    waiting, log = {}, ListLog()
    _, requests, _ = evaluate_plates(source, {}, set(), None, log, waiting)
    return sorted(r.partition_key for r in requests), waiting, log.lines


def source_for(plate_factory, **kw):
    return PlateSource(plates_dir=str(plate_factory.root), settle_seconds=0, **kw)


def digest_no_links(path):
    """Like ``conftest.tree_digest`` for a folder holding symlinks (not followed)."""
    out = []
    for dirpath, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            st = os.lstat(os.path.join(dirpath, f))
            out.append((os.path.relpath(os.path.join(dirpath, f), path), st.st_size, st.st_mtime_ns))
    return out


def set_htd_line(plate, key, value):
    htd = next(plate.rglob("*.HTD"))
    text = re.sub(rf'^"{key}",.*$', f'"{key}", {value}', htd.read_text(), flags=re.M)
    htd.write_text(text)
    return htd


# --------------------------------------------------------------------------- 1. sensor isolation


def test_symlink_loop_is_walked_once_and_the_plate_stays_ingestible(plate_factory):
    good = plate_factory(name="GOOD")
    loop = plate_factory(name="LOOP")
    files_before = [f.rel for f in list_plate_files(loop)]
    acq = loop / "2024-01-31"
    os.symlink(loop, acq / "back_to_plate")  # plate/2024-01-31/back_to_plate -> plate
    os.symlink(loop.parent, loop / "up")  # a link to the plates folder (a parent)
    os.symlink("self", acq / "self")  # a link to itself: ELOOP on stat
    before = digest_no_links(loop)

    files, problems = walk_plate_files(loop)  # before: OSError [Errno 40]
    assert [f.rel for f in files] == files_before
    assert any("back_to_plate" in p and "not followed" in p for p in problems)
    assert any(p.startswith(str(acq / "self")) for p in problems)
    assert any(p.startswith(str(loop / "up")) for p in problems)

    requested, waiting, _ = evaluate(source_for(plate_factory))
    assert requested == ["GOOD", "LOOP"], waiting  # before: LOOP "cannot scan ... OSError"
    with dg.instance_for_test() as instance:
        r = tick(instance, source_for(plate_factory))
        assert sorted(rr.partition_key for rr in r.run_requests) == ["GOOD", "LOOP"]
    raw = build_raw_sites(loop)
    assert len(raw.table) == 4 * 2 * 4 and any("not followed" in p for p in raw.problems)
    assert digest_no_links(loop) == before and good.is_dir()


def test_walk_is_bounded_in_depth(plate_factory):
    plate = plate_factory(name="DEEP")
    d = plate
    for i in range(20):
        d = d / f"d{i}"
    d.mkdir(parents=True)
    (d / "stray.txt").write_text("x")
    files, problems = walk_plate_files(plate, max_depth=16)
    assert not any(f.rel.endswith("stray.txt") for f in files)
    assert any("deeper than 16 levels" in p and "d15" in p for p in problems)


def test_platemap_with_condition_and_Condition_is_refused_by_name(plate_factory):
    plate_factory(name="GOOD")
    bad = plate_factory(name="CASE")
    pm = bad / "platemap.csv"
    lines = pm.read_text().splitlines()
    pm.write_text("\n".join([lines[0] + ",Condition"] + [line + ",x" for line in lines[1:]]) + "\n")
    with pytest.raises(PlateMapError) as err:  # before: AttributeError 'DataFrame' object has no attribute 'str'
        read_platemap(pm)
    assert str(pm) in str(err.value) and "'condition' and 'Condition'" in str(err.value)
    requested, waiting, _ = evaluate(source_for(plate_factory))
    assert requested == ["GOOD"]
    assert "plate map unusable" in waiting["CASE"] and "'Condition'" in waiting["CASE"]
    assert "AttributeError" not in waiting["CASE"]


def test_exact_duplicate_column_is_refused(tmp_path):
    p = tmp_path / "platemap.csv"
    p.write_text("well,donor_id,condition,group,age,age\nB02,D1,HC,HC,1,2\n")
    with pytest.raises(PlateMapError, match="'age' and 'age'"):  # pandas would silently rename to age.1
        read_platemap(p)
    p.write_text("well,donor_id,condition,group,donor id,donorid\nB02,D1,HC,HC,1,2\n")
    with pytest.raises(PlateMapError, match="'donor id' and 'donorid'"):
        read_platemap(p)


@pytest.mark.parametrize(
    "key, value, message",
    [("YWells", 32, "'YWells' is 32"), ("YWells", 17, "'YWells' is 17"), ("XWells", 48, "'XWells' is 48"),
     ("YWells", 0, "'YWells' is 0"), ("XSites", 5000, "'XSites' 5000"), ("NWavelengths", 12, "'NWavelengths' is 12")],
)
def test_htd_outside_a_384_well_plate_is_an_htd_error(plate_factory, key, value, message):
    plate = plate_factory(name="HTD")
    htd = set_htd_line(plate, key, value)
    with pytest.raises(HtdError) as err:  # before (YWells 32): IndexError: string index out of range
        parse_htd(htd)
    assert str(htd) in str(err.value) and message in str(err.value)


def test_htd_with_32_rows_does_not_cost_the_good_plates(plate_factory):
    plate_factory(name="GOOD")
    bad = plate_factory(name="BIGPLATE")
    htd = set_htd_line(bad, "YWells", 32)
    requested, waiting, _ = evaluate(source_for(plate_factory))
    assert requested == ["GOOD"]
    assert "HTD unusable" in waiting["BIGPLATE"] and str(htd) in waiting["BIGPLATE"] and "YWells" in waiting["BIGPLATE"]
    assert "IndexError" not in waiting["BIGPLATE"]
    # a forced run reads the files and lists the HTD error
    raw = build_raw_sites(bad)
    assert any(str(htd) in p and "YWells" in p for p in raw.problems)


def test_largest_supported_htd_parses(plate_factory):
    plate = plate_factory(name="P384")
    set_htd_line(plate, "YWells", 16)
    htd = set_htd_line(plate, "XWells", 24)
    info = parse_htd(htd)
    assert (info.y_wells, info.x_wells) == (16, 24)
    assert "B02" in info.wells


def test_plates_folder_entry_that_cannot_be_read_is_reported_not_fatal(plate_factory):
    plate_factory(name="GOOD")
    os.symlink("LOOPY", plate_factory.root / "LOOPY")  # stat() of the entry raises ELOOP
    found = discover_plate_folders(plate_factory.root)
    assert list(found.folders) == ["GOOD"] and "LOOPY" in found.errors
    requested, waiting, _ = evaluate(source_for(plate_factory))
    assert requested == ["GOOD"] and "LOOPY" in waiting["LOOPY"]


# --------------------------------------------------------------------------- 2. duplicate partition keys


def test_two_folders_with_the_same_partition_key_are_both_refused(plate_factory):
    a = plate_factory(name="SSC-DEMO 01")
    b = plate_factory(name="SSC-DEMO_01", seed=1)
    plate_factory(name="GOOD")
    source = source_for(plate_factory)
    requested, waiting, log = evaluate(source)
    assert requested == ["GOOD"]  # before: 'SSC-DEMO 01' was ingested as SSC-DEMO_01, the other ignored
    reason = waiting["SSC-DEMO_01"]
    assert str(a) in reason and str(b) in reason
    assert any(level == "error" and str(a) in msg and str(b) in msg for level, msg in log)
    assert "SSC-DEMO_01" not in source.plate_folders()
    with pytest.raises(FileNotFoundError) as err:  # a forced run names both folders too
        source.plate_dir("SSC-DEMO_01")
    assert str(a) in str(err.value) and str(b) in str(err.value)

    (plate_factory.root / "GOOD").rename(plate_factory.root / ".GOOD")  # hidden: only the clash remains
    with dg.instance_for_test() as instance:
        r = tick(instance, source)
        assert r.run_requests == [] and r.dynamic_partitions_requests == []
        msg = r.skip_reason.skip_message
        assert str(a) in msg and str(b) in msg
        assert instance.get_dynamic_partitions(plates.name) == []


def test_clash_keeps_the_cursor_of_an_ingested_plate(plate_factory):
    plate_factory(name="SSC-DEMO 01")
    source = source_for(plate_factory)
    with dg.instance_for_test() as instance:
        r1 = tick(instance, source)
        assert [rr.partition_key for rr in r1.run_requests] == ["SSC-DEMO_01"]
        plate_factory(name="SSC-DEMO_01", seed=1)  # a second folder arrives with the same key
        r2 = tick(instance, source, r1.cursor)
        assert r2.run_requests == [] and "SSC-DEMO 01" in r2.skip_reason.skip_message
        assert json.loads(r2.cursor) == json.loads(r1.cursor)


# --------------------------------------------------------------------------- 3. plate-map columns


def _platemap_with(plate, column, value="v"):
    pm = plate / "platemap.csv"
    lines = pm.read_text().splitlines()
    pm.write_text("\n".join([lines[0] + f",{column}"] + [line + f",{value}" for line in lines[1:]]) + "\n")
    return pm


@pytest.mark.parametrize("column", ["Donor", "Site", "Plate", "Row", "column", " TimePoint ", "Objective NA",
                                    "PixelSizeUm", "AcquisitionGroup", "acquisitionsource", "Exposure Ms"])
def test_platemap_column_that_clashes_with_a_pipeline_column_is_refused(plate_factory, column):
    plate = plate_factory(name="CLASH")
    pm = _platemap_with(plate, column)
    before = tree_digest(plate)
    with pytest.raises(PlateMapError) as err:  # before: Donor replaced every donor id; Row gave Metadata_Row_x/_y
        build_raw_sites(plate)
    msg = str(err.value)
    assert str(pm) in msg and repr(column.strip()) in msg and "rename" in msg
    state = plate_readiness(plate, settle_seconds=0)
    assert not state.ready and "plate map unusable" in state.reason
    assert tree_digest(plate) == before


def test_donor_column_no_longer_overrides_donor_id(plate_factory):
    plate = plate_factory(name="DONOR")
    _platemap_with(plate, "Donor", "SAME")
    with pytest.raises(PlateMapError, match="'Donor'"):
        read_platemap(plate / "platemap.csv")


@pytest.mark.parametrize("objective_col, pixel_col", [("objective", "pixel_size_um"), ("Objective", "Pixel_Size_UM")])
def test_acquisition_fallback_columns_stay_allowed(plate_factory, objective_col, pixel_col):
    plate = plate_factory(name="FALLBACK")
    _platemap_with(plate, objective_col, "10X")
    _platemap_with(plate, pixel_col, "0.65")
    pm = read_platemap(plate / "platemap.csv")
    assert {"Metadata_objective", "Metadata_pixel_size_um"} <= set(pm.columns)
    t = build_raw_sites(plate).table
    assert (t.Metadata_Objective == "10X").all() and (t.Metadata_PixelSizeUm == 0.65).all()
    assert (t.Metadata_AcquisitionSource == "platemap").all()
    assert not any(c.endswith(("_x", "_y")) for c in t.columns)


@pytest.mark.parametrize("text, message", [("well,donor_id,condition,group\n", "no wells"),
                                           ("well,donor_id,condition,group\n\n\n", "no wells"),
                                           ("", "the file is empty")])
def test_empty_platemap_is_a_clear_error(plate_factory, text, message):
    plate = plate_factory(name="EMPTYMAP")
    (plate / "platemap.csv").write_text(text)
    with pytest.raises(PlateMapError) as err:  # before (header only): TypeError
        build_raw_sites(plate)
    assert str(plate / "platemap.csv") in str(err.value) and message in str(err.value)
    assert "plate map unusable" in plate_readiness(plate, settle_seconds=0).reason


def test_trailing_commas_in_the_platemap_are_harmless(tmp_path):
    p = tmp_path / "platemap.csv"
    p.write_text("well,donor_id,condition,group,,\nB02,D1,HC,HC,,\n")
    assert list(read_platemap(p).columns) == ["Metadata_Well", "Metadata_Donor", "Metadata_Condition", "Metadata_Group"]
    p.write_text("well,donor_id,condition,group,\nB02,D1,HC,HC,oops\n")
    with pytest.raises(PlateMapError, match="column 5 has values but no name"):
        read_platemap(p)


# --------------------------------------------------------------------------- 4. silent plate-folder problems


def test_partial_copy_without_htd_expects_every_site_up_to_the_largest(plate_factory):
    plate = plate_factory(name="PARTIAL", n_sites=3, htd=False)
    for f in plate.rglob("*_s2_*.tif"):  # site 2 not copied yet, in any well
        f.unlink()
    state = plate_readiness(plate, settle_seconds=0)
    assert not state.ready and "expected images missing" in state.reason  # before: "ready"
    missing = missing_images(scan_plate(plate), read_platemap(plate / "platemap.csv").Metadata_Well.tolist(), ChannelMap())
    assert {(w, s) for w, s, _ in missing} == {(w, 2) for w in ("B02", "B03", "C02", "C03")}
    assert ("B02", 2, 1) in build_raw_sites(plate).missing


def test_well_with_fewer_sites_than_the_others_is_incomplete_without_htd(plate_factory):
    plate = plate_factory(name="FEWER", n_sites=3, htd=False)
    for f in plate.rglob("*_C03_s3_*.tif"):
        f.unlink()
    state = plate_readiness(plate, settle_seconds=0)
    assert not state.ready and state.n_expected == 4 * 3 * 4
    assert sorted(build_raw_sites(plate).missing) == [("C03", 3, w) for w in (1, 2, 3, 4)]


@pytest.mark.parametrize("htd", [True, False])
def test_platemap_well_without_images_fails_plate_complete(plate_factory, htd):
    plate = plate_factory(name="NOIMG", htd=htd)
    pm = plate / "platemap.csv"
    pm.write_text(pm.read_text() + "D05,D9,HC,HC,b0\n")  # in the map, never imaged (nor in the HTD)
    raw = build_raw_sites(plate)
    assert raw.wells_without_images == ["D05"]
    assert any("D05" in p for p in raw.problems)
    if not htd:  # without an HTD the plate map says what to expect: the sensor waits
        assert not plate_readiness(plate, settle_seconds=0).complete
        assert ("D05", 1, 1) in raw.missing
    else:  # the HTD says D05 was never acquired: the plate is ingested and the check names the well
        assert any("not acquired" in p and "D05" in p for p in raw.problems)


def test_platemap_well_without_images_fails_the_dagster_check(plate_factory, tmp_path):
    plate = plate_factory(name="NOIMG")
    pm = plate / "platemap.csv"
    pm.write_text(pm.read_text() + "D05,D9,HC,HC,b0\n")
    defs = make_definitions(plate_factory.root, tmp_path / "storage")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(plates.name, ["NOIMG"])
        job = defs.resolve_job_def("process_plate").get_subset(asset_selection={dg.AssetKey("raw_sites")})
        result = job.execute_in_process(instance=instance, partition_key="NOIMG")
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert checks["plate_complete"].passed is False
        assert "D05" in checks["plate_complete"].description


def _swap_htd_wave_names(plate):
    htd = next(plate.rglob("*.HTD"))
    htd.write_text(htd.read_text().replace('"WaveName1", "DAPI"', '"WaveName1", "FITC"')
                   .replace('"WaveName2", "FITC"', '"WaveName2", "DAPI"'))
    return htd


def test_htd_wave_names_that_disagree_with_the_default_map_stop_the_plate(plate_factory):
    plate = plate_factory(name="SWAPPED")
    htd = _swap_htd_wave_names(plate)
    state = plate_readiness(plate, settle_seconds=0)  # before: ready, a warning in raw_sites at most
    assert not state.ready and str(htd) in state.reason and "WaveName1='FITC'" in state.reason
    with pytest.raises(PlateError) as err:
        build_raw_sites(plate)
    assert str(htd) in str(err.value) and "WaveName1='FITC'" in str(err.value) and "WaveName2='DAPI'" in str(err.value)
    assert "SSC_CHANNEL_MAP" in str(err.value)


def test_htd_wave_name_disagreement_is_a_warning_with_an_explicit_map(plate_factory, monkeypatch):
    plate = plate_factory(name="SWAPPED")
    htd = _swap_htd_wave_names(plate)
    # core: the caller decides
    assert plate_readiness(plate, settle_seconds=0, strict_channels=False).ready
    raw = build_raw_sites(plate, ChannelMap(), 1, strict_channels=False)
    assert any(str(htd) in p and "WaveName1='FITC'" in p for p in raw.problems)
    assert build_raw_sites(plate, ChannelMap.from_string(DEFAULT_CHANNEL_MAP, explicit=True)).problems
    # Dagster layer: a non-default PlateSource.channel_map, or SSC_CHANNEL_MAP set
    monkeypatch.delenv("SSC_CHANNEL_MAP", raising=False)
    assert source_for(plate_factory).strict_channels()
    assert evaluate(source_for(plate_factory))[0] == []
    assert evaluate(source_for(plate_factory, channel_map="1=nuclei,2=borders,3=actin"))[0] == ["SWAPPED"]
    monkeypatch.setenv("SSC_CHANNEL_MAP", DEFAULT_CHANNEL_MAP)
    source = source_for(plate_factory)
    assert not source.strict_channels() and source.channels().explicit
    assert evaluate(source)[0] == ["SWAPPED"]


def test_htd_wave_name_disagreement_fails_raw_sites_in_dagster(plate_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("SSC_CHANNEL_MAP", raising=False)
    plate = plate_factory(name="SWAPPED")
    htd = _swap_htd_wave_names(plate)
    defs = make_definitions(plate_factory.root, tmp_path / "storage")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(plates.name, ["SWAPPED"])
        job = defs.resolve_job_def("process_plate").get_subset(asset_selection={dg.AssetKey("raw_sites")})
        result = job.execute_in_process(instance=instance, partition_key="SWAPPED", raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        text = str(failure.event_specific_data.error)
        assert "PlateError" in text and str(htd) in text and "WaveName1='FITC'" in text


# --------------------------------------------------------------------------- 5. channel-map validation


@pytest.mark.parametrize(
    "text, part",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("1=nuclei,1=borders,3=actin", "wavelength 1 is given twice"),
        ("1=nuclei,2=nuclei,3=actin,4=borders", "channel 'nuclei' is given twice"),
        ("1=nuclei,2=borders,3=actin,4=golgi", "unknown channel 'golgi'"),
        ("1=nuclei,2=borders", "lacks required channel(s) ['actin']"),
        ("4=mitochondria", "lacks required channel(s) ['nuclei', 'borders', 'actin']"),
        ("0=nuclei,2=borders,3=actin", "'0=nuclei'"),
        ("1=nuclei,2=borders,10=actin", "'10=actin'"),
        ("nuclei,borders,actin", "'nuclei'"),
        ("x=nuclei,2=borders,3=actin", "'x=nuclei'"),
        ("1=,2=borders,3=actin", "'1='"),
    ],
)
def test_bad_channel_map_is_refused(text, part, monkeypatch, tmp_path):
    with pytest.raises(ValueError) as err:  # before: accepted
        ChannelMap.from_string(text)
    assert part in str(err.value) and DEFAULT_CHANNEL_MAP in str(err.value)
    with pytest.raises(ValueError, match=re.escape(part)):  # the resource fails when definitions load
        PlateSource(plates_dir=str(tmp_path), channel_map=text)
    monkeypatch.setenv("SSC_CHANNEL_MAP", text)
    with pytest.raises(ValueError) as err:
        settings.channel_map()
    assert "SSC_CHANNEL_MAP" in str(err.value) and part in str(err.value)
    with pytest.raises(ValueError, match="SSC_CHANNEL_MAP"):
        PlateSource(plates_dir=str(tmp_path))


@pytest.mark.parametrize("text", [DEFAULT_CHANNEL_MAP, "w1=nuclei, w2=actin, 3=borders", "1=Nuclei,2=borders,3=actin,",
                                  "9=nuclei,8=borders,7=actin,1=mitochondria"])
def test_good_channel_maps_are_accepted(text):
    cmap = ChannelMap.from_string(text)
    assert {"nuclei", "borders", "actin"} <= set(cmap.by_name())
    assert cmap.explicit == (text != DEFAULT_CHANNEL_MAP)
    assert PlateSource(plates_dir="x", channel_map=text).channels().same_as(cmap)
