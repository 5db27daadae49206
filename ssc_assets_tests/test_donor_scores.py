"""Donor-level analysis (core/analysis/donor_scores.py) against planted, independent truths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ssc_assets.core.analysis import donor_scores as DS


def planted_wells(n_hc=4, n_ssc=4, n_sschl=3, wells_per_donor=4, plates=2, shift=(0.0, 2.0, 4.0), noise=0.5,
                  plate_offset=3.0, n_feat=6, seed=0, shuffle=False):
    """Wells whose feature 0 grows with the group (HC < SSC < SSCHL) plus a per-plate offset on
    every feature; other features are noise."""
    rng = np.random.default_rng(seed)
    rows = []
    donors = [(f"HC{i}", "HC", "HC", shift[0]) for i in range(n_hc)] + \
             [(f"SSC{i}", "SSc", "SSC", shift[1]) for i in range(n_ssc)] + \
             [(f"SSCHL{i}", "SSc", "SSCHL", shift[2]) for i in range(n_sschl)]
    for d, cond, grp, s in donors:
        for k in range(wells_per_donor):
            p = k % plates
            x = rng.normal(0, noise, n_feat) + plate_offset * p
            x[0] += s
            rows.append({"Metadata_Plate": f"P{p}", "Metadata_Well": f"{d}-{k}", "Metadata_Donor": d,
                         "Metadata_Condition": cond, "Metadata_Group": grp, "Metadata_Method": "m", "Metadata_n_sites": 4, "n_sites": 4,
                         **{f"f{j:04d}": x[j] for j in range(n_feat)}})
    df = pd.DataFrame(rows)
    if shuffle:  # conditions shuffled between donors: no signal
        donor_cond = df.drop_duplicates("Metadata_Donor")[["Metadata_Donor", "Metadata_Condition"]]
        perm = dict(zip(donor_cond["Metadata_Donor"], rng.permutation(donor_cond["Metadata_Condition"].to_numpy())))
        df["Metadata_Condition"] = df["Metadata_Donor"].map(perm)
        df[[f"f{j:04d}" for j in range(n_feat)]] = rng.normal(0, 1, (len(df), n_feat))
    return df


def test_features_skip_bookkeeping():
    w = planted_wells()
    assert DS.wells_features(w) == [f"f{j:04d}" for j in range(6)]


def test_normalisation_gives_hc_median_zero_per_plate():
    w = planted_wells()
    n = DS.normalize_wells(w)
    feats = DS.wells_features(w)
    assert len(n) == len(w) and (n["Metadata_Well"].to_numpy() == w["Metadata_Well"].to_numpy()).all()
    for _, part in n[n["Metadata_Condition"] == "HC"].groupby("Metadata_Plate"):
        assert np.allclose(part[feats].median().to_numpy(), 0.0, atol=1e-9)
    # the plate offset (3 units = ~6 noise SDs on every feature) is gone: SSc wells of both plates agree
    ssc = n[n["Metadata_Group"] != "HC"]
    gap = ssc.groupby("Metadata_Plate")["f0001"].median()
    assert abs(gap.iloc[0] - gap.iloc[1]) < 1.5
    raw = w[w["Metadata_Group"] != "HC"].groupby("Metadata_Plate")["f0001"].median()
    assert abs(raw.iloc[0] - raw.iloc[1]) / 0.5 > 4.0


def test_normalisation_by_acquisition_group_and_constant_feature():
    w = planted_wells()
    w["Metadata_AcquisitionGroup"] = np.where(w.index % 2 == 0, "A", "B")
    w["f0005"] = 7.0  # constant: centred, not divided by a zero MAD
    n = DS.normalize_wells(w)
    assert np.isfinite(n[DS.wells_features(w)].to_numpy()).all()
    assert np.allclose(n["f0005"], 0.0)
    for _, part in n[n["Metadata_Condition"] == "HC"].groupby(["Metadata_Plate", "Metadata_AcquisitionGroup"]):
        assert np.allclose(part["f0000"].median(), 0.0, atol=1e-9)


def test_vmeasure_sees_the_plate_effect():
    w = planted_wells(plate_offset=6.0, shift=(0.0, 0.2, 0.4))
    vm = DS.batch_vmeasure(w).set_index("factor")["v_measure"]
    assert vm["Metadata_Plate"] > 0.9
    assert vm["Metadata_Condition"] < 0.3
    vm2 = DS.batch_vmeasure(DS.normalize_wells(w)).set_index("factor")["v_measure"]
    assert vm2["Metadata_Plate"] < 0.3


def test_lodo_separable_and_shuffled():
    sep = DS.lodo_accuracy(DS.normalize_wells(planted_wells(noise=0.25)))
    assert sep["accuracy"] >= 0.95 and sep["donor_accuracy"] == 1.0
    assert sep["chance"] == pytest.approx(28 / 44)
    accs = [DS.lodo_accuracy(planted_wells(shuffle=True, seed=s))["balanced_accuracy"] for s in range(6)]
    assert abs(np.mean(accs) - 0.5) < 0.15


def test_permutation_pvalue_small_vs_large():
    sep = DS.permutation_pvalue(DS.normalize_wells(planted_wells()), n_permutations=60, seed=1)
    assert sep["p_value"] <= 0.05
    null = DS.permutation_pvalue(planted_wells(shuffle=True, seed=3), n_permutations=60, seed=1)
    assert null["p_value"] > 0.1


def test_permutation_pvalue_same_in_parallel_and_lodo_equals_the_sklearn_pipeline():
    w = DS.normalize_wells(planted_wells(noise=1.0))
    one = DS.permutation_pvalue(w, n_permutations=40, seed=2, n_jobs=1)
    two = DS.permutation_pvalue(w, n_permutations=40, seed=2, n_jobs=2)
    assert one == two
    raw = planted_wells(noise=1.0)
    assert (DS.permutation_pvalue(raw, n_permutations=24, seed=2, n_jobs=1, in_fold=True)
            == DS.permutation_pvalue(raw, n_permutations=24, seed=2, n_jobs=-1, in_fold=True))
    # the numpy-scaled LODO is the StandardScaler + SVC pipeline of _svm, fold by fold
    X, y, donors = DS._xy(w, None, DS.CONTROL)
    ref = np.full(len(y), np.nan)
    for d in np.unique(donors):
        te = donors == d
        ref[te] = DS._svm(1.0).fit(X[~te], y[~te]).decision_function(X[te])
    np.testing.assert_allclose(DS._lodo(X, y, donors, 1.0), ref, rtol=1e-9, atol=1e-9)


def test_donor_scores_rank_planted_donors():
    w = DS.normalize_wells(planted_wells(noise=0.3))
    d = DS.donor_scores(w, n_boot=300)
    assert list(d.columns) == DS.DONOR_COLUMNS and len(d) == 11
    # the three severe donors first, the four HC last
    assert set(d["Metadata_Group"].iloc[:3]) == {"SSCHL"}
    assert set(d["Metadata_Group"].iloc[-4:]) == {"HC"}
    assert d["correct"].all()
    assert (d["score_low"] <= d["score"]).all() and (d["score"] <= d["score_high"]).all()
    rho = DS.severity_spearman(d)
    assert rho["rho"] > 0.8 and rho["p_value"] < 0.01 and rho["n_donors"] == 11


def test_donor_scores_from_given_score_column():
    w = planted_wells()
    w["Metadata_Score"] = w["Metadata_Group"].map({"HC": -1.0, "SSC": 0.5, "SSCHL": 2.0})
    d = DS.donor_scores(w, score_col="Metadata_Score", n_boot=50)
    assert (d.loc[d["Metadata_Group"] == "SSCHL", "score"] == 2.0).all()
    assert (d.loc[d["Metadata_Group"] == "HC", "rank"] == 8).all()  # ties share the lowest rank
    assert d.loc[d["Metadata_Group"] == "HC", "score_high"].max() == -1.0


def test_donor_report_tidy():
    tables = {"good": planted_wells(noise=0.25), "noise": planted_wells(shuffle=True, seed=5)}
    donors, summary = DS.donor_report(tables, n_permutations=30, n_boot=100)
    assert list(summary.columns) == DS.SUMMARY_COLUMNS
    assert len(donors) == 22 and set(donors["Metadata_Method"]) == {"good", "noise"}
    s = summary.set_index("Metadata_Method")
    assert s.loc["good", "lodo_accuracy"] > 0.9 and s.loc["good", "grouped_accuracy"] > 0.9
    assert s.loc["good", "rho_group"] > 0.7
    assert s.loc["good", "permutation_p"] < s.loc["noise", "permutation_p"]


def test_out_of_fold_score_method_is_scored_by_its_score_not_an_svm():
    """A method with an out-of-fold score: accuracies are the score's own (hand-counted), no
    permutation p-value (its fold models saw the true labels)."""
    w = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": [f"W{i}" for i in range(6)],
                      "Metadata_Donor": ["H1", "H1", "H2", "S1", "S1", "S2"],
                      "Metadata_Condition": ["HC", "HC", "HC", "SSc", "SSc", "SSc"],
                      "Metadata_Group": ["HC", "HC", "HC", "SSC", "SSC", "SSCHL"],
                      "oof": [-1.0, 0.5, -2.0, 1.0, -0.2, 3.0], "f0": [0.0, 1, 2, 3, 4, 5]})
    acc = DS.out_of_fold_accuracy(w, "oof")
    assert acc["accuracy"] == pytest.approx(4 / 6)  # W1 (HC, +0.5) and W4 (SSc, -0.2) wrong
    assert acc["balanced_accuracy"] == pytest.approx(4 / 6)
    assert acc["donor_accuracy"] == pytest.approx(1.0)  # donor means: H1 -0.25, H2 -2, S1 0.4, S2 3
    assert acc["chance"] == pytest.approx(0.5) and acc["n_donors"] == 4
    _, summary = DS.donor_report({"cells": w}, normalize=False, score_cols={"cells": "oof"}, n_permutations=20, n_boot=50)
    row = summary.iloc[0]
    assert row["lodo_accuracy"] == pytest.approx(4 / 6) and row["grouped_accuracy"] == pytest.approx(4 / 6)
    assert np.isnan(row["permutation_p"]) and row["n_permutations"] == 0


def test_fold_norm_with_every_control_well_equals_normalize_wells():
    # reference implementation: pycytominer's mad_robustize per plate (normalize_wells)
    w = planted_wells(noise=0.7, seed=4)
    feats = DS.wells_features(w)
    ref = DS.normalize_wells(w, compressed=False)[feats].to_numpy()
    X = w[feats].to_numpy(np.float64)
    control = (w["Metadata_Condition"] == "HC").to_numpy()
    mine = DS.FoldNorm.of(w, compressed=False).apply(X, control, np.ones(len(w), bool))
    np.testing.assert_allclose(mine, ref, rtol=1e-6, atol=1e-9)
    # compressed (the default of both): asinh of the same values
    np.testing.assert_allclose(DS.normalize_wells(w)[feats].to_numpy(), np.arcsinh(ref), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(DS.FoldNorm.of(w).apply(X, control, np.ones(len(w), bool)), np.arcsinh(ref),
                               rtol=1e-6, atol=1e-9)


def test_lodo_in_fold_never_puts_the_held_out_donor_in_its_reference():
    w = planted_wells(noise=0.7, seed=5)
    X, y, donors = DS._xy(w, None, DS.CONTROL)
    seen = []

    class Spy(DS.FoldNorm):
        def apply(self, X, reference, train, cache=None):
            seen.append((reference.copy(), train.copy()))
            return super().apply(X, reference, train, cache)

    class NoCache(DS.FoldNorm):
        def apply(self, X, reference, train, cache=None):
            return super().apply(X, reference, train, None)

    base = DS.FoldNorm.of(w)
    dec = DS._lodo(X, y, donors, 1.0, Spy(base.batches))
    # the per-reference cache of the folds changes nothing
    np.testing.assert_array_equal(dec, DS._lodo(X, y, donors, 1.0, NoCache(base.batches)))
    assert len(seen) == len(np.unique(donors)) and np.isfinite(dec).all()
    for (reference, train), d in zip(seen, np.unique(donors)):
        held = donors == d
        assert not (reference & held).any() and not (train & held).any()
        assert (reference == ((y == 0) & ~held)).all()  # exactly the other donors' HC wells
    # in-fold normalisation removes the per-plate offset as the global one does: same calls
    glob = DS.lodo_accuracy(DS.normalize_wells(w))
    fold = DS.lodo_accuracy(w, in_fold=True)
    assert fold["accuracy"] >= 0.9 and abs(fold["accuracy"] - glob["accuracy"]) <= 0.1


def test_fold_norm_missing_values_become_the_reference_centre_not_outliers():
    w = planted_wells(noise=0.5, plate_offset=10.0, seed=6)
    rng = np.random.default_rng(0)
    on_p1 = (w["Metadata_Plate"] == "P1").to_numpy()
    holes = on_p1 & (rng.random(len(w)) < 0.3)
    w.loc[holes, "f0001"] = np.nan
    X, y, donors = DS._xy(w, None, DS.CONTROL, keep_nan=True)
    Z = DS.FoldNorm.of(w).apply(X, y == 0, np.ones(len(w), bool))
    assert np.isfinite(Z).all()
    assert (Z[holes, 1] == 0.0).all()  # the reference centre, not (global median - batch median) / MAD
    assert DS.lodo_accuracy(w, in_fold=True)["accuracy"] >= 0.9


def test_fold_norm_batch_of_only_the_held_out_donor_uses_the_pooled_reference():
    w = planted_wells(noise=0.5, plate_offset=0.0, seed=7)
    w.loc[w["Metadata_Donor"] == "HC0", "Metadata_Plate"] = "P9"  # a plate holding one donor only
    w.loc[w["Metadata_Donor"] == "HC0", "f0002"] = 100.0
    X, y, donors = DS._xy(w, None, DS.CONTROL, keep_nan=True)
    held = donors == "HC0"
    Z = DS.FoldNorm.of(w, compressed=False).apply(X, (y == 0) & ~held, ~held)
    # normalised against its own wells it would be centred at 0; against the others' HC wells it is far out
    assert (Z[held, 2] > 50).all()


def test_recentre_scores_removes_a_batch_shift_and_no_donor_sets_its_own_threshold():
    rows = []
    for b, shift in (("A", 0.0), ("B", -5.0)):  # batch B (a dim objective): every score 5 lower
        for d, cond, s in (("H1", "HC", -1.0), ("H2", "HC", -1.2), ("S1", "SSc", 1.0), ("S2", "SSc", 1.4)):
            for k in range(2):
                rows.append({"Metadata_Plate": "P", "Metadata_AcquisitionGroup": b, "Metadata_Well": f"{b}{d}{k}",
                             "Metadata_Donor": d, "Metadata_Condition": cond, "Metadata_Group": cond.upper(),
                             "score": s + shift + 0.1 * k})
    w = pd.DataFrame(rows)
    raw_acc = DS.out_of_fold_accuracy(w, "score")["accuracy"]
    c = DS.recentre_scores(w, "score")
    assert raw_acc == 0.75 and ((c > 0) == (w["Metadata_Condition"] == "SSc")).all()
    # hand value: S1 in batch B, k=0: -4.0 minus the midpoint of the other donors' medians in B
    # (HC: H1, H2 -> median of -6.0, -5.9, -6.2, -6.1 = -6.05; SSc: S2 -> -3.6, -3.5 -> -3.55)
    i = w.index[(w["Metadata_Well"] == "BS10")][0]
    assert c[i] == pytest.approx(-4.0 - (-6.05 - 3.55) / 2)
    # a donor's own scores never move its threshold: shifting S1 moves S1's values by exactly that
    w2 = w.copy()
    w2.loc[w2["Metadata_Donor"] == "S1", "score"] += 3.0
    c2 = DS.recentre_scores(w2, "score")
    s1 = (w["Metadata_Donor"] == "S1").to_numpy()
    np.testing.assert_allclose(c2[s1] - c[s1], 3.0)


def test_lodo_keeps_mild_donors_apart_when_severe_donors_sit_far_out():
    """Severe donors hundreds of HC MADs out (as a whole-site classifier's ReLU features were on
    a held-out study) must not squeeze HC and mild SSc wells together: the normalised values are
    compressed (asinh) before any scaling. Without it the linear SVM calls mild SSc wells HC."""
    w = planted_wells(n_hc=5, n_ssc=6, n_sschl=3, shift=(0.0, 3.0, 800.0), noise=0.5, plates=1, n_feat=4, seed=4)
    ssc = (w["Metadata_Group"] == "SSC").to_numpy()
    for in_fold in (True, False):
        src = w if in_fold else DS.normalize_wells(w)
        lodo = DS.lodo_accuracy(src, in_fold=in_fold)
        assert lodo["accuracy"] >= 0.9 and (lodo["decision"][ssc] > 0).mean() >= 0.9
    plain = DS.lodo_accuracy(DS.normalize_wells(w, compressed=False))
    assert (plain["decision"][ssc] > 0).mean() < 0.5  # the failure this guards against
