"""Preprocessing kernels vs their naive references, and ImageJ semantics by hand."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from ssc_assets.core.image import filters as F
from ssc_assets.core.image.filters import rolling_ball as RB


def _scene(n=192, seed=0, noise=True):
    """Small fluorescence-like image: smooth background, nuclei-like blobs, thin lines,
    a few bright specks, Poisson noise (float32, raw units)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    img = 300 + 80 * np.sin(xx / n * 2.5) + 60 * (yy / n)
    obj = np.zeros((n, n), np.float32)
    for _ in range(n // 12):
        cv2.ellipse(obj, (int(rng.uniform(0, n)), int(rng.uniform(0, n))),
                    (int(rng.uniform(8, 16)), int(rng.uniform(5, 10))), rng.uniform(0, 180), 0, 360,
                    float(rng.uniform(800, 3000)), -1)
    for _ in range(n // 10):
        p = rng.uniform(0, n, 4).astype(int)
        cv2.line(obj, (p[0], p[1]), (p[2], p[3]), float(rng.uniform(200, 900)), 1)
    obj = cv2.GaussianBlur(obj, (0, 0), 1.2)
    for _ in range(6):
        cv2.circle(obj, (int(rng.uniform(0, n)), int(rng.uniform(0, n))), int(rng.integers(1, 3)),
                   float(rng.uniform(3000, 20000)), -1)
    lam = (img + obj).astype(np.float32)
    return (rng.poisson(lam).astype(np.float32) + 100) if noise else lam + 100


def _dev(a, b, ref):
    return float(np.abs(a.astype(np.float64) - b).mean() / np.abs(ref).mean())


# ---------------------------------------------------------------- circular kernel


def test_kernel_radius_2_is_5x5_without_corners():
    k = F.circular_kernel(2)
    expected = np.ones((5, 5), bool)
    expected[[0, 0, -1, -1], [0, -1, 0, -1]] = False
    assert k.sum() == 21
    np.testing.assert_array_equal(k, expected)


def test_kernel_radius_10_rows_follow_imagej_rule():
    k = F.circular_kernel(10)
    assert k.shape == (21, 21) and k.sum() == 325
    half_widths = [(int(r.sum()) - 1) // 2 for r in k[10:]]  # centre row downwards
    assert half_widths == [10, 10, 9, 9, 9, 8, 8, 7, 6, 4, 1]
    np.testing.assert_array_equal(k, k[::-1])
    np.testing.assert_array_equal(k, k.T)


def test_kernel_sizes_and_legacy_adjustments():
    assert F.circular_kernel(1).sum() == 9
    assert F.circular_kernel(1.5).sum() == 13  # ImageJ maps 1.5 -> 1.75
    assert F.circular_kernel(2.5).sum() == 29  # ImageJ maps 2.5 -> 2.85
    assert F.circular_kernel(50).sum() == 7861


# ---------------------------------------------------------------- remove outliers


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_outlier_semantics_by_hand(method):
    img = np.full((64, 64), 100.0, np.float32)
    img[10, 10] = 151.0  # 51 above the median: replaced
    img[30, 30] = 150.0  # exactly threshold above: kept (strict >)
    img[50, 50] = 0.0  # dark outlier: never changed by the bright filter
    img[20, 45] = 5000.0  # debris: replaced
    out = F.remove_outliers(img, 10, 50, method=method)
    assert out[10, 10] == 100.0
    assert out[30, 30] == 150.0
    assert out[50, 50] == 0.0
    assert out[20, 45] == 100.0
    assert out.dtype == np.float32
    mask = np.ones_like(img, bool)
    mask[[10, 20], [10, 45]] = False
    np.testing.assert_array_equal(out[mask], img[mask])


def test_outliers_fast_matches_reference_r10():
    img = _scene(192, seed=1)
    ref = F.remove_outliers_reference(img, 10, 50)
    out = F.remove_outliers(img, 10, 50)
    changed_ref, changed_out = ref != img, out != img
    assert changed_ref.mean() > 0.005  # the filter really does something here
    assert _dev(out, ref, img) < 0.005
    both = changed_ref & changed_out
    assert both.sum() / (changed_ref | changed_out).sum() > 0.9  # same outliers found
    assert np.median(np.abs(out - ref)[both]) <= 1.0  # replaced by (nearly) the same median


def test_outliers_fast_matches_reference_r50():
    img = _scene(128, seed=2)
    ref = F.remove_outliers_reference(img, 50, 2000)
    out = F.remove_outliers(img, 50, 2000)
    assert (ref != img).sum() > 5  # debris removed
    assert _dev(out, ref, img) < 0.01
    assert out.max() < 5000  # no debris left


def test_outliers_small_kernel_is_exact():
    img = _scene(96, seed=3)
    np.testing.assert_array_equal(F.remove_outliers(img, 2, 50), F.remove_outliers_reference(img, 2, 50))


# ---------------------------------------------------------------- rolling ball


def test_ball_matches_imagej_rollingball_class():
    shrink, z = RB._rolling_ball(50)
    assert shrink == 4 and z.shape == (19, 19)  # r 12.5, trim int(32*12.5)/100 = 4, half round(8.5)
    assert z[9, 9] == pytest.approx(12.5)
    assert z[0, 0] == 0.0  # 81 + 81 > 156.25
    assert z[9, 0] == pytest.approx(np.sqrt(12.5**2 - 81))
    assert RB._rolling_ball(10)[0] == 1 and RB._rolling_ball(10)[1].shape == (17, 17)
    assert RB._rolling_ball(20)[0] == 2 and RB._rolling_ball(200)[0] == 8


def test_opening_decomposition_equals_literal_rollball():
    rng = np.random.default_rng(4)
    small = (rng.normal(0, 20, (57, 43)) + 300).astype(np.float32)
    small[20:25, 10:14] += 500
    _, z = RB._rolling_ball(50)
    np.testing.assert_allclose(RB._roll_ball(small, z), RB._roll_ball_direct(small, z), atol=1e-3)


def test_enlarge_matches_imagej_interpolation_arrays():
    rng = np.random.default_rng(5)
    small = rng.normal(0, 1, (6, 5)).astype(np.float32)
    h, w, s = 23, 19, 4

    def arrays(length, small_len):  # literal port of makeInterpolationArrays
        idx = np.empty(length, int)
        wt = np.empty(length)
        for i in range(length):
            k = int((i - s // 2) / s)  # Java truncates toward zero
            k = min(k, small_len - 2)
            idx[i] = k
            wt[i] = 1.0 - ((i + 0.5) / s - (k + 0.5))
        return idx, wt

    yi, yw = arrays(h, 6)
    xi, xw = arrays(w, 5)
    rows = small[:, xi] * xw + small[:, xi + 1] * (1 - xw)
    expected = rows[yi] * yw[:, None] + rows[yi + 1] * (1 - yw[:, None])
    np.testing.assert_allclose(RB._enlarge(small, (h, w), s), expected, atol=1e-5)


def test_rolling_ball_removes_ramp_keeps_blobs():
    n = 160
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    ramp = 200 + 1.5 * xx + 0.8 * yy
    img = ramp.copy()
    centres = [(40, 40), (100, 60), (70, 130)]
    for cy, cx in centres:
        img += 600 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
    out = F.subtract_background(img, 50)
    far = np.ones_like(img, bool)
    for cy, cx in centres:
        far &= (yy - cy) ** 2 + (xx - cx) ** 2 > 15**2
    assert np.abs(out[far]).mean() < 5.0  # ramp (200-560 counts) gone
    for cy, cx in centres:
        assert out[cy, cx] > 500  # blobs kept
    assert out.min() >= 0 and out.dtype == np.float32
    bg = F.rolling_ball_background(img, 50)
    assert (bg <= img + 1e-3).mean() > 0.99


def test_rolling_ball_close_to_skimage_without_presmoothing():
    # different algorithms (ImageJ: shrink + opening; skimage: full-size erosion), so only
    # a loose bound here; docs/image-benchmarks.md has the numbers on realistic sites
    img = _scene(160, seed=6)
    ref = F.subtract_background_reference(img, 50)
    out = F.subtract_background(img, 50, presmooth=False)
    assert _dev(out, ref, img) < 0.05
    assert _dev(F.subtract_background(img, 50), ref, img) < 0.15


def test_light_background_mirrors_dark():
    img = _scene(96, seed=7)
    bg_dark = F.rolling_ball_background(img, 20)
    bg_light = F.rolling_ball_background(-img, 20, light_background=True)
    np.testing.assert_allclose(bg_light, -bg_dark, atol=1e-3)


# ---------------------------------------------------------------- median


@pytest.mark.parametrize("shape", [(37, 53), (130, 96), (3, 4)])
def test_median21_is_exact(shape):
    rng = np.random.default_rng(8)
    img = rng.normal(100, 30, shape).astype(np.float32)
    img[::3] = np.round(img[::3])  # include ties
    np.testing.assert_array_equal(F.median_filter(img, 2), F.median_filter_reference(img, 2))


def test_median_other_radius_falls_back_to_reference():
    img = _scene(64, seed=9)
    np.testing.assert_array_equal(F.median_filter(img, 3), F.median_filter_reference(img, 3))


# ---------------------------------------------------------------- TV


def test_tv_matches_skimage_default_call():
    img = F.subtract_background(_scene(192, seed=10), 50)
    ref = F.tv_denoise_reference(img)
    out = F.tv_denoise(img)
    assert _dev(out, ref, img) < 1e-3
    assert out.dtype == np.float32


def test_tv_reduces_noise():
    clean = F.subtract_background(F.remove_outliers(_scene(192, seed=11, noise=False), 10, 50), 50)
    rng = np.random.default_rng(11)
    noisy = clean + rng.normal(0, 40, clean.shape).astype(np.float32)
    den = F.tv_denoise(noisy)  # default weight on the robust [0, 1] scale
    assert np.abs(den - clean).mean() < 0.5 * np.abs(noisy - clean).mean()
    assert abs(float(den.mean()) - float(noisy.mean())) < 1.0  # ROF keeps the mean
    np.testing.assert_array_equal(F.tv_denoise(noisy, 0), noisy)


# ---------------------------------------------------------------- crop and chain


def test_centre_crop_sizes():
    img = np.arange(2048 * 2048, dtype=np.float32).reshape(2048, 2048)
    c = F.centre_crop(img)
    assert c.shape == (1536, 1536)
    assert c[0, 0] == img[256, 256]
    assert F.centre_crop(img, size=512).shape == (512, 512)
    assert F.centre_crop(img, size=(100, 200)).shape == (100, 200)
    assert F.centre_crop(np.zeros((10, 9)), fraction=0.5).shape == (5, 4)
    stack = np.zeros((3, 64, 64))
    assert F.centre_crop(stack, size=32).shape == (3, 32, 32)
    with pytest.raises(ValueError):
        F.centre_crop(img, size=4096)


def test_preprocess_params_are_the_thesis_defaults():
    p = F.PreprocessParams()
    assert (p.nuclei.outlier_radius, p.nuclei.outlier_threshold) == (10, 50)
    assert (p.borders.outlier_radius, p.borders.outlier_threshold) == (50, 2000)
    assert p.actin.outlier_radius is None
    for ch in ("nuclei", "borders", "actin"):
        c = p.for_channel(ch)
        assert (c.rolling_ball_radius, c.median_radius, c.crop_fraction) == (50, 2, 0.75)
        assert c.tv_weight == F.TV_WEIGHT
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.nuclei = p.actin  # type: ignore[misc]
    with pytest.raises(KeyError):
        p.for_channel("mitochondria")


def test_preprocess_channel_chain():
    img = _scene(128, seed=12)
    out = F.preprocess_channel(img, "nuclei")
    assert out.shape == (96, 96) and out.dtype == np.float32
    full = F.preprocess_channel(img, "nuclei", crop=False)
    np.testing.assert_array_equal(F.centre_crop(full), out)
    manual = F.tv_denoise(F.median_filter(F.subtract_background(F.remove_outliers(img, 10, 50), 50), 2))
    np.testing.assert_allclose(full, manual, atol=1e-3)
    none = F.ChannelPreprocess(rolling_ball_radius=None, median_radius=None, tv_weight=None)
    params = dataclasses.replace(F.PreprocessParams(), actin=none)
    np.testing.assert_array_equal(F.preprocess_channel(img, "actin", params), F.centre_crop(img))
