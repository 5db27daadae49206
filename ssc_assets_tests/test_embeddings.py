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


def _store_table(tmp_path, n_sites=5, side=48):
    from ssc_assets.core.ingest.channels import IMAGE_CHANNELS
    from ssc_assets.core.io.ome_zarr_store import HcsPlateWriter

    store = str(tmp_path / "P.ome.zarr")
    rng = np.random.default_rng(1)
    with HcsPlateWriter(store, "P", list(IMAGE_CHANNELS)) as w:
        for site in range(1, n_sites + 1):
            w.write_site("B02", site, rng.random((3, side, side), dtype=np.float32) * [[[1]], [[5]], [[20]]])
    return pd.DataFrame({"Metadata_Plate": "P", "Metadata_Well": "B02", "Metadata_Site": range(1, n_sites + 1),
                         "Metadata_Donor": "D", "Metadata_Condition": "HC", "Metadata_Group": "HC", "label": 0,
                         "store": store, "masks_store": None, "side": side})


def _unbatched_reference(embed, table, channels, size):
    """One site at a time, torch.no_grad(), contiguous tensors, default threads."""
    import torch

    from ssc_assets.core.ingest.channels import IMAGE_CHANNELS
    from ssc_assets.core.learn.augment import AugmentParams, SiteDataset
    from ssc_assets.core.learn.fit import pick_level, refs

    level = pick_level(int(table["side"].max()), size)  # the pyramid level embed_sites reads
    ds = SiteDataset(refs(table), channels, IMAGE_CHANNELS, "test", AugmentParams(input_size=size), level=level)
    with torch.no_grad():
        return np.concatenate([embed(torch.as_tensor(ds[i][0])[None]).numpy() for i in range(len(ds))])


def test_batched_inference_equals_unbatched_reference(tmp_path):
    """Batched, inference_mode, 1 thread, channels_last == site by site, no_grad, contiguous."""
    import torch

    from ssc_assets.core.ingest.channels import MODEL_CHANNELS
    from ssc_assets.core.learn.embeddings import autoencoder_embeddings, embed_sites
    from ssc_assets.core.learn.models import ChannelAutoencoder, CustomClassifier, DenseNetClassifier

    table = _store_table(tmp_path)
    torch.manual_seed(0)
    for model, size in ((CustomClassifier(3, 16, n_blocks=2, first_width=8), 16),
                        (DenseNetClassifier(embedding_size=8, weights="none"), 32)):
        model.eval()
        ref = _unbatched_reference(model.embed, table, MODEL_CHANNELS, size)
        threads = torch.get_num_threads()
        got = embed_sites(model, table, MODEL_CHANNELS, size, batch_size=2, threads=1)
        assert torch.get_num_threads() == threads  # restored
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
        assert got.shape == (5, 8) and np.abs(got).sum() > 0
        # weights back in the default format and still trainable after inference
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous() and not conv.weight.is_inference()
        model.train()
        model(torch.randn(2, 3, size, size)).sum().backward()
    models = {ch: ChannelAutoencoder(patch_size=16, embedding_size=4, widths=(4, 4, 4, 4), hidden=8).eval()
              for ch in MODEL_CHANNELS}
    ref = _unbatched_reference(
        lambda x: torch.cat([models[ch].encode(x[:, i : i + 1]) for i, ch in enumerate(MODEL_CHANNELS)], 1),
        table, MODEL_CHANNELS, 16)
    np.testing.assert_allclose(autoencoder_embeddings(models, table, 16, threads=1), ref, rtol=0, atol=1e-5)


def test_inference_threads_split_the_cores(monkeypatch):
    from ssc_assets.core.learn import embeddings as E

    monkeypatch.setattr(E.os, "cpu_count", lambda: 8)
    assert E.inference_threads(2) == 4 and E.inference_threads(8) == 1 and E.inference_threads(16) == 1
    assert E.inference_threads() == 8  # steps run one at a time in the run's process
