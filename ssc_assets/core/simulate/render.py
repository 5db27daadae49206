"""Rendering of one synthetic site (cells, nuclei, junctions, actin, artifacts) and flatfields."""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from ssc_assets.core.simulate.specs import (
    BACKGROUND,
    BLANK_BACKGROUND,
    CELL_SPACING_PX,
    CHANNELS,
    OBJECTIVES,
    PEAK,
    PIXEL_SIZE_UM,
)

# --------------------------------------------------------------------------- images


def make_flatfield(
    rng: np.random.Generator, size: int, strength: float | None = None, centre_range: float = 0.1
) -> np.ndarray:
    """Smooth off-centre vignetting, float32 (size, size), mean 1; corners ~0.6-0.8 of centre.

    The centre is offset by up to ``centre_range`` x size from the image centre.
    """
    strength = rng.uniform(0.25, 0.4) if strength is None else strength
    c = size * (0.5 + rng.uniform(-centre_range, centre_range, 2))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    r2 = ((x - c[1]) ** 2 + (y - c[0]) ** 2) / (0.5 * size * np.sqrt(2)) ** 2
    ff = 1.0 - strength * r2 + 0.05 * (x / size - 0.5)
    return (ff / ff.mean()).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit SD (computed at reduced size for large sigma)."""
    f = max(1, int(sigma // 4))
    small = rng.standard_normal((shape[0] // f + 2, shape[1] // f + 2)).astype(np.float32)
    small = gaussian_filter(small, sigma / f)
    small /= small.std() + 1e-9
    return cv2.resize(small, (shape[1] + 2 * f, shape[0] + 2 * f), interpolation=cv2.INTER_LINEAR)[f : f + shape[0], f : f + shape[1]]


def _cell_seeds(rng: np.random.Generator, size: int, pad: float, spacing: float = CELL_SPACING_PX) -> np.ndarray:
    """Jittered hexagonal lattice of cell centres (y, x) in px, ``spacing`` px apart,
    covering the image plus ``pad`` px."""
    s = spacing
    ys = np.arange(-pad, size + pad, s * np.sqrt(3) / 2)
    pts = []
    for i, y in enumerate(ys):
        xs = np.arange(-pad + (s / 2 if i % 2 else 0), size + pad, s)
        pts.append(np.stack([np.full_like(xs, y), xs], axis=1))
    p = np.concatenate(pts) + rng.normal(0, 0.18 * s, (sum(len(q) for q in pts), 2))
    return p.astype(np.float32)


def _debris_clumps(rng: np.random.Generator, n: int, k: float) -> tuple[np.ndarray, np.ndarray]:
    """One or two large irregular clumps or curved fibres covering 2-6 % of an (n, n) field.

    ``k`` is the geometry scale (px per px at 0.34 um). Returns the bool mask (exactly the
    drawn fraction of pixels) and a float32 brightness profile (~0.7-1.1 inside, soft edge).
    """
    target = int(round(rng.uniform(0.02, 0.06) * n * n))
    n_obj = int(rng.integers(1, 3))
    shares = [1.0] if n_obj == 1 else [w := float(rng.uniform(0.35, 0.65)), 1.0 - w]
    mask = np.zeros((n, n), bool)
    wobble = _smooth_noise(rng, (n, n), max(2.0, n / 24))
    for share in shares:
        need = int(round(share * target))
        canvas = np.full((n, n), 255, np.uint8)
        cy, cx = rng.uniform(0.2 * n, 0.8 * n, 2)
        if rng.random() < 0.5:  # clump: distance to a point, made irregular
            canvas[int(cy), int(cx)] = 0
            scale = np.sqrt(need / np.pi)
        else:  # fibre: distance to a bent line through the field
            ang = rng.uniform(0, np.pi)
            half_len = rng.uniform(0.25, 0.45) * n
            bend = rng.uniform(-0.25, 0.25) * n
            t = np.linspace(-1, 1, 64)
            px = cx + t * half_len * np.cos(ang) - (1 - t * t) * bend * np.sin(ang)
            py = cy + t * half_len * np.sin(ang) + (1 - t * t) * bend * np.cos(ang)
            cv2.polylines(canvas, [np.stack([px, py], 1).round().astype(np.int32)], False, 0, 1)
            scale = need / (4 * half_len)
        dist = cv2.distanceTransform(canvas, cv2.DIST_L2, 5)
        score = dist - 0.35 * scale * wobble
        score[mask] = np.inf  # the second object adds only new pixels: the area stays exact
        flat = np.argpartition(score.ravel(), need)[:need] if need < n * n else np.arange(n * n)
        mask.flat[flat] = True
    prof = mask * (0.9 + 0.2 * _smooth_noise(rng, (n, n), 2.0 * k))
    prof = gaussian_filter(prof.astype(np.float32), 0.8 * k)
    return mask, prof.astype(np.float32)


def render_site(
    rng_seed: int,
    image_size: int,
    severity: float,
    *,
    objective: str = "PlanApo-0.75",
    failure: str | None = None,
    flatfields: dict[str, np.ndarray] | None = None,
    offset: float = 100.0,
    debris: bool = False,
    n_channels: int = 4,
    pixel_size_um: float = PIXEL_SIZE_UM,
    binning: int = 1,
    exposure_scale: float = 1.0,
    phenotype_gain: float = 0.0,
) -> tuple[dict[str, np.ndarray], dict]:
    """One site: channel name -> uint16 (image_size, image_size), and its truth.

    ``pixel_size_um`` is the effective (binned) pixel size of the image in um; every length
    scales by 0.34 / pixel_size_um so cells keep their physical size. ``binning`` b and
    ``exposure_scale`` multiply the light per pixel (signal and background) by b*b*scale.
    ``failure``: None, a per-site kind of :data:`FAILURES` ("blur": Gaussian of the signals,
    sigma 3.06 um; "saturated": a saturated corner; "empty": no cells; "debris": one or two
    large clumps/fibres bright in every channel) or "blank" (camera noise only).
    ``phenotype_gain`` > 0: actin x (1 + g s), borders x (1 - 0.4 min(1, g) s).

    Truth: ``nuclei_labels`` (int32, one label per nucleus, 0 background), ``cell_labels``
    (int32 Voronoi cells), ``severity``, ``failure``, and ``debris_mask`` (bool) for "debris".
    """
    rng = np.random.default_rng(rng_seed)
    n = image_size
    s = float(np.clip(severity, 0, 1))
    k = PIXEL_SIZE_UM / pixel_size_um  # geometry scale: 1.0 at the default (exact arithmetic)
    half = max(1, int(n * k) // 256)  # geometry at reduced resolution, then linear upsampling
    m = n // half
    spacing = CELL_SPACING_PX * k
    pad = spacing
    seeds = _cell_seeds(rng, n, pad, spacing)
    yy, xx = np.mgrid[0:m, 0:m].astype(np.float32) * half + (half - 1) / 2
    # jagged junctions: displace the query grid with a smooth field whose amplitude grows with s
    jag = (2.0 + 7.0 * s) * k
    dy = _smooth_noise(rng, (m, m), 6.0 * k / half) * jag
    dx = _smooth_noise(rng, (m, m), 6.0 * k / half) * jag
    tree = cKDTree(seeds)
    d, idx = tree.query(np.stack([(yy + dy).ravel(), (xx + dx).ravel()], axis=1), k=2)
    bdist = ((d[:, 1] - d[:, 0]) / 2).reshape(m, m).astype(np.float32)  # distance to the cell edge (px)
    label_small = (idx[:, 0] + 1).reshape(m, m).astype(np.int32)
    if half > 1:
        bdist = cv2.resize(bdist, (n, n), interpolation=cv2.INTER_LINEAR)
        cells = cv2.resize(label_small, (n, n), interpolation=cv2.INTER_NEAREST)
    else:
        cells = label_small
    Y, X = np.mgrid[0:n, 0:n].astype(np.float32)

    # nuclei: one ellipse per cell (a few cells carry a touching second nucleus)
    nc = len(seeds)
    a = rng.uniform(17 * k, 26 * k, nc).astype(np.float32)
    b = a * rng.uniform(0.6, 0.85, nc).astype(np.float32)
    th = rng.uniform(0, np.pi, nc).astype(np.float32)
    cy = seeds[:, 0] + rng.normal(0, 6 * k, nc)
    cx = seeds[:, 1] + rng.normal(0, 6 * k, nc)
    bright = rng.uniform(0.7, 1.0, nc).astype(np.float32)
    twin = rng.random(nc) < 0.08
    L = cells - 1
    nuc_int = np.zeros((n, n), np.float32)
    nuc_lab = np.zeros((n, n), np.int32)
    texture = 1.0 + 0.12 * _smooth_noise(rng, (n, n), 2.0 * k)
    for tw in (0, 1):
        if tw == 1:  # second nucleus of twin cells, shifted along the major axis so they touch
            sel = twin[L]
            oy_arr = (1.85 * a * np.sin(th))[L]
            ox_arr = (1.85 * a * np.cos(th))[L]
        else:
            sel = np.ones((n, n), bool)
            oy_arr = ox_arr = 0.0
        ry = Y - (cy[L] + oy_arr)
        rx = X - (cx[L] + ox_arr)
        c, sn = np.cos(th)[L], np.sin(th)[L]
        u = (rx * c + ry * sn) / a[L]
        v = (-rx * sn + ry * c) / b[L]
        r2 = u * u + v * v
        inside = (r2 < 1.0) & sel & (nuc_lab == 0)
        prof = np.sqrt(np.clip(1.0 - r2, 0, 1)) ** 0.5
        nuc_int = np.where(inside, bright[L] * (0.55 + 0.45 * prof) * texture, nuc_int)
        nuc_lab = np.where(inside, cells + tw * nc, nuc_lab)
    # relabel nuclei sequentially, dropping those outside the frame
    uniq, inv = np.unique(nuc_lab, return_inverse=True)
    nuc_lab = inv.reshape(n, n).astype(np.int32) if uniq[0] == 0 else (inv.reshape(n, n) + 1).astype(np.int32)

    # VE-cadherin junctions: a line along the cell edges, fragmented with severity
    junction = np.exp(-(bdist**2) / (2 * (2.2 * k) ** 2))
    gaps = _smooth_noise(rng, (n, n), 7.0 * k)
    keep = 1.0 / (1.0 + np.exp((np.quantile(gaps, 1 - 0.5 * s) - gaps) * -4.0)) if s > 0.02 else 1.0
    borders = junction * (0.25 + 0.75 * keep) * (1.0 + 0.15 * _smooth_noise(rng, (n, n), 3.0 * k)) + 0.05

    # actin: cortical ring (moves away with severity) + stress fibres inside the cells
    cortical = np.exp(-(np.maximum(bdist - 3.0 * k, 0) ** 2) / (2 * (4.0 * k) ** 2)) * (1.0 - 0.65 * s)
    phi = rng.uniform(0, np.pi, nc).astype(np.float32)[L]
    period = rng.uniform(9 * k, 14 * k, nc).astype(np.float32)[L]
    wob = _smooth_noise(rng, (n, n), 10.0 * k) * (2.0 * k)
    w_ = (X * np.cos(phi) + Y * np.sin(phi) + wob) / period
    fibres = np.clip(np.cos(2 * np.pi * w_), 0, 1) ** 6
    interior = np.clip(bdist / (12.0 * k), 0, 1)
    actin = cortical + (0.08 + 0.9 * s) * fibres * interior + 0.12 * interior
    if phenotype_gain > 0:  # strong phenotype: plate-wide intensity statistics move with biology
        actin = actin * (1.0 + phenotype_gain * s)
        borders = borders * (1.0 - 0.4 * min(1.0, phenotype_gain) * s)

    mito = 0.3 * interior * (1.0 + 0.5 * _smooth_noise(rng, (n, n), 2.0 * k))
    signals = {"nuclei": nuc_int, "borders": borders, "actin": actin, "mitochondria": mito}

    obj = OBJECTIVES[objective]
    light = binning * binning * exposure_scale  # 1 at the default (exact arithmetic)
    gain, read_sd = obj.gain * light, obj.read_sd
    background = {ch: v * obj.background_gain * light for ch, v in BACKGROUND.items()}
    if failure == "blur":
        signals = {ch: gaussian_filter(v, 9.0 * k) for ch, v in signals.items()}
    if failure in ("empty", "blank"):
        signals = {ch: np.zeros_like(v) for ch, v in signals.items()}
    if failure == "blank":  # nothing on the plate: stray light only
        background = {ch: BLANK_BACKGROUND for ch in BACKGROUND}
        debris = False
    truth_extra = {}
    if failure == "debris":  # large autofluorescent clumps/fibres, 2-5x the brightest cell
        drng = np.random.default_rng([rng_seed, 7])
        dmask, dprof = _debris_clumps(drng, n, k)
        factors = drng.uniform(2.0, 5.0, len(CHANNELS))
        signals = {ch: v + dprof * factors[ci] * max(float(v.max()), 0.05) for ci, (ch, v) in enumerate(signals.items())}
        truth_extra["debris_mask"] = dmask
    debris_img = np.zeros((n, n), np.float32)
    if debris:
        for _ in range(rng.integers(1, 4)):
            py, px = rng.uniform(0, n, 2)
            r = rng.uniform(2.0 * k, 5.0 * k)
            debris_img += np.exp(-((Y - py) ** 2 + (X - px) ** 2) / (2 * r * r)) * rng.uniform(2.0, 4.0)
    out = {}
    for ch in CHANNELS[:n_channels]:
        ff = flatfields[ch] if flatfields and ch in flatfields else np.ones((n, n), np.float32)
        expected = (background[ch] + gain * PEAK[ch] * (signals[ch] + debris_img * (ch != "mitochondria"))) * ff
        img = rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
        img += rng.normal(0, read_sd, (n, n)).astype(np.float32) + offset
        if failure == "saturated":
            img[: int(0.35 * n), : int(0.5 * n)] = 65535.0
        out[ch] = np.clip(np.rint(img), 0, 65535).astype(np.uint16)
    truth = {"nuclei_labels": nuc_lab, "cell_labels": cells, "severity": s, "failure": failure, **truth_extra}
    return out, truth
