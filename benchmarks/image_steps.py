"""Benchmark the per-channel preprocessing kernels against their naive references.

Usage::

    python benchmarks/image_steps.py [--size 2048] [--repeats 3] [--quick] [--tune-tv]

For each step it prints ``step | time naive | time ours | speed-up | mean |ours - naive| /
image mean`` on realistic synthetic 2048 x 2048 sites (a phantom of nuclei, VE-cadherin
junctions, actin fibres, debris, vignetting, camera offset, Poisson + read noise), then the
time of the whole per-site chain (illumination correction + preprocessing of the 3
channels, plus masks if ``ssc_assets.core.masks`` provides them). Timings are the minimum
over ``--repeats`` runs (naive references run once); a naive call too slow at full size is
timed on a centre crop and extrapolated linearly in pixels, and the row says so.

``--tune-tv`` prints the TV-weight tuning table (PSNR / SSIM against the noise-free
phantom, two noise levels, three channels) used to choose ``filters.TV_WEIGHT``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import scipy.ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssc_assets.core.image import filters as F  # noqa: E402
from ssc_assets.core.image import illumination as IL  # noqa: E402
from ssc_assets.core.image.filters.threads import _n_threads  # noqa: E402

# --------------------------------------------------------------------------------------
# phantom
# --------------------------------------------------------------------------------------

#: Two acquisition noise levels mimicking the thesis' two objectives: photons per count
#: (Poisson gain) and Gaussian read noise in counts. "obj2" is the noisier (condensation).
NOISE_LEVELS = {"obj1": (1.0, 3.0), "obj2": (0.25, 12.0)}
CAMERA_OFFSET = 100.0


def _smooth_noise(shape, scale, rng):
    small = (max(4, int(shape[0] / scale)), max(4, int(shape[1] / scale)))
    n = rng.standard_normal(small).astype(np.float32)
    n = cv2.resize(n, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return n / (n.std() + 1e-6)


def phantom_flatfield(shape, strength=0.35):
    """Smooth off-centre vignetting, mean 1 (float32)."""
    h, w = shape
    y = (np.arange(h, dtype=np.float32) - (h - 1) * 0.45) / (h / 2)
    x = (np.arange(w, dtype=np.float32) - (w - 1) * 0.55) / (w / 2)
    f = 1.0 - strength * (y[:, None] ** 2 + x[None, :] ** 2) / 2.0
    return (f / f.mean()).astype(np.float32)


def phantom_ideal(size=2048, seed=0, parts=False, debris=True):
    """Noise-free expected photon counts per channel, before flatfield and offset.

    Geometry at 2048 px: ~190 Voronoi cells (~150 px), elliptic textured nuclei (semi-axes
    18-30 px), 3-px VE-cadherin junctions, actin fibres, bright debris (borders) and small
    specks (nuclei). Returns {channel: float32 (size, size)}, or {channel: (signal,
    background)} with ``parts=True``; ``debris=False`` leaves out debris and specks.
    """
    rng = np.random.default_rng(seed)
    s = size / 2048.0
    shape = (size, size)
    ncell = max(4, int(190 * s * s))
    seeds = rng.uniform(0, size, (ncell, 2))
    yy = np.clip(seeds[:, 0].astype(int), 0, size - 1)
    xx = np.clip(seeds[:, 1].astype(int), 0, size - 1)
    mark = np.zeros(shape, np.int32)
    mark[yy, xx] = np.arange(1, ncell + 1)
    _, inds = ndi.distance_transform_edt(mark == 0, return_indices=True)
    lab = mark[inds[0], inds[1]]
    edge = np.zeros(shape, bool)
    edge[:-1] |= lab[:-1] != lab[1:]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge = cv2.dilate(edge.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
    nuc = np.zeros(shape, np.float32)
    for i in range(ncell):
        a = rng.uniform(18, 30) * s
        b = a * rng.uniform(0.55, 0.85)
        cv2.ellipse(nuc, (int(xx[i]), int(yy[i])), (max(1, int(a)), max(1, int(b))),
                    rng.uniform(0, 180), 0, 360, float(rng.uniform(1500, 4000)), -1)
    nuc = cv2.GaussianBlur(nuc * (1.0 + 0.25 * _smooth_noise(shape, 6 * max(s, 0.25), rng)), (0, 0), 1.5)
    bor = cv2.GaussianBlur(edge * 1500 * np.exp(0.4 * _smooth_noise(shape, 40 * s + 2, rng)), (0, 0), 1.2)
    act = np.zeros(shape, np.float32)
    for i in range(ncell):
        ang = rng.uniform(0, np.pi)
        for _ in range(int(rng.integers(5, 15))):
            cx, cy = xx[i] + rng.normal(0, 40 * s), yy[i] + rng.normal(0, 40 * s)
            a2 = ang + rng.normal(0, 0.2)
            ln = rng.uniform(30, 120) * s
            p1 = (int(cx - ln * np.cos(a2)), int(cy - ln * np.sin(a2)))
            p2 = (int(cx + ln * np.cos(a2)), int(cy + ln * np.sin(a2)))
            cv2.line(act, p1, p2, float(rng.uniform(300, 1000)), int(rng.integers(1, 3)))
    act = cv2.GaussianBlur(act, (0, 0), 1.0) + 0.3 * bor + 150.0
    out = {}
    for name, sig, bg in (("nuclei", nuc, 250.0), ("borders", bor, 400.0), ("actin", act, 300.0)):
        sig = sig.copy()
        if name == "borders" and debris:  # bright debris for Remove Outliers r=50 t=2000
            for _ in range(max(1, int(25 * s * s))):
                c = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
                cv2.circle(sig, c, int(rng.integers(2, 7)), float(rng.uniform(8000, 30000)), -1)
        if name == "nuclei" and debris:  # small specks for Remove Outliers r=10 t=50
            for _ in range(max(1, int(60 * s * s))):
                c = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
                cv2.circle(sig, c, int(rng.integers(1, 4)), float(rng.uniform(300, 3000)), -1)
        back = (bg * (1 + 0.1 * _smooth_noise(shape, 300 * s + 4, rng))).astype(np.float32)
        out[name] = (sig.astype(np.float32), back) if parts else (sig + back).astype(np.float32)
    return out


def phantom_site(size=2048, seed=0, noise="obj1", flat=None, clean=False):
    """Raw camera images {channel: float32 (size, size)}: ideal x flatfield, Poisson +
    read noise (``NOISE_LEVELS[noise]``) + camera offset. ``clean=True`` skips the noise."""
    ideal = phantom_ideal(size, seed)
    ff = phantom_flatfield((size, size)) if flat is None else flat
    gain, read = NOISE_LEVELS[noise]
    rng = np.random.default_rng(seed + 1000)
    out = {}
    for name, im in ideal.items():
        lam = np.clip(im * ff, 0, None)
        if clean:
            img = lam + CAMERA_OFFSET
        else:
            img = rng.poisson(lam * gain).astype(np.float32) / gain
            img += rng.normal(0, read, lam.shape).astype(np.float32) + CAMERA_OFFSET
        out[name] = np.clip(img, 0, 65535).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def timeit(fn, repeats):
    best, out = np.inf, None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def rel_dev(a, b, ref):
    return float(np.abs(a.astype(np.float64) - b).mean() / np.abs(ref).mean())


def centre(img, n):
    h, w = img.shape
    y0, x0 = (h - n) // 2, (w - n) // 2
    return np.ascontiguousarray(img[y0 : y0 + n, x0 : x0 + n])


ROWS: list[tuple] = []


def row(step, t_naive, t_ours, dev, note=""):
    ROWS.append((step, t_naive, t_ours, dev, note))
    sp = t_naive / t_ours if t_ours > 0 else float("inf")
    print(f"| {step} | {t_naive:.2f} s | {t_ours * 1000:.0f} ms | {sp:.0f}x | {dev * 100:.3f} % | {note} |", flush=True)


# --------------------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------------------


def bench(size, repeats, quick):
    print(f"# image_steps: {size}x{size}, repeats={repeats}, cores={os.cpu_count()}, "
          f"threads={_n_threads()}, load={os.getloadavg()[0]:.2f}")
    site = phantom_site(size, seed=0, noise="obj1")
    print("| step | time naive | time ours | speed-up | mean abs dev / image mean | note |")
    print("|---|---|---|---|---|---|")

    # 1a. outliers, nuclei r=10 t=50 (naive at full size unless --quick)
    x = site["nuclei"]
    n = size if not quick else min(size, 512)
    xc = centre(x, n)
    tn, ref = timeit(lambda: F.remove_outliers_reference(xc, 10, 50), 1)
    if n != size:
        tn *= (size / n) ** 2
    to, ours = timeit(lambda: F.remove_outliers(x, 10, 50), repeats)
    oc = ours if n == size else F.remove_outliers(xc, 10, 50)
    row("remove outliers nuclei r=10 t=50", tn, to, rel_dev(oc, ref, xc),
        "" if n == size else f"naive timed on {n}² crop, x{(size / n) ** 2:.0f}")

    # 1b. outliers, borders r=50 t=2000: naive on a crop, extrapolated
    x = site["borders"]
    n = min(size, 512 if not quick else 256)
    xc = centre(x, n)
    tn, ref = timeit(lambda: F.remove_outliers_reference(xc, 50, 2000), 1)
    tn *= (size / n) ** 2
    to, _ = timeit(lambda: F.remove_outliers(x, 50, 2000), repeats)
    oc = F.remove_outliers(xc, 50, 2000)
    row("remove outliers borders r=50 t=2000", tn, to, rel_dev(oc, ref, xc),
        f"naive timed on {n}² crop, x{(size / n) ** 2:.0f}; deviation on that crop")

    # 2. rolling ball (actin; ImageJ with and without pre-smoothing vs skimage)
    x = site["actin"]
    n = size if not quick else min(size, 512)
    xc = centre(x, n)
    tn, ref = timeit(lambda: F.subtract_background_reference(xc, 50), 1)
    if n != size:
        tn *= (size / n) ** 2
    note = "" if n == size else f"naive timed on {n}² crop, x{(size / n) ** 2:.0f}"
    for pre in (True, False):
        to, _ = timeit(lambda pre=pre: F.subtract_background(x, 50, presmooth=pre), repeats)
        oc = F.subtract_background(xc, 50, presmooth=pre)
        row(f"rolling ball r=50 (ImageJ, presmooth={pre}) vs skimage", tn, to, rel_dev(oc, ref, xc),
            note + ("; different algorithms, see docs" if pre else ""))
    for ch in ("nuclei", "borders"):
        xc = centre(site[ch], min(n, 1024))
        ref = F.subtract_background_reference(xc, 50)
        for pre in (True, False):
            oc = F.subtract_background(xc, 50, presmooth=pre)
            print(f"|   ({ch}, presmooth={pre}: deviation vs skimage on {xc.shape[0]}² crop) | | | | "
                  f"{rel_dev(oc, ref, xc) * 100:.3f} % | |")

    # 3. median r=2 on the chain input (after outliers + rolling ball)
    pre = {
        ch: F.subtract_background(F.remove_outliers(site[ch], *r) if r else site[ch], 50)
        for ch, r in (("nuclei", (10, 50)), ("borders", (50, 2000)), ("actin", None))
    }
    x = pre["actin"]
    tn, ref = timeit(lambda: F.median_filter_reference(x, 2), 1 if not quick else 1)
    to, ours = timeit(lambda: F.median_filter(x, 2), repeats)
    row("median r=2 (21 px, exact)", tn, to, rel_dev(ours, ref, x), "deviation relative to the step input mean")
    ts, sq = timeit(lambda: cv2.medianBlur(x, 5), repeats)
    row("  (rejected: cv2.medianBlur 5x5 square)", tn, ts, rel_dev(sq, ref, x), "not ImageJ's kernel")

    # 4. TV denoise (default skimage call vs ours)
    for ch in ("nuclei", "actin"):
        x = F.median_filter(pre[ch], 2)
        tn, ref = timeit(lambda x=x: F.tv_denoise_reference(x), 1)
        to, ours = timeit(lambda x=x: F.tv_denoise(x), repeats)
        row(f"TV Chambolle w={F.TV_WEIGHT} ({ch})", tn, to, rel_dev(ours, ref, x), "deviation relative to the step input mean")

    # 5. crop
    to, _ = timeit(lambda: F.centre_crop(x), repeats)
    row("centre crop 0.75", 0.0, to, 0.0, "")

    # whole chain for one site
    prof = IL.estimate_illumination_profile([phantom_site(min(size, 512), seed=s, noise="obj1")["nuclei"] for s in range(4)])
    prof_full = IL.IlluminationProfile.from_arrays(
        cv2.resize(prof.flatfield, (size, size), interpolation=cv2.INTER_LINEAR), prof.darkfield
    )
    masks = None
    try:  # masks are another module's job: time them too when present
        from ssc_assets.core import masks as _masks  # type: ignore

        masks = getattr(_masks, "site_masks", None)
    except Exception:
        masks = None

    def chain():
        out = {}
        for ch in ("nuclei", "borders", "actin"):
            corr = IL.apply_illumination(site[ch], prof_full)
            out[ch] = F.preprocess_channel(corr, ch)
        if masks is not None:
            masks(out)
        return out

    t_chain, _ = timeit(chain, repeats)
    per = {}
    for ch in ("nuclei", "borders", "actin"):
        per[ch], _ = timeit(lambda ch=ch: F.preprocess_channel(site[ch], ch), repeats)
    t_corr, _ = timeit(lambda: IL.apply_illumination(site["actin"], prof_full), repeats)
    print()
    print(f"whole site (3 channels: correction + preprocessing{' + masks' if masks else ''}): "
          f"{t_chain:.2f} s  [per channel preprocessing: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in per.items())
          + f"; correction {t_corr * 1000:.0f} ms/channel]")
    print(f"load average after run: {os.getloadavg()[0]:.2f}")


# --------------------------------------------------------------------------------------
# TV-weight tuning
# --------------------------------------------------------------------------------------

TV_WEIGHTS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)


def tune_tv(size=1024, seeds=(0, 1)):
    """PSNR / SSIM (scale [0, 1]) of TV-denoised noisy signal against the noise-free one.

    Per channel: noise-free signal ``S`` (no debris) and background ``B`` of the phantom
    (centre ``size`` crop, flat illumination); noisy input = Poisson((S + B) * gain) / gain +
    read noise - B (background removed exactly, as the rolling ball would), then the
    radius-2 median that precedes TV in the chain. Both are mapped to [0, 1] by the robust
    range of the noisy input, as ``filters.tv_denoise`` does.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from skimage.restoration import denoise_tv_chambolle

    res = {}  # (noise, ch, w) -> list of (psnr, ssim)
    for seed in seeds:
        parts = phantom_ideal(2048, seed=seed, parts=True, debris=False)
        rng = np.random.default_rng(seed + 77)
        for noise, (gain, read) in NOISE_LEVELS.items():
            for ch in ("nuclei", "borders", "actin"):
                sig, back = (centre(a, size) for a in parts[ch])
                noisy = rng.poisson((sig + back) * gain).astype(np.float32) / gain
                noisy += rng.normal(0, read, sig.shape).astype(np.float32) - back
                x = F.median_filter(noisy, 2)
                lo, hi = F.robust_range(x)
                f = (x - lo) / (hi - lo)
                g = (sig - lo) / (hi - lo)
                for w in TV_WEIGHTS:
                    u = f if w == 0 else denoise_tv_chambolle(f, weight=w)
                    ps = peak_signal_noise_ratio(g, u, data_range=1.0)
                    ss = structural_similarity(g, u, data_range=1.0)
                    res.setdefault((noise, ch, w), []).append((ps, ss))
    print("PSNR (dB) / SSIM vs noise-free signal; weight 0 = median r=2 only")
    print("| weight | " + " | ".join(f"{n} {c}" for n in NOISE_LEVELS for c in ("nuclei", "borders", "actin"))
          + " | mean PSNR | mean SSIM |")
    print("|---" * (2 + 3 * len(NOISE_LEVELS) + 1) + "|")
    for w in TV_WEIGHTS:
        cells, ps_all, ss_all = [], [], []
        for noise in NOISE_LEVELS:
            for ch in ("nuclei", "borders", "actin"):
                v = np.array(res[(noise, ch, w)])
                cells.append(f"{v[:, 0].mean():.2f} / {v[:, 1].mean():.3f}")
                ps_all.append(v[:, 0].mean())
                ss_all.append(v[:, 1].mean())
        print(f"| {w} | " + " | ".join(cells) + f" | {np.mean(ps_all):.2f} | {np.mean(ss_all):.3f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="time naive references on 512² crops only")
    ap.add_argument("--tune-tv", action="store_true", help="print the TV weight tuning table and exit")
    a = ap.parse_args(argv)
    if a.tune_tv:
        tune_tv()
        return
    bench(a.size, a.repeats, a.quick)


if __name__ == "__main__":
    main()
