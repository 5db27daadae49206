"""Illumination (flat-field) correction per plate and channel (thesis section 2.5).

Thesis method: on the QC-passed images of one channel of one plate, bright areas and debris
are filtered out iteratively (pixels more than 3 SD above the local median take the value of
their neighbourhood), a median-weighted average of the images is computed and smoothed by
a Gaussian, and the correction image is ``mean(background) / smoothed background``; every
image of that channel and plate is multiplied by it.

Implementation (streaming: one full-size image in memory at a time):

1. each image is reduced to a working grid of ``grid_size`` (64) cells on the long side
   (32 x 32-pixel blocks at 2048 px): 4x4 means (OpenCV ``INTER_AREA``) and then the
   ``block_percentile`` (10th) percentile of each block, i.e. the local *background* under
   the cells. A percentile commutes with ``f * S + D``, so this keeps the illumination
   pattern while ignoring most of the foreground;
2. on that grid, ``n_iter`` passes replace cells above ``local median + k_sd * SD`` by the
   local median (5 x 5 cells; SD = 1.4826 x MAD of ``grid - local median``): the thesis'
   iterative suppression of bright areas and debris;
3. the camera offset (darkfield, a constant) is estimated explicitly
   (:func:`estimate_darkfield`) unless given;
4. "median-weighted average": each cleaned background minus the darkfield is divided by its
   own median (so that images with more background or more cells do not dominate) and the
   normalised backgrounds are averaged;
5. the average is smoothed with a Gaussian of sigma ``sigma_fraction`` x the shorter side
   (default 1/32, i.e. 64 px at 2048 px), normalised to mean 1 and enlarged bilinearly to
   full size (linear extrapolation over the outer half block): that is the flatfield;
   ``correction = 1 / flatfield`` = mean(background) / background.

``apply_illumination(raw, profile) = (raw - darkfield) * correction``: the offset is
removed explicitly (pass ``add_offset=True`` to add it back after the correction).

Pure numpy / scipy / OpenCV; no Dagster import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import cv2
import numpy as np
import scipy.ndimage as ndi

__all__ = [
    "IlluminationProfile",
    "apply_illumination",
    "background_grid",
    "clean_background",
    "estimate_darkfield",
    "estimate_illumination_profile",
    "image_background",
    "profile_from_backgrounds",
]


@dataclass(frozen=True, eq=False)
class IlluminationProfile:
    """Illumination model of one channel of one plate.

    Attributes
    ----------
    flatfield : float32 (H, W), mean 1: relative illumination (vignetting) at full size.
    darkfield : camera offset in raw units (a constant), subtracted before the correction.
    correction : float32 (H, W) = 1 / flatfield = mean(background) / background.
    background_mean : mean over the images of their median background (10th-percentile
        blocks) above the darkfield, raw units.
    n_images : number of images used.
    darkfield_method : ``"given"``, ``"regression"``, ``"zero"`` or ``"percentile"``.
    min_ratio, max_ratio : min and max of the flatfield (max_ratio / min_ratio is the
        corner-to-centre illumination ratio being corrected).
    """

    flatfield: np.ndarray
    darkfield: float
    correction: np.ndarray
    background_mean: float = float("nan")
    n_images: int = 0
    darkfield_method: str = "given"
    min_ratio: float = field(default=float("nan"))
    max_ratio: float = field(default=float("nan"))

    @classmethod
    def from_arrays(cls, flatfield: np.ndarray, darkfield: float = 0.0, **kw) -> "IlluminationProfile":
        """Build a profile from a flatfield (normalised to mean 1 here) and an offset."""
        ff = np.asarray(flatfield, dtype=np.float64)
        ff = (ff / ff.mean()).astype(np.float32)
        return cls(
            flatfield=ff,
            darkfield=float(darkfield),
            correction=(1.0 / np.maximum(ff, 1e-6)).astype(np.float32),
            min_ratio=float(ff.min()),
            max_ratio=float(ff.max()),
            **kw,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.flatfield.shape)  # type: ignore[return-value]

    def summary(self) -> dict:
        """Scalars for metadata / logs."""
        return {
            "darkfield": self.darkfield,
            "darkfield_method": self.darkfield_method,
            "background_mean": self.background_mean,
            "n_images": self.n_images,
            "flatfield_min": self.min_ratio,
            "flatfield_max": self.max_ratio,
            "max_over_min": self.max_ratio / self.min_ratio if self.min_ratio > 0 else float("inf"),
            "shape": list(self.shape),
        }


def _grid_geometry(shape: tuple[int, int], grid_size: int) -> tuple[int, int, int, int]:
    """(block, pre-average factor, grid rows, grid cols) for an image of ``shape``."""
    h, w = shape
    # blocks of at least 8 px (when the image allows) so that a low percentile is stable
    block = max(1, int(round(max(h, w) / float(grid_size))), min(8, min(h, w) // 4))
    pre = max(1, block // 8)
    block = max(pre, (block // pre) * pre)
    return block, pre, max(1, h // block), max(1, w // block)


def background_grid(
    img: np.ndarray, grid_size: int = 64, block_percentile: float = 10.0
) -> np.ndarray:
    """Local background of one image on a coarse grid, float32 (gh, gw), raw units.

    The image (cropped to whole blocks) is averaged over ``pre x pre`` pixels (``pre =
    block // 8``; a 3 x 3 mean instead when ``pre == 1`` and blocks are >= 4 px) to damp
    the noise, then each block gives its ``block_percentile`` percentile. Block ``(i, j)``
    is centred on full-resolution pixel ``((i + 0.5) * block - 0.5, (j + 0.5) * block - 0.5)``.
    """
    a = np.asarray(img, dtype=np.float32)
    block, pre, gh, gw = _grid_geometry(a.shape, grid_size)
    a = np.ascontiguousarray(a[: gh * block, : gw * block])
    if pre > 1:
        a = cv2.resize(a, (gw * block // pre, gh * block // pre), interpolation=cv2.INTER_AREA)
    elif block >= 4:
        a = cv2.blur(a, (3, 3), borderType=cv2.BORDER_REPLICATE)
    b = block // pre
    v = a.reshape(gh, b, gw, b).transpose(0, 2, 1, 3).reshape(gh, gw, b * b)
    k = int(round(block_percentile / 100.0 * (b * b - 1)))
    return np.ascontiguousarray(np.partition(v, k, axis=2)[..., k], dtype=np.float32)


def clean_background(
    small: np.ndarray, n_iter: int = 5, k_sd: float = 3.0, median_size: int = 5
) -> np.ndarray:
    """Thesis' iterative bright-area suppression on a (small) float32 image.

    Each pass: ``med`` = ``median_size`` x ``median_size`` median (edges replicated);
    ``sd`` = 1.4826 x MAD of ``small - med``; pixels with ``small > med + k_sd * sd`` take
    the value of ``med`` (their neighbourhood). Stops early when nothing changes.
    """
    b = np.array(small, dtype=np.float32, copy=True)
    for _ in range(n_iter):
        if median_size in (3, 5) and min(b.shape) >= 2:
            med = cv2.medianBlur(b, median_size)
        else:
            med = ndi.median_filter(b, size=median_size, mode="nearest")
        r = b - med
        sd = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        if not sd > 0:
            break
        mask = r > k_sd * sd
        if not mask.any():
            break
        b[mask] = med[mask]
    return b


def estimate_darkfield(backgrounds: np.ndarray, method: str = "auto") -> tuple[float, str]:
    """Constant camera offset ``D`` from a stack of cleaned background grids (N, gh, gw).

    ``method="auto"`` (default): model ``B_i(x) = a_i * f(x) + D`` (flatfield ``f``,
    background level ``a_i`` of image ``i``). Regressing each ``B_i`` on the stack mean
    ``B(x)`` over the grid gives slope ``s_i`` and intercept ``c_i = D * (1 - s_i)``; ``D``
    is their least-squares ratio (returned method ``"regression"``). It is identifiable
    only when the background level differs between images (wells, plasma
    autofluorescence: spread of ``s_i`` >= 2 %) and the field is vignetted (>= 2 %).
    Otherwise ``D = 0`` (``"zero"``): no offset subtraction, which is what the thesis did
    (raw images multiplied by the correction); this under-corrects the vignetting by the
    offset's share of the background.

    ``method="percentile"``: the 0.1st percentile of the grids (``"percentile"``), an
    *upper* bound of the offset that also contains the dimmest background: it
    over-corrects, badly when the background is high. Prefer passing the camera offset
    explicitly to :func:`estimate_illumination_profile` when it is known.

    Returns ``(darkfield, method used)``.
    """
    B = np.asarray(backgrounds, dtype=np.float64).reshape(len(backgrounds), -1)
    low = max(0.0, float(np.percentile(B, 0.1)))
    if method == "percentile":
        return low, "percentile"
    if method != "auto":
        raise ValueError(f"unknown darkfield method {method!r}")
    if B.shape[0] >= 3:
        x = B.mean(axis=0)
        xc = x - x.mean()
        vx = float(np.dot(xc, xc))
        if vx > 0 and np.sqrt(vx / xc.size) > 0.02 * abs(x.mean() - low):
            slopes = (B - B.mean(axis=1, keepdims=True)) @ xc / vx
            icpts = B.mean(axis=1) - slopes * x.mean()
            u = 1.0 - slopes
            if u.std() > 0.02:
                d = float(np.dot(icpts, u) / np.dot(u, u))
                if np.isfinite(d) and 0.0 <= d <= float(np.percentile(B, 1)):
                    return d, "regression"
    return 0.0, "zero"


def _enlarge_grid(grid: np.ndarray, shape: tuple[int, int], block: int) -> np.ndarray:
    """Bilinear enlargement of a block-centred grid to ``shape``, linearly extrapolated
    over the outer half block, edge-replicated over any remainder pixels."""
    gh, gw = grid.shape
    p = cv2.copyMakeBorder(grid.astype(np.float32), 1, 1, 1, 1, cv2.BORDER_REPLICATE)
    if gh >= 2:
        p[0, :] = 2 * p[1, :] - p[2, :]
        p[-1, :] = 2 * p[-2, :] - p[-3, :]
    if gw >= 2:
        p[:, 0] = 2 * p[:, 1] - p[:, 2]
        p[:, -1] = 2 * p[:, -2] - p[:, -3]
    big = cv2.resize(p, ((gw + 2) * block, (gh + 2) * block), interpolation=cv2.INTER_LINEAR)
    big = big[block : block + gh * block, block : block + gw * block]
    h, w = shape
    return np.pad(big, ((0, h - big.shape[0]), (0, w - big.shape[1])), mode="edge")


def estimate_illumination_profile(
    images: Iterable[np.ndarray] | np.ndarray,
    *,
    darkfield: float | str | None = "auto",
    grid_size: int = 64,
    block_percentile: float = 10.0,
    n_iter: int = 5,
    k_sd: float = 3.0,
    median_size: int = 5,
    sigma_fraction: float = 1.0 / 32.0,
) -> IlluminationProfile:
    """Estimate the flatfield of one channel of one plate from its QC-passed images.

    Parameters
    ----------
    images : iterable of (H, W) arrays (any real dtype, raw camera units) or an (N, H, W)
        array. Consumed once, one image at a time: only the background grids (16 KB each
        at 64 x 64) are kept, so a 384-site plate never sits in memory.
    darkfield : known camera offset (raw units), or ``"auto"`` / ``None`` / ``"percentile"``
        to estimate it (:func:`estimate_darkfield`).
    grid_size, block_percentile : working grid (:func:`background_grid`).
    n_iter, k_sd, median_size : bright-area suppression (:func:`clean_background`).
    sigma_fraction : Gaussian sigma as a fraction of the shorter side of the image.

    Returns
    -------
    IlluminationProfile with full-size float32 ``flatfield`` (mean 1) and ``correction``.
    """
    shape = None
    grids: list[np.ndarray] = []
    for img in images:
        a = np.asarray(img)
        if a.ndim != 2:
            raise ValueError(f"expected (H, W) images, got {a.shape}")
        if shape is None:
            shape = a.shape
        elif a.shape != shape:
            raise ValueError(f"image shape {a.shape} differs from the first image {shape}")
        grids.append(image_background(a, grid_size, block_percentile, n_iter, k_sd, median_size))
    if not grids:
        raise ValueError("no images")
    return profile_from_backgrounds(grids, shape, darkfield=darkfield, grid_size=grid_size, sigma_fraction=sigma_fraction)


def image_background(
    img: np.ndarray,
    grid_size: int = 64,
    block_percentile: float = 10.0,
    n_iter: int = 5,
    k_sd: float = 3.0,
    median_size: int = 5,
) -> np.ndarray:
    """Per-image step of :func:`estimate_illumination_profile`: the cleaned background grid,
    float32 (gh, gw) in raw units. Run it where the image is (a worker), keep only the grid."""
    g = background_grid(np.asarray(img), grid_size, block_percentile)
    return clean_background(g, n_iter=n_iter, k_sd=k_sd, median_size=median_size)


def profile_from_backgrounds(
    grids: Iterable[np.ndarray],
    shape: tuple[int, int],
    *,
    darkfield: float | str | None = "auto",
    grid_size: int = 64,
    sigma_fraction: float = 1.0 / 32.0,
) -> IlluminationProfile:
    """Plate-level step: darkfield, median-weighted average, Gaussian smoothing and
    enlargement to ``shape`` (H, W) from the per-image grids of :func:`image_background`."""
    B = np.stack(list(grids))
    if darkfield is None or isinstance(darkfield, str):
        dark, method = estimate_darkfield(B, darkfield or "auto")
    else:
        dark, method = float(darkfield), "given"
    # median-normalised ("median-weighted") average of the offset-free backgrounds
    lv = np.median((B - dark).reshape(len(B), -1), axis=1)
    lv = np.where(lv > 1e-6, lv, 1e-6)
    avg = ((B - dark) / lv[:, None, None]).mean(axis=0)
    sigma = sigma_fraction * min(avg.shape)
    smooth = ndi.gaussian_filter(avg, sigma, mode="reflect") if sigma > 0 else avg
    block = _grid_geometry(shape, grid_size)[0]
    ff = _enlarge_grid(smooth / smooth.mean(), shape, block)
    return IlluminationProfile.from_arrays(
        ff,
        dark,
        background_mean=float(lv.mean()),
        n_images=len(B),
        darkfield_method=method,
    )


def apply_illumination(img: np.ndarray, profile: IlluminationProfile, *, add_offset: bool = False) -> np.ndarray:
    """Flat-field correct one image: ``(img - darkfield) * correction`` (float32, (H, W)).

    The camera offset is removed (``add_offset=True`` adds it back afterwards). Values are
    not clipped, so pixels below the offset stay slightly negative.
    """
    a = np.asarray(img, dtype=np.float32)
    if a.shape != profile.flatfield.shape:
        raise ValueError(f"image shape {a.shape} != profile shape {profile.flatfield.shape}")
    out = a - np.float32(profile.darkfield)
    out *= profile.correction
    if add_offset:
        out += np.float32(profile.darkfield)
    return out
