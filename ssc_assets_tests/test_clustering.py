"""Tests for ssc_assets.core.analysis.clustering: planted structure, hand-computed metrics, grouped CV, mAP."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ssc_assets.core.analysis import clustering as cl
from ssc_assets.core.analysis import comparison as cmp
from ssc_assets.core.plots import clustering as pc

PNG_MAGIC = b"\x89PNG"


def make_wells(
    n_donors: int = 12,
    plates: tuple[str, ...] = ("P1", "P2", "P3"),
    n_feat: int = 20,
    donor_scale: float = 10.0,
    noise: float = 0.3,
    condition_shift: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """One well per donor and plate; donor centres ~ N(0, donor_scale), wells = centre + noise.

    Half the donors are SSc (groups alternate SSC/SSCHL), half HC; SSc centres are shifted by
    ``condition_shift`` in every feature.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_donors):
        ssc = d % 2 == 1
        centre = rng.normal(0, donor_scale, n_feat) + (condition_shift if ssc else 0.0)
        for p, plate in enumerate(plates):
            feats = centre + rng.normal(0, noise, n_feat)
            rows.append({
                "Metadata_Plate": plate,
                "Metadata_Well": f"{'ABCDEFGH'[p]}{d + 1:02d}",
                "Metadata_Donor": f"D{d:02d}",
                "Metadata_Condition": "SSc" if ssc else "HC",
                "Metadata_Group": ("SSC" if d % 4 == 1 else "SSCHL") if ssc else "HC",
                "Metadata_Method": "test",
                "Metadata_n_sites": 4,
                **{f"f{j}": v for j, v in enumerate(feats)},
            })
    return pd.DataFrame(rows)


def planted_two_clusters(n: int = 20, n_feat: int = 10, seed: int = 0):
    """Two well-separated blobs (means -5 / +5) aligned with condition."""
    rng = np.random.default_rng(seed)
    cond = np.array(["HC"] * (n // 2) + ["SSc"] * (n - n // 2))
    X = rng.normal(0, 1, (n, n_feat)) + np.where(cond == "SSc", 5.0, -5.0)[:, None]
    return X, cond


# ---------------------------------------------------------------- features


def test_well_features_skip_metadata_and_all_nan():
    df = make_wells(n_donors=2, plates=("P1",), n_feat=3)
    df["f1"] = np.nan
    assert cl.well_features(df) == ["f0", "f2"]


# ---------------------------------------------------------------- planted clusters


def test_planted_clusters_recovered_by_kmeans_and_hierarchical():
    X, cond = planted_two_clusters()
    km, pcs = cl.kmeans_on_pca(X, seed=0)
    assert km.shape == (20,) and pcs.shape == (20, 2)
    m = cl.cluster_metrics(km, cond, pcs)
    assert m["homogeneity"] > 0.99 and m["completeness"] > 0.99
    assert m["cluster_sizes"] == [10, 10]

    hl = cl.hierarchical_labels(cl.hierarchical_cosine(X), 2)
    mh = cl.cluster_metrics(hl, cond, pcs)
    assert mh["homogeneity"] > 0.99 and mh["completeness"] > 0.99
    assert set(hl.tolist()) == {0, 1}


def test_kmeans_single_feature():
    X = np.r_[np.zeros(5), np.full(5, 10.0)][:, None] + np.linspace(0, 0.1, 10)[:, None]
    km, pcs = cl.kmeans_on_pca(X, seed=0)
    assert pcs.shape == (10, 1)
    assert len(set(km[:5])) == 1 and len(set(km[5:])) == 1 and km[0] != km[-1]


def test_same_seed_same_clusters():
    X = np.random.default_rng(3).normal(size=(40, 8))  # no structure: the seed matters
    a, pa = cl.kmeans_on_pca(X, seed=7)
    b, pb = cl.kmeans_on_pca(X, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(pa, pb)


# ---------------------------------------------------------------- hand-computed metrics


def test_metrics_hand_computed_external():
    cond = np.array(["HC", "HC", "SSc", "SSc"])
    X = np.array([[0.0], [1.0], [10.0], [11.0]])
    m = cl.cluster_metrics(np.array([0, 0, 1, 1]), cond, X)
    assert m["homogeneity"] == pytest.approx(1.0)
    assert m["completeness"] == pytest.approx(1.0)
    assert m["v_measure"] == pytest.approx(1.0)

    # one cluster: H(C|K) = H(C) -> homogeneity 0; H(K) = 0 -> completeness 1 by convention
    m1 = cl.cluster_metrics(np.array([0, 0, 0, 0]), cond, X)
    assert m1["homogeneity"] == pytest.approx(0.0)
    assert m1["completeness"] == pytest.approx(1.0)
    assert m1["cluster_sizes"] == [4]
    assert np.isnan(m1["silhouette"]) and np.isnan(m1["davies_bouldin"])

    # clusters {HC, SSc} / {HC, SSc}: independent of the condition -> homogeneity 0
    m2 = cl.cluster_metrics(np.array([0, 1, 0, 1]), cond, X)
    assert m2["homogeneity"] == pytest.approx(0.0, abs=1e-12)


def test_metrics_hand_computed_internal():
    # points 0, 1 | 10, 11 on a line
    X = np.array([[0.0], [1.0], [10.0], [11.0]])
    labels = np.array([0, 0, 1, 1])
    # s(i) = (b - a) / max(a, b); a = 1 for every point
    # x=0: b = (10 + 11) / 2 = 10.5; x=1: b = (9 + 10) / 2 = 9.5; symmetric for 10 and 11
    s = [(10.5 - 1) / 10.5, (9.5 - 1) / 9.5, (9.5 - 1) / 9.5, (10.5 - 1) / 10.5]
    # Davies-Bouldin: scatters 0.5 and 0.5 (mean distance to centroid), centroid gap 10
    db = (0.5 + 0.5) / 10.0
    m = cl.cluster_metrics(labels, np.array(["HC", "HC", "SSc", "SSc"]), X)
    assert m["silhouette"] == pytest.approx(np.mean(s))
    assert m["davies_bouldin"] == pytest.approx(db)
    assert m["cluster_sizes"] == [2, 2]


# ---------------------------------------------------------------- SVM


def test_grouped_cv_keeps_donors_apart():
    df = make_wells(n_donors=14, n_feat=6, condition_shift=3.0, seed=1)
    X = df[cl.well_features(df)].to_numpy()
    y = df["Metadata_Condition"].to_numpy()
    donors = df["Metadata_Donor"].to_numpy()
    res = cl.svm_cv_accuracy(X, y, groups=donors, n_splits=5, seed=0)
    assert res["n_splits"] == 5 and len(res["folds"]) == 5
    tested = set()
    for train_g, test_g in res["folds"]:
        assert not (train_g & test_g)
        assert train_g | test_g == set(donors)
        tested |= test_g
    assert tested == set(donors)  # every donor is tested exactly once overall
    assert 0.0 <= res["accuracy"] <= 1.0


def test_grouped_cv_reduces_splits_to_groups_per_class():
    df = make_wells(n_donors=6, n_feat=4, seed=2)  # 3 HC and 3 SSc donors
    X = df[cl.well_features(df)].to_numpy()
    res = cl.svm_cv_accuracy(X, df["Metadata_Condition"], groups=df["Metadata_Donor"], n_splits=5)
    assert res["n_splits"] == 3
    for train_g, test_g in res["folds"]:
        assert not (train_g & test_g)


def test_svm_separable_is_accurate_ungrouped():
    X, cond = planted_two_clusters(n=30)
    res = cl.svm_cv_accuracy(X, cond, n_splits=5, seed=0)
    assert res["accuracy"] == pytest.approx(1.0)
    assert res["n_splits"] == 5
    # ungrouped folds are row positions covering every row once as test
    assert sorted(i for _, te in res["folds"] for i in te) == list(range(30))


# ---------------------------------------------------------------- mAP


def test_donor_replicate_map_planted_is_high(tmp_path):
    df = make_wells(n_donors=12, noise=0.3, seed=0)
    res = cl.donor_replicate_map(df, null_size=1000, seed=0, cache_dir=tmp_path)
    assert res["note"] == ""
    assert res["n_queries"] == len(df) and res["n_groups"] == 12
    assert res["mean_average_precision"] > 0.9
    assert res["p_value"] < 0.01
    assert res["fraction_significant"] > 0.9
    assert {"p_value", "corrected_p_value", "below_corrected_p"} <= set(res["per_group"].columns)


def test_donor_replicate_map_shuffled_is_chance(tmp_path):
    df = make_wells(n_donors=12, noise=0.3, seed=0)
    feats = cl.well_features(df)
    rng = np.random.default_rng(5)
    df[feats] = rng.normal(size=(len(df), len(feats)))  # structure destroyed
    res = cl.donor_replicate_map(df, null_size=1000, seed=0, cache_dir=tmp_path)
    assert res["mean_average_precision"] < 0.5
    assert res["p_value"] > 0.05
    assert res["fraction_significant"] < 0.5


def test_donor_replicate_map_shuffled_labels_is_chance(tmp_path):
    df = make_wells(n_donors=12, noise=0.3, seed=0)
    rng = np.random.default_rng(11)
    df["Metadata_Donor"] = rng.permutation(df["Metadata_Donor"].to_numpy())
    res = cl.donor_replicate_map(df, null_size=1000, seed=0, cache_dir=tmp_path)
    assert res["mean_average_precision"] < 0.5
    assert res["p_value"] > 0.05


def test_map_one_plate_returns_nan_with_note(tmp_path):
    df = make_wells(n_donors=6, plates=("P1",), seed=0)
    res = cl.donor_replicate_map(df, null_size=100, seed=0, cache_dir=tmp_path)
    assert np.isnan(res["mean_average_precision"]) and np.isnan(res["p_value"])
    assert res["note"]


def test_condition_map_per_condition(tmp_path):
    df = make_wells(n_donors=12, donor_scale=1.0, condition_shift=6.0, seed=4)
    res = cl.condition_map(df, null_size=1000, seed=0, cache_dir=tmp_path)
    assert set(res["group_map"]) == {"HC", "SSc"}
    assert res["mean_average_precision"] > 0.9
    assert all(v > 0.9 for v in res["group_map"].values())


# ---------------------------------------------------------------- figures, end to end, thesis table


def test_figures_are_png():
    X, cond = planted_two_clusters()
    km, pcs = cl.kmeans_on_pca(X)
    groups = ["HC" if c == "HC" else ("SSC" if i % 2 else "SSCHL") for i, c in enumerate(cond)]
    donors = [f"D{i}" for i in range(len(cond))]
    assert pc.dendrogram_png(cl.hierarchical_cosine(X), donors, groups, "t").startswith(PNG_MAGIC)
    assert pc.pca_scatter_png(pcs, groups, km, "t").startswith(PNG_MAGIC)
    assert pc.pca_scatter_png(pcs[:, :1], groups, km).startswith(PNG_MAGIC)


def test_dendrogram_width_does_not_grow_with_the_wells():
    import struct

    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 78, 300):
        X = rng.normal(size=(n, 6))
        png = pc.dendrogram_png(cl.hierarchical_cosine(X), [f"SSC{i:03d}" for i in range(n)],
                                ["HC", "SSC", "SSCHL"] * (n // 3) + ["HC"] * (n % 3))
        widths.append(struct.unpack(">II", png[16:24])[0])  # PNG IHDR: width, height
    assert max(widths) <= 1110 and max(widths) - min(widths) <= 60, widths  # the Dagster dialog shows ~1120 px


def test_cluster_method_end_to_end(tmp_path):
    df = make_wells(n_donors=10, n_feat=8, condition_shift=4.0, seed=6)
    df["f_empty"] = np.nan  # all-NaN column is dropped
    df.loc[0, "f0"] = np.nan  # row with NaN is dropped
    res = cl.cluster_method(df, seed=0, null_size=200, cache_dir=tmp_path)
    assert res["n_wells"] == len(df) - 1 and res["n_features"] == 8
    for k in ["kmeans_cluster_sizes", "kmeans_homogeneity", "kmeans_silhouette", "hier_v_measure",
              "hier_davies_bouldin", "svm_accuracy_ungrouped", "svm_accuracy_donor_grouped",
              "map_donor_replicate", "map_donor_replicate_p", "map_condition", "map_condition_p",
              "map_condition_HC", "map_condition_SSc"]:
        assert k in res, k
    assert sum(res["kmeans_cluster_sizes"]) == res["n_wells"]
    assert res["map_donor_replicate"] > 0.9
    assert set(res["figures"]) == {"dendrogram", "pca_kmeans", "pca_hierarchical"}
    assert all(v.startswith(PNG_MAGIC) for v in res["figures"].values())
    a = res["assignments"]
    assert len(a) == res["n_wells"]
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_Donor", "kmeans_cluster", "hier_cluster",
            "pc1", "pc2"} <= set(a.columns)


def test_comparison_table_thesis_columns():
    ours = {"kmeans_cluster_sizes": [70, 33], "kmeans_homogeneity": 0.1, "svm_accuracy_ungrouped": 0.7,
            "map_condition": 0.55, "n_wells": 103}
    t = cmp.comparison_table({m: dict(ours) for m in ["pca", "autoencoder", "classifier", "densenet", "profiles"]})
    assert list(t.index) == ["pca", "autoencoder", "classifier", "densenet", "profiles"]
    assert t.at["pca", "kmeans_cluster_sizes"] == "33/70"
    assert t.at["pca", "thesis_cluster_sizes"] == "37/66"
    assert t.at["pca", "thesis_davies_bouldin"] == pytest.approx(5.49)
    assert t.at["pca", "thesis_svm_accuracy"] == pytest.approx(0.603)
    assert t.at["autoencoder", "thesis_completeness"] == pytest.approx(0.0055)
    assert t.at["autoencoder", "thesis_svm_accuracy"] == pytest.approx(0.635)
    assert t.at["classifier", "thesis_v_measure"] == pytest.approx(0.2309)
    assert t.at["classifier", "thesis_silhouette"] == pytest.approx(0.738)
    assert t.at["densenet", "thesis_homogeneity"] == pytest.approx(0.2499)
    assert t.at["densenet", "thesis_svm_accuracy"] == pytest.approx(0.735)
    assert t.at["densenet", "thesis_method"] == "DenseNet classifier"
    thesis_cols = [c for c in t.columns if c.startswith("thesis_")]
    assert len(thesis_cols) >= 8
    assert t.loc["profiles", thesis_cols].isna().all()
    # ours kept separate from the thesis numbers
    assert t.at["pca", "kmeans_homogeneity"] == pytest.approx(0.1)
    assert np.isnan(t.at["pca", "map_donor_replicate"])
    assert "Table 6.1" in t.at["pca", "thesis_source"]
    assert cmp.THESIS_TABLE_6_1.attrs["source"] == cmp.THESIS_SOURCE
