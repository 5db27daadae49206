"""Site tables for training: labels, masks, splits, pyramid level choice."""

import pandas as pd

from ssc_assets.core.learn.fit import assign_splits, pick_level, split_summary, training_sites
from ssc_assets.core.learn.inputs import PlateImages, PlateMasks


def test_pick_level_keeps_train_and_test_scale_close():
    assert pick_level(1536, 512) == 1  # 768 px >= 1.4 x 512
    assert pick_level(1536, 256) == 2  # 384 px
    assert pick_level(384, 128) == 1
    assert pick_level(100, 512) == 0
    assert pick_level(10_000, 16, n_levels=3) == 2  # never past the last level


def _raw(plate, wells):
    rows = []
    for i, w in enumerate(wells):
        rows.append({"Metadata_Plate": plate, "Metadata_Well": w, "Metadata_Donor": f"D{i % 6}",
                     "Metadata_Condition": "SSc" if i % 2 else "HC", "Metadata_Group": "SSC" if i % 2 else "HC"})
    return pd.DataFrame(rows)


def test_site_table_labels_masks_and_splits():
    wells = [f"B{c:02d}" for c in range(2, 14)]
    corrected = [PlateImages("P1", "/s/P1.ome.zarr", tuple((w, s) for w in wells for s in (1, 2)), side=384)]
    masks = [PlateMasks("P1", "/m/P1.ome.zarr", tuple((w, s) for w in wells for s in (1,)))]
    t = training_sites(corrected, {"P1": _raw("P1", wells)}, masks)
    assert len(t) == 24
    assert (t["label"] == (t["Metadata_Condition"] == "SSc").astype(int)).all()
    assert t.loc[t["Metadata_Site"] == 2, "masks_store"].isna().all()
    assert (t.loc[t["Metadata_Site"] == 1, "masks_store"] == "/m/P1.ome.zarr").all()
    t = assign_splits(t, seed=0)
    assert (t.groupby("Metadata_Donor")["split"].nunique() == 1).all()
    s = split_summary(t)
    assert s["n_sites_train"] + s["n_sites_val"] + s["n_sites_test"] == 24
    assert s["n_donors_train"] + s["n_donors_val"] + s["n_donors_test"] == 6
