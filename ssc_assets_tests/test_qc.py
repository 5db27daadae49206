"""QC measures against hand-computed values and reference implementations."""

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from ssc_assets.core.qc import (
    QcConfig,
    flag_outliers,
    intensity_stats,
    power_log_log_slope,
    power_log_log_slope_reference,
    robust_z,
)


def test_focus_score_hand_computed_cosine_comb():
    # Horizontal cosines at every frequency k = 1..K with amplitude a_k give |FFT|^2 =
    # (a_k h w / 2)^2 at +k and -k. CellProfiler folds distances with flips, so +k falls in
    # ring k + 1 and -k (index w - k) in ring k: ring L sums a_(L-1)^2 + a_L^2 (x constant).
    h = w = 128
    K = 16
    a = {k: 1.0 / k**1.5 for k in range(1, K + 1)}
    x = np.arange(w)
    img = np.tile(sum(a[k] * np.cos(2 * np.pi * k * x / w) for k in a), (h, 1))
    radii = np.arange(2, w // 8)  # rings 2 .. floor(128 / 8) - 1
    power = np.array([a[L - 1] ** 2 + a[L] ** 2 for L in radii])
    lx, ly = np.log(radii), np.log(power)
    expected = ((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()
    assert power_log_log_slope(img) == pytest.approx(expected, rel=1e-4)
    assert power_log_log_slope_reference(img) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("shape", [(64, 64), (96, 80), (65, 71)])
def test_focus_score_matches_cellprofiler_transcription(shape):
    rng = np.random.default_rng(1)
    img = gaussian_filter(rng.poisson(300, shape).astype(float), 1.5)
    assert power_log_log_slope(img) == pytest.approx(power_log_log_slope_reference(img), rel=1e-5)


def test_blur_lowers_focus_score():
    rng = np.random.default_rng(2)
    texture = gaussian_filter(rng.normal(0, 1, (256, 256)), 1.0) * 2000 + 1000
    img = rng.poisson(np.clip(texture, 0, None)).astype(float)
    scores = [power_log_log_slope(gaussian_filter(img, s) if s else img) for s in (0, 1, 2, 4, 8)]
    assert all(b < a for a, b in zip(scores, scores[1:])), scores


def test_intensity_stats_hand_values():
    img = np.array([[0, 10], [10, 65535]], np.uint16)
    s = intensity_stats(img)
    assert s["percent_maximal"] == 25.0
    assert s["median"] == 10 and s["q01"] == 0 and s["q99"] == 65535
    assert s["total_intensity"] == 65555
    assert s["std"] == pytest.approx(np.std(img.astype(float)))


def test_intensity_quantiles_match_numpy_inverted_cdf():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 5000, (123, 77)).astype(np.uint16)
    s = intensity_stats(img)
    for key, q in [("q01", 0.01), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q99", 0.99)]:
        assert s[key] == np.quantile(img, q, method="inverted_cdf")


def test_saturated_image_has_high_percent_maximal():
    img = np.full((100, 100), 300, np.uint16)
    img[:30] = 65535
    assert intensity_stats(img)["percent_maximal"] == pytest.approx(30.0)


def test_robust_z_hand_values():
    v = pd.Series([1.0, 2.0, 3.0, 4.0, 100.0])
    z = robust_z(v)
    # median 3, MAD = median(|-2,-1,0,1,97|) = 1
    assert z.iloc[4] == pytest.approx(97 / 1.4826)
    assert z.iloc[2] == 0


def _qc_frame(n=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for ch in ("nuclei", "borders"):
            rows.append(
                dict(
                    Metadata_Plate="P", Metadata_Well=f"B{i:02d}", Metadata_Site=1, channel=ch,
                    focus_score=rng.normal(-2.0, 0.05), percent_maximal=0.0001, median=rng.normal(500, 10),
                    std=rng.normal(200, 5), q99=rng.normal(3000, 50), read_error=None,
                )
            )
    return pd.DataFrame(rows)


def test_flags_planted_outliers_with_reasons():
    qc = _qc_frame()
    blur = qc.index[(qc.Metadata_Well == "B03") & (qc.channel == "nuclei")][0]
    sat = qc.index[(qc.Metadata_Well == "B07") & (qc.channel == "borders")][0]
    qc.loc[blur, "focus_score"] = -3.5
    qc.loc[sat, "percent_maximal"] = 12.0
    qc.loc[qc.index[(qc.Metadata_Well == "B09") & (qc.channel == "nuclei")][0], "read_error"] = "x.tif: truncated"
    out = flag_outliers(qc, QcConfig())
    failed = out[~out.passed_qc].drop_duplicates("Metadata_Well")
    assert set(failed.Metadata_Well) == {"B03", "B07", "B09"}
    assert "out of focus" in out.loc[blur, "image_reason"]
    assert "saturated" in out.loc[sat, "image_reason"]
    # the site-level reason names the channel and is shared by the site's rows
    b07 = out[out.Metadata_Well == "B07"]
    assert (b07.qc_reason == b07.qc_reason.iloc[0]).all() and b07.qc_reason.iloc[0].startswith("borders:")
    assert "unreadable: x.tif: truncated" in out[out.Metadata_Well == "B09"].qc_reason.iloc[0]


def test_no_flags_on_clean_data():
    out = flag_outliers(_qc_frame(seed=5), QcConfig())
    assert out.passed_qc.all()
