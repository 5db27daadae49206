"""CPU cell training (core/learn/cell_training.py) on synthetic crops with a planted class difference."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from ssc_assets.core.learn.cell_crops import CropDataset, CropParams
from ssc_assets.core.learn.cell_training import (
    CellTrainParams,
    aggregate_cells,
    cell_logits,
    cross_validate_cells,
    embed_cells,
    fit_cell_classifier,
    sample_weights,
    split_validation_donors,
)

S = 32


def planted_crops(n_hc=4, n_ssc=4, wells=2, cells=24, seed=0, signal=1.0):
    """HC cells: a round blob in the actin channel; SSc cells: the same blob plus straight
    'stress fibres' (parallel stripes at a random angle). Noise everywhere; same mean intensity."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S] - S / 2
    blob = np.exp(-(yy**2 + xx**2) / (2 * 5.0**2))
    crops, rows = [], []
    for d in range(n_hc + n_ssc):
        ssc = d >= n_hc
        donor = f"{'SSC' if ssc else 'HC'}{d}"
        for w in range(wells):
            for _ in range(cells):
                x = rng.normal(0, 0.3, (3, S, S))
                x[0] += blob * 2
                x[1] += rng.normal(0, 0.3, (S, S))
                a = rng.uniform(0, np.pi)
                stripes = np.sin((np.cos(a) * xx + np.sin(a) * yy) * 1.2)
                x[2] += blob + (signal * 0.8 * stripes if ssc else 0.0)
                crops.append(x.astype(np.float32))
                rows.append({"Metadata_Plate": "P", "Metadata_Well": f"{donor}w{w}", "Metadata_Site": 1,
                             "Metadata_Donor": donor, "Metadata_Condition": "SSc" if ssc else "HC",
                             "Metadata_Group": "SSC" if ssc else "HC", "label": int(ssc)})
    return CropDataset(np.stack(crops), pd.DataFrame(rows), CropParams(size=S, downsample=1))


def test_sample_weights_balance_conditions_and_donors():
    t = pd.DataFrame({"Metadata_Donor": ["a"] * 6 + ["b"] * 2 + ["c"] * 2, "label": [0] * 8 + [1] * 2})
    w = sample_weights(t, "donor")
    assert w.sum() == pytest.approx(1)
    assert w[t["label"] == 0].sum() == pytest.approx(0.5) and w[t["Metadata_Donor"] == "a"].sum() == pytest.approx(0.25)
    wc = sample_weights(t, "condition")
    assert wc[t["label"] == 1].sum() == pytest.approx(0.5) and np.allclose(wc[:8], wc[0])
    assert np.allclose(sample_weights(t, "none"), 0.1)


def test_validation_donors_are_held_out_per_condition():
    t = planted_crops().table
    v = split_validation_donors(t, 0.25, seed=1)
    assert len(v) == 2 and sum(x.startswith("HC") for x in v) == 1
    assert split_validation_donors(t, 0.25, seed=1) == v


def test_presets():
    cpu, thesis = CellTrainParams.cpu(), CellTrainParams.thesis()
    assert cpu.max_seconds is not None and cpu.max_seconds <= 600 and cpu.width == 32 and cpu.n_blocks == 4
    assert cpu.embedding_size == 16
    assert thesis.lr == 5e-5 and thesis.batch_size == 8 and thesis.max_seconds is None
    with pytest.raises(ValueError):
        CellTrainParams(balance="oversample")


def test_patience_counts_only_from_min_epochs():
    from ssc_assets.core.learn.cell_training import BestEpoch

    model = torch.nn.Linear(2, 1)
    losses = [1.0, 2.0, 2.0, 2.0, 0.5, 2.0, 2.0]  # no progress in epochs 2-4, then a better one
    best = BestEpoch(model, patience=2, min_epochs=6)
    stops = [best.update(model, e, v, out_of_time=False) for e, v in enumerate(losses, start=1)]
    # patience alone (min_epochs 0) would have stopped at epoch 3 and kept epoch 1
    assert stops == [False] * 6 + [True] and best.epoch == 5 and best.stopped == "patience"
    early = BestEpoch(model, patience=2)
    assert [early.update(model, e, v, out_of_time=False) for e, v in enumerate(losses[:3], start=1)] == [False, False, True]
    # the time limit stops at once, min_epochs or not
    assert BestEpoch(model, patience=2, min_epochs=6).update(model, 1, 1.0, out_of_time=True)


def test_learns_planted_difference_on_held_out_donors():
    data = planted_crops()
    # the wall-time limit keeps this under a minute even on a loaded machine
    params = CellTrainParams.cpu(epochs=5, crops_per_epoch=384, batch_size=32, patience=None, max_seconds=22,
                                 threads=2, lr=3e-3)
    t = time.perf_counter()
    cv = cross_validate_cells(data, params, n_folds=2, seed=0)
    assert time.perf_counter() - t < 60
    cells = cv.cells
    assert len(cells) == len(data) and (cells["Metadata_Fold"] >= 0).all()
    # every donor is scored by a model that never saw it (training or validation)
    for f in cv.folds:
        assert not set(f["test_donors"]) & set(f["val_donors"])
        assert f["history"] and {"train_loss", "val_loss", "val_well_accuracy", "lr", "seconds"} <= set(f["history"][0])
    pred = (cells["Metadata_Logit"] > 0).astype(int)
    truth = (cells["Metadata_Condition"] == "SSc").astype(int)
    assert (pred == truth).mean() > 0.75  # chance 0.5 (balanced)
    sites, wells = aggregate_cells(data.table, cells.filter(like="f0").to_numpy(), "cell_cnn",
                                   logits=cells["Metadata_Logit"].to_numpy())
    from sklearn.metrics import roc_auc_score

    # wells of SSc donors score above wells of HC donors (ranking; the threshold of a short run can drift)
    assert len(wells) == 16 and roc_auc_score(wells["Metadata_Condition"] == "SSc", wells["Metadata_Score"]) >= 0.85
    assert (wells["Metadata_n_cells"] == 24).all()


def test_shuffled_donor_labels_stay_near_chance():
    data = planted_crops(signal=0.0, seed=3)
    params = CellTrainParams.cpu(epochs=3, crops_per_epoch=256, batch_size=32, patience=None, max_seconds=10, threads=2)
    cells = cross_validate_cells(data, params, n_folds=2).cells
    wells = cells.groupby("Metadata_Well").agg(z=("Metadata_Logit", "median"), c=("Metadata_Condition", "first"))
    assert 0.2 <= ((wells["z"] > 0) == (wells["c"] == "SSc")).mean() <= 0.8


def test_fit_embed_and_wall_time_stop():
    data = planted_crops(n_hc=2, n_ssc=2, cells=16)
    params = CellTrainParams.cpu(epochs=100000, crops_per_epoch=64, batch_size=16, patience=None, max_seconds=1.0, threads=1)
    res = fit_cell_classifier(data, params)
    assert res.stopped == "time" and len(res.history) < 100000 and res.seconds < 10
    assert set(res.val_donors).isdisjoint(res.train_donors) and len(res.val_donors) == 2
    emb = embed_cells(res.model, data.crops[:10], batch_size=4)
    z = cell_logits(res.model, data.crops[:10])
    assert emb.shape == (10, 16) and emb.dtype == np.float32 and z.shape == (10,)
    with torch.inference_mode():  # logit is the linear head of the embedding, eval mode is deterministic
        np.testing.assert_allclose(res.model.classifier(torch.from_numpy(emb)).squeeze(1).numpy(), z, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(embed_cells(res.model, data.crops[:10], batch_size=7), emb, rtol=1e-4, atol=1e-5)
    sites, wells = aggregate_cells(data.table.iloc[:10], emb)
    assert len(sites) == 1 and wells.filter(like="f00").shape == (1, 16)
    np.testing.assert_allclose(wells.filter(like="f00").to_numpy()[0], np.median(emb, axis=0), rtol=1e-5)


def test_cell_outputs_equal_the_separate_calls_in_one_pass():
    from ssc_assets.core.learn.cell_models import CellCNN
    from ssc_assets.core.learn.cell_training import cell_outputs

    model = CellCNN(3, 8, 3, 4).eval()
    crops = planted_crops(n_hc=1, n_ssc=1, wells=1, cells=5).crops
    e, z = cell_outputs(model, crops)
    np.testing.assert_array_equal(e, embed_cells(model, crops))
    np.testing.assert_array_equal(z, cell_logits(model, crops))
    assert e.shape == (10, 4) and z.shape == (10,)
