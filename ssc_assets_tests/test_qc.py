"""QC measures against hand-computed values and reference implementations."""

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from ssc_assets.core.ingest.qc import (
    apply_overrides,
    apply_qc_rules,
    edge_width_px,
    intensity_stats,
    noise_sd,
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


def test_noise_sd_of_white_noise():
    rng = np.random.default_rng(4)
    img = (1000 + rng.normal(0, 10, (256, 256))).round().astype(np.uint16)
    assert noise_sd(img) == pytest.approx(10.0, rel=0.05)
    # smooth structure (vignetting, cells) does not count as noise
    ramp = np.linspace(0, 3000, 256)[None, :] + np.linspace(0, 2000, 256)[:, None]
    assert noise_sd((img + ramp).astype(np.uint16)) == pytest.approx(10.0, rel=0.1)


def _disks(sigma: float, speck: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[:256, :256]
    img = np.zeros((256, 256))
    for cy, cx in [(60, 60), (60, 190), (190, 60), (190, 190), (128, 128)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 22**2] = 3000.0
    img = gaussian_filter(img, sigma) if sigma else img
    if speck:  # a sharp speck of debris, much brighter than the objects
        img[20:23, 240:243] = 20000.0
    return img + 200


@pytest.mark.parametrize("sigma", [2.0, 3.0, 5.0])
def test_edge_width_recovers_known_blur(sigma):
    assert edge_width_px(_disks(sigma)) == pytest.approx(sigma, rel=0.2)
    # a sharp bright speck does not make a blurred field look sharp
    assert edge_width_px(_disks(sigma, speck=True)) == pytest.approx(sigma, rel=0.2)


def test_edge_width_of_sharp_edges_is_small():
    assert edge_width_px(_disks(0)) < 1.0


def _site_rows(group="g1", well="B02", site=1, scale=1.0, biology=1.0, **nuclei):
    """Measures of one healthy site (3 channels); ``scale`` = optics, ``biology`` = actin level."""
    base = dict(Metadata_Plate="P", Metadata_Well=well, Metadata_Site=site, Metadata_AcquisitionGroup=group,
                Metadata_PixelSizeUm=0.34, read_error=None, saturated_fraction=0.0, std=100.0 * scale)
    rows = []
    for ch, level in (("nuclei", 5000.0), ("borders", 3000.0), ("actin", 2500.0 * biology)):
        r = dict(base, channel=ch, median=400.0 * scale, q99=400.0 * scale + level * scale, contrast=level * scale,
                 bright_contrast=level * scale + 50, snr=level / 20.0, focus_score=-2.0 + 0.01 * site,
                 edge_width_um=0.45 + 0.005 * site if ch == "nuclei" else np.nan)
        if ch == "nuclei":
            r.update(nuclei)
        rows.append(r)
    return rows


def _plate(overrides=None):
    """Two objectives (4x less light in g2) and donors with a 3x actin phenotype."""
    rows = []
    for k in range(24):
        well = f"{'BCD'[k // 8]}{k % 8 + 2:02d}"
        group, scale = ("g1", 1.0) if k < 12 else ("g2", 0.25)
        for site in (1, 2, 3, 4):
            extra = (overrides or {}).get((well, site), {})
            rows += _site_rows(group, well, site, scale, biology=3.0 if k % 3 == 0 else 1.0, **extra)
    return pd.DataFrame(rows)


def test_objectives_and_phenotype_never_fail():
    out = apply_qc_rules(_plate())
    assert out.passed_qc.all(), out.loc[~out.passed_qc, "qc_reason"].unique()


def test_artifacts_fail_with_reasons():
    out = apply_qc_rules(_plate({
        ("B03", 2): {"saturated_fraction": 0.05},
        ("C04", 1): {"snr": 3.0, "contrast": 60.0},  # camera noise only
        ("D05", 3): {"edge_width_um": 2.5},  # blurred
        ("B06", 4): {"contrast": 500.0, "bright_contrast": 550.0},  # cell-free among cells of its well
    }))
    sites = out.drop_duplicates(["Metadata_Well", "Metadata_Site"]).set_index(["Metadata_Well", "Metadata_Site"])
    failed = sites[~sites.passed_qc]
    assert set(failed.index) == {("B03", 2), ("C04", 1), ("D05", 3), ("B06", 4)}
    assert "saturated" in failed.loc[("B03", 2), "qc_reason"]
    assert "empty field" in failed.loc[("C04", 1), "qc_reason"]
    assert "out of focus" in failed.loc[("D05", 3), "qc_reason"]
    assert "cell-free" in failed.loc[("B06", 4), "qc_reason"]


def test_intensity_outlier_is_review_not_failure():
    plate = _plate()
    sel = (plate.Metadata_Well == "B04") & (plate.Metadata_Site == 1) & (plate.channel == "borders")
    plate.loc[sel, ["median", "q99"]] *= 4.0
    out = apply_qc_rules(plate)
    assert out.passed_qc.all()
    site = out[(out.Metadata_Well == "B04") & (out.Metadata_Site == 1)]
    assert site.qc_review.all() and "borders: unusual background level for its well" in site.review_reason_site.iloc[0]
    assert out.qc_review.sum() == len(site)


def test_debris_needs_nuclei_and_another_channel():
    plate = _plate()
    site = (plate.Metadata_Well == "C02") & (plate.Metadata_Site == 3)
    plate.loc[site & (plate.channel == "actin"), "bright_contrast"] *= 3  # biology-like: one channel
    assert apply_qc_rules(plate).passed_qc.all()
    plate.loc[site & (plate.channel == "nuclei"), "bright_contrast"] *= 3  # autofluorescent in every channel
    out = apply_qc_rules(plate)
    assert set(out.loc[~out.passed_qc, "Metadata_Well"]) == {"C02"}
    assert "debris" in out.loc[~out.passed_qc, "qc_reason"].iloc[0]


def test_unreadable_and_constant_images_fail():
    plate = _plate()
    plate.loc[0, "read_error"] = "x.tif: truncated"
    plate.loc[5, ["std", "focus_score"]] = [0.0, np.nan]
    out = apply_qc_rules(plate)
    assert "unreadable: x.tif: truncated" in out.loc[0, "qc_reason"]
    assert "constant image" in out.loc[5, "image_reason"]


def test_user_overrides():
    plate = _plate({("B03", 2): {"saturated_fraction": 0.05}})
    plate["qc_override"] = None
    plate["qc_override_note"] = None
    b03 = (plate.Metadata_Well == "B03") & (plate.Metadata_Site == 2)
    b05 = (plate.Metadata_Well == "B05") & (plate.Metadata_Site == 1)
    plate.loc[b03, ["qc_override", "qc_override_note"]] = ["pass", "saturation is a bright mitosis"]
    plate.loc[b05, ["qc_override", "qc_override_note"]] = ["fail", "scratch"]
    out = apply_overrides(apply_qc_rules(plate))
    assert out[b03].passed_qc.all() and (out[b03].qc_decision == "user pass").all()
    assert not out[b05].passed_qc.any() and out[b05].qc_reason.iloc[0].startswith("user decision: fail (scratch)")
    assert out[~(b03 | b05)].passed_qc.all()


def test_image_qc_shares_one_histogram_with_the_same_results():
    from ssc_assets.core.ingest.qc import image_qc

    rng = np.random.default_rng(7)
    img = rng.poisson(400, (96, 80)).astype(np.uint16)
    img[:24] = 4095  # a 12-bit camera's maximum
    out = image_qc(img, saturation_level=4095)
    assert out["saturated_fraction"] == pytest.approx(24 / 96)
    assert out["focus_score"] == pytest.approx(power_log_log_slope(img.astype(np.float64)), rel=1e-5)
    assert out["median"] == intensity_stats(img)["median"]
