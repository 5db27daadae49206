"""End to end through Dagster: a simulated plate -> every per-plate asset, checks, stored files."""

import json
from pathlib import Path

import dagster as dg
import pytest

from ssc_assets.core.io import ome_zarr_store
from ssc_assets.core.simulate import simulate_demo
from ssc_assets.defs.partitions import plates
from ssc_assets_tests.conftest import make_definitions, tree_digest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    plates_dir, truth_dir, storage = root / "plates", root / "truth", root / "storage"
    simulate_demo(plates_dir, truth_dir, n_plates=1, seed=3, image_size=256, n_wells=8)
    return plates_dir, truth_dir, storage


def test_plate_materializes_with_qc_flags(demo):
    plates_dir, truth_dir, storage = demo
    plate_dir = next(p for p in plates_dir.iterdir() if p.is_dir())
    key = plate_dir.name
    before = tree_digest(plate_dir)
    defs = make_definitions(plates_dir, storage, compute="process")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(plates.name, [key])
        result = defs.resolve_job_def("process_plate").execute_in_process(instance=instance, partition_key=key)
        assert result.success
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks["plate_complete"] is True

        raw = defs.load_asset_value("raw_sites", partition_key=key, instance=instance)
        qc = defs.load_asset_value("site_qc", partition_key=key, instance=instance)
        mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
        md = mats["site_qc"].step_materialization_data.materialization.metadata
        assert "data:image/png;base64," in md["qc_histograms"].value
        corrected = defs.load_asset_value("corrected_images", partition_key=key, instance=instance)
        masks = defs.load_asset_value("masks", partition_key=key, instance=instance)
        assert set(mats) == {"raw_sites", "site_qc", "illumination_profiles", "corrected_images", "masks"}
        mmd = mats["masks"].step_materialization_data.materialization.metadata
        assert "data:image/png;base64," in mmd["overlays"].value

    truth = json.loads((truth_dir / key / "truth.json").read_text())
    planted = {(f["well"], int(f["site"])) for f in truth["failed_sites"]}
    sites = qc.drop_duplicates(["Metadata_Well", "Metadata_Site"])
    flagged = {(r.Metadata_Well, int(r.Metadata_Site)) for r in sites.itertuples() if not r.passed_qc}
    assert planted and planted <= flagged, (planted, flagged)
    assert len(flagged - planted) <= max(1, len(sites) // 20)  # few false alarms
    assert len(raw) == raw[["Metadata_Well", "Metadata_Site", "channel"]].drop_duplicates().shape[0]
    assert (storage / "raw_sites" / f"{key}.parquet").exists() and (storage / "site_qc" / f"{key}.parquet").exists()
    assert not list(Path(storage).rglob("*.tmp-*"))
    # QC-failed sites are skipped by the image assets, every other site is written
    passed = {(r.Metadata_Well, int(r.Metadata_Site)) for r in sites.itertuples() if r.passed_qc}
    assert {tuple(x) for x in corrected["sites"]} == passed
    assert sorted(map(tuple, corrected["skipped_qc"])) == sorted(flagged)
    assert sorted(ome_zarr_store.list_sites(corrected["store"])) == sorted(passed)
    img = ome_zarr_store.read_site_image(corrected["store"], *sorted(passed)[0])
    assert img.shape == (3, 192, 192) and img.dtype == "float32"  # 0.75 centre crop of 256
    nuc = ome_zarr_store.read_site_labels(masks["store"], *sorted(passed)[0], "nuclei")
    assert nuc.shape == (192, 192) and nuc.max() >= 1
    assert tree_digest(plate_dir) == before
