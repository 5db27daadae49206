"""Benchmark: each mask step at full and at half resolution, on simulated 2048² sites.

    python benchmarks/mask_steps.py [--size 2048] [--repeats 3] [--skip-naive-weights]

Sites: three seeds with different densities (pixel size 0.30, 0.34, 0.42 um: nuclei of ~41,
36 and 29 px) and phenotypes (severity 0.1 / 0.5 / 0.9, phenotype gain 0 / 0.5 / 1), each
rendered by ``render_site`` and preprocessed per channel (masks on the 0.75 centre crop).

Per step: CPU seconds (``time.process_time``, best of ``--repeats``, summed over the sites)
of the naive full-resolution reference (the straightforward whole-image scipy/skimage
calls), of ours at full resolution, and of the half-resolution variant; the speed-ups
against the naive reference; and the agreement of the half-resolution result with full
resolution (:func:`label_agreement`: mean IoU of matched objects, fraction matched at
IoU >= 0.5, pixels agreeing; worst site). Then the whole ``compute_masks`` per site.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy.ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import disk, h_maxima
from skimage.segmentation import clear_border, find_boundaries, relabel_sequential, watershed

from ssc_assets.core.image import segmentation as S
from ssc_assets.core.image.filters import preprocess_channel
from ssc_assets.core.simulate import render_site

SITES = [  # seed, severity, phenotype_gain, pixel size (um)
    (7, 0.5, 0.5, 0.34),
    (11, 0.9, 1.0, 0.42),
    (3, 0.1, 0.0, 0.30),
]


def cpu(fn, repeats):
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


# -- naive full-resolution references (whole-image calls) ----------------------------------


def naive_foreground(img, p):
    fg = ndi.binary_opening(img > threshold_otsu(img), structure=disk(p.opening_px))
    fg = ndi.binary_fill_holes(fg)
    lab, _ = ndi.label(fg)
    small = np.bincount(lab.ravel()) < p.min_area_px
    small[0] = False
    fg[small[lab]] = False
    return fg


def naive_split(fg, p):
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg), p.smoothing_sigma)
    markers = ndi.label(h_maxima(dist, p.h).astype(bool) & fg)[0]
    labels = watershed(-dist, markers, mask=fg)
    orphan = fg & (labels == 0)
    if orphan.any():
        extra, _ = ndi.label(orphan)
        labels = np.where(orphan, extra + labels.max(), labels)
    return labels


def naive_nuclei(img, p):
    labels = clear_border(naive_split(naive_foreground(img, p), p))
    return relabel_sequential(labels.astype(np.int32))[0]


def naive_distance_to_other(cells):
    """One full-image distance transform per cell (d2 inside each cell; d1 = 0 in a tiling)."""
    out = np.full(cells.shape, np.inf, np.float32)
    for i in range(1, int(cells.max()) + 1):
        m = cells == i
        if m.any():
            out[m] = ndi.distance_transform_edt(m)[m]
    return out


# -- half-resolution variants ----------------------------------------------------------------


def half_foreground(img, p):
    h, w = img.shape[0] // 2, img.shape[1] // 2
    small = img[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
    q = S.NucleiParams(expected_diameter_px=p.expected_diameter_px / 2, opening_radius=max(1, round(p.opening_px / 2)))
    return S._upsample_labels(S.nuclei_foreground(small, q), 2, img.shape)


def half_split(fg, p):
    q = S.NucleiParams(expected_diameter_px=p.expected_diameter_px / 2)
    return S._snap_to_foreground(S._upsample_labels(S.split_nuclei(S._downsample_mask(fg, 2), q), 2, fg.shape), fg, 3)


def half_actin(img):
    t = threshold_otsu(img[::2, ::2])
    return (img > t).astype(np.uint8)


def half_weight_distance(cells, m):
    d = S.distance_to_other_instance(cells[::2, ::2], m / 2) * 2
    return S._upsample_labels(d, 2, cells.shape)


def weight_from_distance(s, sigma=5.0, w0=10.0):
    out = np.zeros(s.shape, np.float32)
    near = np.isfinite(s) & (s <= 4 * sigma)
    out[near] = w0 * np.exp(-(s[near] ** 2) / (2 * sigma**2))
    return out


def site_inputs(seed, severity, gain, pixel_size, size):
    imgs, truth = render_site(seed, size, severity, phenotype_gain=gain, pixel_size_um=pixel_size)
    pre = {c: preprocess_channel(imgs[c].astype(np.float32) - 100.0, c) for c in ("nuclei", "borders", "actin")}
    return pre, S.NucleiParams(expected_diameter_px=S.DEFAULT_NUCLEUS_DIAMETER_UM / pixel_size)


def label_rows(ref, out):
    a = S.label_agreement(ref, out)
    return a["mean_iou"], a["matched"], a["pixels"]


def measure_site(site, args, add) -> tuple[float, int]:
    """Add one site's rows; returns the CPU s of ``compute_masks`` and the number of nuclei."""
    r = args.repeats
    pre, p = site_inputs(*site, args.size)
    img = pre["nuclei"]
    # nuclei foreground: threshold, opening, holes, small objects
    tn, fg_n = cpu(lambda: naive_foreground(img, p), r)
    tf, fg = cpu(lambda: S.nuclei_foreground(img, p), r)
    assert (fg == fg_n).all()
    th, fg_h = cpu(lambda: half_foreground(img, p), r)
    add("nuclei foreground (Otsu, opening, fill, area)", tn, tf, th,
        label_rows(ndi.label(fg)[0], ndi.label(fg_h)[0]))
    # nuclei split: distance transform, smoothing, h-maxima markers, watershed
    tn, lab_n = cpu(lambda: naive_split(fg, p), r)
    tf, lab = cpu(lambda: S.split_nuclei(fg, p), r)
    assert (lab == lab_n).all()
    th, lab_h = cpu(lambda: half_split(fg, p), r)
    add("nuclei split (EDT, smoothing, markers, watershed)", tn, tf, th, label_rows(lab, lab_h))
    # the split's parts at full resolution (ours vs naive), for the record
    tn, _ = cpu(lambda: ndi.distance_transform_edt(fg), r)
    tf, (dist, comp8, objects) = cpu(lambda: S._edt_per_component(fg), r)
    add("  distance transform", tn, tf, None, None)
    tn, _ = cpu(lambda: ndi.gaussian_filter(dist, p.smoothing_sigma), r)
    tf, sd = cpu(lambda: S._gaussian_on_components(dist, comp8, p.smoothing_sigma, objects), r)
    add("  smoothing", tn, tf, None, None)
    tn, _ = cpu(lambda: ndi.label(h_maxima(sd, p.h).astype(bool) & fg)[0], 1)
    tf, mk = cpu(lambda: S._h_maxima_markers(sd, fg, p.h, comp8, objects), r)
    add("  h-maxima markers", tn, tf, None, None)
    tn, _ = cpu(lambda: watershed(-sd, mk, mask=fg), r)
    add("  watershed", tn, tn, None, None)
    # whole segment_nuclei (incl. border clearing, relabelling)
    tn, nuc_n = cpu(lambda: naive_nuclei(img, p), r)
    tf, nuc = cpu(lambda: S.segment_nuclei(img, p, 1), r)
    assert (nuc == nuc_n).all()
    th, nuc_h = cpu(lambda: S.segment_nuclei(img, p, 2), r)
    add("segment_nuclei (total)", tn, tf, th, label_rows(nuc, nuc_h))
    # cells: propagation (naive = full resolution; half = scale 2); quarter for the record
    tn, cells = cpu(lambda: S.segment_cells(pre["borders"], nuc, 0.05, 1), 1)
    th, cells_h = cpu(lambda: S.segment_cells(pre["borders"], nuc, 0.05, 2), r)
    add("cells: propagation", tn, tn, th, label_rows(cells, cells_h))
    tq, cells_q = cpu(lambda: S.segment_cells(pre["borders"], nuc, 0.05, 4), r)
    add("cells: propagation at 1/4 (scale 4)", tn, tn, tq, label_rows(cells, cells_q))
    # borders
    tn, b_n = cpu(lambda: find_boundaries(cells_h, mode="thick").astype(np.uint8), r)
    tf, b = cpu(lambda: S.borders_mask(cells_h, 3), r)
    assert (b == b_n).all()
    add("borders mask", tn, tf, None, None)
    # actin: Otsu at full resolution vs threshold from a 2x subsample
    tn, a = cpu(lambda: S.actin_mask(pre["actin"]), r)
    th, a_h = cpu(lambda: half_actin(pre["actin"]), r)
    add("actin mask (Otsu)", tn, tn, th, (np.nan, np.nan, float((a == a_h).mean())))
    # weight map distances: naive one EDT per cell / ours per cell box / half resolution
    m = 20.0
    if args.skip_naive_weights:
        tn = np.nan
    else:
        tn, _ = cpu(lambda: naive_distance_to_other(cells_h), 1)
    tp, _ = cpu(lambda: S.two_nearest_distances(cells_h, m), r)
    add("  previous: two nearest, per-cell box + 4σ", tn, tp, None, None)
    tf, s = cpu(lambda: S.distance_to_other_instance(cells_h, m), r)
    th, s_h = cpu(lambda: half_weight_distance(cells_h, m), r)
    w, w_h = weight_from_distance(s), weight_from_distance(s_h)
    add("weight map distances (d1 + d2)", tn, tf, th, (np.nan, np.nan, float((np.abs(w - w_h) <= 0.1).mean())))
    tc, _ = cpu(lambda: S.compute_masks(pre["nuclei"], pre["borders"], pre["actin"],
                                        S.MaskParams(nuclei=p)), r)
    return tc, int(nuc.max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-naive-weights", action="store_true", help="skip the slow one-EDT-per-cell reference")
    args = ap.parse_args()
    r = args.repeats
    steps: dict[str, dict] = {}

    def add(name, t_naive, t_full, t_half, agree):
        row = steps.setdefault(name, {"naive": 0.0, "full": 0.0, "half": 0.0, "agree": []})
        row["naive"] += t_naive
        row["full"] += t_full
        row["half"] += t_half if t_half is not None else np.nan
        if agree is not None:
            row["agree"].append(agree)

    chain, n_nuclei = [], []
    for site in SITES:
        tc, k = measure_site(site, args, add)
        chain.append(tc)
        n_nuclei.append(k)

    n = len(SITES)
    print(f"# mask_steps: {len(SITES)} simulated {args.size}² sites (masks on the "
          f"{int(args.size * 0.75)}² crop; {', '.join(map(str, n_nuclei))} nuclei), CPU s per site "
          f"(best of {r}), cores={os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    print("| step | naive full-res | ours full-res | ours half-res | speed-up full | speed-up half "
          "| half vs full: mean IoU | matched (IoU ≥ 0.5) | pixels agreeing |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in steps.items():
        tn, tf, th = row["naive"] / n, row["full"] / n, row["half"] / n
        ag = np.array(row["agree"], float) if row["agree"] else np.full((1, 3), np.nan)
        worst = [np.nanmin(ag[:, k]) if np.isfinite(ag[:, k]).any() else np.nan for k in range(3)]

        def f(x, fmt):
            return "–" if not np.isfinite(x) else format(x, fmt)

        print(f"| {name} | {f(tn, '.3f')} | {f(tf, '.3f')} | {f(th, '.3f')} | {f(tn / tf, '.1f')}x | "
              f"{f(tn / th, '.1f')}x | {f(worst[0], '.3f')} | {f(worst[1], '.3f')} | {f(worst[2], '.4f')} |")
    print(f"\ncompute_masks (defaults) per site: {', '.join(f'{t:.2f}' for t in chain)} CPU s "
          f"(mean {np.mean(chain):.2f})")


if __name__ == "__main__":
    main()
