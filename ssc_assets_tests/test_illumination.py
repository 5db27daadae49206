"""Flat-field estimation on synthetic plates with a known illumination pattern."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ssc_assets.core.image import illumination as IL

N = 512
OFFSET = 100.0


def _flatfield(n=N, strength=0.3):
    """Known smooth vignetting: off-centre quadratic fall-off plus a slight tilt, mean 1."""
    yy, xx = np.mgrid[0:n, 0:n] / float(n)
    f = 1.0 - strength * 2 * ((yy - 0.45) ** 2 + (xx - 0.55) ** 2) + 0.05 * (xx - 0.5)
    return (f / f.mean()).astype(np.float32)


def _scene(rng, n=N):
    """Foreground that changes from image to image: nuclei-like blobs, junction-like
    lines, a few very bright debris specks (photon counts, float32)."""
    s = np.zeros((n, n), np.float32)
    for _ in range(int(rng.integers(30, 90))):
        cv2.ellipse(s, (int(rng.uniform(0, n)), int(rng.uniform(0, n))),
                    (int(rng.uniform(5, 14)), int(rng.uniform(3, 9))), rng.uniform(0, 180), 0, 360,
                    float(rng.uniform(500, 3000)), -1)
    for _ in range(int(rng.integers(30, 90))):
        p = rng.uniform(0, n, 4).astype(int)
        cv2.line(s, (p[0], p[1]), (p[2], p[3]), float(rng.uniform(200, 1500)), int(rng.integers(1, 3)))
    for _ in range(4):
        cv2.circle(s, (int(rng.uniform(0, n)), int(rng.uniform(0, n))), int(rng.integers(1, 5)),
                   float(rng.uniform(5000, 30000)), -1)
    return cv2.GaussianBlur(s, (0, 0), 1.0)


def _plate(n_images=24, level_spread=0.3, seed=0, ff=None):
    """Raw images: (foreground + background level of the well) x flatfield, Poisson noise,
    read noise and the camera offset. The background level differs between images."""
    ff = _flatfield() if ff is None else ff
    rng = np.random.default_rng(seed)
    for _ in range(n_images):
        background = 300.0 * rng.uniform(1 - level_spread, 1 + level_spread)
        lam = (_scene(rng) + background) * ff
        yield (rng.poisson(lam) + rng.normal(0, 3, lam.shape) + OFFSET).astype(np.float32)


def _rms(a, b):
    return float(np.sqrt(np.mean((a / a.mean() - b / b.mean()) ** 2)))


def test_recovers_known_flatfield_and_offset():
    ff = _flatfield()
    prof = IL.estimate_illumination_profile(_plate())  # a generator: streamed
    assert prof.flatfield.shape == (N, N) and prof.flatfield.dtype == np.float32
    assert prof.flatfield.mean() == pytest.approx(1.0, abs=1e-4)
    assert _rms(prof.flatfield, ff) < 0.02
    assert prof.darkfield_method == "regression"
    assert abs(prof.darkfield - OFFSET) < 30
    assert prof.n_images == 24
    np.testing.assert_allclose(prof.correction * prof.flatfield, 1.0, rtol=1e-5)
    s = prof.summary()
    assert s["max_over_min"] == pytest.approx(prof.max_ratio / prof.min_ratio)


def test_given_offset_and_bright_area_suppression_matters():
    ff = _flatfield()
    good = IL.estimate_illumination_profile(list(_plate(seed=1)), darkfield=OFFSET)
    assert good.darkfield_method == "given"
    assert _rms(good.flatfield, ff) < 0.02
    # plain block means without the iterative suppression are thrown off by the foreground
    naive = IL.estimate_illumination_profile(
        list(_plate(seed=1)), darkfield=OFFSET, block_percentile=100.0, n_iter=0
    )
    assert _rms(naive.flatfield, ff) > 2 * _rms(good.flatfield, ff)


def test_offset_not_identifiable_falls_back_to_zero():
    prof = IL.estimate_illumination_profile(_plate(n_images=12, level_spread=0.0, seed=2))
    assert prof.darkfield_method == "zero" and prof.darkfield == 0.0
    pct = IL.estimate_illumination_profile(_plate(n_images=12, level_spread=0.0, seed=2), darkfield="percentile")
    assert pct.darkfield_method == "percentile" and pct.darkfield > OFFSET  # an upper bound


def test_apply_illumination_flattens_a_uniform_image():
    ff = _flatfield()
    prof = IL.estimate_illumination_profile(_plate(seed=3))
    raw = 500.0 * ff + OFFSET
    flat = IL.apply_illumination(raw, prof)
    assert flat.dtype == np.float32
    assert flat.std() / flat.mean() < 0.02
    assert raw.std() / raw.mean() > 0.05  # the raw image is not flat
    exact = IL.IlluminationProfile.from_arrays(ff, OFFSET)
    np.testing.assert_allclose(IL.apply_illumination(raw, exact), 500.0, rtol=1e-4)
    np.testing.assert_allclose(IL.apply_illumination(raw, exact, add_offset=True), 500.0 + OFFSET, rtol=1e-4)


def test_shapes_are_checked():
    imgs = list(_plate(n_images=3, seed=4))
    with pytest.raises(ValueError):
        IL.estimate_illumination_profile(imgs + [np.zeros((N, N + 1), np.float32)])
    with pytest.raises(ValueError):
        IL.estimate_illumination_profile([])
    prof = IL.IlluminationProfile.from_arrays(_flatfield(), 0.0)
    with pytest.raises(ValueError):
        IL.apply_illumination(np.zeros((10, 10)), prof)


def test_odd_sizes_and_array_input():
    ff = _flatfield(300)[:, :257]
    rng = np.random.default_rng(5)
    stack = np.stack([(rng.poisson((200 * rng.uniform(0.7, 1.3)) * ff) + OFFSET).astype(np.float32)
                      for _ in range(10)])
    prof = IL.estimate_illumination_profile(stack)
    assert prof.flatfield.shape == (300, 257)
    assert _rms(prof.flatfield, ff) < 0.02
