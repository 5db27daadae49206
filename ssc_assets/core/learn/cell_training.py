"""CPU training of the single-cell classifier on nucleus-centred crops (issue 11). Pure: no Dagster, no MLflow.

Regime (:func:`train_cell_classifier`):

* model: :class:`~ssc_assets.core.learn.cell_models.CellCNN` (4 conv blocks x 32 channels, BN,
  global average pooling, 16-d embedding, SSc-vs-HC logit), channels-last on CPU;
* class balance: a weighted sampler draws training crops with replacement so that each
  condition (and, with ``balance="donor"``, each donor within its condition) contributes the
  same expected number of crops per epoch; ``balance="loss"`` instead weights the BCE by
  inverse condition frequency and shuffles; ``"none"`` does neither;
* augmentation: the thesis' rotation by k x 90 degrees and horizontal/vertical flips
  (:func:`ssc_assets.core.learn.augment.rotate_flip`), drawn per crop and epoch;
* validation on held-out DONORS (never in training): class-balanced BCE of the validation
  crops after every epoch; early stopping after ``patience`` epochs without improvement and
  the best weights restored; ``max_seconds`` of wall time also stops training (checked after
  every batch; the epoch's validation still runs);
* per-epoch ``history`` (train/val loss, val cell accuracy, val balanced accuracy, val well
  accuracy, lr, seconds) for logging.

Outputs: :func:`embed_cells` (N, 16) and :func:`cell_logits` (N,), batched, in inference mode;
:func:`aggregate_cells` cell -> site (median) -> well (median, via
:func:`ssc_assets.core.learn.embeddings.well_embeddings`). :func:`cross_validate_cells` gives
out-of-fold (donor-grouped) cell outputs, the per-donor answer that needs no test split.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ssc_assets.core.learn.augment import AugmentParams, rotate_flip
from ssc_assets.core.learn.cell_crops import CropDataset
from ssc_assets.core.learn.cell_models import CellCNN
from ssc_assets.core.learn.loop import set_seed, torch_threads  # noqa: F401 - torch_threads re-exported

BALANCE_MODES = ("donor", "condition", "loss", "none")


@dataclass(frozen=True)
class CellTrainParams:
    """Training settings. Presets: :meth:`cpu` (the default values) and :meth:`thesis`.

    ``epochs``: upper bound; ``crops_per_epoch``: training crops drawn per epoch, at most the
    number of training crops (None = that number); ``patience``: epochs without a lower validation loss before
    stopping (None = never), counted only from epoch ``min_epochs`` on (the validation loss of
    two or three donors is noisy while the learning rate is high: on a held-out study with an
    objective split one out-of-fold model stopped at epoch 5, still at chance); ``max_seconds``: wall-time budget of one training (None = none);
    ``threads``: torch intra-op threads during training (None = min(4, CPUs)); ``lr`` with
    cosine annealing to ``lr * eta_min_ratio`` over ``epochs``; ``val_fraction``: fraction of
    each condition's donors held out for validation by :func:`fit_cell_classifier`.
    """

    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    eta_min_ratio: float = 0.05
    patience: int | None = 4
    min_epochs: int = 8
    max_seconds: float | None = 540.0
    crops_per_epoch: int | None = 8000
    balance: str = "donor"
    augment: bool = True
    threads: int | None = None
    val_fraction: float = 0.25
    eval_batch_size: int = 512
    width: int = 32
    n_blocks: int = 4
    embedding_size: int = 16
    dropout: float = 0.2
    seed: int = 0

    def __post_init__(self):
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, not {self.balance!r}")

    @classmethod
    def cpu(cls, **overrides) -> "CellTrainParams":
        """CPU budget: at most 15 epochs x 8,000 crops of 3 x 64 x 64 (training throughput
        measured 50-600 crops/s on 2 cores, depending on how loaded they are), one training
        stopped by ``max_seconds`` = 540 s of wall time at the latest (the model asset splits
        its 600 s budget over its k + 1 trainings: :func:`fit_with_out_of_fold`); Adam lr
        2e-3, batch 64, early stop after 4 epochs without a better validation loss, from epoch 8 on."""
        return replace(cls(), **overrides)

    @classmethod
    def thesis(cls, **overrides) -> "CellTrainParams":
        """The thesis' optimiser (section 6.3.1: Adam lr 5e-5, weight decay 1e-5, batch 8,
        30 epochs, best validation loss kept) on cell crops; no wall-time limit, no early stop."""
        return replace(cls(epochs=30, batch_size=8, lr=5e-5, weight_decay=1e-5, eta_min_ratio=1e-5, patience=None,
                           max_seconds=None, crops_per_epoch=None), **overrides)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CellTrainResult:
    """``model`` (best validation weights, eval mode); ``history`` one dict per epoch;
    ``stopped``: ``epochs`` | ``patience`` | ``time``; ``val_donors`` held out."""

    model: CellCNN
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    seconds: float
    stopped: str
    train_donors: list[str] = field(default_factory=list)
    val_donors: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)


def sample_weights(table: pd.DataFrame, balance: str = "donor") -> np.ndarray:
    """Per-crop sampling weights (float64, sum 1) for :data:`BALANCE_MODES`.

    ``condition``: each ``label`` (0/1) gets half the mass, equal within it; ``donor``: each
    label half, each donor of a label an equal share, each crop of a donor an equal share;
    ``loss`` / ``none``: uniform.
    """
    n = len(table)
    if n == 0:
        return np.zeros(0)
    y = table["label"].to_numpy()
    if balance in ("loss", "none"):
        w = np.ones(n)
    elif balance == "condition":
        counts = pd.Series(y).map(pd.Series(y).value_counts()).to_numpy(float)
        w = 1.0 / counts
    else:
        d = table["Metadata_Donor"].astype(str).to_numpy()
        per_donor = pd.Series(d).map(pd.Series(d).value_counts()).to_numpy(float)
        donors_per_label = pd.DataFrame({"y": y, "d": d}).groupby("y")["d"].nunique()
        w = 1.0 / (per_donor * pd.Series(y).map(donors_per_label).to_numpy(float))
    return w / w.sum()


def split_validation_donors(table: pd.DataFrame, fraction: float = 0.25, seed: int = 0) -> list[str]:
    """Donors held out for validation: per condition (``label``), round(fraction x donors),
    at least 1 when the condition has >= 2 donors (so training keeps at least one). Sorted."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    donors = table[["Metadata_Donor", "label"]].astype({"Metadata_Donor": str}).drop_duplicates()
    for _, part in donors.groupby("label", sort=True):
        ids = np.array(sorted(part["Metadata_Donor"].unique()))
        if len(ids) < 2:
            continue
        k = min(len(ids) - 1, max(1, int(round(fraction * len(ids)))))
        out += rng.choice(ids, size=k, replace=False).tolist()
    return sorted(out)


class BestEpoch:
    """Early-stopping bookkeeping of one training: the best validation loss so far, its epoch
    and a copy of its weights; why training stopped (``epochs`` | ``patience`` | ``time``)."""

    def __init__(self, model: torch.nn.Module, patience: int | None, min_epochs: int = 0):
        self.state, self.loss, self.epoch, self.since = copy.deepcopy(model.state_dict()), math.inf, 0, 0
        self.patience, self.min_epochs, self.stopped = patience, min_epochs, "epochs"

    def update(self, model: torch.nn.Module, epoch: int, val_loss: float, out_of_time: bool) -> bool:
        """Record epoch ``epoch``'s validation loss; True when training should stop (patience
        counts only from epoch ``min_epochs`` on; the time limit always stops)."""
        if val_loss < self.loss:
            self.loss, self.epoch, self.since = val_loss, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
        else:
            self.since += 1
        if out_of_time:
            self.stopped = "time"
        elif self.patience is not None and self.since >= self.patience and epoch >= self.min_epochs:
            self.stopped = "patience"
        return self.stopped != "epochs"

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best weights into ``model`` and put it in eval mode."""
        model.load_state_dict(self.state)
        model.eval()


def _augment_batch(x: np.ndarray, rng: np.random.Generator, aug: AugmentParams) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = rotate_flip(x[i], rng, aug)[0]
    return out


def train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, crops: np.ndarray, order: np.ndarray,
                batch_size: int, batch_loss: Callable[[np.ndarray, torch.Tensor], torch.Tensor],
                rng: np.random.Generator | None, aug: AugmentParams, deadline: float | None) -> tuple[float, int, bool]:
    """One epoch over ``crops[order]`` (float32 (N, C, S, S)) in batches of ``batch_size`` (sorted
    indices; a last batch of 1 is skipped: BatchNorm needs 2), augmented with ``rng`` unless it is
    None, one optimiser step per batch on ``batch_loss(indices, batch tensor)``; stops after the
    batch that passes ``deadline`` (``time.perf_counter()`` value). Returns (summed loss x batch
    size, crops seen, out of time)."""
    model.train()
    tot, n_seen = 0.0, 0
    for b in range(0, len(order), batch_size):
        idx = np.sort(order[b : b + batch_size])
        if len(idx) < 2:
            continue
        x = crops[idx]
        if rng is not None:
            x = _augment_batch(x, rng, aug)
        loss = batch_loss(idx, _to_tensor(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot += float(loss.detach()) * len(idx)
        n_seen += len(idx)
        if deadline is not None and time.perf_counter() > deadline:
            return tot, n_seen, True
    return tot, n_seen, False


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def _forward_all(model: CellCNN, crops: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    emb, logit = [], []
    for i in range(0, len(crops), batch_size):
        e, z = model.forward_both(_to_tensor(crops[i : i + batch_size]))
        emb.append(e.float().numpy())
        logit.append(z.float().numpy())
    e_dim = model.embedding.out_features
    if not emb:
        return np.zeros((0, e_dim), np.float32), np.zeros(0, np.float32)
    return np.concatenate(emb).astype(np.float32), np.concatenate(logit).astype(np.float32)


def cell_outputs(model: CellCNN, crops: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 (N, E), logits float32 (N,)) of crops (N, C, S, S) in one forward pass."""
    return _forward_all(model, crops, batch_size)


def embed_cells(model: CellCNN, crops: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Embeddings float32 (N, E) (E = 16 by default) of crops float32 (N, C, S, S), eval mode,
    no autograd, ``batch_size`` crops at a time."""
    return _forward_all(model, crops, batch_size)[0]


def cell_logits(model: CellCNN, crops: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """SSc-vs-HC logits float32 (N,) of crops (N, C, S, S); > 0 means SSc more likely."""
    return _forward_all(model, crops, batch_size)[1]


def _balanced_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BCE where each class present contributes half (mean over its crops)."""
    losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    parts = [losses[y == c].mean() for c in (0.0, 1.0) if bool((y == c).any())]
    return torch.stack(parts).mean()


def _val_metrics(model: CellCNN, val: CropDataset, batch_size: int) -> dict:
    _, z = _forward_all(model, val.crops, batch_size)
    y = val.table["label"].to_numpy().astype(np.float32)
    loss = float(_balanced_bce(torch.from_numpy(z), torch.from_numpy(y)))
    pred = (z > 0).astype(np.float32)
    acc = float((pred == y).mean())
    bal = float(np.mean([(pred[y == c] == c).mean() for c in (0.0, 1.0) if (y == c).any()]))
    wells = pd.DataFrame({"w": val.table["Metadata_Plate"].astype(str) + "/" + val.table["Metadata_Well"].astype(str),
                          "z": z, "y": y}).groupby("w").agg(z=("z", "median"), y=("y", "first"))
    well_acc = float(((wells["z"] > 0).astype(float) == wells["y"]).mean())
    return {"val_loss": loss, "val_accuracy": acc, "val_balanced_accuracy": bal, "val_well_accuracy": well_acc}


def train_cell_classifier(train: CropDataset, val: CropDataset, params: CellTrainParams = CellTrainParams(),
                          on_epoch: Callable[[int, dict], None] | None = None) -> CellTrainResult:
    """Train a :class:`CellCNN` on ``train`` crops, early-stopped on ``val`` crops.

    ``train`` / ``val``: :class:`CropDataset` with ``label`` and ``Metadata_Donor`` in the table
    (``val`` should hold other donors: :func:`fit_cell_classifier` does the split). Both need
    crops of both conditions for meaningful balancing/validation. ``on_epoch(epoch, metrics)``
    after each epoch (epochs from 1). Deterministic for a seed and thread count.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"need training and validation crops, got {len(train)} and {len(val)}")
    p = params
    with torch_threads(p.threads):
        set_seed(p.seed)
        rng = np.random.default_rng([p.seed, 17])
        model = CellCNN(train.crops.shape[1], p.width, p.n_blocks, p.embedding_size, p.dropout)
        model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, p.epochs), eta_min=p.lr * p.eta_min_ratio)
        weights = sample_weights(train.table, p.balance)
        y_all = train.table["label"].to_numpy().astype(np.float32)
        n_epoch = int(min(p.crops_per_epoch or len(train), len(train)))  # an epoch draws at most len(train) crops
        aug = AugmentParams()
        best = BestEpoch(model, p.patience, p.min_epochs)
        history: list[dict] = []
        t0 = time.perf_counter()
        for epoch in range(1, p.epochs + 1):
            te = time.perf_counter()
            if p.balance in ("donor", "condition"):
                order = rng.choice(len(train), size=n_epoch, replace=True, p=weights)
            else:
                order = rng.permutation(len(train))
                if n_epoch < len(order):
                    order = order[:n_epoch]
            def batch_loss(idx: np.ndarray, x: torch.Tensor) -> torch.Tensor:
                yb = torch.from_numpy(y_all[idx])
                logits = model(x)
                return _balanced_bce(logits, yb) if p.balance == "loss" else F.binary_cross_entropy_with_logits(logits, yb)

            deadline = t0 + p.max_seconds if p.max_seconds is not None else None
            tot, n_seen, out_of_time = train_epoch(model, opt, train.crops, order, p.batch_size, batch_loss,
                                                   rng if p.augment else None, aug, deadline)
            lr = opt.param_groups[0]["lr"]
            sched.step()
            m = {"epoch": epoch, "train_loss": tot / max(n_seen, 1), "train_crops": n_seen,
                 **_val_metrics(model, val, p.eval_batch_size), "lr": lr,
                 "seconds": time.perf_counter() - te}
            history.append(m)
            stop = best.update(model, epoch, m["val_loss"], out_of_time)
            if on_epoch:
                on_epoch(epoch, m)
            if stop:
                break
        if best.epoch == 0:
            raise ValueError("no epoch had a finite validation loss: nothing to keep (check the validation crops)")
        best.restore(model)
    return CellTrainResult(model, history, best.epoch, best.loss, time.perf_counter() - t0, best.stopped,
                           sorted(train.table["Metadata_Donor"].astype(str).unique()),
                           sorted(val.table["Metadata_Donor"].astype(str).unique()), p.as_dict())


def fit_cell_classifier(data: CropDataset, params: CellTrainParams = CellTrainParams(),
                        val_donors: list[str] | None = None,
                        on_epoch: Callable[[int, dict], None] | None = None) -> CellTrainResult:
    """Hold out validation donors (``val_donors`` or :func:`split_validation_donors` with
    ``params.val_fraction``), then :func:`train_cell_classifier` on the rest."""
    donors = data.table["Metadata_Donor"].astype(str)
    val_ids = set(val_donors if val_donors is not None else split_validation_donors(data.table, params.val_fraction, params.seed))
    is_val = donors.isin(val_ids).to_numpy()
    return train_cell_classifier(data.subset(~is_val), data.subset(is_val), params, on_epoch)


# ------------------------------------------------------------------------ aggregation


def cell_frame(table: pd.DataFrame, emb: np.ndarray, logits: np.ndarray | None = None) -> pd.DataFrame:
    """Per-cell table: the crop table's ``Metadata_*`` columns (and ``label``) + ``f0000``..
    embedding columns (+ ``Metadata_Logit`` when ``logits`` is given)."""
    from ssc_assets.core.learn.embeddings import feature_names
    from ssc_assets.core.schema import metadata_columns

    meta = table[metadata_columns(table)].reset_index(drop=True).copy()
    if logits is not None:
        meta["Metadata_Logit"] = np.asarray(logits, np.float64)
    return pd.concat([meta, pd.DataFrame(np.asarray(emb, np.float32), columns=feature_names(emb.shape[1]))], axis=1)


def aggregate_cells(table: pd.DataFrame, emb: np.ndarray, method: str = "cell_cnn",
                    logits: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cell -> site (median over the site's cells) -> well (median over the well's sites).

    ``table``: crop table (``schema.SITE_META`` columns), ``emb`` (N, E) aligned with it.
    Returns ``(sites, wells)``: ``sites`` in the
    :func:`ssc_assets.core.learn.embeddings.embedding_frame` layout (``SITE_META`` +
    ``Metadata_Method`` + ``f0000``..) plus ``Metadata_n_cells``; ``wells`` from
    :func:`~ssc_assets.core.learn.embeddings.well_embeddings` plus ``Metadata_n_cells`` (summed
    over sites). With ``logits`` (N,), both also get ``Metadata_Score``: the median cell logit
    of the site, then the median over the well's sites (> 0 = SSc-like); it is metadata, not
    a feature, so feature-based analyses do not see it twice.
    """
    from ssc_assets.core import schema
    from ssc_assets.core.learn.embeddings import feature_names, well_embeddings

    names = feature_names(emb.shape[1])
    df = pd.concat([table[schema.site_meta(table)].reset_index(drop=True),
                    pd.DataFrame(np.asarray(emb, np.float64), columns=names)], axis=1)
    if logits is not None:
        df["Metadata_Score"] = np.asarray(logits, np.float64)
    g = df.groupby(schema.SITE_KEY, sort=True)
    sites = g[names].median()
    sites["Metadata_n_cells"] = g.size()
    if logits is not None:
        sites["Metadata_Score"] = g["Metadata_Score"].median()
    carried = schema.site_meta(table)[len(schema.SITE_KEY):]
    sites = pd.concat([g[carried].first(), sites], axis=1).reset_index()
    sites[schema.METHOD] = method
    front = [*schema.site_meta(table), schema.METHOD]
    sites = sites[front + [c for c in sites.columns if c not in front]]
    return sites, well_embeddings(sites)  # wells: Metadata_n_cells summed, Metadata_Score median over sites


# ------------------------------------------------------------------------ cross-validation


@dataclass
class CellCVResult:
    """Out-of-fold outputs of :func:`cross_validate_cells`.

    ``cells``: :func:`cell_frame` of every crop (embedding and ``Metadata_Logit`` from the
    model of the fold in which its donor was held out) + ``Metadata_Fold``; ``folds``: per
    fold ``fold, test_donors, val_donors, best_epoch, stopped, seconds, n_train_crops,
    history``; ``seconds``: total.
    """

    cells: pd.DataFrame
    folds: list[dict]
    seconds: float


def cross_validate_cells(data: CropDataset, params: CellTrainParams = CellTrainParams(), n_folds: int = 5,
                         seed: int = 0, on_fold: Callable[[int, dict], None] | None = None,
                         on_epoch: Callable[[int, int, dict], None] | None = None) -> CellCVResult:
    """Donor-grouped k-fold: every donor is in exactly one test fold; within the other donors
    validation donors are held out (:func:`fit_cell_classifier`). Folds are
    :func:`ssc_assets.core.learn.splits.grouped_folds` (StratifiedGroupKFold by condition;
    ``n_folds`` is capped by the number of donors). ``on_epoch(fold, epoch, metrics)``.
    Note: out-of-fold embeddings of different folds come from different models (different
    spaces): compare them within a fold, or use the logit, which means the same everywhere.
    """
    from ssc_assets.core.learn.splits import grouped_folds

    t0 = time.perf_counter()
    donors = data.table["Metadata_Donor"].astype(str)
    per_label = data.table.groupby("label")["Metadata_Donor"].nunique()
    k = int(max(2, min(n_folds, per_label.min())))
    folds = grouped_folds(donors, data.table["label"], n_splits=k, seed=seed)
    emb = np.full((len(data), params.embedding_size), np.nan, np.float32)
    logit = np.full(len(data), np.nan, np.float32)
    fold_id = np.full(len(data), -1, np.int64)
    info = []
    for f, (tr, te) in enumerate(folds):
        train_part = data.subset(np.isin(np.arange(len(data)), tr))
        cb = (lambda e, m, f=f: on_epoch(f, e, m)) if on_epoch else None
        res = fit_cell_classifier(train_part, replace(params, seed=params.seed + f), on_epoch=cb)
        e, z = _forward_all(res.model, data.crops[te], params.eval_batch_size)
        emb[te], logit[te], fold_id[te] = e, z, f
        rec = {"fold": f, "test_donors": sorted(donors.iloc[te].unique()), "val_donors": res.val_donors,
               "best_epoch": res.best_epoch, "stopped": res.stopped, "seconds": res.seconds,
               "n_train_crops": int(len(tr)), "history": res.history}
        info.append(rec)
        if on_fold:
            on_fold(f, rec)
    cells = cell_frame(data.table, emb, logit)
    cells["Metadata_Fold"] = fold_id
    return CellCVResult(cells, info, time.perf_counter() - t0)


# ------------------------------------------------------------------------ the model asset's fit

#: Donor-grouped folds for the out-of-fold scores of the model asset (capped by the donors per condition).
OOF_FOLDS = 3
#: Wall-time budget (s) of one model asset: the out-of-fold trainings and the final model together.
MODEL_BUDGET_SECONDS = 600.0


@dataclass
class CellModelFit:
    """:func:`fit_with_out_of_fold` output: ``final`` (trained on every donor but its own
    validation donors; the registered model), ``cv`` (out-of-fold cells), ``oof_wells``
    (:func:`out_of_fold_wells`), ``metrics`` (out-of-fold well/donor metrics), ``seconds``."""

    final: CellTrainResult
    cv: CellCVResult
    oof_wells: pd.DataFrame
    metrics: dict
    seconds: float


def out_of_fold_wells(data: CropDataset, cv: CellCVResult) -> pd.DataFrame:
    """Per well: ``WELL_META`` (+ acquisition group) + ``Metadata_OofScore`` (median over the
    well's sites of the median out-of-fold cell logit; > 0 = SSc-like) + ``Metadata_n_cells``."""
    from ssc_assets.core import schema

    logit = cv.cells["Metadata_Logit"].to_numpy()
    _, wells = aggregate_cells(data.table, np.zeros((len(data), 1), np.float32), "cells", logits=logit)
    wells = wells.rename(columns={"Metadata_Score": "Metadata_OofScore"})
    keep = [c for c in wells.columns if schema.is_metadata(c)]
    return wells[keep].drop(columns=[schema.METHOD, schema.N_SITES], errors="ignore")


def oof_metrics(oof_wells: pd.DataFrame) -> dict:
    """Out-of-fold well accuracy (score > 0 vs SSc), well ROC AUC, donor accuracy (mean score)."""
    from sklearn.metrics import roc_auc_score

    y = (oof_wells["Metadata_Condition"].astype(str).str.lower() == "ssc").to_numpy()
    s = oof_wells["Metadata_OofScore"].to_numpy(np.float64)
    ok = np.isfinite(s)
    out = {"well_accuracy": float(((s[ok] > 0) == y[ok]).mean()) if ok.any() else float("nan")}
    out["well_auc"] = float(roc_auc_score(y[ok], s[ok])) if len(set(y[ok])) == 2 else float("nan")
    d = pd.DataFrame({"d": oof_wells["Metadata_Donor"].astype(str), "s": s, "y": y})[ok].groupby("d").agg(s=("s", "mean"), y=("y", "first"))
    out["donor_accuracy"] = float(((d["s"] > 0) == d["y"]).mean()) if len(d) else float("nan")
    return out


def fit_with_out_of_fold(data: CropDataset, params: CellTrainParams = CellTrainParams(), *, n_folds: int = OOF_FOLDS,
                         budget_seconds: float | None = MODEL_BUDGET_SECONDS, seed: int = 0,
                         on_epoch: Callable[[int, dict], None] | None = None,
                         on_fold_epoch: Callable[[int, int, dict], None] | None = None) -> CellModelFit:
    """Out-of-fold scores (:func:`cross_validate_cells`, ``n_folds`` donor-grouped folds) and
    the final model (:func:`fit_cell_classifier` on all donors) within ``budget_seconds`` of
    wall time: each of the ``k + 1`` trainings gets ``min(params.max_seconds, budget / (k + 1))``.
    Every well then has a score from a model that never saw its donor (``oof_wells``)."""
    per_label = data.table.groupby("label")["Metadata_Donor"].nunique()
    if len(per_label) < 2 or per_label.min() < 3:
        raise ValueError("need at least 3 donors per condition (one to test, one to validate, one to train in every "
                         f"donor-grouped fold), have {per_label.to_dict()} (label 1 = SSc)")
    k = int(max(2, min(n_folds, per_label.min())))
    p = params
    if budget_seconds is not None:
        share = budget_seconds / (k + 1)
        p = replace(params, max_seconds=share if params.max_seconds is None else min(params.max_seconds, share))
    t0 = time.perf_counter()
    cv = cross_validate_cells(data, p, n_folds=k, seed=seed, on_epoch=on_fold_epoch)
    final = fit_cell_classifier(data, p, on_epoch=on_epoch)
    oof = out_of_fold_wells(data, cv)
    return CellModelFit(final, cv, oof, {**oof_metrics(oof), "folds": k}, time.perf_counter() - t0)
