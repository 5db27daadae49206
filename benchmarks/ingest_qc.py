"""Benchmark: indexing a full plate and per-image QC, against naive reference implementations.

    python benchmarks/ingest_qc.py [--size 2048] [--qc-images 16]

Indexing: a 96-well x 4-site x 3-channel plate (1,152 files) in the MetaXpress layout. The files
are hard links to a few real 2048x2048 uint16 TIFFs (indexing reads names, stats and TIFF
headers only, so the pixel content does not matter, and 9 GB of disk is spared).
Naive indexing reads every image fully to learn its shape. QC: ours (half-spectrum float32 FFT,
histogram quantiles) vs a direct transcription of CellProfiler's rps + numpy quantiles.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import tifffile

from ssc_assets.core.ingest.qc import image_qc, power_log_log_slope_reference
from ssc_assets.core.ingest.site_tables import build_raw_sites

ROWS = "ABCDEFGH"


def make_plate(root: Path, size: int) -> Path:
    rng = np.random.default_rng(0)
    plate = root / "BENCH"
    tp = plate / "2024-01-01" / "1" / "TimePoint_1"
    tp.mkdir(parents=True)
    sources = []
    for w in (1, 2, 3):
        p = root / f"src_w{w}.tif"
        desc = ('<MetaData><PlaneInfo><prop id="spatial-calibration-x" type="float" value="0.34"/>'
                '<custom-prop id="_MagSetting_" type="string" value="20X Plan Apo Lambda"/><custom-prop id="_MagNA_" value="0.75"/>'
                f'<custom-prop id="_IllumSetting_" value="{("DAPI", "FITC", "TRITC")[w - 1]}"/></PlaneInfo><MetaSeries>'
                '<prop id="Description" value="Exposure: 50 ms&#13;&#10;Binning: 1 x 1"/></MetaSeries></MetaData>')
        tifffile.imwrite(p, rng.poisson(500, (size, size)).astype(np.uint16), description=desc, metadata=None)
        sources.append(p)
    lines = ["well,donor_id,condition,group"]
    for r in ROWS:
        for c in range(1, 13):
            well = f"{r}{c:02d}"
            lines.append(f"{well},D{c},{'HC' if c % 2 else 'SSc'},{'HC' if c % 2 else 'SSC'}")
            for s in range(1, 5):
                for w in (1, 2, 3):
                    os.link(sources[w - 1], tp / f"BENCH_{well}_s{s}_w{w}.tif")
    (plate / "platemap.csv").write_text("\n".join(lines) + "\n")
    return plate


def naive_index(plate: Path) -> int:
    n = 0
    for p in plate.rglob("*.tif"):
        _ = tifffile.imread(p).shape
        n += 1
    return n


def naive_qc(img: np.ndarray) -> dict:
    out = {q: float(np.quantile(img, v)) for q, v in [("q01", 0.01), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q99", 0.99)]}
    out["std"] = float(img.std())
    out["focus_score"] = power_log_log_slope_reference(img)
    return out


def realistic(size: int, seed: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.normal(0, 1, (size, size)).astype(np.float32), 3) * 4000 + 1500
    return rng.poisson(np.clip(base, 0, None)).astype(np.uint16)


def timed(fn, *a):
    t = time.perf_counter()
    r = fn(*a)
    return time.perf_counter() - t, r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--qc-images", type=int, default=16)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        plate = make_plate(Path(d), args.size)
        t_ours, raw = timed(build_raw_sites, plate)
        t_naive, n = timed(naive_index, plate)
        assert len(raw.table) == n == 1152
        rows.append(("index 1,152 files (s)", t_naive, t_ours))

    imgs = [realistic(args.size, i) for i in range(args.qc_images)]
    t_naive = min(timed(naive_qc, imgs[0])[0] for _ in range(2))
    t_one = min(timed(image_qc, imgs[0])[0] for _ in range(3))
    rows.append((f"QC one {args.size}^2 image, 1 core (s)", t_naive, t_one))
    nuclei_qc = partial(image_qc, channel="nuclei", pixel_size_um=0.34)  # + edge width
    t_nuc = min(timed(nuclei_qc, imgs[0])[0] for _ in range(3))
    rows.append(("QC one nuclei image (+edge), 1 core (s)", t_naive, t_nuc))
    with ProcessPoolExecutor(args.workers) as pool:
        list(pool.map(image_qc, imgs[:2]))  # warm up workers
        t_pool, _ = timed(lambda: list(pool.map(image_qc, imgs)))
    rows.append((f"QC per image, {args.workers} workers (s)", t_naive, t_pool / len(imgs)))

    print(f"{'step':<38} {'naive':>9} {'ours':>9} {'speed-up':>9}")
    for name, naive, ours in rows:
        print(f"{name:<38} {naive:>9.3f} {ours:>9.3f} {naive / ours:>8.1f}x")
    print("targets: indexing <= 5 s; QC <= 0.1 s per 2048^2 image (issue 10) on 2 cores")


if __name__ == "__main__":
    main()
