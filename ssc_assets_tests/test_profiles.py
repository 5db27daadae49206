"""Tests of the CellProfiler-style profile baseline (ssc_assets.core.analysis.profiles).

Expectations are built from the synthetic geometry and intensities, not from the code
under test: disk pixel counts, rectangle areas, constant intensities divided by the
brightest constant, a channel that is an exact multiple of another.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ssc_assets.core.analysis import profiles
from ssc_assets.core.analysis.profiles import cell_features, select_and_normalize, site_profile

H = W = 128
CHANNELS = ("nuclei", "borders", "actin")
# cell label -> rectangle (r0, r1, c0, c1); non-contiguous labels on purpose
RECTS = {1: (2, 62, 2, 62), 2: (2, 62, 66, 122), 5: (66, 126, 2, 52), 9: (66, 120, 60, 126)}
# nucleus label -> (cy, cx, radius) inside its cell
DISKS = {1: (32, 32, 6), 2: (32, 94, 8), 5: (96, 27, 10), 9: (93, 93, 12)}
# constant nuclei-channel intensity of each nucleus (preprocessed units, not 0-1)
NUC_VALUE = {1: 2.0, 2: 4.0, 5: 6.0, 9: 8.0}


def _disk(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_site() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32 (3, H, W), nuclei int32 (H, W), cells int32 (H, W)).

    Extra objects that must be ignored: cell 7 without a nucleus, nucleus 8 without a cell.
    """
    cells = np.zeros((H, W), np.int32)
    for lab, (r0, r1, c0, c1) in RECTS.items():
        cells[r0:r1, c0:c1] = lab
    cells[122:127, 60:126] = 7  # cell only
    nuclei = np.zeros((H, W), np.int32)
    for lab, (cy, cx, r) in DISKS.items():
        nuclei[_disk(cy, cx, r)] = lab
    nuclei[_disk(100, 56, 2)] = 8  # nucleus only, in the gap between cells 5 and 9

    img = np.zeros((3, H, W), np.float32)
    for lab, v in NUC_VALUE.items():
        img[0][nuclei == lab] = v
    img[0][nuclei == 8] = 1.0
    yy, xx = np.mgrid[:H, :W]
    pattern = 10 + 5 * np.sin(xx / 3.0) + 3 * np.cos(yy / 5.0)
    img[1] = np.where(cells > 0, pattern, 0.0)
    img[2] = 2.0 * img[1]  # actin = 2 x borders in the cells
    return img, nuclei, cells


@pytest.fixture(scope="module")
def site():
    return make_site()


@pytest.fixture(scope="module")
def full_df(site):
    img, nuclei, cells = site
    return cell_features(img, nuclei, cells, CHANNELS)


@pytest.fixture(scope="module")
def fast_df(site):
    img, nuclei, cells = site
    return cell_features(img, nuclei, cells, CHANNELS, fast=True)


# ---------------------------------------------------------------------------
# cell_features
# ---------------------------------------------------------------------------


def test_one_row_per_cell_in_both_masks(fast_df):
    assert len(fast_df) == 4
    assert fast_df["ObjectNumber"].tolist() == [1, 2, 5, 9]
    assert fast_df["ObjectNumber"].dtype == np.int64


def test_nuclei_area_is_disk_pixel_count(fast_df):
    df = fast_df.set_index("ObjectNumber")
    for lab, (cy, cx, r) in DISKS.items():
        assert df.loc[lab, "Nuclei_AreaShape_Area"] == _disk(cy, cx, r).sum()


def test_cells_area_is_rectangle_area(fast_df):
    df = fast_df.set_index("ObjectNumber")
    for lab, (r0, r1, c0, c1) in RECTS.items():
        assert df.loc[lab, "Cells_AreaShape_Area"] == (r1 - r0) * (c1 - c0)


def test_nuclei_mean_intensity_after_scaling(fast_df, site):
    # The brightest nucleus (441 px) holds more than the top 0.1 % of pixels, so the
    # 99.9th percentile of the nuclei channel is its constant, 8.0.
    img = site[0]
    assert np.percentile(img[0], 99.9) == pytest.approx(8.0)
    df = fast_df.set_index("ObjectNumber")
    for lab, v in NUC_VALUE.items():
        assert df.loc[lab, "Nuclei_Intensity_MeanIntensity_nuclei"] == pytest.approx(v / 8.0, abs=1e-12)
    # no nuclei stain inside the cells outside the nuclei: cell mean = value * disk / rect
    for lab, (r0, r1, c0, c1) in RECTS.items():
        frac = _disk(*DISKS[lab]).sum() / ((r1 - r0) * (c1 - c0))
        assert df.loc[lab, "Cells_Intensity_MeanIntensity_nuclei"] == pytest.approx(
            NUC_VALUE[lab] / 8.0 * frac, rel=1e-9)


def test_channel_scale_override(site):
    img, nuclei, cells = site
    df = cell_features(img, nuclei, cells, CHANNELS, fast=True, channel_scale=(16.0, 100.0, 100.0))
    got = df.set_index("ObjectNumber")["Nuclei_Intensity_MeanIntensity_nuclei"]
    assert got[5] == pytest.approx(6.0 / 16.0)
    assert df.attrs["channel_scale"]["nuclei"] == 16.0


def test_pearson_of_proportional_channels_is_one(fast_df):
    pear = fast_df["Cells_Correlation_Pearson_actin_borders"].to_numpy()
    np.testing.assert_allclose(pear, 1.0, atol=1e-9)
    # both scaled channels are identical, so the slope is 1 too
    np.testing.assert_allclose(fast_df["Cells_Correlation_Slope_actin_borders"], 1.0, atol=1e-9)


def test_shape_features_once_per_object_set(fast_df):
    assert "Cells_AreaShape_Area" in fast_df.columns
    assert not any(c.startswith("Cells_AreaShape_Area_") for c in fast_df.columns)
    assert "Nuclei_AreaShape_Zernike_0_0" in fast_df.columns
    assert "Nuclei_AreaShape_MaxFeretDiameter" in fast_df.columns


def test_fast_skips_slow_families(fast_df):
    assert not any("_Texture_" in c or "_Granularity_" in c or "Costes" in c for c in fast_df.columns)


def test_full_has_every_family_for_every_object_and_channel(full_df):
    assert full_df.attrs["errors"] == []
    cols = set(full_df.columns)
    for obj in ("Nuclei", "Cells"):
        for ch in CHANNELS:
            for fam in ("Intensity_MeanIntensity", "RadialDistribution_FracAtD_1of4",
                        "Texture_Contrast_3_00_256", "Granularity_1"):
                assert f"{obj}_{fam}_{ch}" in cols, (obj, fam, ch)
    for a, b in (("actin", "borders"), ("actin", "nuclei"), ("borders", "nuclei")):
        for name in ("Pearson", "Slope"):
            assert f"Cells_Correlation_{name}_{a}_{b}" in cols
        for name in ("Manders", "RWC", "Costes"):
            assert f"Cells_Correlation_{name}_{a}_{b}" in cols
            assert f"Cells_Correlation_{name}_{b}_{a}" in cols
    feats = [c for c in full_df.columns if c != "ObjectNumber"]
    assert all(full_df[c].dtype == np.float64 for c in feats)
    assert not np.isinf(full_df[feats].to_numpy()).any()


def test_failing_family_is_reported_not_silent(site, monkeypatch):
    import cp_measure.bulk

    real = cp_measure.bulk.get_core_measurements

    def broken(*a, **k):
        funcs = dict(real(*a, **k))

        def boom(masks, pixels):
            raise RuntimeError("degenerate")

        funcs["radial_distribution"] = boom
        return funcs

    monkeypatch.setattr(cp_measure.bulk, "get_core_measurements", broken)
    img, nuclei, cells = site
    df = cell_features(img, nuclei, cells, CHANNELS, fast=True)
    errs = df.attrs["errors"]
    assert len(errs) == 6  # 2 object sets x 3 channels
    assert all("radial_distribution" in e and "degenerate" in e for e in errs)
    assert not any("RadialDistribution" in c for c in df.columns)
    assert "Nuclei_Intensity_MeanIntensity_actin" in df.columns  # other families kept


def test_no_common_label_gives_empty_table(site):
    img, nuclei, cells = site
    df = cell_features(img, nuclei, np.zeros_like(cells), CHANNELS, fast=True)
    assert len(df) == 0 and list(df.columns) == ["ObjectNumber"]
    assert df.attrs["errors"]


def test_bad_shapes_raise(site):
    img, nuclei, cells = site
    with pytest.raises(ValueError):
        cell_features(img[:2], nuclei, cells, CHANNELS)
    with pytest.raises(ValueError):
        cell_features(img, nuclei[:64], cells, CHANNELS)
    with pytest.raises(TypeError):
        cell_features(img, nuclei.astype(float), cells, CHANNELS)


# ---------------------------------------------------------------------------
# site_profile
# ---------------------------------------------------------------------------


def test_site_profile_is_median_over_cells(full_df):
    prof = site_profile(full_df)
    assert "ObjectNumber" not in prof.index
    assert prof["Metadata_n_cells"] == 4
    feats = [c for c in full_df.columns if c != "ObjectNumber"]
    assert len(prof) == len(feats) + 1
    for c in feats:
        col = full_df[c].to_numpy()
        expected = np.nanmedian(col) if np.isfinite(col).any() else np.nan
        if np.isnan(col).any():
            np.testing.assert_equal(prof[c], expected)
        else:
            assert prof[c] == np.median(col), c
    assert prof["Nuclei_AreaShape_Area"] == np.median([_disk(*d).sum() for d in DISKS.values()])


# ---------------------------------------------------------------------------
# select_and_normalize
# ---------------------------------------------------------------------------

BASE = np.array([-1.5, -0.5, 0.5, 1.5])
EFFECT = 4.0


def make_profiles(seed: int = 0) -> pd.DataFrame:
    """2 plates x (4 HC + 4 SSc) sites with planted, noise, constant and duplicate features."""
    rng = np.random.default_rng(seed)
    rows = []
    for p, plate in enumerate(("P1", "P2")):
        gain, offset = (1.0, 0.0) if p == 0 else (3.0, 20.0)  # plate batch effect
        for cond, shift in (("HC", 0.0), ("SSc", EFFECT)):
            for i, b in enumerate(BASE):
                rows.append({
                    "Metadata_Plate": plate,
                    "Metadata_Well": f"{'A' if cond == 'HC' else 'B'}0{i + 1}",
                    "Metadata_Site": 1,
                    "Metadata_Condition": cond,
                    "Cells_Planted": gain * (b + shift) + offset,
                    **{f"Cells_Noise_{k}": rng.normal(5.0 * p, 1.0 + k) for k in range(5)},
                    "Cells_Const": 5.0,
                    "Cells_PlateConst": 1.0 if p == 0 else 7.0,
                    "Cells_AreaShape_Center_X": rng.uniform(0, 384),
                })
    df = pd.DataFrame(rows)
    df["Cells_Dup"] = 2.0 * df["Cells_Noise_0"] + 1.0
    return df


@pytest.fixture(scope="module")
def selected():
    return select_and_normalize(make_profiles())


def test_hc_standardized_per_plate(selected):
    out, kept = selected
    assert "Cells_Planted" in kept
    for plate, sub in out.groupby("Metadata_Plate"):
        hc = sub[sub["Metadata_Condition"] == "HC"]
        for f in kept:
            assert hc[f].mean() == pytest.approx(0.0, abs=1e-9), (plate, f)
            assert hc[f].std(ddof=0) == pytest.approx(1.0, rel=1e-9), (plate, f)


def test_plate_offset_removed_and_effect_kept(selected):
    out, _ = selected
    p1 = out[out["Metadata_Plate"] == "P1"]["Cells_Planted"].to_numpy()
    p2 = out[out["Metadata_Plate"] == "P2"]["Cells_Planted"].to_numpy()
    np.testing.assert_allclose(p1, p2, atol=1e-9)  # gain 3 and offset 20 are gone
    ssc = out[out["Metadata_Condition"] == "SSc"]["Cells_Planted"].mean()
    assert ssc == pytest.approx(EFFECT / BASE.std(), rel=1e-9)


def test_constant_duplicate_and_position_features_dropped(selected):
    out, kept = selected
    assert "Cells_Const" not in kept
    assert "Cells_PlateConst" not in kept
    assert "Cells_AreaShape_Center_X" not in kept
    assert ("Cells_Noise_0" in kept) != ("Cells_Dup" in kept)  # exactly one of the pair
    for k in range(1, 5):
        assert f"Cells_Noise_{k}" in kept
    assert out.attrs["dropped"]["blocklist"] == ["Cells_AreaShape_Center_X"]


def test_output_finite_and_shaped(selected):
    out, kept = selected
    assert list(out.columns) == ["Metadata_Plate", "Metadata_Well", "Metadata_Site",
                                 "Metadata_Condition"] + kept
    assert len(out) == 16
    vals = out[kept].to_numpy()
    assert vals.dtype == np.float64 and np.isfinite(vals).all()
    assert out.attrs["notes"] == []


def test_row_order_and_metadata_preserved():
    df = make_profiles().sample(frac=1.0, random_state=1).reset_index(drop=True)
    out, _ = select_and_normalize(df)
    pd.testing.assert_frame_equal(out[["Metadata_Plate", "Metadata_Well", "Metadata_Condition"]],
                                  df[["Metadata_Plate", "Metadata_Well", "Metadata_Condition"]])


def test_plate_without_enough_hc_falls_back_to_all_sites():
    df = make_profiles()
    # plate P2 keeps a single HC site
    drop = df.index[(df["Metadata_Plate"] == "P2") & (df["Metadata_Condition"] == "HC")][1:]
    df = df.drop(index=drop).reset_index(drop=True)
    out, kept = select_and_normalize(df)
    assert any("P2" in n and "all" in n for n in out.attrs["notes"])
    p2 = out[out["Metadata_Plate"] == "P2"]
    assert p2["Cells_Planted"].mean() == pytest.approx(0.0, abs=1e-9)  # all-site reference
    assert np.isfinite(out[kept].to_numpy()).all()


def test_failing_operation_is_skipped_and_noted(monkeypatch):
    import pycytominer

    real = pycytominer.feature_select

    def flaky(*a, operation, **k):
        if operation == "correlation_threshold":
            raise ValueError("too few samples")
        return real(*a, operation=operation, **k)

    monkeypatch.setattr(pycytominer, "feature_select", flaky)
    out, kept = select_and_normalize(make_profiles())
    assert any("correlation_threshold" in n for n in out.attrs["notes"])
    assert "Cells_Noise_0" in kept and "Cells_Dup" in kept  # nothing removed by it
    assert "Cells_Const" not in kept  # the other operations still ran


def test_position_blocklist():
    feats = ["Cells_Location_Center_X", "Nuclei_AreaShape_Center_Y", "Cells_AreaShape_Area",
             "Cells_Intensity_MeanIntensity_actin", "Nuclei_Location_MaxIntensity_X_actin"]
    assert profiles.position_blocklist(feats) == [
        "Cells_Location_Center_X", "Nuclei_AreaShape_Center_Y", "Nuclei_Location_MaxIntensity_X_actin"]


def test_plates_profiled_with_different_feature_sets_are_refused():
    from ssc_assets.core.analysis.profiles import feature_set_mismatch

    def plate(name, cols):
        return pd.DataFrame({"Metadata_Plate": name, "Metadata_Well": ["A01", "A02"],
                             **{c: [1.0, 2.0] for c in cols}})

    curated = [f"Cells_Intensity_Mean_{i}" for i in range(10)]
    cp = [f"Cells_Texture_Contrast_{i}" for i in range(10)] + curated[:2]
    same = pd.concat([plate("P1", curated), plate("P2", curated)], ignore_index=True)
    assert feature_set_mismatch(same) is None
    mixed = pd.concat([plate("P1", curated), plate("P2", cp)], ignore_index=True)
    msg = feature_set_mismatch(mixed)
    assert msg and "P1 (10 features)" in msg and "P2 (12 features)" in msg and "re-materialize" in msg
    # a plate that lost a few features (all-NaN there) is still the same set
    few = pd.concat([plate("P1", curated), plate("P2", curated).assign(**{curated[0]: np.nan})], ignore_index=True)
    assert feature_set_mismatch(few) is None
