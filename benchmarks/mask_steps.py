"""Benchmark: mask steps and the whole per-site chain on a 2048x2048 simulated site.

    python benchmarks/mask_steps.py [--size 2048] [--repeats 3]

Rows: ours vs a naive reference (whole-image h-maxima for nuclei markers; full-resolution
propagation; one full-image distance transform per cell for the weight map), then the whole
per-site chain (illumination correction + preprocessing of 3 channels + masks), one core.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy.ndimage as ndi
from skimage.morphology import h_maxima

from ssc_assets.core.image import segmentation as S
from ssc_assets.core.image.filters import preprocess_channel
from ssc_assets.core.image.illumination import IlluminationProfile, apply_illumination
from ssc_assets.core.simulate import make_flatfield, render_site


def timeit(fn, repeats):
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def naive_markers(dist, fg, h):
    return ndi.label(h_maxima(dist, h) & fg)[0]


def naive_two_nearest(inst):
    d1 = np.full(inst.shape, np.inf, np.float32)
    d2 = np.full(inst.shape, np.inf, np.float32)
    for i in range(1, inst.max() + 1):
        d = ndi.distance_transform_edt(inst != i).astype(np.float32)
        closer = d < d1
        d2 = np.where(closer, d1, np.minimum(d2, d))
        d1 = np.where(closer, d, d1)
    return d1, d2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    flats = {ch: make_flatfield(rng, args.size) for ch in ("nuclei", "borders", "actin")}
    imgs, _ = render_site(7, args.size, 0.4, flatfields=flats)
    profiles = {ch: IlluminationProfile.from_arrays(flats[ch], 100.0) for ch in flats}
    pre = {ch: preprocess_channel(apply_illumination(imgs[ch], profiles[ch]), ch) for ch in flats}
    p = S.NucleiParams()
    fg = pre["nuclei"] > 0
    from skimage.filters import threshold_otsu

    fg = ndi.binary_fill_holes(ndi.binary_opening(pre["nuclei"] > threshold_otsu(pre["nuclei"]), S.disk(3)))
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg), p.smoothing_sigma)
    rows = []
    tn, a = timeit(lambda: naive_markers(dist, fg, p.h), 1)
    to, b = timeit(lambda: S._h_maxima_markers(dist, fg, p.h), args.repeats)
    rows.append(("nuclei markers (h-maxima)", tn, to, float(((a > 0) != (b > 0)).mean())))
    nuclei = S.segment_nuclei(pre["nuclei"])
    tn, c1 = timeit(lambda: S.segment_cells(pre["borders"], nuclei, 0.05, scale=1), 1)
    to, c2 = timeit(lambda: S.segment_cells(pre["borders"], nuclei, 0.05, scale=2), args.repeats)
    rows.append(("cells: propagation scale 2 vs full", tn, to, float((c1 != c2).mean())))
    tn, (n1, n2) = timeit(lambda: naive_two_nearest(c2), 1)
    to, (o1, o2) = timeit(lambda: S.two_nearest_distances(c2, 20.0), args.repeats)
    near = (n1 + n2) < 20
    rows.append(("weight map d1+d2 (within 4 sigma)", tn, to, float(np.abs((n1 + n2) - (o1 + o2))[near].max())))
    print(f"# mask_steps: {args.size}^2 site (masks on the {pre['nuclei'].shape[0]}^2 crop), cores={os.cpu_count()}")
    print("| step | time naive | time ours | speed-up | deviation |")
    print("|---|---|---|---|---|")
    for name, tn, to, dev in rows:
        print(f"| {name} | {tn:.2f} s | {to:.2f} s | {tn / to:.0f}x | {dev:.4f} |")

    def chain():
        ch = {c: preprocess_channel(apply_illumination(imgs[c], profiles[c]), c) for c in flats}
        return S.compute_masks(ch["nuclei"], ch["borders"], ch["actin"])

    t_chain, m = timeit(chain, args.repeats)
    print(f"\nwhole per-site chain (correction + preprocessing + masks, 3 channels, 1 core): {t_chain:.2f} s; "
          f"{m['nuclei'].max()} nuclei")
    print(f"one 96-well plate (384 sites) on 2 worker processes: ~{384 * t_chain / 2 / 60:.1f} min")


if __name__ == "__main__":
    main()
