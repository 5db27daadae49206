"""Well aggregation by hand."""

import numpy as np
import pandas as pd

from ssc_assets.core.learn.embeddings import embedding_frame, well_embeddings


def test_well_median_by_hand():
    table = pd.DataFrame({
        "Metadata_Plate": "P", "Metadata_Well": ["B02", "B02", "B02", "B03"], "Metadata_Site": [1, 2, 4, 1],
        "Metadata_Donor": ["D1", "D1", "D1", "D2"], "Metadata_Condition": ["SSc"] * 3 + ["HC"],
        "Metadata_Group": ["SSC"] * 3 + ["HC"]})
    emb = np.array([[1.0, 10.0], [3.0, 30.0], [2.0, np.nan], [5.0, 7.0]], np.float32)
    wells = well_embeddings(embedding_frame(table, "classifier", emb))
    b02 = wells.set_index("Metadata_Well").loc["B02"]
    assert b02["Metadata_n_sites"] == 3 and b02["f0000"] == 2.0 and b02["f0001"] == 20.0  # NaN ignored
    assert b02["Metadata_Donor"] == "D1" and b02["Metadata_Method"] == "classifier"
    assert list(wells.columns[:7]) == ["Metadata_Plate", "Metadata_Well", "Metadata_Donor", "Metadata_Condition",
                                       "Metadata_Group", "Metadata_Method", "Metadata_n_sites"]


def test_autoencoder_embedding_reads_once_and_matches_per_channel(tmp_path):
    """One 3-channel read, sliced per channel == each channel embedded on its own."""
    import torch

    from ssc_assets.core.ingest.channels import IMAGE_CHANNELS, MODEL_CHANNELS
    from ssc_assets.core.io.ome_zarr_store import HcsPlateWriter
    from ssc_assets.core.learn.embeddings import autoencoder_embeddings, embed_sites
    from ssc_assets.core.learn.models import ChannelAutoencoder

    store = str(tmp_path / "P.ome.zarr")
    rng = np.random.default_rng(0)
    with HcsPlateWriter(store, "P", list(IMAGE_CHANNELS)) as w:
        for site in (1, 2):
            w.write_site("B02", site, rng.random((3, 48, 48), dtype=np.float32) * [[[1]], [[5]], [[20]]])
    table = pd.DataFrame({"Metadata_Plate": "P", "Metadata_Well": "B02", "Metadata_Site": [1, 2], "Metadata_Donor": "D",
                          "Metadata_Condition": "HC", "Metadata_Group": "HC", "label": 0, "store": store,
                          "masks_store": None, "side": 48})
    torch.manual_seed(0)
    models = {ch: ChannelAutoencoder(patch_size=16, embedding_size=4, widths=(4, 4, 4, 4), hidden=8) for ch in MODEL_CHANNELS}
    joint = autoencoder_embeddings(models, table, 16)
    separate = np.concatenate([embed_sites(lambda x, m=models[ch]: m.encode(x), table, (ch,), 16) for ch in MODEL_CHANNELS], axis=1)
    assert joint.shape == (2, 12)
    np.testing.assert_allclose(joint, separate, rtol=1e-5, atol=1e-6)
    assert not np.allclose(joint[:, :4], joint[:, 4:8])  # channels really differ
