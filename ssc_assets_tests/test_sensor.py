"""The plate sensor: complete plates become partitions + runs; incomplete ones do not."""

import json
import os
import time

import dagster as dg
import numpy as np
import tifffile

from ssc_assets.defs.partitions import plates
from ssc_assets.defs.resources import PlateSource
from ssc_assets.defs.sensors import plate_sensor


def tick(instance, source, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"plate_source": source})
    result = plate_sensor(ctx)
    # apply partition requests the way the daemon does
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def test_complete_plate_becomes_partition_and_run(plate_factory):
    plate_factory(name="PLATE_A")
    half = plate_factory(name="PLATE B")  # sanitized to PLATE_B
    files = sorted(half.rglob("*_w*[0-9A-F].tif"))
    for f in files[::3]:
        f.unlink()  # half-copied
    source = PlateSource(plates_dir=str(plate_factory.root), settle_seconds=0)
    with dg.instance_for_test() as instance:
        r1 = tick(instance, source)
        assert [req.partition_keys for req in r1.dynamic_partitions_requests] == [["PLATE_A"]]
        assert [rr.partition_key for rr in r1.run_requests] == ["PLATE_A"]
        assert r1.run_requests[0].run_key.startswith("PLATE_A@")
        assert instance.get_dynamic_partitions(plates.name) == ["PLATE_A"]

        # unchanged plate -> no new run
        r2 = tick(instance, source, r1.cursor)
        assert r2.run_requests == [] and r2.dynamic_partitions_requests == []

        # the half-copied plate finishes copying -> becomes a partition
        for f in files[::3]:
            tifffile.imwrite(f, np.full((64, 64), 300, np.uint16))
        r3 = tick(instance, source, r2.cursor)
        assert [rr.partition_key for rr in r3.run_requests] == ["PLATE_B"]

        # a changed file gives a new version and a new run for that plate only
        some = next((plate_factory.root / "PLATE_A").rglob("*_w1*[0-9A-F].tif"))
        st = some.stat()
        os.utime(some, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))
        r4 = tick(instance, source, r3.cursor)
        assert [rr.partition_key for rr in r4.run_requests] == ["PLATE_A"]
        assert r4.run_requests[0].run_key != r1.run_requests[0].run_key
        assert set(json.loads(r4.cursor)) == {"PLATE_A", "PLATE_B"}


def test_settle_period_delays_ingestion(plate_factory):
    plate_factory(name="FRESH")
    with dg.instance_for_test() as instance:
        r = tick(instance, PlateSource(plates_dir=str(plate_factory.root), settle_seconds=3600))
        assert r.run_requests == [] and r.dynamic_partitions_requests == []
        assert instance.get_dynamic_partitions(plates.name) == []


def test_missing_plates_dir_is_harmless(tmp_path):
    with dg.instance_for_test() as instance:
        r = tick(instance, PlateSource(plates_dir=str(tmp_path / "nope"), settle_seconds=0))
        assert r.run_requests == []


def test_plate_ingested_outside_the_sensor_is_not_requested_again(plate_factory, tmp_path):
    """After `ssc-assets demo` (or a UI run) the sensor's cursor is empty: the raw_sites data
    version (the folder fingerprint) tells it the plate is already ingested."""
    from ssc_assets_tests.conftest import make_definitions

    plate_factory(name="PLATE_A")
    source = PlateSource(plates_dir=str(plate_factory.root), settle_seconds=0)
    defs = make_definitions(plate_factory.root, tmp_path / "storage")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(plates.name, ["PLATE_A"])
        job = defs.resolve_job_def("process_plate").get_subset(asset_selection={dg.AssetKey("raw_sites")})
        assert job.execute_in_process(instance=instance, partition_key="PLATE_A").success
        r = tick(instance, source)  # fresh sensor, no cursor
        assert r.run_requests == [] and "PLATE_A" in json.loads(r.cursor)
        # the plate changes on disk -> requested again
        f = sorted(plate_factory.root.rglob("*_w1*.tif"))[0]
        os.utime(f, ns=(time.time_ns() - 10**11, time.time_ns() - 10**11))
        r = tick(instance, source, r.cursor)
        assert [rr.partition_key for rr in r.run_requests] == ["PLATE_A"]


def test_three_wavelength_export_without_htd_is_ingested(plate_factory):
    """Real exports often lack the HTD and the 4th (CY5) wavelength: the default channel map
    must not demand w4."""
    plate_factory(name="THREE", n_wave=3, htd=False)
    source = PlateSource(plates_dir=str(plate_factory.root), settle_seconds=0)
    with dg.instance_for_test() as instance:
        r = tick(instance, source)
        assert [rr.partition_key for rr in r.run_requests] == ["THREE"]


def test_waiting_plates_say_why_and_a_bad_folder_does_not_stop_the_others(plate_factory, monkeypatch):
    plate_factory(name="GOOD")
    plate_factory(name="NOACTIN", n_wave=2, htd=False)
    source = PlateSource(plates_dir=str(plate_factory.root), settle_seconds=0)
    with dg.instance_for_test() as instance:
        r = tick(instance, source)
        assert [rr.partition_key for rr in r.run_requests] == ["GOOD"]
        r2 = tick(instance, source, r.cursor)
        assert not r2.run_requests
        msg = r2.skip_reason.skip_message
        assert "NOACTIN" in msg and "actin" in msg and "w1" in msg

    import ssc_assets.defs.sensors as sensors

    real = sensors.plate_readiness

    def flaky(folder, *a, **k):
        if folder.name == "NOACTIN":
            raise OSError(40, "Too many levels of symbolic links")
        return real(folder, *a, **k)

    monkeypatch.setattr(sensors, "plate_readiness", flaky)
    with dg.instance_for_test() as instance:
        r = tick(instance, source)
        assert [rr.partition_key for rr in r.run_requests] == ["GOOD"]
