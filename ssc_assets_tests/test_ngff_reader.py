"""The image stores open in every NGFF reader (``ome_zarr.reader``, what napari-ome-zarr uses).

A small simulated plate where site 1 of a well fails QC (saturated), another QC-failed site's
correction raises, one site has an unreadable raw image, one site has no images at all and one
QC-passed site's masks raise. ``process_plate`` runs through Dagster; both stores must then
open without a reader warning, hold the same field paths in every well, flag every field that
is not analysis data, and keep those fields out of the manifests' ``sites``.
"""

import logging
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import zarr

from ssc_assets.core.io import ome_zarr_store as S
from ssc_assets.core.simulate import PlateSpec, default_wells, simulate_plate
from ssc_assets.defs import image_assets
from ssc_assets.defs.partitions import plates
from ssc_assets_tests.conftest import make_definitions

PLATE = "NGFF-01"
# seed 0, 3 wells x 3 sites, 2 planted failures: B02 s1 saturated, B03 s2 blurred (truth.json)
SATURATED_S1 = ("B02", 1)
CORRECTION_RAISES = ("B03", 2)  # QC-failed (blur); its correction is made to raise
UNREADABLE = ("B04", 2)  # one raw TIFF overwritten with garbage
NO_IMAGES = ("B04", 3)  # every file deleted: only the writer's padding gives it a field
MASKS_RAISE = ("B03", 3)  # QC-passed; its masks are made to raise
LABELS = ("nuclei", "cells", "borders", "actin", "actin_inside_cells")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ngff")
    plates_dir, storage = root / "plates", root / "storage"
    spec = PlateSpec(wells=default_wells(3), n_sites=3, image_size=128, binning=2, n_failed_sites=2, include_thumbs=False)
    plate_dir = simulate_plate(plates_dir, root / "truth", PLATE, spec, seed=0)
    tifs = sorted(plate_dir.rglob("*.tif"))
    victim = next(p for p in tifs if f"_{UNREADABLE[0]}_s{UNREADABLE[1]}_w1" in p.name)
    victim.write_bytes(b"this is not a TIFF" * 10)
    for p in tifs:
        if f"_{NO_IMAGES[0]}_s{NO_IMAGES[1]}_" in p.name:
            p.unlink()

    real_correct, real_mask = image_assets.correct_site, image_assets.mask_site

    def correct_site(task):
        if (task.well, task.site) == CORRECTION_RAISES:
            raise FloatingPointError("injected: chain cannot handle this image")
        return real_correct(task)

    def mask_site(task):
        if (task.well, task.site) == MASKS_RAISE:
            raise RuntimeError("injected: watershed failed")
        return real_mask(task)

    defs = make_definitions(plates_dir, storage, compute="serial")  # serial: the patches apply in-process
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
        mp.setattr(image_assets, "correct_site", correct_site)
        mp.setattr(image_assets, "mask_site", mask_site)
        instance.add_dynamic_partitions(plates.name, [PLATE])
        result = defs.resolve_job_def("process_plate").execute_in_process(
            instance=instance, partition_key=PLATE,
            run_config={"ops": {"masks": {"config": {"max_failed_fraction": 0.5}}}})
        assert result.success
        load = lambda key: defs.load_asset_value(key, partition_key=PLATE, instance=instance)  # noqa: E731
        out = {k: load(k) for k in ("raw_sites", "site_qc", "corrected_images", "masks")}
        out["metadata"] = {
            m.asset_key.to_user_string(): {k: v.value for k, v in m.step_materialization_data.materialization.metadata.items()}
            for m in result.get_asset_materialization_events()
        }
    qc = out["site_qc"].drop_duplicates(["Metadata_Well", "Metadata_Site"])
    out["qc_failed"] = {(r.Metadata_Well, int(r.Metadata_Site)) for r in qc.itertuples() if not r.passed_qc}
    out["qc_passed"] = {(r.Metadata_Well, int(r.Metadata_Site)) for r in qc.itertuples() if r.passed_qc}
    return out


def _well_paths(store: str) -> dict[str, list[str]]:
    root = zarr.open_group(store, mode="r")
    return {w["path"]: [img["path"] for img in root[w["path"]].attrs["ome"]["well"]["images"]]
            for w in root.attrs["ome"]["plate"]["wells"]}


def _read_everything(store: str) -> list[str]:
    """Open the plate, each well and each field (with its labels) the way napari-ome-zarr does;
    returns the spec names seen. Computes the smallest pyramid level of the plate and wells, so
    missing or mis-shaped fields surface too."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Plate, Reader

    seen = []
    plate_nodes = list(Reader(parse_url(store))())
    assert plate_nodes and plate_nodes[0].load(Plate) is not None
    plate_nodes[0].data[-1].compute()
    seen += [type(s).__name__ for n in plate_nodes for s in n.specs]
    for well, fields in _well_paths(store).items():
        well_nodes = list(Reader(parse_url(f"{store}/{well}"))())
        well_nodes[0].data[-1].compute()
        seen += [type(s).__name__ for n in well_nodes for s in n.specs]
        for field in fields:
            for node in Reader(parse_url(f"{store}/{well}/{field}"))():
                seen += [type(s).__name__ for s in node.specs]
                for arr in node.data:  # (the "labels" group node has none)
                    assert arr.shape[-1] > 0
                if node.data:
                    node.data[-1].compute()
    return seen


@pytest.mark.parametrize("asset", ["corrected_images", "masks"])
def test_every_ngff_reader_opens_the_store(run, asset, caplog):
    store = run[asset]["store"]
    with caplog.at_level(logging.INFO, logger="ome_zarr"):
        seen = _read_everything(store)
    problems = [r.getMessage() for r in caplog.records if r.name.startswith("ome_zarr") and r.levelno >= logging.WARNING]
    assert problems == []
    assert {"Plate", "Well", "Multiscales", "OMERO"} <= set(seen)
    if asset == "masks":
        assert {"Labels", "Label"} <= set(seen)
    # every well has the same field paths, as the plate readers assume
    paths = _well_paths(store)
    assert len(paths) == 3 and {tuple(v) for v in paths.values()} == {("0", "1", "2")}
    plate = zarr.open_group(store, mode="r").attrs["ome"]["plate"]
    assert plate["field_count"] == 3
    # ... with the same shapes in every field and, for masks, the same labels
    shapes = {S.read_site_image(store, w, s, level=2).shape for w, s in S.list_sites(store, include_flagged=True)}
    assert len(shapes) == 1
    if asset == "masks":
        for w, s in S.list_sites(store, include_flagged=True):
            group = zarr.open_group(S.site_group_path(store, w, s), mode="r")
            assert sorted(group["labels"].attrs["ome"]["labels"]) == sorted(LABELS)


def test_failed_fields_are_flagged_and_kept_out_of_downstream(run):
    cor, masks = run["corrected_images"], run["masks"]
    assert SATURATED_S1 in run["qc_failed"] and CORRECTION_RAISES in run["qc_failed"] and UNREADABLE in run["qc_failed"]
    assert MASKS_RAISE in run["qc_passed"] and NO_IMAGES not in run["qc_passed"] | run["qc_failed"]
    flags = S.field_flags(cor["store"])
    assert len(flags) == 9  # 3 wells x 3 fields
    expected = {SATURATED_S1: ("qc_failed", False), CORRECTION_RAISES: ("error", True),
                UNREADABLE: ("unreadable", True), NO_IMAGES: ("missing", True)}
    for site, (status, placeholder) in expected.items():
        assert (flags[site]["status"], flags[site]["placeholder"]) == (status, placeholder), site
        assert flags[site]["reason"], site
    assert {k for k, f in flags.items() if f["status"] == "ok"} == run["qc_passed"]

    # the QC-failed site 1: its corrected image is there to look at, flagged in the field attrs
    attrs = zarr.open_group(S.site_group_path(cor["store"], *SATURATED_S1), mode="r").attrs["ssc"]
    assert attrs["status"] == "qc_failed" and attrs["passed_qc"] is False and "saturated" in attrs["qc_reason"]
    assert np.isfinite(S.read_site_image(cor["store"], *SATURATED_S1)).any()
    err = zarr.open_group(S.site_group_path(cor["store"], *CORRECTION_RAISES), mode="r").attrs["ssc"]
    assert "injected" in err["error"] and err["passed_qc"] is False
    assert "unreadable" in flags[UNREADABLE]["reason"]
    for site in (CORRECTION_RAISES, UNREADABLE, NO_IMAGES):
        assert np.isnan(S.read_site_image(cor["store"], *site)).all()  # placeholders are NaN, never data
    root_ssc = zarr.open_group(cor["store"], mode="r").attrs["ssc"]
    assert {(f["well"], f["site"]) for f in root_ssc["flagged_fields"]} == set(expected)

    # masks: the same flags, empty labels; a QC-passed site whose masks raised is flagged too
    mflags = S.field_flags(masks["store"])
    assert set(mflags) == set(flags)
    for site, (status, _) in expected.items():
        assert mflags[site]["status"] == status and mflags[site]["placeholder"] is True
        for name in LABELS:
            assert S.read_site_labels(masks["store"], *site, name).max() == 0
    assert mflags[MASKS_RAISE]["status"] == "error" and "injected" in mflags[MASKS_RAISE]["reason"]
    assert flags[MASKS_RAISE]["status"] == "ok"

    # downstream sees QC-passed sites only: manifests, list_sites, and what embeddings/models read
    from ssc_assets.core.learn.fit import training_sites
    from ssc_assets.defs.manifests import plate_images, plate_masks

    assert {tuple(s) for s in cor["sites"]} == run["qc_passed"]
    assert sorted(S.list_sites(cor["store"])) == sorted(run["qc_passed"])
    assert {tuple(s) for s in masks["sites"]} == run["qc_passed"] - {MASKS_RAISE}
    assert sorted(S.list_sites(masks["store"])) == sorted(run["qc_passed"] - {MASKS_RAISE})
    assert sorted(map(tuple, cor["skipped_qc"])) == sorted(run["qc_failed"])
    assert {(f["well"], f["site"]) for f in cor["fields"]} == set(flags)
    table = training_sites([plate_images(PLATE, cor)], {PLATE: run["raw_sites"]}, [plate_masks(PLATE, masks)])
    assert set(zip(table["Metadata_Well"], table["Metadata_Site"])) == run["qc_passed"]
    no_masks = {(w, s) for w, s, m in zip(table["Metadata_Well"], table["Metadata_Site"], table["masks_store"]) if not isinstance(m, str)}
    assert no_masks == {MASKS_RAISE}


def _decimals(x: float) -> int:
    text = repr(float(x))
    return 0 if "." not in text else len(text.split(".")[1].rstrip("0"))


def test_image_metadata_numbers_are_rounded_with_units(run):
    md, cor = run["metadata"], run["corrected_images"]
    c, m = md["corrected_images"], md["masks"]
    for key in ("n_sites", "n_fields", "n_qc_failed", "n_failed", "fields_per_well"):
        assert type(c[key]) is int, key
    assert c["n_sites"] == len(run["qc_passed"]) and c["n_fields"] == 9 and c["fields_per_well"] == 3
    assert c["field_status"] == {"ok": 5, "qc_failed": 1, "error": 1, "unreadable": 1, "missing": 1}
    assert _decimals(c["seconds_per_site"]) <= 2 and _decimals(m["seconds_per_site"]) <= 2
    assert cor["pixel_size_um"] and all(p == pytest.approx(0.68) for _, _, p in cor["pixel_size_um"])  # 0.34 um x bin 2
    assert c["pixel_size_um"] == "0.68"
    for key in ("n_sites", "n_fields", "n_failed", "nuclei_per_site_min"):
        assert type(m[key]) is int, key
    assert m["n_sites"] == len(run["qc_passed"]) - 1 and m["n_failed"] == 1
    for key in ("nuclei_per_site_mean", "cells_per_site_mean", "mean_cell_area_px", "mean_cell_area_um2", "mean_nucleus_area_um2"):
        assert isinstance(m[key], float) and _decimals(m[key]) <= 1, (key, m[key])
    assert m["mean_cell_area_um2"] == pytest.approx(m["mean_cell_area_px"] * 0.68**2, abs=0.1)
    table = m["per_site_counts"]
    header = [h.strip() for h in table.splitlines()[0].strip("|").split("|")]
    assert {"n_nuclei", "n_cells", "mean_cell_area_px", "mean_cell_area_um2", "pixel_size_um"} <= set(header)
    rows = [[v.strip() for v in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert len(rows) == m["n_sites"]
    for row in rows:
        cells = dict(zip(header, row))
        assert "." not in cells["n_nuclei"] and "." not in cells["n_cells"]
        assert _decimals(float(cells["mean_cell_area_um2"])) <= 1 and _decimals(float(cells["actin_fraction"])) <= 3
        assert not math.isnan(float(cells["mean_cell_area_um2"]))
    assert not list(Path(cor["store"]).parent.glob("*.tmp-*"))
