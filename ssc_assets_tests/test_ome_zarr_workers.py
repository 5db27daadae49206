"""Worker writes: sites written into the temp store by worker processes (``prepare_site`` ->
``write_field`` in the worker -> ``record_site``) give the same store as the job-process path
(``write_site``), and the store stays atomic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from ssc_assets.core.io import ome_zarr_store as S
from ssc_assets.core.parallel import map_sites

CHANNELS = ["nuclei", "borders", "actin"]
SIDE = 600  # > CHUNK: several chunks at level 0
SITES = [("B02", 1), ("B02", 2), ("B03", 1), ("C02", 2)]  # uniform_fields adds B03 s2, C02 s1
LABELS = ("nuclei", "cells", "borders")


def _image(well: str, site: int, masks: bool) -> np.ndarray:
    rng = np.random.default_rng([ord(well[0]), int(well[1:]), site, int(masks)])
    return (rng.random((1 if masks else 3, SIDE, SIDE), dtype=np.float32) * [10.0]).astype(np.float32)


def _labels(well: str, site: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([ord(well[0]), int(well[1:]), site, 7])
    return {k: (rng.integers(0, 40, (SIDE, SIDE)).astype(np.int32) if k != "borders"
                else rng.integers(0, 2, (SIDE, SIDE)).astype(np.uint8)) for k in LABELS}


def _worker(item: tuple) -> dict:
    """Top-level (picklable) site task: compute the site, write it into its prepared field."""
    path, well, site, masks, fail = item
    labels = _labels(well, site) if masks else None
    written = S.write_field(path, _image(well, site, masks), labels, ["weight_map"] if masks else CHANNELS)
    if fail:
        raise RuntimeError("worker failed after writing its arrays")
    return written


def _status(well: str, site: int) -> str:
    return "qc_failed" if (well, site) == ("B03", 1) else "ok"


FAILS = ("C02", 2)  # this site's worker raises (after writing): an error placeholder in both stores


def _serial(store: Path, masks: bool) -> None:
    with S.HcsPlateWriter(store, "P1", ["weight_map"] if masks else CHANNELS, uniform_fields=True) as w:
        for well, site in SITES:
            if (well, site) == FAILS:
                w.write_placeholder(well, site, "error", "boom", {"error": "boom"})
                continue
            w.write_site(well, site, _image(well, site, masks), _labels(well, site) if masks else None,
                         {"plate": "P1"}, status=_status(well, site))


def _by_workers(store: Path, masks: bool, backend: str = "process") -> None:
    with S.HcsPlateWriter(store, "P1", ["weight_map"] if masks else CHANNELS, uniform_fields=True) as w:
        assert w.workers_can_write(backend)
        items = [(w.prepare_site(well, site), well, site, masks, (well, site) == FAILS) for well, site in SITES]

        def record(r) -> None:
            well, site = SITES[r.key]
            if r.ok:
                w.record_site(well, site, r.value, {"plate": "P1"}, status=_status(well, site))
            else:
                w.write_placeholder(well, site, "error", "boom", {"error": "boom"})

        results = map_sites(_worker, items, backend=backend, max_workers=2, on_result=record)
        assert [r.ok for r in results] == [s != FAILS for s in SITES]


def _tree(store: Path) -> tuple[dict, dict]:
    """(relative path -> zarr.json content) and (array path -> values) of a store."""
    metas = {str(p.relative_to(store)): json.loads(p.read_text()) for p in store.rglob("zarr.json")}
    arrays = {}

    def walk(g, prefix=""):
        for name, a in g.arrays():
            arrays[f"{prefix}{name}"] = (a[:], a.dtype, a.chunks)
        for name, sub in g.groups():
            walk(sub, f"{prefix}{name}/")

    walk(zarr.open_group(str(store), mode="r"))
    return metas, arrays


@pytest.mark.parametrize("masks", [False, True], ids=["corrected", "masks"])
def test_worker_processes_write_the_same_store_as_the_serial_path(tmp_path, masks):
    serial, workers = tmp_path / "serial.ome.zarr", tmp_path / "workers.ome.zarr"
    _serial(serial, masks)
    _by_workers(workers, masks)
    m1, a1 = _tree(serial)
    m2, a2 = _tree(workers)
    assert m1 == m2  # every group's and array's metadata: plate, wells, fields, flags, omero windows
    assert a1.keys() == a2.keys() and len(a1) >= 6 * 3  # 6 fields x 3 levels (+ labels)
    for k in a1:
        v1, v2 = a1[k], a2[k]
        assert v1[1] == v2[1] and v1[2] == v2[2], k
        np.testing.assert_array_equal(v1[0], v2[0], err_msg=k)
    # readable by the reader functions and by ome_zarr's reader
    ok = sorted(s for s in SITES if s != FAILS and _status(*s) == "ok")
    assert sorted(S.list_sites(workers)) == ok
    flags = S.field_flags(workers)
    assert flags[FAILS]["status"] == "error" and flags[("B03", 1)]["status"] == "qc_failed"
    assert flags[("B03", 2)]["status"] == "missing" and flags[("C02", 1)]["status"] == "missing"
    for well, site in ok:
        np.testing.assert_array_equal(S.read_site_image(workers, well, site), _image(well, site, masks))
        assert S.read_site_image(workers, well, site, level=2).shape[-1] == SIDE // 4
        if masks:
            np.testing.assert_array_equal(S.read_site_labels(workers, well, site, "cells"), _labels(well, site)["cells"])
    assert np.isnan(S.read_site_image(workers, *FAILS)).all()  # the failed worker's arrays were replaced
    assert S.open_reader(workers)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_crash_after_worker_writes_leaves_the_previous_store(tmp_path):
    store = tmp_path / "p.ome.zarr"
    _serial(store, False)
    before = S.read_site_image(store, "B02", 1)
    with pytest.raises(RuntimeError, match="job died"):
        with S.HcsPlateWriter(store, "P1", CHANNELS, uniform_fields=True) as w:
            items = [(w.prepare_site(well, site), well, site, False, False) for well, site in SITES]
            for item, r in zip(items, map_sites(_worker, items, backend="serial")):
                w.record_site(item[1], item[2], r.value)
            raise RuntimeError("job died")
    np.testing.assert_array_equal(S.read_site_image(store, "B02", 1), before)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_worker_never_recreates_a_removed_temp_store(tmp_path):
    store = tmp_path / "p.ome.zarr"
    with pytest.raises(RuntimeError, match="stop"):
        with S.HcsPlateWriter(store, "P1", CHANNELS) as w:
            path = w.prepare_site("B02", 1)
            shutil.rmtree(w.tmp)  # e.g. the job died and recovery removed its temp store
            with pytest.raises(Exception):  # noqa: B017 - zarr's not-found error
                S.write_field(path, _image("B02", 1, False), channel_names=CHANNELS)
            assert not w.tmp.exists()
            raise RuntimeError("stop")
    assert not store.exists() and not list(tmp_path.glob("*.tmp-*"))


def test_prepared_site_without_result_becomes_an_error_placeholder(tmp_path):
    store = tmp_path / "p.ome.zarr"
    with S.HcsPlateWriter(store, "P1", CHANNELS) as w:
        done = w.prepare_site("B02", 1)
        w.prepare_site("B02", 2)  # its worker's result never arrives
        w.record_site("B02", 1, S.write_field(done, _image("B02", 1, False), channel_names=CHANNELS))
        with pytest.raises(ValueError, match="not prepared"):
            w.record_site("B03", 1, {"shape": (3, 4, 4), "ranges": [[0, 1]] * 3})
    flags = S.field_flags(store)
    assert flags[("B02", 1)]["status"] == "ok" and flags[("B02", 2)]["status"] == "error"
    assert S.read_site_image(store, "B02", 2).shape == (3, SIDE, SIDE)
