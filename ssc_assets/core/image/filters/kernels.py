"""Shared kernel helpers: float32 coercion, the ImageJ circular kernel, exact medians at chosen pixels."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ssc_assets.core.image.filters.threads import _run_parallel


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
