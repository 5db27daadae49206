"""Rolling-ball background subtraction (ImageJ BackgroundSubtracter, not the sliding paraboloid)."""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from ssc_assets.core.image.filters.kernels import _as_f32


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
