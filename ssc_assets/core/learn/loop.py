"""Training loop shared by every model family (pure torch, no Dagster, no MLflow).

Thesis settings (section 6.3.1) are the defaults: Adam (lr 5e-5, weight decay 1e-5, betas
0.9/0.999, eps 1e-8), cosine annealing (T_max 10, eta_min 5e-10), batch size 8, the weights
with the lowest validation loss are kept. Three tasks:

- ``classify``: batches ``(x (B, C, S, S), y (B,))``; BCE on logits (= sigmoid + BCE);
  accuracy, recall, precision, F1 at p = 0.5 with SSc = 1 as the positive class.
- ``reconstruct``: batches ``(x (B, 1, S, S), _)``; MSE between the softmax output and
  :func:`models.reconstruction_target` of the input.
- ``segment``: batches ``(x (B, 2, S, S), mask (B, S, S) int64, weight (B, S, S))``;
  pixel-weighted cross-entropy (Ronneberger); IoU of the actin class.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

TASKS = ("classify", "reconstruct", "segment")


@dataclass(frozen=True)
class TrainParams:
    """Training settings (thesis section 6.3.1; the home of the launchpad defaults).

    ``epochs``: passes over the training set (the weights with the lowest validation loss are
    kept); ``batch_size``: sites per step; Adam ``lr``, ``weight_decay``, ``beta1``, ``beta2``,
    ``eps``; cosine annealing over ``t_max`` epochs down to ``eta_min``; ``seed`` for splits,
    augmentation and initialization; ``num_workers``: DataLoader processes; ``device``:
    ``auto`` (CUDA when available), ``cpu`` or ``cuda``; ``max_seconds``: wall-time budget of
    the training in seconds (None = none), checked after every batch: the epoch that crosses
    it is cut short, validated, and is the last one; ``threads``: torch intra-op threads
    during training (None = min(4, CPUs)).
    """

    epochs: int = 30
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 1e-5
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    t_max: int = 10
    eta_min: float = 5e-10
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    max_seconds: float | None = None
    threads: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@contextmanager
def torch_threads(n: int | None):
    """Set torch's intra-op threads (None: min(4, CPUs)) for the block, then restore."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n or min(4, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) and prefer deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, otherwise CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def binary_metrics(y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Accuracy, recall, precision, F1 of probabilities thresholded at 0.5 (positive = 1).

    Undefined ratios (no predicted or no true positives) are 0, as in scikit-learn's
    ``zero_division=0``.
    """
    y = np.asarray(y_true).astype(int)
    p = (np.asarray(prob) >= 0.5).astype(int)
    tp = int(((p == 1) & (y == 1)).sum())
    fp = int(((p == 1) & (y == 0)).sum())
    fn = int(((p == 0) & (y == 1)).sum())
    acc = float((p == y).mean()) if len(y) else float("nan")
    rec = tp / (tp + fn) if tp + fn else 0.0
    prec = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"accuracy": acc, "recall": rec, "precision": prec, "f1": f1}


def confusion(y_true: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """2 x 2 int64 confusion matrix, rows = truth (HC, SSc), columns = prediction."""
    y = np.asarray(y_true).astype(int)
    p = (np.asarray(prob) >= 0.5).astype(int)
    m = np.zeros((2, 2), np.int64)
    np.add.at(m, (y, p), 1)
    return m


def _weighted_ce(logits: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (F.cross_entropy(logits, mask, reduction="none") * weight).mean()


def _batch_loss(model: torch.nn.Module, batch, task: str, device: torch.device):
    """Loss of one batch and what the metrics need (detached, on CPU)."""
    if task == "classify":
        x, y = batch[0].to(device), batch[1].to(device).float()
        logits = model(x)
        return F.binary_cross_entropy_with_logits(logits, y), (y.cpu(), torch.sigmoid(logits).detach().cpu())
    if task == "reconstruct":
        from ssc_assets.core.learn.models import reconstruction_target

        x = batch[0].to(device)
        probs = model(x)
        return F.mse_loss(probs, reconstruction_target(x)), None
    if task == "segment":
        x, mask, weight = (b.to(device) for b in batch[:3])
        logits = model(x)
        pred = logits.argmax(1)
        inter = ((pred == 1) & (mask == 1)).sum().item()
        union = ((pred == 1) | (mask == 1)).sum().item()
        return _weighted_ce(logits, mask, weight), (inter, union)
    raise ValueError(f"task must be one of {TASKS}, not {task!r}")


def _summarize(task: str, losses: list[tuple[float, int]], extras: list) -> dict[str, float]:
    n = sum(k for _, k in losses)
    out = {"loss": sum(v * k for v, k in losses) / max(n, 1)}
    if task == "classify" and extras:
        y = torch.cat([e[0] for e in extras]).numpy()
        p = torch.cat([e[1] for e in extras]).numpy()
        out.update(binary_metrics(y, p))
    if task == "segment" and extras:
        inter = sum(e[0] for e in extras)
        union = sum(e[1] for e in extras)
        out["iou_actin"] = inter / union if union else float("nan")
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, task: str, device: torch.device | None = None,
             collect: bool = False) -> dict:
    """Mean loss (per sample) and task metrics over ``loader`` in eval mode.

    With ``collect`` (classify only) also returns ``y_true`` and ``prob`` arrays.
    """
    device = device or next(model.parameters()).device
    model.eval()
    losses, extras = [], []
    for batch in loader:
        loss, extra = _batch_loss(model, batch, task, device)
        losses.append((float(loss), len(batch[0])))
        if extra is not None:
            extras.append(extra)
    out = _summarize(task, losses, extras)
    if collect and task == "classify" and extras:
        out["y_true"] = torch.cat([e[0] for e in extras]).numpy()
        out["prob"] = torch.cat([e[1] for e in extras]).numpy()
    return out


@dataclass
class TrainResult:
    best_epoch: int
    best_val_loss: float
    history: list[dict] = field(default_factory=list)  # one dict per epoch: train_* and val_* metrics
    seconds: float = 0.0
    stopped: str = "epochs"  # "epochs" (all ran) or "time" (params.max_seconds reached)


def train(
    model: torch.nn.Module,
    task: str,
    train_ds,
    val_ds,
    params: TrainParams = TrainParams(),
    on_epoch: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place and load the weights with the lowest validation loss.

    Datasets with a ``set_epoch(epoch)`` method draw fresh augmentations each epoch.
    ``on_epoch(epoch, metrics)`` receives ``train_loss``, ``val_loss``, the task metrics
    (prefixed ``train_`` / ``val_``) and ``lr`` after every epoch (epochs count from 1).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    with torch_threads(params.threads):
        return _train(model, task, train_ds, val_ds, params, on_epoch)


def _train(model, task, train_ds, val_ds, params: TrainParams, on_epoch) -> TrainResult:
    set_seed(params.seed)
    device = pick_device(params.device)
    model.to(device)
    gen = torch.Generator().manual_seed(params.seed)
    train_loader = DataLoader(train_ds, batch_size=params.batch_size, shuffle=True, generator=gen,
                              num_workers=params.num_workers, drop_last=len(train_ds) > params.batch_size)
    val_loader = DataLoader(val_ds, batch_size=params.batch_size, shuffle=False, num_workers=params.num_workers)
    opt = torch.optim.Adam(model.parameters(), lr=params.lr, betas=(params.beta1, params.beta2),
                           eps=params.eps, weight_decay=params.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=params.t_max, eta_min=params.eta_min)
    best_state, best_loss, best_epoch = copy.deepcopy(model.state_dict()), math.inf, 0
    history: list[dict] = []
    t0 = time.perf_counter()
    deadline = t0 + params.max_seconds if params.max_seconds is not None else math.inf
    stopped = "epochs"
    for epoch in range(1, params.epochs + 1):
        for ds in (train_ds, val_ds):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)
        model.train()
        losses, extras = [], []
        n_batches = len(train_loader)
        for i, batch in enumerate(train_loader, 1):
            loss, extra = _batch_loss(model, batch, task, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append((float(loss.detach()), len(batch[0])))
            if extra is not None:
                extras.append(extra)
            if time.perf_counter() >= deadline and (i < n_batches or epoch < params.epochs):
                stopped = "time"  # work was left: this epoch's batches or later epochs
                break
        lr = opt.param_groups[0]["lr"]
        sched.step()
        tr = _summarize(task, losses, extras)
        va = evaluate(model, val_loader, task, device)
        metrics = {**{f"train_{k}": v for k, v in tr.items()}, **{f"val_{k}": v for k, v in va.items()}, "lr": lr}
        history.append(metrics)
        if va["loss"] < best_loss:
            best_loss, best_epoch = va["loss"], epoch
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch:
            on_epoch(epoch, metrics)
        if stopped != "time" and epoch < params.epochs and time.perf_counter() >= deadline:
            stopped = "time"  # the budget ran out during validation: no further epoch
        if stopped == "time":
            break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best_epoch, best_loss, history, time.perf_counter() - t0, stopped)
