"""The shared training loop: metrics by hand, best-weights selection, determinism, each task."""

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score
from torch.utils.data import TensorDataset

from ssc_assets.core.learn import loop as T
from ssc_assets.core.learn.models import ChannelAutoencoder, CustomClassifier, UNet


def test_binary_metrics_hand_values():
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.2, 0.7, 0.1, 0.6])  # predictions 1 0 1 0 1: tp 2, fp 1, fn 1, tn 1
    m = T.binary_metrics(y, p)
    assert m == pytest.approx({"accuracy": 0.6, "recall": 2 / 3, "precision": 2 / 3, "f1": 2 / 3})
    pred = (p >= 0.5).astype(int)
    assert m["f1"] == pytest.approx(f1_score(y, pred)) and m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert T.confusion(y, p).tolist() == [[1, 1], [1, 2]]
    assert T.binary_metrics(np.zeros(3), np.zeros(3))["f1"] == 0.0  # no positives: 0, not NaN


def _toy(n=32, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * 0.3
    y = (torch.arange(n) % 2).float()
    x[y == 1, :, 4:12, 4:12] += 1.5  # class 1: a bright square
    return TensorDataset(x, y)


def _clf():
    return CustomClassifier(in_channels=3, crop_size=16, n_blocks=2, first_width=8, dropout=0.0)


def test_training_lowers_loss_and_keeps_best_weights():
    params = T.TrainParams(epochs=8, batch_size=8, lr=3e-3, seed=1)
    torch.manual_seed(0)
    model = _clf()
    seen = []
    res = T.train(model, "classify", _toy(seed=0), _toy(seed=1), params, on_epoch=lambda e, m: seen.append(e))
    assert seen == list(range(1, 9)) and len(res.history) == 8
    assert res.history[-1]["train_loss"] < 0.5 * res.history[0]["train_loss"]
    best = min(h["val_loss"] for h in res.history)
    assert res.best_val_loss == pytest.approx(best)
    assert res.history[res.best_epoch - 1]["val_loss"] == pytest.approx(best)
    # the restored weights are the best epoch's: re-evaluating gives its validation loss
    again = T.evaluate(model, torch.utils.data.DataLoader(_toy(seed=1), batch_size=8), "classify")
    assert again["loss"] == pytest.approx(best, rel=1e-5)
    assert {"accuracy", "recall", "precision", "f1"} <= set(again)


def test_same_seed_same_history():
    params = T.TrainParams(epochs=2, batch_size=8, lr=1e-3, seed=3)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(T.train(_clf(), "classify", _toy(), _toy(seed=1), params).history)
    assert runs[0] == runs[1]


def test_time_budget_cuts_the_epoch_that_crosses_it_and_stops(monkeypatch):
    clock = iter(range(10_000))  # a fake clock: +1 s per reading
    monkeypatch.setattr(T.time, "perf_counter", lambda: float(next(clock)))
    batches = []
    params = T.TrainParams(epochs=5, batch_size=4, lr=1e-3, max_seconds=6.0)
    res = T.train(_clf(), "classify", _toy(n=32), _toy(n=8, seed=1), params,
                  on_epoch=lambda e, m: batches.append(e))
    # start at t=0, deadline 6: one reading per batch, the 6th batch of epoch 1 reads t=6 and stops;
    # that epoch is validated (on_epoch called once) and is the last
    assert res.stopped == "time" and len(res.history) == 1 and batches == [1]
    assert np.isfinite(res.history[0]["val_loss"]) and res.best_epoch == 1
    free = T.train(_clf(), "classify", _toy(n=32), _toy(n=8, seed=1), T.TrainParams(epochs=2, batch_size=4))
    assert free.stopped == "epochs" and len(free.history) == 2
    # the budget runs out on the last batch of the last epoch: nothing was cut, so "epochs"
    clock2 = iter(range(10_000))
    monkeypatch.setattr(T.time, "perf_counter", lambda: float(next(clock2)))
    last = T.train(_clf(), "classify", _toy(n=32), _toy(n=8, seed=1),
                   T.TrainParams(epochs=1, batch_size=4, max_seconds=8.0))
    assert last.stopped == "epochs" and len(last.history) == 1


def test_threads_are_set_during_training_and_restored():
    seen = []
    before = torch.get_num_threads()
    T.train(_clf(), "classify", _toy(n=8), _toy(n=8, seed=1), T.TrainParams(epochs=1, batch_size=4, threads=1),
            on_epoch=lambda e, m: seen.append(torch.get_num_threads()))
    assert seen == [1] and torch.get_num_threads() == before


def test_reconstruct_and_segment_tasks():
    x = torch.rand(8, 1, 32, 32)
    ae = ChannelAutoencoder(patch_size=32, embedding_size=8, widths=(8, 8, 4, 4), hidden=16, dropout=0.0)
    res = T.train(ae, "reconstruct", TensorDataset(x, torch.zeros(8)), TensorDataset(x, torch.zeros(8)),
                  T.TrainParams(epochs=3, batch_size=4, lr=1e-3))
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]

    img = torch.rand(6, 2, 32, 32)
    mask = (img[:, 1] > 0.5).long()
    ds = TensorDataset(img, mask, torch.ones(6, 32, 32))
    res = T.train(UNet(2, 2, base_channels=4, depth=2), "segment", ds, ds, T.TrainParams(epochs=2, batch_size=3, lr=1e-2))
    assert 0.0 <= res.history[-1]["val_iou_actin"] <= 1.0


def test_weighted_cross_entropy_hand_value():
    logits = torch.tensor([[[[2.0]], [[0.0]]]])  # one pixel, class 0 favoured
    mask = torch.tensor([[[1]]])
    ce = -torch.log_softmax(logits, 1)[0, 1, 0, 0]
    assert T._weighted_ce(logits, mask, torch.tensor([[[3.0]]])) == pytest.approx(3 * float(ce))


def test_unknown_task_rejected():
    with pytest.raises(ValueError):
        T.train(_clf(), "regress", _toy(), _toy(), T.TrainParams(epochs=1))
