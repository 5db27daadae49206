"""Cell autoencoder (core/learn/cell_autoencoder.py): shapes, held-out donors, and that its
codes carry a planted morphological difference that no label told it about."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.model_selection import LeaveOneGroupOut, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from ssc_assets.core.learn.cell_autoencoder import (
    CellAutoencoder,
    CellAutoencoderParams,
    channel_stats,
    embed_cells_autoencoder,
    train_cell_autoencoder,
)
from ssc_assets.core.learn.cell_training import aggregate_cells
from ssc_assets_tests.test_cell_training import planted_crops

FAST = CellAutoencoderParams(epochs=6, batch_size=32, n_blocks=3, width=16, embedding_size=8, patience=None,
                             max_seconds=60, threads=1, seed=0)


def test_shapes_and_size_check():
    m = CellAutoencoder(3, 32, width=8, n_blocks=3, embedding_size=5).eval()
    x = torch.randn(4, 3, 32, 32)
    assert m(x).shape == (4, 3, 32, 32) and m.code(x).shape == (4, 5)
    assert m.embed(x).shape == (4, 16) and m.embedding_dim == 16  # 8 maps after blocks 2 and 3
    with pytest.raises(ValueError, match="divisible"):
        CellAutoencoder(3, 30, n_blocks=3)


def test_embedding_is_the_mean_of_the_encoder_maps_of_blocks_2_on():
    m = CellAutoencoder(3, 32, width=8, n_blocks=3, embedding_size=5).eval()
    m.set_standardisation(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 8.0]))
    x = torch.randn(4, 3, 32, 32) * 5 + 2
    with torch.no_grad():
        h1 = m.encoder[:4]((x - torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)) / torch.tensor([2.0, 4.0, 8.0]).view(1, 3, 1, 1))
        h2 = m.encoder[4:8](h1)
        h3 = m.encoder[8:](h2)
        expected = torch.cat([h2.mean(dim=(2, 3)), h3.mean(dim=(2, 3))], 1)
        torch.testing.assert_close(m.embed(x), expected)
        # a model pickled before the pooled readout (no ``readout`` attribute) embeds with its code
        del m.readout
        assert m.embedding_dim == 5
        torch.testing.assert_close(m.embed(x), m.code(x))


def test_channel_stats_match_numpy():
    x = np.random.default_rng(0).normal(2.0, 3.0, (10, 3, 8, 8)).astype(np.float32)
    mean, std = channel_stats(x)
    np.testing.assert_allclose(mean, x.transpose(1, 0, 2, 3).reshape(3, -1).mean(1), rtol=1e-5)
    np.testing.assert_allclose(std, x.transpose(1, 0, 2, 3).reshape(3, -1).std(1), rtol=1e-5)


def _well_accuracy(signal: float) -> tuple[float, object]:
    data = planted_crops(n_hc=4, n_ssc=4, wells=3, cells=16, seed=3, signal=signal)
    res = train_cell_autoencoder(data, FAST)
    codes = embed_cells_autoencoder(res.model, data.crops)
    _, wells = aggregate_cells(data.table, codes, "cell_autoencoder")
    X = wells.filter(regex=r"^f\d{4}$").to_numpy()
    y = (wells["Metadata_Condition"] == "SSc").to_numpy()
    clf = make_pipeline(StandardScaler(), LinearSVC(C=0.1, max_iter=20000))
    acc = cross_val_score(clf, X, y, groups=wells["Metadata_Donor"], cv=LeaveOneGroupOut()).mean()
    return float(acc), res


def test_codes_separate_planted_phenotype_on_held_out_donors_and_not_without_it():
    acc, res = _well_accuracy(signal=1.0)
    # validation donors were never trained on; their reconstruction loss improved on epoch 1
    assert res.val_donors and res.best_val_loss < res.history[0]["val_loss"] * 1.0001
    assert res.best_val_loss == min(h["val_loss"] for h in res.history)
    assert acc >= 0.85, acc  # measured 0.92 (22 of 24 wells); chance 0.5
    null_acc, _ = _well_accuracy(signal=0.0)
    assert null_acc <= 0.75, null_acc  # no phenotype: leave-one-donor-out stays near chance (0.5)


def test_deterministic_for_a_seed():
    data = planted_crops(n_hc=2, n_ssc=2, wells=1, cells=8, seed=1)
    p = CellAutoencoderParams(epochs=1, batch_size=16, n_blocks=3, width=8, embedding_size=4, threads=1)
    a = embed_cells_autoencoder(train_cell_autoencoder(data, p).model, data.crops)
    b = embed_cells_autoencoder(train_cell_autoencoder(data, p).model, data.crops)
    np.testing.assert_array_equal(a, b)


def test_standardisation_travels_with_the_model():
    data = planted_crops(n_hc=2, n_ssc=2, wells=1, cells=8, seed=2)
    p = CellAutoencoderParams(epochs=1, batch_size=16, n_blocks=3, width=8, embedding_size=4, threads=1)
    res = train_cell_autoencoder(data, p)
    train = ~data.table["Metadata_Donor"].isin(res.val_donors).to_numpy()
    mean, std = channel_stats(data.crops[train])
    np.testing.assert_allclose(res.model.mean.flatten().numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(res.model.std.flatten().numpy(), std, rtol=1e-6)
    # a copy loaded from its state dict (as MLflow does) embeds raw crops identically
    clone = CellAutoencoder(3, 32, width=8, n_blocks=3, embedding_size=4)
    clone.load_state_dict(res.model.state_dict())
    np.testing.assert_allclose(embed_cells_autoencoder(clone, data.crops), embed_cells_autoencoder(res.model, data.crops),
                               atol=1e-5)


def test_no_finite_validation_loss_is_an_error_not_a_random_model():
    data = planted_crops(n_hc=2, n_ssc=2, wells=1, cells=8, seed=3)
    data.crops[0, 0, 0, 0] = np.nan  # NaN standardisation -> NaN losses in every epoch
    p = CellAutoencoderParams(epochs=2, batch_size=16, n_blocks=3, width=8, embedding_size=4, threads=1)
    with pytest.raises(ValueError, match="finite validation loss"):
        train_cell_autoencoder(data, p)
