"""Benchmark: OME-Zarr writes of a plate run, in the job process and in the site workers.

    python benchmarks/zarr_write.py [--size 1536] [--workers 2] [--sites 8]

1. job-process path (``HcsPlateWriter.write_site``; what the assets did before workers wrote
   their own sites): 4 fields into a corrected-images store (3 channels, float32) and a masks
   store (weight map + 5 label images), seconds per site;
2. worker path (what the assets do now): ``--sites`` fields per store, each written by one of
   ``--workers`` spawned processes (``prepare_site`` in the job, ``write_field`` in the worker,
   ``record_site`` in the job), then the commit. Reported: the write seconds per site in a
   worker, the job process's own seconds per site (prepare + record + metadata + commit: the
   serial part left) and the wall per site of the whole map (process start included).

3. one field's pixels (image pyramid + label pyramids): ``write_field``'s writer (zarr arrays and
   ome-zarr's metadata functions) against the naive reference, ome-zarr's own ``write_image`` /
   ``write_labels`` (a dask graph per array), seconds per field and the ratio.

The data are random (incompressible): an upper bound for real images.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from ssc_assets.core.io.ome_zarr_store import HcsPlateWriter, write_field
from ssc_assets.core.parallel import map_sites

LABELS = ("nuclei", "cells", "borders", "actin", "actin_inside_cells")
CHANNELS = {"corrected_images": ["nuclei", "borders", "actin"], "masks": ["weight_map"]}


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    img = rng.random((3, n, n), dtype=np.float32)
    wm = rng.random((1, n, n), dtype=np.float32)
    labels = {k: (rng.integers(0, 150, (n, n)).astype(np.int32) if k in ("nuclei", "cells")
                  else rng.integers(0, 2, (n, n)).astype(np.uint8)) for k in LABELS}
    return img, wm, labels


def _worker(item: tuple) -> tuple[dict, float]:
    """One site in a worker: make its data (as if computed), write it; returns (summary, write seconds)."""
    path, name, n, site = item
    img, wm, labels = _data(n, site)
    t = time.perf_counter()
    if name == "masks":
        written = write_field(path, wm, labels, CHANNELS[name])
    else:
        written = write_field(path, img, None, CHANNELS[name])
    return written, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1536)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sites", type=int, default=8)
    args = ap.parse_args()
    n = args.size
    img, wm, labels = _data(n)
    print(f"# zarr_write: {n}² sites, job-process path: 4 fields per store, seconds per site (first includes store creation)")
    print("| store | per site |")
    print("|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for name, write in (
            ("corrected_images", lambda w, s: w.write_site("B02", s, img)),
            ("masks", lambda w, s: w.write_site("B02", s, wm, labels=labels)),
        ):
            times = []
            with HcsPlateWriter(f"{d}/{name}.ome.zarr", "P", CHANNELS[name]) as w:
                for site in range(1, 5):
                    t = time.perf_counter()
                    write(w, site)
                    times.append(time.perf_counter() - t)
            print(f"| {name} | {' / '.join(f'{x:.2f} s' for x in times)} |")

        print(f"\n# worker path: {args.sites} fields per store, {args.workers} worker processes")
        print("| store | write in worker, s/site (mean) | job process, s/site | wall (map + commit), s/site |")
        print("|---|---|---|---|")
        for name in ("corrected_images", "masks"):
            job = 0.0
            t_wall = time.perf_counter()
            with HcsPlateWriter(f"{d}/w_{name}.ome.zarr", "P", CHANNELS[name]) as w:
                t = time.perf_counter()
                items = [(w.prepare_site("B02", s), name, n, s) for s in range(1, args.sites + 1)]
                job += time.perf_counter() - t

                def record(r) -> None:
                    nonlocal job
                    t = time.perf_counter()
                    w.record_site("B02", r.key + 1, r.value[0])
                    job += time.perf_counter() - t

                results = map_sites(_worker, items, backend="process", max_workers=args.workers, on_result=record)
                t_exit = time.perf_counter()
            job += time.perf_counter() - t_exit
            wall = time.perf_counter() - t_wall
            in_worker = np.mean([r.value[1] for r in results])
            print(f"| {name} | {in_worker:.2f} | {job / args.sites:.3f} | {wall / args.sites:.2f} |")
    for size in sorted({384, n}):
        compare_writers(size)


def compare_writers(n: int, repeats: int = 3) -> None:
    """Seconds per field: ome-zarr's write_image / write_labels (reference) vs ``_write_pixels``."""
    import zarr
    from ome_zarr.writer import write_image, write_labels

    from ssc_assets.core.io.ome_zarr_store.common import CHUNK, SCALE_FACTORS, _omero
    from ssc_assets.core.io.ome_zarr_store.writer import _write_pixels

    img, wm, labels = _data(n)

    def reference(group, image, labs, channels):
        write_image(image, group, scale_factors=SCALE_FACTORS, axes="cyx", storage_options={"chunks": (1, CHUNK, CHUNK)},
                    omero=_omero(channels))
        for name, arr in (labs or {}).items():
            write_labels(arr, group, name=name, axes="yx", scaler=None, scale_factors=SCALE_FACTORS,
                         storage_options={"chunks": (CHUNK, CHUNK)}, label_metadata={"source": {"image": "../../"}})

    print(f"\n# one field's pixels, {n}², best of {repeats}: ome-zarr write_image/write_labels vs ours")
    print("| field | ome-zarr (reference) | ours | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for name, image, labs in (("corrected_images (3 channels)", img, None), ("masks (weight map + 5 labels)", wm, labels)):
            best = {}
            for label, fn in (("ref", reference), ("ours", _write_pixels)):
                times = []
                for i in range(repeats):
                    group = zarr.open_group(f"{d}/{label}-{i}-{name[:5]}", mode="w")
                    t = time.perf_counter()
                    fn(group, image, labs, CHANNELS["masks" if labs else "corrected_images"])
                    times.append(time.perf_counter() - t)
                best[label] = min(times)
            print(f"| {name} | {best['ref']:.3f} s | {best['ours']:.3f} s | {best['ref'] / best['ours']:.1f}x |")


if __name__ == "__main__":
    main()
