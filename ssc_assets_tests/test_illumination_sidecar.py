"""``site_qc`` computes the illumination background grids while it has each image in memory
(sidecar ``site_qc/<plate>.backgrounds.npz``); ``illumination_profiles`` uses them instead of
reading the raw TIFFs again, and gives array-equal profiles to the reading path."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from ssc_assets.core.image.backgrounds import SIDECAR_SUFFIX, background_settings, load_sidecar
from ssc_assets.core.simulate import simulate_demo
from ssc_assets.defs.partitions import plates
from ssc_assets_tests.conftest import make_definitions

ILLUM = dg.AssetKey("illumination_profiles")


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("sidecar")
    simulate_demo(root / "plates", root / "truth", n_plates=1, seed=4, image_size=192, n_wells=4)
    key = next(p for p in (root / "plates").iterdir() if p.is_dir()).name
    return root / "plates", root / "storage", key


def _profiles(storage: Path, manifest: dict) -> dict:
    return {(g, ch): (np.load(v["flatfield"]), v["darkfield"])
            for g, e in manifest["groups"].items() for ch, v in e["channels"].items()}


def _md(result) -> dict:
    ev = next(m for m in result.get_asset_materialization_events() if m.asset_key == ILLUM)
    return {k: v.value for k, v in ev.step_materialization_data.materialization.metadata.items()}


def test_profiles_from_the_qc_sidecar_equal_the_reading_path(plate):
    plates_dir, storage, key = plate
    defs = make_definitions(plates_dir, storage, compute="serial")
    job = defs.resolve_job_def("process_plate")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(plates.name, [key])
        res = job.get_subset(asset_selection={dg.AssetKey("raw_sites"), dg.AssetKey("site_qc"), ILLUM}).execute_in_process(
            instance=instance, partition_key=key)
        assert res.success
        sidecar = storage / "site_qc" / f"{key}{SIDECAR_SUFFIX}"
        assert sidecar.exists() and not list(sidecar.parent.glob("*.tmp-*"))
        md = _md(res)
        assert md["n_images_read"] == 0 and md["n_grids_from_site_qc"] > 0  # no raw TIFF read again
        from_qc = _profiles(storage, defs.load_asset_value("illumination_profiles", partition_key=key, instance=instance))

        only_illum = job.get_subset(asset_selection={ILLUM})
        saved = sidecar.read_bytes()
        sidecar.unlink()  # e.g. a site_qc materialized before the sidecar existed: read the images
        res = only_illum.execute_in_process(instance=instance, partition_key=key)
        assert res.success and _md(res)["n_grids_from_site_qc"] == 0 and _md(res)["n_images_read"] == md["n_grids_from_site_qc"]
        read = _profiles(storage, defs.load_asset_value("illumination_profiles", partition_key=key, instance=instance))
        assert from_qc.keys() == read.keys() and len(read) >= 3
        for k in read:
            np.testing.assert_array_equal(from_qc[k][0], read[k][0], err_msg=str(k))
            assert from_qc[k][1] == read[k][1]

        sidecar.write_bytes(saved)
        # a raw file rewritten since QC: that image (only) is read again; same profiles
        cache, _ = load_sidecar(str(sidecar), background_settings())
        first = next(iter(cache._entries))
        st = os.stat(first)
        os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        res = only_illum.execute_in_process(instance=instance, partition_key=key)
        assert res.success and _md(res)["n_images_read"] == 1
        again = _profiles(storage, defs.load_asset_value("illumination_profiles", partition_key=key, instance=instance))
        for k in read:
            np.testing.assert_array_equal(again[k][0], read[k][0], err_msg=str(k))

        # other bright-area suppression settings than QC used: the sidecar is not used
        res = only_illum.execute_in_process(instance=instance, partition_key=key,
                                            run_config={"ops": {"illumination_profiles": {"config": {"n_iter": 2}}}})
        assert res.success and _md(res)["n_grids_from_site_qc"] == 0 and _md(res)["n_images_read"] > 0


def test_sidecar_settings_must_match(tmp_path):
    from ssc_assets.core.image.backgrounds import write_sidecar

    p = tmp_path / "x.tif"
    p.write_bytes(b"0")
    grid = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    from ssc_assets.core.image.backgrounds import file_stamp

    write_sidecar(str(tmp_path / "s.npz"), {str(p): (grid, (4, 4), file_stamp(p))}, background_settings())
    cache, why = load_sidecar(str(tmp_path / "s.npz"), background_settings())
    assert why == "" and len(cache) == 1
    np.testing.assert_array_equal(cache.get(str(p), (4, 4)), grid)
    assert cache.get(str(p), (8, 8)) is None and cache.get(str(tmp_path / "other.tif"), (4, 4)) is None
    assert load_sidecar(str(tmp_path / "s.npz"), background_settings(k_sd=2.5))[0] is None
    assert load_sidecar(str(tmp_path / "missing.npz"), background_settings())[0] is None


def test_a_grid_without_file_stamp_is_never_reused(tmp_path):
    """A URL (no size/mtime to compare) may have been rewritten in place: re-read it."""
    from ssc_assets.core.image.backgrounds import write_sidecar

    url = "s3://bucket/plate/x.tif"
    grid = np.ones((2, 2, 2), np.float32)
    write_sidecar(str(tmp_path / "s.npz"), {url: (grid, (4, 4), None)}, background_settings())
    cache, why = load_sidecar(str(tmp_path / "s.npz"), background_settings())
    assert why == "" and len(cache) == 1 and cache.get(url, (4, 4)) is None
