"""Tests of the curated profile features (ssc_assets.core.analysis.profile_features).

(a) hand-computed values on tiny label images (areas, means, std, Pearson, border band,
continuity, mass displacement) with ``channel_scale`` 1 so pixel values are used as given;
(b) agreement with the reference implementations (cp_measure, regionprops) on a simulated
site where the features overlap; (c) the issue-12 separation criterion on simulated donors:
leave-one-donor-out accuracy of the curated set >= that of the full cp_measure set - 0.02.
The cp_measure reference of (c) costs minutes, so its well table is a fixture written by
``benchmarks/profiles_separation.py --masks truth --fixture`` (same simulated sites, the
simulator's own masks; the test checks a per-site fingerprint against the fixture first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssc_assets.core.analysis.profile_features import (
    SHAPE_NAMES,
    curated_cell_features,
    hist_bin,
    hist_fraction_above,
    hist_quantile,
)

CHANNELS = ("nuclei", "borders", "actin")
ONE = (1.0, 1.0, 1.0)
H, W = 64, 100
# cell label -> rectangle (r0, r1, c0, c1), non-contiguous labels; a gap column between them
RECTS = {3: (10, 50, 5, 45), 8: (10, 50, 55, 95)}
# nucleus label -> rectangle inside its cell
NUC_RECTS = {3: (25, 35, 20, 30), 8: (22, 38, 67, 83)}


def _rect_mask(r0, r1, c0, c1, shape=(H, W)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def tiny_site(seed: int = 0):
    """(image float64 (3, H, W) in [0, 1], nuclei int32, cells int32) with random channels."""
    rng = np.random.default_rng(seed)
    cells = np.zeros((H, W), np.int32)
    nuclei = np.zeros((H, W), np.int32)
    for lab, r in RECTS.items():
        cells[_rect_mask(*r)] = lab
    for lab, r in NUC_RECTS.items():
        nuclei[_rect_mask(*r)] = lab
    img = rng.uniform(0.05, 0.95, (3, H, W))
    img[2] = 0.6 * img[1] + 0.4 * rng.uniform(0, 1, (H, W))  # correlated with channel 1
    return img, nuclei, cells


@pytest.fixture(scope="module")
def tiny():
    img, nuc, cel = tiny_site()
    return img, nuc, cel, curated_cell_features(img, nuc, cel, CHANNELS, channel_scale=ONE).set_index("ObjectNumber")


# ---------------------------------------------------------------------------
# (a) hand-computed values
# ---------------------------------------------------------------------------


def test_rows_columns_and_dtypes(tiny):
    *_, df = tiny
    assert df.index.tolist() == [3, 8]
    assert df.attrs["errors"] == []
    assert all(df[c].dtype == np.float64 for c in df.columns)
    assert not np.isinf(df.to_numpy()).any()
    for obj in ("Nuclei", "Cells", "Cytoplasm"):
        for ch in CHANNELS:
            for f in ("Intensity_MeanIntensity", "Intensity_MedianIntensity", "Texture_DoGMean"):
                assert f"{obj}_{f}_{ch}" in df.columns
        assert f"{obj}_Correlation_Pearson_actin_borders" in df.columns
    for name in SHAPE_NAMES:
        assert f"Nuclei_AreaShape_{name}" in df.columns and f"Cells_AreaShape_{name}" in df.columns
    for ch in CHANNELS:
        assert f"Cells_Border_Continuity_{ch}" in df.columns
        assert f"Cells_RadialDistribution_FracAtDepth_4of4_{ch}" in df.columns


def test_areas_and_shape_of_rectangles(tiny):
    *_, df = tiny
    for lab, (r0, r1, c0, c1) in RECTS.items():
        n0, n1, m0, m1 = NUC_RECTS[lab]
        cell_area, nuc_area = (r1 - r0) * (c1 - c0), (n1 - n0) * (m1 - m0)
        assert df.loc[lab, "Cells_AreaShape_Area"] == cell_area
        assert df.loc[lab, "Nuclei_AreaShape_Area"] == nuc_area
        assert df.loc[lab, "Cytoplasm_AreaShape_Area"] == cell_area - nuc_area
        assert df.loc[lab, "Cells_AreaShape_NucleusAreaFraction"] == pytest.approx(nuc_area / cell_area)
        assert df.loc[lab, "Cells_AreaShape_Extent"] == 1.0
        assert df.loc[lab, "Cells_AreaShape_Solidity"] == pytest.approx(1.0)
        # the contour through the boundary pixel centres of an a x b rectangle
        assert df.loc[lab, "Cells_AreaShape_Perimeter"] == pytest.approx(2 * (r1 - r0 - 1) + 2 * (c1 - c0 - 1))
    # nucleus 3 is a 10 x 10 square: an isotropic ellipse; axes 4 sqrt(var) = 4 sqrt((10² - 1) / 12)
    assert df.loc[3, "Nuclei_AreaShape_Eccentricity"] == pytest.approx(0.0, abs=1e-9)
    assert df.loc[3, "Nuclei_AreaShape_MajorAxisLength"] == pytest.approx(4 * np.sqrt(99 / 12))


def test_intensity_stats_equal_numpy(tiny):
    img, nuc, cel, df = tiny
    for lab in RECTS:
        masks = {"Cells": cel == lab, "Nuclei": nuc == lab, "Cytoplasm": (cel == lab) & (nuc != lab)}
        for obj, m in masks.items():
            for c, ch in enumerate(CHANNELS):
                px = img[c][m]
                assert df.loc[lab, f"{obj}_Intensity_MeanIntensity_{ch}"] == pytest.approx(px.mean(), rel=1e-12)
                assert df.loc[lab, f"{obj}_Intensity_IntegratedIntensity_{ch}"] == pytest.approx(px.sum(), rel=1e-12)
                assert df.loc[lab, f"{obj}_Intensity_StdIntensity_{ch}"] == pytest.approx(px.std(), rel=1e-9)
                for q, name in ((25, "LowerQuartile"), (50, "Median"), (75, "UpperQuartile")):
                    # between the order statistics around q, up to one bin (uniform in sqrt(v):
                    # width 2 sqrt(v) / 256 at v)
                    lo, hi = np.percentile(px, q, method="lower"), np.percentile(px, q, method="higher")
                    got = df.loc[lab, f"{obj}_Intensity_{name}Intensity_{ch}"]
                    bw = 2 * np.sqrt(hi) / 256 + 1e-9
                    assert lo - bw <= got <= hi + bw, (lab, obj, ch, q, lo, got, hi)


def test_pearson_equals_numpy_per_object(tiny):
    img, nuc, cel, df = tiny
    idx = {ch: c for c, ch in enumerate(CHANNELS)}
    for lab in RECTS:
        for obj, m in {"Cells": cel == lab, "Nuclei": nuc == lab, "Cytoplasm": (cel == lab) & (nuc != lab)}.items():
            for a, b in (("actin", "borders"), ("actin", "nuclei"), ("borders", "nuclei")):
                ref = np.corrcoef(img[idx[a]][m], img[idx[b]][m])[0, 1]
                assert df.loc[lab, f"{obj}_Correlation_Pearson_{a}_{b}"] == pytest.approx(ref, abs=1e-9)
    assert (df["Cells_Correlation_Pearson_actin_borders"] > 0.5).all()  # built correlated


def ring_site(gap: bool = False):
    """One 40 x 40 cell on background: channels 1.0 in the outer 4-px ring, 0.25 inside; with
    ``gap`` the ring's top side (rows 0-3, all columns) is 0.1 (a fragmented junction)."""
    cells = np.zeros((60, 60), np.int32)
    cells[10:50, 10:50] = 5
    nuclei = np.zeros_like(cells)
    nuclei[25:35, 25:35] = 5
    ring = _rect_mask(10, 50, 10, 50, (60, 60)) & ~_rect_mask(14, 46, 14, 46, (60, 60))
    ch = np.where(ring, 1.0, np.where(cells > 0, 0.25, 0.0))
    if gap:
        ch[10:14, 10:50] = 0.1
    return np.stack([ch, ch, ch]), nuclei, cells, ring


def test_border_band_on_a_designed_ring():
    img, nuc, cel, ring = ring_site()
    df = curated_cell_features(img, nuc, cel, CHANNELS, channel_scale=ONE)
    n_ring, n_in = ring.sum(), (cel > 0).sum() - ring.sum()
    assert n_ring == 40 * 40 - 32 * 32
    for ch in CHANNELS:
        assert df[f"Cells_Border_MeanIntensity_{ch}"][0] == pytest.approx(1.0)
        assert df[f"Cells_Border_InteriorRatio_{ch}"][0] == pytest.approx(4.0)
        assert df[f"Cells_Border_IntensityFraction_{ch}"][0] == pytest.approx(n_ring / (n_ring + 0.25 * n_in))
        assert df[f"Cells_Border_CV_{ch}"][0] == pytest.approx(0.0, abs=1e-6)
        assert df[f"Cells_Border_Continuity_{ch}"][0] == pytest.approx(1.0)
        fr = df[[f"Cells_RadialDistribution_FracAtDepth_{k}of4_{ch}" for k in range(1, 5)]].to_numpy()
        assert fr.sum() == pytest.approx(1.0)
        assert fr[0, 3] > 0.5  # the edge ring holds most of the intensity


def test_fragmented_junction_lowers_continuity():
    img, nuc, cel, ring = ring_site(gap=True)
    df = curated_cell_features(img, nuc, cel, CHANNELS, channel_scale=ONE)
    top = _rect_mask(10, 14, 10, 50, (60, 60))
    expected = (ring & ~top).sum() / ring.sum()  # band pixels at 1.0 (>= half the 90th pct)
    assert df["Cells_Border_Continuity_borders"][0] == pytest.approx(expected, abs=1e-9)
    assert df["Cells_Border_CV_borders"][0] > 0.3


def test_border_width_follows_downsample():
    img, nuc, cel, ring = ring_site()
    # at 2x down the default band is 2 px wide: only the outer half of the 4-px ring
    df = curated_cell_features(img, nuc, cel, CHANNELS, channel_scale=ONE, downsample=2.0)
    assert df["Cells_Border_MeanIntensity_actin"][0] == pytest.approx(1.0)
    n_band = 40 * 40 - 36 * 36
    assert df["Cells_Border_IntensityFraction_actin"][0] == pytest.approx(n_band / img[0][cel > 0].sum())
    wide = curated_cell_features(img, nuc, cel, CHANNELS, channel_scale=ONE, border_width=8)
    assert wide["Cells_Border_MeanIntensity_actin"][0] == pytest.approx((1.0 * 576 + 0.25 * (1600 - 576 - 24 * 24))
                                                                        / (1600 - 24 * 24))


def test_mass_displacement_of_a_half_lit_cell():
    cells = np.zeros((30, 60), np.int32)
    cells[5:25, 10:50] = 1
    nuclei = np.zeros_like(cells)
    nuclei[12:18, 27:33] = 1
    ch = np.zeros(cells.shape)
    ch[5:25, 10:30] = 1.0  # the left half of the cell only
    img = np.stack([ch, ch, np.ones_like(ch)])
    df = curated_cell_features(img, nuclei, cells, CHANNELS, channel_scale=ONE)
    assert df["Cells_Intensity_MassDisplacement_borders"][0] == pytest.approx(10.0)  # 20-px halves
    assert df["Cells_Intensity_MassDisplacement_actin"][0] == pytest.approx(0.0, abs=1e-9)
    # a constant channel: no texture, no correlation (NaN, not inf)
    assert df["Cells_Texture_GradientMean_actin"][0] == pytest.approx(0.0, abs=1e-7)
    assert df["Cells_Texture_DoGMean_actin"][0] == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(df["Cells_Correlation_Pearson_actin_borders"][0])


def test_stray_nucleus_pixels_and_empty_cytoplasm():
    cells = np.zeros((20, 40), np.int32)
    cells[2:12, 2:12] = 1
    cells[2:12, 20:30] = 2
    nuclei = np.zeros_like(cells)
    nuclei[5:15, 5:9] = 1  # 10 x 4 nucleus, its bottom 3 rows outside cell 1
    nuclei[2:12, 20:30] = 2  # nucleus fills cell 2: empty cytoplasm
    nuclei[15:18, 35:38] = 7  # nucleus without a cell: ignored
    img = np.stack([np.full(cells.shape, 0.5)] * 3)
    img[0][14, 5:9] = 1.0  # a bright stray row (outside cell 1)
    df = curated_cell_features(img, nuclei, cells, CHANNELS, channel_scale=ONE).set_index("ObjectNumber")
    assert df.index.tolist() == [1, 2]
    assert df.loc[1, "Nuclei_AreaShape_Area"] == 40
    assert df.loc[1, "Nuclei_Intensity_IntegratedIntensity_nuclei"] == pytest.approx(36 * 0.5 + 4 * 1.0)
    assert df.loc[1, "Cytoplasm_AreaShape_Area"] == 100 - 28
    assert df.loc[2, "Cytoplasm_AreaShape_Area"] == 0
    assert np.isnan(df.loc[2, "Cytoplasm_Intensity_MeanIntensity_actin"])
    assert np.isnan(df.loc[2, "Cytoplasm_Intensity_MedianIntensity_actin"])
    assert not np.isinf(df.to_numpy()).any()


def test_no_common_label_and_bad_inputs():
    img, nuc, cel = tiny_site()
    df = curated_cell_features(img, nuc, np.zeros_like(cel), CHANNELS)
    assert len(df) == 0 and list(df.columns) == ["ObjectNumber"] and df.attrs["errors"]
    with pytest.raises(ValueError):
        curated_cell_features(img[:2], nuc, cel, CHANNELS)
    with pytest.raises(TypeError):
        curated_cell_features(img, nuc.astype(float), cel, CHANNELS)


def test_histogram_helpers():
    rng = np.random.default_rng(1)
    v = rng.uniform(0, 1, 5000) ** 3  # skewed towards 0
    h = np.bincount(hist_bin(v), minlength=256)[None, :].astype(float)
    for q in (0.1, 0.5, 0.9):
        ref = np.quantile(v, q)
        assert hist_quantile(h, q)[0] == pytest.approx(ref, abs=2 * np.sqrt(ref) / 256 + 1e-4)
    assert hist_fraction_above(h, np.array([np.quantile(v, 0.3)]))[0] == pytest.approx(0.7, abs=0.01)
    assert np.isnan(hist_quantile(np.zeros((1, 256)), 0.5)[0])


def test_profile_site_defaults_to_curated_and_rejects_unknown_sets():
    from ssc_assets.core.image.site_tasks import PROFILE_FEATURE_SETS, ProfileSiteTask, profile_site

    task = ProfileSiteTask("store", "masks", "B02", 1, CHANNELS)
    assert task.feature_set == "curated" and set(PROFILE_FEATURE_SETS) == {"curated", "cp_measure"}
    with pytest.raises(ValueError, match="feature_set"):
        profile_site(ProfileSiteTask("store", "masks", "B02", 1, CHANNELS, feature_set="everything"))


# ---------------------------------------------------------------------------
# (b) agreement with cp_measure / regionprops on a simulated site
# ---------------------------------------------------------------------------


def simulated_site(seed: int, size: int, severity: float, debris: bool = False):
    from ssc_assets.core.image.filters import preprocess_channel
    from ssc_assets.core.image.segmentation import compute_masks
    from ssc_assets.core.simulate import render_site

    imgs, _ = render_site(seed, size, severity, debris=debris)
    pre = {c: preprocess_channel(imgs[c].astype(np.float32) - 100, c) for c in CHANNELS}
    masks = compute_masks(pre["nuclei"], pre["borders"], pre["actin"])
    return np.stack([pre[c] for c in CHANNELS]), masks["nuclei"], masks["cells"]


@pytest.fixture(scope="module")
def sim_pair():
    from ssc_assets.core.analysis.profiles import cell_features

    img, nuc, cel = simulated_site(3, 512, 0.5)
    return (curated_cell_features(img, nuc, cel, CHANNELS), cell_features(img, nuc, cel, CHANNELS, fast=True),
            nuc, cel)


def test_agrees_with_cp_measure_where_features_overlap(sim_pair):
    cur, ref, *_ = sim_pair
    assert len(cur) == len(ref) >= 5 and (cur["ObjectNumber"] == ref["ObjectNumber"]).all()
    assert cur.attrs["channel_scale"] == ref.attrs["channel_scale"]
    exact = ["AreaShape_Area", "AreaShape_Extent", "AreaShape_Eccentricity", "AreaShape_MajorAxisLength",
             "AreaShape_MinorAxisLength"]
    exact += [f"Intensity_{f}_{ch}" for ch in CHANNELS
              for f in ("MeanIntensity", "IntegratedIntensity", "StdIntensity", "MassDisplacement")]
    for obj in ("Nuclei", "Cells"):
        for f in exact:
            np.testing.assert_allclose(cur[f"{obj}_{f}"], ref[f"{obj}_{f}"], rtol=1e-6, atol=1e-9, err_msg=f"{obj}_{f}")
        # contour length vs skimage's weighted boundary count: a few %, twice that in 1 / perimeter²
        for f, tol in (("AreaShape_Perimeter", 0.03), ("AreaShape_Solidity", 0.03), ("AreaShape_FormFactor", 0.06)):
            np.testing.assert_allclose(cur[f"{obj}_{f}"], ref[f"{obj}_{f}"], rtol=tol, err_msg=f"{obj}_{f}")
        for ch in CHANNELS:
            for f in ("LowerQuartileIntensity", "MedianIntensity", "UpperQuartileIntensity"):
                a, b = cur[f"{obj}_Intensity_{f}_{ch}"], ref[f"{obj}_Intensity_{f}_{ch}"]
                np.testing.assert_allclose(a, b, atol=1e-3, rtol=0.03, err_msg=f"{obj}_{f}_{ch}")
    for a, b in (("actin", "borders"), ("actin", "nuclei"), ("borders", "nuclei")):
        np.testing.assert_allclose(cur[f"Cells_Correlation_Pearson_{a}_{b}"], ref[f"Cells_Correlation_Pearson_{a}_{b}"],
                                   atol=1e-9)


def test_shape_agrees_with_regionprops(sim_pair):
    from skimage.measure import regionprops_table

    cur, _, nuc, cel = sim_pair
    ids = cur["ObjectNumber"].to_numpy()
    for obj, lab in (("Nuclei", nuc), ("Cells", cel)):
        lab = np.where(np.isin(lab, ids), lab, 0)
        t = regionprops_table(lab, properties=["label", "area", "perimeter", "solidity", "eccentricity"])
        assert (t["label"] == ids).all()
        np.testing.assert_array_equal(cur[f"{obj}_AreaShape_Area"], t["area"])
        np.testing.assert_allclose(cur[f"{obj}_AreaShape_Perimeter"], t["perimeter"], rtol=0.03)
        np.testing.assert_allclose(cur[f"{obj}_AreaShape_Solidity"], t["solidity"], rtol=0.02)
        np.testing.assert_allclose(cur[f"{obj}_AreaShape_Eccentricity"], t["eccentricity"], atol=1e-9)


# ---------------------------------------------------------------------------
# (c) separation of simulated donors: curated >= full cp_measure - 0.02
# ---------------------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "profiles_separation_seed0.csv.gz"
SITES = FIXTURES / "profiles_separation_seed0_sites.csv.gz"
# the design of benchmarks/profiles_separation.py (its defaults, --masks truth), seed 0
SEED, WELLS_PER_DONOR, SITES_PER_WELL, SIZE = 0, 2, 2, 512


def separation_sites():
    """The simulated sites of ``benchmarks/profiles_separation.py --masks truth`` (same draws,
    same order): real preprocessing, the simulator's own masks (cells = its Voronoi cells,
    nuclei = its nucleus pixels labelled with their cell), so that the cp_measure fixture does
    not depend on the segmentation code."""
    from ssc_assets.core.image.filters import centre_crop, preprocess_channel
    from ssc_assets.core.simulate import default_donors, render_site

    rng = np.random.default_rng(SEED)
    for d_i, donor in enumerate(default_donors()):
        for w in range(WELLS_PER_DONOR):
            well = f"{'BCDEFG'[w % 6]}{d_i + 2:02d}"
            for s in range(1, SITES_PER_WELL + 1):
                imgs, truth = render_site(int(rng.integers(2**31)), SIZE, donor.severity,
                                          debris=bool(rng.random() < 0.25))
                img = np.stack([preprocess_channel(imgs[c].astype(np.float32) - 100, c) for c in CHANNELS])
                cel = centre_crop(truth["cell_labels"], size=img.shape[1:]).astype(np.int32)
                nuc = np.where(centre_crop(truth["nuclei_labels"], size=img.shape[1:]) > 0, cel, 0).astype(np.int32)
                meta = {"Metadata_Plate": f"SIM{SEED}", "Metadata_Well": well, "Metadata_Site": s,
                        "Metadata_Donor": donor.donor_id, "Metadata_Condition": donor.condition,
                        "Metadata_Group": donor.group, "Metadata_Method": "profiles"}
                yield meta, img, nuc, cel


def lodo_well_accuracy(wells: pd.DataFrame) -> float:
    """The clusterings path for profiles (HC standardisation + feature selection), then the
    leave-one-donor-out linear SVM well accuracy."""
    from ssc_assets.core.analysis.donor_scores import lodo_accuracy
    from ssc_assets.core.analysis.profiles import select_and_normalize
    from ssc_assets.core.schema import feature_columns, metadata_columns

    feats = feature_columns(wells, drop_all_nan=True)
    out, kept = select_and_normalize(wells[metadata_columns(wells) + feats], feats)
    return float(lodo_accuracy(out, kept)["accuracy"])


@pytest.fixture(scope="module")
def separation():
    from ssc_assets.core.analysis.profiles import site_profile
    from ssc_assets.core.learn.embeddings import well_embeddings

    rows, checks = [], []
    for meta, img, nuc, cel in separation_sites():
        df = curated_cell_features(img, nuc, cel, CHANNELS)
        rows.append({**meta, **site_profile(df).to_dict()})
        inside = np.isin(cel, df["ObjectNumber"].to_numpy())
        checks.append({"Metadata_Well": meta["Metadata_Well"], "Metadata_Site": meta["Metadata_Site"],
                       "n_cells": len(df), "cell_area": int(inside.sum()),
                       "image_sum": float(img[:, inside].astype(np.float64).sum())})
    return well_embeddings(pd.DataFrame(rows)), pd.DataFrame(checks)


def test_curated_separates_donors_as_well_as_cp_measure(separation):
    wells, checks = separation
    stored = pd.read_csv(SITES)
    merged = checks.merge(stored, on=["Metadata_Well", "Metadata_Site"], suffixes=("", "_fixture"))
    assert len(merged) == len(checks) == len(stored) == 32
    same = ((merged["n_cells"] == merged["n_cells_fixture"]).all()
            and (merged["cell_area"] == merged["cell_area_fixture"]).all()
            and np.allclose(merged["image_sum"], merged["image_sum_fixture"], rtol=1e-5))
    if not same:
        pytest.fail("the simulated sites or their preprocessing changed: regenerate the cp_measure fixture with "
                    f"`python benchmarks/profiles_separation.py --seeds 0 --masks truth --fixture {FIXTURE}`")
    reference = pd.read_csv(FIXTURE)
    assert len(wells) == len(reference) == 16
    acc_cp = lodo_well_accuracy(reference)
    acc_cur = lodo_well_accuracy(wells)
    assert acc_cur >= acc_cp - 0.02, (acc_cur, acc_cp)
