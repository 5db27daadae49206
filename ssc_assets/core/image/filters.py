"""Per-channel image preprocessing of the thesis (section 5.1), fast and ImageJ-faithful.

The chain, per channel of one site, is::

    remove outliers (ImageJ "Remove Outliers", bright)  -> nuclei r=10 t=50, borders r=50 t=2000
    rolling-ball background subtraction (ImageJ)        -> radius 50, 3x3 pre-smoothing
    median filter (ImageJ RankFilters, circular)        -> radius 2
    total-variation denoising (skimage Chambolle)       -> weight TV_WEIGHT on a [0, 1] scale
    centre crop                                         -> 1536 x 1536 of 2048 x 2048

Conventions: every kernel takes a 2-D ``float32`` (or castable) array ``(H, W)`` in raw
intensity units (camera counts after illumination correction) and returns a new ``float32``
array of the same shape and units (``centre_crop`` returns a smaller view-free copy). Edges
are replicated, as in ImageJ. Each fast kernel has a slow, obviously-correct ``*_reference``
twin used by the tests and ``benchmarks/image_steps.py``; measured speed-ups and deviations
are recorded in ``docs/image-benchmarks.md``.

Pure numpy / scipy / OpenCV: no Dagster import. Work is parallelised over at most
``SSC_IMAGE_THREADS`` threads (default ``min(2, cpu_count)``); numpy and OpenCV release the
GIL in the heavy loops.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable, Sequence

import cv2
import numpy as np
import scipy.ndimage as ndi

__all__ = [
    "TV_WEIGHT",
    "ChannelPreprocess",
    "PreprocessParams",
    "centre_crop",
    "circular_kernel",
    "median_filter",
    "median_filter_reference",
    "preprocess_channel",
    "remove_outliers",
    "remove_outliers_reference",
    "rolling_ball_background",
    "rolling_ball_reference",
    "robust_range",
    "subtract_background",
    "subtract_background_reference",
    "tv_denoise",
    "tv_denoise_reference",
]

#: Default Chambolle TV weight, on the robust [0, 1] scale of :func:`robust_range`.
#: Tuned on synthetic sites (two noise levels, three channels) by maximising PSNR/SSIM
#: against the noise-free image: see ``benchmarks/image_steps.py --tune-tv`` and
#: ``docs/image-benchmarks.md``.
TV_WEIGHT = 0.01

#: Robust range used to scale an image to [0, 1] before TV denoising (percentiles).
TV_RANGE_PERCENTILES = (0.1, 99.9)


# --------------------------------------------------------------------------------------
# threading helpers
# --------------------------------------------------------------------------------------

_POOL: ThreadPoolExecutor | None = None
_POOL_PID: int | None = None


def _n_threads() -> int:
    env = os.environ.get("SSC_IMAGE_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(2, os.cpu_count() or 1))


def _pool() -> ThreadPoolExecutor:
    """Shared thread pool, re-created in a forked child (its threads do not survive fork)."""
    global _POOL, _POOL_PID
    if _POOL is None or _POOL_PID != os.getpid():
        _POOL = ThreadPoolExecutor(max_workers=max(2, _n_threads()), thread_name_prefix="ssc-img")
        _POOL_PID = os.getpid()
    return _POOL


def _run_parallel(fn: Callable[[object], None], items: Sequence[object]) -> None:
    """Run ``fn`` over ``items`` on the shared pool (inline when one thread is allowed)."""
    if _n_threads() <= 1 or len(items) <= 1:
        for it in items:
            fn(it)
        return
    for fut in [_pool().submit(fn, it) for it in items]:
        fut.result()


def _as_f32(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) image, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


# --------------------------------------------------------------------------------------
# ImageJ circular kernel
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _kernel_cached(radius: float) -> np.ndarray:
    # ImageJ RankFilters.makeLineRadii, including its two legacy radius adjustments.
    if 1.5 <= radius < 1.75:
        radius = 1.75
    elif 2.5 <= radius < 2.85:
        radius = 2.85
    r2 = int(radius * radius) + 1
    k = int(math.sqrt(r2 + 1e-10))
    fp = np.zeros((2 * k + 1, 2 * k + 1), dtype=bool)
    for y in range(-k, k + 1):
        dx = int(math.sqrt(r2 - y * y + 1e-10))
        fp[y + k, k - dx : k + dx + 1] = True
    fp.setflags(write=False)
    return fp


def circular_kernel(radius: float) -> np.ndarray:
    """ImageJ's circular rank-filter kernel as a boolean ``(2k+1, 2k+1)`` footprint.

    ``r2 = int(r*r) + 1``, ``k = int(sqrt(r2))`` and row ``y`` spans ``|x| <= int(sqrt(r2 - y*y))``
    (ImageJ ``RankFilters.makeLineRadii``, which also maps r in [1.5, 1.75) to 1.75 and
    r in [2.5, 2.85) to 2.85). r=2 gives 21 pixels, r=10 gives 325 and r=50 gives 7861.
    """
    if radius < 0:
        raise ValueError("radius must be >= 0")
    return _kernel_cached(float(radius)).copy()


# --------------------------------------------------------------------------------------
# exact medians at chosen pixels (gather + partition)
# --------------------------------------------------------------------------------------


def _median_at(img: np.ndarray, fp: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Exact median of ``img`` over footprint ``fp`` (edge-replicated) at flat indices ``idx``
    (same dtype as ``img``; uint16 partitions ~4x faster than float32)."""
    n = int(fp.sum())
    out = np.empty(idx.size, dtype=img.dtype)
    if idx.size == 0:
        return out
    k = fp.shape[0] // 2
    h, w = img.shape
    pad = np.pad(img, k, mode="edge")
    wp = w + 2 * k
    flat = pad.ravel()
    oy, ox = np.nonzero(fp)
    off = ((oy - k) * wp + (ox - k)).astype(np.intp)
    yy, xx = np.divmod(idx.astype(np.intp), w)
    base = (yy + k) * wp + (xx + k)
    chunk = max(256, 2_000_000 // n)  # ~8 MB of values per job
    half = n // 2

    def job(start: int) -> None:
        vals = flat[base[start : start + chunk, None] + off[None, :]]
        out[start : start + chunk] = np.partition(vals, half, axis=1)[:, half]

    _run_parallel(job, list(range(0, idx.size, chunk)))
    return out


# --------------------------------------------------------------------------------------
# 1. Remove Outliers (bright)
# --------------------------------------------------------------------------------------


def remove_outliers_reference(img: np.ndarray, radius: float, threshold: float) -> np.ndarray:
    """Naive ImageJ "Remove Outliers" (bright): ``scipy.ndimage.median_filter`` everywhere.

    A pixel becomes the median of its circular neighbourhood iff ``value - median >
    threshold`` (strict); edges are replicated (``mode='nearest'``). Slow: about 16 s
    (r=10) and about 8 min (r=50) on a 2048 x 2048 image on 2 cores.
    """
    x = _as_f32(img)
    med = ndi.median_filter(x, footprint=_kernel_cached(float(radius)), mode="nearest")
    return np.where(x - med > threshold, med, x).astype(np.float32)


def _lattice_median(u16: np.ndarray, stride: int) -> np.ndarray:
    """Median over a 5 x 5 lattice of step ``stride`` centred on every pixel (uint16).

    Each of the ``stride**2`` phase sub-images is median-filtered 5 x 5 by OpenCV, so the
    whole thing costs about one full-size 5 x 5 median.
    """
    if stride == 1:
        return cv2.medianBlur(u16, 5)
    out = np.empty_like(u16)
    phases = [(a, b) for a in range(stride) for b in range(stride)]

    def job(ab: tuple[int, int]) -> None:
        a, b = ab
        sub = np.ascontiguousarray(u16[a::stride, b::stride])
        out[a::stride, b::stride] = cv2.medianBlur(sub, 5)

    _run_parallel(job, phases)
    return out


def _to_u16(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``x`` rounded to uint16 counts: ``(u, lo, scale)`` with ``x ≈ u / scale + lo``.

    ``lo`` is the image minimum; ``scale`` is 1 unless the range exceeds 65535. Exact for
    integer-valued images (raw camera data), else within half a count.
    """
    lo = float(np.floor(x.min()))
    span = float(x.max()) - lo
    scale = 1.0 if span <= 65535.0 else 65535.0 / span
    return ((x - np.float32(lo)) * np.float32(scale) + np.float32(0.5)).astype(np.uint16), lo, scale


def _approx_median(u: np.ndarray, radius: float) -> tuple[np.ndarray, int]:
    """Cheap estimate of the circular median of radius ``radius`` of a uint16 image:
    (uint16 (H, W), lattice stride).

    Median of 5 x 5 medians: a 5 x 5 median at every pixel, then the median of those on a
    5 x 5 lattice of step ``s = round((r - 2) / 2)`` (the lattice spans about ±r). The image
    is edge-padded at full resolution first, so borders are replicated as in ImageJ.
    """
    stride = max(1, int(round((radius - 2.0) / 2.0)))
    pad = 2 * stride + 2
    up = cv2.copyMakeBorder(u, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return _lattice_median(cv2.medianBlur(up, 5), stride)[pad:-pad, pad:-pad], stride


def remove_outliers(
    img: np.ndarray,
    radius: float = 10.0,
    threshold: float = 50.0,
    *,
    method: str = "fast",
    refine_rel: float = 0.5,
    max_refine_values: float = 4e8,
) -> np.ndarray:
    """ImageJ "Remove Outliers" (bright outliers), fast.

    Semantics (ImageJ ``RankFilters``, ``OUTLIERS``, bright): a pixel is replaced by the
    median of its circular neighbourhood (:func:`circular_kernel`, edges replicated) iff
    ``value - median > threshold`` (strict). Darker pixels are never changed.

    ``method="exact"`` runs :func:`remove_outliers_reference`. ``method="fast"`` (default):

    1. estimate the median everywhere with a median of 5 x 5 medians on a lattice
       (:func:`_approx_median`, ~20-40 ms at 2048 x 2048);
    2. flag pixels where that estimate is unreliable *and* matters: its spread ``U`` over the
       lattice cell (max - min of the estimate) exceeds ``threshold / 2`` and
       ``refine_rel * (estimate - background)``, and the pixel could be an outlier
       (``value - threshold > estimate - U``). These are the edges of objects about the
       kernel size (nucleus borders for r=10), where a median of medians is biased;
    3. compute the exact circular median at the flagged pixels (gather + partition on
       uint16 counts, threaded; at most ``max_refine_values`` gathered values, largest
       ``U`` first);
    4. apply the ImageJ rule with the exact median where computed, the estimate elsewhere.

    Medians are taken on values rounded to whole counts (exact for integer-valued raw
    images, within half a count otherwise; the image is scaled down only if its range
    exceeds 65535).

    The remaining deviation from the reference (replacement values and a few threshold
    decisions in smooth areas, where the estimate is within a few counts) is measured in
    ``docs/image-benchmarks.md`` (about 0.2 % of the image mean for r=10, t=50).

    Parameters
    ----------
    img : (H, W) array, raw intensity units.
    radius : ImageJ kernel radius in pixels (thesis: nuclei 10, borders 50).
    threshold : intensity units (thesis: nuclei 50, borders 2000).

    Returns
    -------
    (H, W) float32.
    """
    x = _as_f32(img)
    if threshold is None or radius is None or radius <= 0:
        return x.copy()
    if method == "exact":
        return remove_outliers_reference(x, radius, threshold)
    if method != "fast":
        raise ValueError(f"unknown method {method!r}")
    fp = _kernel_cached(float(radius))
    n = int(fp.sum())
    t = np.float32(threshold)
    if n <= 49:
        # tiny kernels: an exact median everywhere is already cheap
        med = median_filter(x, radius) if n == 21 else ndi.median_filter(x, footprint=fp, mode="nearest")
        return np.where(x - med > t, med, x).astype(np.float32)

    u, lo, scale = _to_u16(x)
    est_u, stride = _approx_median(u, radius)
    est = est_u.astype(np.float32)
    w = 2 * stride + 1
    box = cv2.getStructuringElement(cv2.MORPH_RECT, (w, w))
    spread = cv2.dilate(est, box, borderType=cv2.BORDER_REPLICATE)
    spread -= cv2.erode(est, box, borderType=cv2.BORDER_REPLICATE)
    bg = np.float32(np.percentile(est[::stride, ::stride], 5))
    tu = np.float32(threshold * scale)  # threshold in uint16 counts
    xu = u.astype(np.float32)
    need = (xu - tu > est - spread) & (spread > 0.5 * tu) & (spread > np.float32(refine_rel) * (est - bg))
    idx = np.flatnonzero(need)
    budget = int(max_refine_values // n)
    if idx.size > budget:  # keep the most uncertain pixels
        keep = np.argpartition(spread.ravel()[idx], idx.size - budget)[idx.size - budget :]
        idx = np.sort(idx[keep])
    med_u = est_u.ravel()
    med_u[idx] = _median_at(u, fp, idx)
    med = med_u.reshape(x.shape).astype(np.float32) * np.float32(1.0 / scale) + np.float32(lo)
    return np.where(x - med > t, med, x).astype(np.float32)


# --------------------------------------------------------------------------------------
# 2. Rolling-ball background (ImageJ BackgroundSubtracter, not the sliding paraboloid)
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _rolling_ball(radius: float) -> tuple[int, np.ndarray]:
    """ImageJ ``RollingBall``: (shrink factor, ball patch heights (w, w) float32).

    Shrink 1/2/4/8 for radius <=10/<=30/<=100/>100; the ball of radius ``radius/shrink``
    (pixels of the shrunk image *and* intensity units) is trimmed to a square patch of
    half-width ``round(r_small - int(trim% * r_small) / 100)``, heights
    ``sqrt(r_small² - x² - y²)`` (0 outside the sphere). radius 50 -> shrink 4, 19 x 19.
    """
    if radius <= 10:
        shrink, trim = 1, 24
    elif radius <= 30:
        shrink, trim = 2, 24
    elif radius <= 100:
        shrink, trim = 4, 32
    else:
        shrink, trim = 8, 40
    small = max(radius / shrink, 1.0)
    xtrim = int(trim * small) // 100
    half = int(math.floor(small - xtrim + 0.5))  # Java Math.round
    c = np.arange(-half, half + 1, dtype=np.float64)
    t = small * small - c[None, :] ** 2 - c[:, None] ** 2
    z = np.where(t > 0, np.sqrt(np.maximum(t, 0.0)), 0.0).astype(np.float32)
    z.setflags(write=False)
    return shrink, z


def _shrink_min(x: np.ndarray, shrink: int) -> np.ndarray:
    """Block minimum over ``shrink x shrink`` blocks (partial blocks at the far edges)."""
    if shrink == 1:
        return x
    k = np.ones((shrink, shrink), np.uint8)
    e = cv2.erode(x, k, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(e[::shrink, ::shrink])


def _roll_ball(small: np.ndarray, zball: np.ndarray) -> np.ndarray:
    """ImageJ ``rollBall``: grey opening of ``small`` by the non-flat ball patch.

    Ball centres run over the image extended by the patch radius; a centre's height is the
    minimum of (pixel - ball) over the in-image part of the patch; the background is the
    maximum over centres of (height + ball). Done as min/max over flat OpenCV erosions /
    dilations, one per distinct ball height (51 for radius 50).
    """
    r = zball.shape[0] // 2
    h, w = small.shape
    big = float(np.finfo(np.float32).max)
    f = cv2.copyMakeBorder(small, 2 * r, 2 * r, 2 * r, 2 * r, cv2.BORDER_CONSTANT, value=big)
    levels = np.unique(zball)
    masks = [(zball == v).astype(np.uint8) for v in levels]
    z = None
    for v, m in zip(levels, masks):
        e = cv2.erode(f, m, anchor=(r, r), borderType=cv2.BORDER_CONSTANT, borderValue=big)
        e = e[r : r + h + 2 * r, r : r + w + 2 * r] - v
        z = e if z is None else np.minimum(z, e, out=z)
    bg = None
    for v, m in zip(levels, masks):  # ball is symmetric: no reflection needed
        d = cv2.dilate(z, m, anchor=(r, r), borderType=cv2.BORDER_CONSTANT, borderValue=-big)
        d = d[r : r + h, r : r + w] + v
        bg = d if bg is None else np.maximum(bg, d, out=bg)
    return bg


def _roll_ball_direct(small: np.ndarray, zball: np.ndarray) -> np.ndarray:
    """Literal (slow, obviously correct) version of :func:`_roll_ball`, for tests."""
    r = zball.shape[0] // 2
    h, w = small.shape
    f = np.pad(small.astype(np.float64), 2 * r, constant_values=np.inf)
    hc, wc = h + 2 * r, w + 2 * r
    z = np.full((hc, wc), np.inf)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            z = np.minimum(z, f[r + dy : r + dy + hc, r + dx : r + dx + wc] - zball[dy + r, dx + r])
    bg = np.full((h, w), -np.inf)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            bg = np.maximum(bg, z[r - dy : r - dy + h, r - dx : r - dx + w] + zball[dy + r, dx + r])
    return bg.astype(np.float32)


def _enlarge(small: np.ndarray, shape: tuple[int, int], shrink: int) -> np.ndarray:
    """ImageJ ``enlargeImage``: bilinear interpolation between shrunk pixel centres,
    linear extrapolation at the edges (a 1-pixel linearly extrapolated frame + cv2.resize)."""
    if shrink == 1:
        return small
    h, w = shape
    p = cv2.copyMakeBorder(small, 1, 1, 1, 1, cv2.BORDER_REPLICATE)
    if small.shape[0] >= 2:
        p[0, :] = 2 * p[1, :] - p[2, :]
        p[-1, :] = 2 * p[-2, :] - p[-3, :]
    if small.shape[1] >= 2:
        p[:, 0] = 2 * p[:, 1] - p[:, 2]
        p[:, -1] = 2 * p[:, -2] - p[:, -3]
    big = cv2.resize(p, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(big[shrink : shrink + h, shrink : shrink + w])


def rolling_ball_background(
    img: np.ndarray,
    radius: float = 50.0,
    light_background: bool = False,
    presmooth: bool = True,
    *,
    direct: bool = False,
) -> np.ndarray:
    """Background of ImageJ "Subtract Background" (rolling ball), float32 (H, W), raw units.

    ImageJ ``BackgroundSubtracter.rollingBallFloatBackground``: optional 3 x 3 mean
    (edges replicated) -> block minimum over ``shrink x shrink`` -> roll the trimmed ball
    (:func:`_rolling_ball`) under the shrunk image (a grey opening, :func:`_roll_ball`) ->
    bilinear enlargement with linear extrapolation at the edges. With
    ``light_background`` the image is negated before and after. ``direct=True`` uses the
    slow literal opening (tests).

    Note the ball is ``radius / shrink`` high in *intensity* units (12.5 for radius 50):
    on 16-bit data it is almost flat. ``skimage.restoration.rolling_ball`` differs: no
    pre-smoothing or shrinking, a grey *erosion* (ball apex) rather than an opening, and a
    ball ``radius`` high; see ``docs/image-benchmarks.md`` for the measured difference.
    """
    x = _as_f32(img)
    if light_background:
        x = -x
    if presmooth:
        x = cv2.blur(x, (3, 3), borderType=cv2.BORDER_REPLICATE)
    shrink, zball = _rolling_ball(float(radius))
    small = _shrink_min(x, shrink)
    bg_small = (_roll_ball_direct if direct else _roll_ball)(small, zball)
    bg = _enlarge(bg_small, x.shape, shrink)
    if light_background:
        bg = -bg
    return bg.astype(np.float32, copy=False)


def subtract_background(
    img: np.ndarray,
    radius: float = 50.0,
    light_background: bool = False,
    presmooth: bool = True,
) -> np.ndarray:
    """ImageJ rolling-ball background subtraction, float32 (H, W), raw units.

    Dark background (fluorescence): ``max(img - background, 0)`` like ImageJ on 16-bit
    images (without ImageJ's rounding to integers). Light background: ``min(img - bg, 0)``
    (ImageJ adds 65535 on 16-bit images; here values stay relative to the background).
    Note that with ``presmooth`` the background is computed on the smoothed image but
    subtracted from the original one, as in ImageJ.
    """
    x = _as_f32(img)
    bg = rolling_ball_background(x, radius, light_background, presmooth)
    out = x - bg
    if light_background:
        return np.minimum(out, 0, out=out)
    return np.maximum(out, 0, out=out)


def rolling_ball_reference(img: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """Naive reference background: ``skimage.restoration.rolling_ball(img, radius)``.

    About 60 s for a 2048 x 2048 image on 2 cores. A different algorithm from ImageJ's
    (see :func:`rolling_ball_background`).
    """
    from skimage.restoration import rolling_ball

    return rolling_ball(_as_f32(img), radius=radius).astype(np.float32)


def subtract_background_reference(img: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """``max(img - skimage rolling_ball(img, radius), 0)``, float32."""
    x = _as_f32(img)
    return np.maximum(x - rolling_ball_reference(x, radius), 0).astype(np.float32)


# --------------------------------------------------------------------------------------
# 3. Median filter, radius 2 (21-pixel circular kernel), exact selection network
# --------------------------------------------------------------------------------------


class _Net:
    """Tiny compare-exchange network builder (wires are ints; ops reference wires)."""

    def __init__(self) -> None:
        self.n = 0
        self.ops: list[tuple] = []

    def wire(self) -> int:
        self.n += 1
        return self.n - 1

    def ce(self, i: int, j: int) -> tuple[int, int]:
        lo, hi = self.wire(), self.wire()
        self.ops.append(("min", lo, i, j))
        self.ops.append(("max", hi, i, j))
        return lo, hi

    def alias(self, src: int, cols: tuple[int, int]) -> int:
        w = self.wire()
        self.ops.append(("alias", w, src, cols))
        return w

    def sort(self, wires: list[int]) -> list[int]:
        w = list(wires)
        pairs = {
            3: [(0, 1), (1, 2), (0, 1)],
            5: [(0, 1), (3, 4), (2, 4), (2, 3), (1, 4), (0, 3), (0, 2), (1, 3), (1, 2)],
        }[len(w)]
        for i, j in pairs:
            w[i], w[j] = self.ce(w[i], w[j])
        return w

    def merge(self, a: list[int], b: list[int]) -> list[int]:
        """Batcher odd-even merge of two sorted wire lists (any lengths)."""
        if not a:
            return list(b)
        if not b:
            return list(a)
        if len(a) == 1 and len(b) == 1:
            return list(self.ce(a[0], b[0]))
        even = self.merge(a[0::2], b[0::2])
        odd = self.merge(a[1::2], b[1::2])
        res = [even[0]]
        for i, o in enumerate(odd):
            if i + 1 < len(even):
                res += list(self.ce(o, even[i + 1]))
            else:
                res.append(o)
        return res + even[len(odd) + 1 :]


@lru_cache(maxsize=8)
def _median21_plan(width: int) -> tuple[list[int], list[tuple], int, dict[int, int], int]:
    """Pruned network selecting the 11th of the 21 pixels of the radius-2 kernel.

    The kernel is 5 columns: heights 3, 5, 5, 5, 3. Vertically sorted 5- and 3-runs are
    computed once per image; merges of neighbouring columns are shared by neighbouring
    pixels (``alias`` ops are column shifts); everything not feeding the median is pruned
    (126 min/max ops per pixel). Returns (input wires, ops, output wire, buffer slot of
    each computed wire, number of slots): slots are reused once a wire is dead.
    """
    net = _Net()
    rows = [net.wire() for _ in range(5)]  # input rows dy = -2..2
    s5 = net.sort(rows)
    s3 = net.sort(rows[1:4])
    w = width
    m10 = net.merge([net.alias(v, (0, w + 3)) for v in s5], [net.alias(v, (1, w + 4)) for v in s5])
    m6 = net.merge([net.alias(v, (0, w)) for v in s3], [net.alias(v, (4, w + 4)) for v in s3])
    m15 = net.merge([net.alias(v, (1, w + 1)) for v in m10], [net.alias(v, (3, w + 3)) for v in s5])
    out = net.merge(m15, m6)[10]
    need, keep = {out}, []
    for op in reversed(net.ops):
        if op[1] in need:
            keep.append(op)
            need.add(op[2])
            if op[0] != "alias":
                need.add(op[3])
    keep.reverse()
    # buffer slots by liveness (an alias keeps its source alive)
    root = {r: r for r in rows}
    last: dict[int, int] = {}
    for t, (op, o, i, j) in enumerate(keep):
        root[o] = root[i] if op == "alias" else o
        for v in (i,) if op == "alias" else (i, j):
            last[root[v]] = t
    last[root[out]] = len(keep)
    slot: dict[int, int] = {}
    free: list[int] = []
    nslots = 0
    for t, (op, o, i, j) in enumerate(keep):
        if op == "alias":
            continue
        if free:
            slot[o] = free.pop()
        else:
            slot[o] = nslots
            nslots += 1
        for v in {root[i], root[j]}:
            if last.get(v) == t and v in slot:
                free.append(slot[v])
    return rows, keep, out, slot, nslots


def _median21(x: np.ndarray, tile: int = 64) -> np.ndarray:
    """Exact 21-pixel (ImageJ radius 2) circular median, edges replicated, any dtype.

    Tiles of ``tile`` rows are processed as flat 1-D arrays with row stride ``W + 4``: a
    column shift is then a flat offset, and the values that wrap into the next row only
    land in padding columns that are discarded. Tiles are split over threads.
    """
    h, w = x.shape
    wp = w + 4
    rows, ops, out_wire, slot, nslots = _median21_plan(w)
    pad = np.pad(x, ((2, 3), (2, 2)), mode="edge")  # one spare row: slack for the offsets
    flat = pad.ravel()
    res = np.empty_like(x)
    starts = list(range(0, h, tile))
    nthreads = _n_threads()
    parts = [starts[i::nthreads] for i in range(nthreads)]

    def run(part: list[int]) -> None:
        bufs = [np.empty(tile * wp + 8, x.dtype) for _ in range(nslots)]
        for y0 in part:
            n = min(h, y0 + tile) - y0
            wires = {rows[k]: flat[(y0 + k) * wp : (y0 + k + n) * wp + 8] for k in range(5)}
            for op, o, i, j in ops:
                if op == "alias":
                    wires[o] = wires[i][j[0] :]
                    continue
                a, b = wires[i], wires[j]
                m = min(a.size, b.size)
                fn = np.minimum if op == "min" else np.maximum
                wires[o] = fn(a[:m], b[:m], out=bufs[slot[o]][:m])
            res[y0 : y0 + n] = wires[out_wire][: n * wp].reshape(n, wp)[:, :w]

    _run_parallel(run, [p for p in parts if p])
    return res


def median_filter_reference(img: np.ndarray, radius: float = 2.0) -> np.ndarray:
    """Naive ImageJ circular median: ``scipy.ndimage.median_filter`` with the footprint."""
    x = _as_f32(img)
    return ndi.median_filter(x, footprint=_kernel_cached(float(radius)), mode="nearest")


def median_filter(img: np.ndarray, radius: float = 2.0) -> np.ndarray:
    """ImageJ RankFilters median with a circular kernel, float32 (H, W), exact.

    radius 2 (the thesis value: a 21-pixel kernel) uses an exact, pruned min/max selection
    network on cache-sized tiles (:func:`_median21`, about 10-15x faster than scipy); other
    radii fall back to :func:`median_filter_reference`. OpenCV's 5 x 5 *square*
    ``medianBlur`` is faster still but deviates by 1-3 % of the image mean, so it is not
    used.
    """
    x = _as_f32(img)
    if radius is None or radius <= 0:
        return x.copy()
    if int(_kernel_cached(float(radius)).sum()) == 21:
        return _median21(x)
    return median_filter_reference(x, radius)


# --------------------------------------------------------------------------------------
# 4. Total-variation denoising (Chambolle, as skimage.restoration.denoise_tv_chambolle)
# --------------------------------------------------------------------------------------


def robust_range(img: np.ndarray, percentiles: tuple[float, float] = TV_RANGE_PERCENTILES) -> tuple[float, float]:
    """``(lo, hi)`` percentiles of the image (on a 4x-subsampled grid for speed, >= 64² px).

    Used to map an image to [0, 1] before TV denoising so that the TV weight is
    independent of the exposure; ``hi <= lo`` becomes ``hi = lo + 1``.
    """
    x = np.asarray(img)
    step = 4 if min(x.shape) >= 256 else 1
    lo, hi = np.percentile(x[::step, ::step], percentiles)
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _chambolle(f: np.ndarray, weight: float, eps: float, max_num_iter: int, block: int = 32) -> np.ndarray:
    """Chambolle's projection algorithm exactly as skimage's ``_denoise_tv_chambolle_nd``
    (2-D, tau = 1/4, same energy and stopping rule, same returned iterate), in float32.

    Each iteration is one fused sweep over blocks of ``block`` rows (cache-sized): the
    primal ``out = f - p0 - p1 + p0[y-1] + p1[x-1]`` (skimage's negative divergence), its
    forward differences, the energy terms and the in-place dual update. The old dual rows
    that a block's neighbours still need are carried over (within a band) or saved before
    the sweep (at band edges), so the result equals the array-at-a-time algorithm. Row
    bands run in threads.
    """
    h, w = f.shape
    p0 = np.zeros_like(f)  # dual field, axis 0 (rows)
    p1 = np.zeros_like(f)  # dual field, axis 1 (columns)
    out = np.empty_like(f)
    tau = np.float32(0.25)
    k = np.float32(0.25 / weight)
    nthreads = max(1, min(_n_threads(), h // (2 * block)))
    bounds = np.linspace(0, h, nthreads + 1).astype(int)
    bands = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    esum = np.zeros((len(bands), 2))
    bufs = [
        {n: np.empty((block, w), f.dtype) for n in ("g0", "g1", "nr", "tmp")} | {"row": np.empty(w, f.dtype)}
        for _ in bands
    ]
    saved: list[tuple] = [()] * len(bands)

    def sweep(ib: int) -> None:
        a_band, b_band = bands[ib]
        buf = bufs[ib]
        prev0, next0, next1 = saved[ib]  # old p0[a_band - 1], p0[b_band], p1[b_band]
        e_d = e_n = 0.0
        for a in range(a_band, b_band, block):
            b = min(b_band, a + block)
            n = b - a
            o = out[a:b]
            np.subtract(f[a:b], p0[a:b], out=o)
            o -= p1[a:b]
            o[:, 1:] += p1[a:b, :-1]
            if n > 1:
                o[1:] += p0[a : b - 1]
            if a > 0:
                o[0] += prev0
            g0, g1, nr, tmp = (buf[x][:n] for x in ("g0", "g1", "nr", "tmp"))
            np.subtract(o[1:], o[:-1], out=g0[:-1])
            if b < h:  # first row of the next block, from old duals
                s0 = next0 if b == b_band else p0[b]
                s1 = next1 if b == b_band else p1[b]
                row = buf["row"]
                np.subtract(f[b], s0, out=row)
                row -= s1
                row[1:] += s1[:-1]
                row += p0[b - 1]
                np.subtract(row, o[-1], out=g0[-1])
            else:
                g0[-1] = 0
            np.subtract(o[:, 1:], o[:, :-1], out=g1[:, :-1])
            g1[:, -1] = 0
            np.subtract(o, f[a:b], out=tmp)
            t = tmp.ravel()
            e_d += float(np.dot(t, t))
            np.multiply(g0, g0, out=nr)
            np.multiply(g1, g1, out=tmp)
            nr += tmp
            np.sqrt(nr, out=nr)  # as skimage: sqrt of summed squares (np.hypot is 8x slower)
            e_n += float(nr.sum())
            nr *= k
            nr += 1
            prev0 = p0[b - 1].copy()  # old value, needed by the next block
            g0 *= tau
            p0[a:b] -= g0
            p0[a:b] /= nr
            g1 *= tau
            p1[a:b] -= g1
            p1[a:b] /= nr
        esum[ib] = (e_d, e_n)

    ids = list(range(len(bands)))
    e_init = e_prev = 0.0
    for i in range(max_num_iter):
        for ib, (a_band, b_band) in enumerate(bands):
            saved[ib] = (
                p0[a_band - 1].copy() if a_band > 0 else None,
                p0[b_band].copy() if b_band < h else None,
                p1[b_band].copy() if b_band < h else None,
            )
        _run_parallel(sweep, ids)
        e = (esum[:, 0].sum() + weight * esum[:, 1].sum()) / f.size
        if i == 0:
            e_init = e_prev = e
        elif abs(e_prev - e) < eps * e_init:
            break
        else:
            e_prev = e
    return out


def tv_denoise(
    img: np.ndarray,
    weight: float = TV_WEIGHT,
    *,
    eps: float = 2.0e-4,
    max_num_iter: int = 200,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Total-variation (ROF) denoising, float32 (H, W), raw units.

    The image is mapped to [0, 1] by its robust range (:func:`robust_range`, 0.1-99.9th
    percentiles, unclipped), denoised with Chambolle's algorithm exactly as
    ``skimage.restoration.denoise_tv_chambolle(x, weight, eps, max_num_iter)`` (same
    iterations and stopping rule, float32, threaded), and mapped back. ``weight`` is on
    that [0, 1] scale; the default :data:`TV_WEIGHT` was tuned on synthetic sites (see
    ``docs/image-benchmarks.md``). Pass ``value_range=(lo, hi)`` to fix the scaling.
    """
    x = _as_f32(img)
    lo, hi = robust_range(x) if value_range is None else (float(value_range[0]), float(value_range[1]))
    if weight is None or weight <= 0:
        return x.copy()
    s = np.float32(1.0 / (hi - lo))
    f = (x - np.float32(lo)) * s
    out = _chambolle(f, float(weight), float(eps), int(max_num_iter))
    out *= np.float32(hi - lo)
    out += np.float32(lo)
    return out


def tv_denoise_reference(
    img: np.ndarray, weight: float = TV_WEIGHT, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Naive reference: the default ``skimage.restoration.denoise_tv_chambolle`` call on
    the same [0, 1] scaling as :func:`tv_denoise`."""
    from skimage.restoration import denoise_tv_chambolle

    x = _as_f32(img)
    lo, hi = robust_range(x) if value_range is None else value_range
    f = (x - np.float32(lo)) / np.float32(hi - lo)
    out = denoise_tv_chambolle(f, weight=weight)
    return (out * np.float32(hi - lo) + np.float32(lo)).astype(np.float32)


# --------------------------------------------------------------------------------------
# 5. Centre crop
# --------------------------------------------------------------------------------------


def centre_crop(img: np.ndarray, size: int | tuple[int, int] | None = None, fraction: float = 0.75) -> np.ndarray:
    """Centre crop of the last two axes (a copy).

    ``size`` (int or ``(h, w)``) wins over ``fraction``; by default 0.75 of each side, i.e.
    1536 x 1536 from 2048 x 2048 (thesis). Odd margins put the extra pixel at the end.
    """
    a = np.asarray(img)
    h, w = a.shape[-2:]
    if size is None:
        if not 0 < fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        ch, cw = int(round(h * fraction)), int(round(w * fraction))
    elif isinstance(size, (tuple, list)):
        ch, cw = int(size[0]), int(size[1])
    else:
        ch = cw = int(size)
    if not (0 < ch <= h and 0 < cw <= w):
        raise ValueError(f"crop {ch}x{cw} does not fit in {h}x{w}")
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return a[..., y0 : y0 + ch, x0 : x0 + cw].copy()


# --------------------------------------------------------------------------------------
# 6. The per-channel chain
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelPreprocess:
    """Parameters of the chain for one channel (thesis defaults in :class:`PreprocessParams`).

    Radii are in pixels, thresholds in raw intensity units, ``tv_weight`` on the robust
    [0, 1] scale. ``None`` (or 0) disables a step.
    """

    outlier_radius: float | None = None
    outlier_threshold: float | None = None
    rolling_ball_radius: float | None = 50.0
    presmooth: bool = True
    median_radius: float | None = 2.0
    tv_weight: float | None = TV_WEIGHT
    crop_fraction: float = 0.75
    crop_size: int | None = None


@dataclass(frozen=True)
class PreprocessParams:
    """Thesis section 5.1 defaults per channel ("nuclei", "borders", "actin")."""

    nuclei: ChannelPreprocess = field(
        default_factory=lambda: ChannelPreprocess(outlier_radius=10.0, outlier_threshold=50.0)
    )
    borders: ChannelPreprocess = field(
        default_factory=lambda: ChannelPreprocess(outlier_radius=50.0, outlier_threshold=2000.0)
    )
    actin: ChannelPreprocess = field(default_factory=ChannelPreprocess)

    def scaled(self, factor: float) -> "PreprocessParams":
        """The same chain for another pixel size: every radius x ``factor`` (= reference
        pixel size / this site's pixel size), so that radii stay the same in um. A median
        radius that falls below 0.5 px is disabled; thresholds and crops are unchanged."""
        if factor == 1.0:
            return self

        def one(c: ChannelPreprocess) -> ChannelPreprocess:
            med = c.median_radius * factor if c.median_radius else None
            return replace(
                c,
                outlier_radius=max(1.0, c.outlier_radius * factor) if c.outlier_radius else c.outlier_radius,
                rolling_ball_radius=max(1.0, c.rolling_ball_radius * factor) if c.rolling_ball_radius else c.rolling_ball_radius,
                median_radius=med if med and med >= 0.5 else None,
            )

        return PreprocessParams(nuclei=one(self.nuclei), borders=one(self.borders), actin=one(self.actin))

    def for_channel(self, channel: str) -> ChannelPreprocess:
        try:
            return getattr(self, channel)
        except AttributeError:
            raise KeyError(f"no preprocessing parameters for channel {channel!r}") from None

    @property
    def channels(self) -> tuple[str, ...]:
        return ("nuclei", "borders", "actin")


def preprocess_channel(
    img: np.ndarray, channel: str, params: PreprocessParams | None = None, *, crop: bool = True
) -> np.ndarray:
    """Thesis chain for one channel of one site: outliers -> rolling ball -> median -> TV
    -> centre crop. ``img`` (H, W) in raw units (illumination-corrected); returns float32,
    ``(0.75 H, 0.75 W)`` by default (``crop=False`` keeps the full frame)."""
    p = (params or PreprocessParams()).for_channel(channel)
    x = _as_f32(img)
    if p.outlier_radius and p.outlier_threshold is not None:
        x = remove_outliers(x, p.outlier_radius, p.outlier_threshold)
    if p.rolling_ball_radius:
        x = subtract_background(x, p.rolling_ball_radius, presmooth=p.presmooth)
    if p.median_radius:
        x = median_filter(x, p.median_radius)
    if p.tv_weight:
        x = tv_denoise(x, p.tv_weight)
    if crop:
        x = centre_crop(x, p.crop_size, p.crop_fraction)
    return x
