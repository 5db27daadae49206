"""Total-variation denoising (Chambolle, as skimage.restoration.denoise_tv_chambolle) on a robust [0, 1] scale."""

from __future__ import annotations

import numpy as np

from ssc_assets.core.image.filters.kernels import _as_f32
from ssc_assets.core.image.filters.threads import _n_threads, _run_parallel

#: Default Chambolle TV weight, on the robust [0, 1] scale of :func:`robust_range`.
#: Tuned on synthetic sites (two noise levels, three channels) by maximising PSNR/SSIM
#: against the noise-free image: see ``benchmarks/image_steps.py --tune-tv`` and
#: ``docs/image-benchmarks.md``.
TV_WEIGHT = 0.01

#: Robust range used to scale an image to [0, 1] before TV denoising (percentiles).
TV_RANGE_PERCENTILES = (0.1, 99.9)


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
