import pandas as pd
import pytest

from ssc_assets.core.learn.splits import grouped_folds, grouped_split


def sites(n_hc=5, n_ssc=10, wells_per_donor=3, sites_per_well=4, plates=2):
    rows = []
    for p in range(plates):
        w = 0
        for d in range(n_hc + n_ssc):
            cond = "HC" if d < n_hc else "SSc"
            for _ in range(wells_per_donor):
                w += 1
                for s in range(sites_per_well):
                    rows.append(dict(Metadata_Plate=f"P{p}", Metadata_Well=f"W{w}", Metadata_Site=s,
                                     Metadata_Donor=f"D{d}", Metadata_Condition=cond))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_donor_in_two_splits_and_stratified(seed):
    t = sites()
    split = grouped_split(t, seed=seed)
    per_donor = t.assign(split=split).groupby("Metadata_Donor")["split"].nunique()
    assert (per_donor == 1).all()
    donors = t.assign(split=split).drop_duplicates("Metadata_Donor")
    counts = donors.groupby(["Metadata_Condition", "split"]).size().unstack(fill_value=0)
    assert (counts.loc["HC", "train"], counts.loc["HC", "val"], counts.loc["HC", "test"]) == (3, 1, 1)
    assert counts.loc["SSc", "train"] == 6 and counts.loc["SSc", "val"] == 2 and counts.loc["SSc", "test"] == 2


def test_well_grouping_leaks_donors():
    t = sites()
    split = grouped_split(t, group_by="well", seed=0)
    per_donor = t.assign(split=split).groupby("Metadata_Donor")["split"].nunique()
    assert (per_donor > 1).any()  # the thesis' split: a donor's wells land in several splits
    per_well = t.assign(split=split).groupby(["Metadata_Plate", "Metadata_Well"])["split"].nunique()
    assert (per_well == 1).all()


def test_same_seed_same_split():
    t = sites()
    assert grouped_split(t, seed=4).equals(grouped_split(t, seed=4))


def test_grouped_folds_never_share_a_donor():
    t = sites()
    for train, test in grouped_folds(t["Metadata_Donor"], t["Metadata_Condition"], 5):
        assert not set(t.Metadata_Donor.iloc[train]) & set(t.Metadata_Donor.iloc[test])
