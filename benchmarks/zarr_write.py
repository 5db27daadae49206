"""Benchmark: OME-Zarr writes in the job process (the serial part of a plate run).

    python benchmarks/zarr_write.py [--size 1536]

Writes 4 fields into a corrected-images store (3 channels, float32) and a masks store
(weight map + 5 label images) through ``HcsPlateWriter``, seconds per site. The data are
random (incompressible): an upper bound for real images.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from ssc_assets.core.io.ome_zarr_store import HcsPlateWriter

LABELS = ("nuclei", "cells", "borders", "actin", "actin_inside_cells")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1536)
    n = ap.parse_args().size
    rng = np.random.default_rng(0)
    img = rng.random((3, n, n), dtype=np.float32)
    wm = rng.random((1, n, n), dtype=np.float32)
    labels = {k: (rng.integers(0, 150, (n, n)).astype(np.int32) if k in ("nuclei", "cells")
                  else rng.integers(0, 2, (n, n)).astype(np.uint8)) for k in LABELS}
    print(f"# zarr_write: {n}² sites, 4 fields per store, seconds per site (first includes store creation)")
    print("| store | per site |")
    print("|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for name, channels, write in (
            ("corrected_images", ["nuclei", "borders", "actin"], lambda w, s: w.write_site("B02", s, img)),
            ("masks", ["weight_map"], lambda w, s: w.write_site("B02", s, wm, labels=labels)),
        ):
            times = []
            with HcsPlateWriter(f"{d}/{name}.ome.zarr", "P", channels) as w:
                for site in range(1, 5):
                    t = time.perf_counter()
                    write(w, site)
                    times.append(time.perf_counter() - t)
            print(f"| {name} | {' / '.join(f'{x:.2f} s' for x in times)} |")


if __name__ == "__main__":
    main()
