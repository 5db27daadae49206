"""OME-Zarr HCS stores: round trip, reader compatibility, atomicity."""

import numpy as np
import pytest
import zarr

from ssc_assets.core.io import ome_zarr_store as S


def write(final, sites, channels=("nuclei", "borders", "actin"), labels=False, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    with S.HcsPlateWriter(final, "P1", list(channels)) as w:
        for well, site in sites:
            im = rng.random((len(channels), 64, 64)).astype(np.float32)
            lab = {"nuclei": rng.integers(0, 5, (64, 64)).astype(np.int32)} if labels else None
            data[(well, site)] = (im, lab)
            w.write_site(well, site, im, labels=lab)
    return data


def test_round_trip_and_partial_plate(tmp_path):
    final = tmp_path / "P1.ome.zarr"
    sites = [("B03", 1), ("B03", 3), ("C11", 2)]  # missing fields and wells are fine
    data = write(final, sites, labels=True)
    assert sorted(S.list_sites(final)) == sorted(sites)
    for key, (im, lab) in data.items():
        np.testing.assert_array_equal(S.read_site_image(final, *key), im)
        np.testing.assert_array_equal(S.read_site_labels(final, *key, "nuclei"), lab["nuclei"])
    half = S.read_site_image(final, "B03", 1, level=1)
    assert half.shape == (3, 32, 32)
    plate = zarr.open_group(str(final), mode="r").attrs["ome"]["plate"]
    assert plate["rows"] == [{"name": "B"}, {"name": "C"}]
    assert [c["name"] for c in plate["columns"]] == ["3", "11"]
    assert plate["field_count"] == 2


def test_ome_zarr_reader_sees_plate_and_channels(tmp_path):
    final = tmp_path / "P1.ome.zarr"
    write(final, [("B03", 1), ("B04", 1)])
    nodes = S.open_reader(final)
    assert nodes and "Plate" in [type(s).__name__ for s in nodes[0].specs]
    assert nodes[0].metadata["channel_names"] == ["nuclei", "borders", "actin"]


def test_crash_leaves_previous_version_and_no_store(tmp_path):
    final = tmp_path / "P1.ome.zarr"
    with pytest.raises(RuntimeError):
        with S.HcsPlateWriter(final, "P1", ["nuclei"]) as w:
            w.write_site("B03", 1, np.zeros((1, 32, 32), np.float32))
            raise RuntimeError("worker died")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    old = write(final, [("B03", 1)], seed=1)
    with pytest.raises(RuntimeError):
        with S.HcsPlateWriter(final, "P1", ["nuclei", "borders", "actin"]) as w:
            w.write_site("B03", 1, np.ones((3, 64, 64), np.float32))
            raise RuntimeError("crash")
    np.testing.assert_array_equal(S.read_site_image(final, "B03", 1), old[("B03", 1)][0])
    assert [p.name for p in tmp_path.iterdir()] == ["P1.ome.zarr"]


def test_stale_temp_stores_are_cleaned(tmp_path):
    (tmp_path / "P1.ome.zarr.tmp-abc").mkdir()
    (tmp_path / "P2.ome.zarr").mkdir()
    removed = S.cleanup_stale_tmp(tmp_path)
    assert [p.name for p in removed] == ["P1.ome.zarr.tmp-abc"] and (tmp_path / "P2.ome.zarr").exists()


def test_float_labels_are_refused(tmp_path):
    with pytest.raises(ValueError, match="must be integer"):
        with S.HcsPlateWriter(tmp_path / "x.ome.zarr", "P", ["a"]) as w:
            w.write_site("B03", 1, np.zeros((1, 8, 8), np.float32), labels={"w": np.zeros((8, 8), np.float32)})
    assert list(tmp_path.iterdir()) == []


def test_pyramid_levels_by_hand():
    a = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    levels = S.writer.pyramid(a)
    assert [lv.shape for lv in levels] == [(1, 8, 8), (1, 4, 4), (1, 2, 2)]
    assert levels[1][0, 1, 1] == np.mean([18, 19, 26, 27]) and levels[1].dtype == np.float32
    assert levels[2][0, 0, 0] == np.mean(a[0, :4, :4])
    lab = S.writer.pyramid(np.arange(63, dtype=np.int32).reshape(7, 9), labels=True)
    assert [lv.shape for lv in lab] == [(7, 9), (3, 4), (1, 2)]
    assert lab[1][0, 0] == 10 and lab[2].tolist() == [[30, 34]]  # nearest: the block's bottom-right id


def test_field_metadata_and_labels_equal_ome_zarrs_own_writer(tmp_path):
    """The fast writer (zarr arrays + ome-zarr's metadata functions) against ome-zarr's
    ``write_image`` / ``write_labels``: same NGFF metadata in every group and array, same level 0
    and same label pyramids; image levels > 0 are 2 x 2 block means (ome-zarr also blurs)."""
    import json

    from ome_zarr.writer import write_image, write_labels

    from ssc_assets.core.io.ome_zarr_store.common import CHUNK, SCALE_FACTORS, _omero

    rng = np.random.default_rng(3)
    img = rng.random((3, 101, 70), dtype=np.float32)
    labels = {"nuclei": rng.integers(0, 40, (101, 70)).astype(np.int32), "borders": rng.integers(0, 2, (101, 70)).astype(np.uint8)}
    ref = zarr.open_group(str(tmp_path / "ref"), mode="w")
    write_image(img, ref, scale_factors=SCALE_FACTORS, axes="cyx", storage_options={"chunks": (1, CHUNK, CHUNK)},
                omero=_omero(["nuclei", "borders", "actin"]))
    for name, arr in labels.items():
        write_labels(arr, ref, name=name, axes="yx", scaler=None, scale_factors=SCALE_FACTORS,
                     storage_options={"chunks": (CHUNK, CHUNK)}, label_metadata={"source": {"image": "../../"}})
    mine = zarr.open_group(str(tmp_path / "mine"), mode="w")
    S.writer._write_pixels(mine, img, labels, ["nuclei", "borders", "actin"])
    metas = sorted(p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref").rglob("zarr.json"))
    assert metas == sorted(p.relative_to(tmp_path / "mine") for p in (tmp_path / "mine").rglob("zarr.json"))
    for rel in metas:
        assert json.loads((tmp_path / "ref" / rel).read_text()) == json.loads((tmp_path / "mine" / rel).read_text()), rel
    np.testing.assert_array_equal(mine["s0"][:], img)
    for name in labels:
        for lv in ("s0", "s1", "s2"):
            np.testing.assert_array_equal(mine[f"labels/{name}/{lv}"][:], ref[f"labels/{name}/{lv}"][:])
    inner = mine["s1"][:][:, 1:-1, 1:-1]  # away from the edges the blur of a 2x2 mean changes little
    assert np.abs(inner - ref["s1"][:][:, 1:-1, 1:-1]).mean() < 0.1
