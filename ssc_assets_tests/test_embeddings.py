"""Well aggregation by hand."""

import numpy as np
import pandas as pd

from ssc_assets.core.embeddings import embedding_frame, well_embeddings


def test_well_median_by_hand():
    table = pd.DataFrame({
        "Metadata_Plate": "P", "Metadata_Well": ["B02", "B02", "B02", "B03"], "Metadata_Site": [1, 2, 4, 1],
        "Metadata_Donor": ["D1", "D1", "D1", "D2"], "Metadata_Condition": ["SSc"] * 3 + ["HC"],
        "Metadata_Group": ["SSC"] * 3 + ["HC"]})
    emb = np.array([[1.0, 10.0], [3.0, 30.0], [2.0, np.nan], [5.0, 7.0]], np.float32)
    wells = well_embeddings(embedding_frame(table, "classifier", emb))
    b02 = wells.set_index("Metadata_Well").loc["B02"]
    assert b02["n_sites"] == 3 and b02["f0000"] == 2.0 and b02["f0001"] == 20.0  # NaN ignored
    assert b02["Metadata_Donor"] == "D1" and b02["method"] == "classifier"
    assert list(wells.columns[:7]) == ["Metadata_Plate", "Metadata_Well", "Metadata_Donor", "Metadata_Condition",
                                       "Metadata_Group", "method", "n_sites"]
