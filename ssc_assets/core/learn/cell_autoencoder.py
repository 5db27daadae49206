"""Convolutional autoencoder on single-cell crops (issue 11): the unsupervised learned method
in the CPU regime. Pure torch: no Dagster, no MLflow.

:class:`CellAutoencoder`: the encoder of :class:`~ssc_assets.core.learn.cell_models.CellCNN`
(``n_blocks`` x (3x3 conv -> BN -> ReLU -> 2x2 max pool), ``width`` channels) flattened to a
linear ``embedding_size``-d code; the decoder mirrors it (linear -> (width, S/2**n, S/2**n) ->
``n_blocks`` x (2x nearest upsample -> 3x3 conv -> BN -> ReLU), last a 3x3 conv to C channels).
Input float32 (B, C, S, S) crops as cut (S divisible by 2**n_blocks); the model standardises
them per channel with its own ``mean`` / ``std`` buffers (set from the training crops), so a
saved model embeds raw crops; the reconstruction is in standardised units.

Embedding (:meth:`CellAutoencoder.embed`, the ``cell_autoencoder`` site embedding): the encoder's
feature maps after blocks 2..n_blocks, each averaged over the crop (global average pooling),
concatenated: float32 (B, width x (n_blocks - 1)), 96-d by default. The linear code
(:meth:`CellAutoencoder.code`, ``embedding_size``-d) is what the decoder needs to redraw the
crop: where the nucleus is, how bright the cell is. The pooled maps are texture statistics
(fibres, fragmented junctions) wherever they occur in the crop. On held-out studies' crops
(:data:`CROP_NORMALIZE`, 100 s of training, leave-one-donor-out accuracy of the well medians):

=========================================  ======================  =====================================
readout (crops)                            study A (no split)      study C (objective split in plates)
=========================================  ======================  =====================================
linear code (corrected units, until v3)    0.897                   0.513 (PCA baseline: 0.577)
linear code (per-site standardised)        0.641                   0.551
pooled blocks 2-4 (per-site standardised)  **0.962**               **0.872**
same, untrained encoder (control)          0.936                   0.872
=========================================  ======================  =====================================

The untrained control says how much of this the architecture does by itself (random
convolutions pooled over the crop are texture descriptors); training adds up to 0.03 here.

Training (:func:`train_cell_autoencoder`) uses no labels: mean squared reconstruction error of
per-channel standardised crops, the thesis' rotation/flip augmentation, early stopping on the
reconstruction loss of held-out donors' crops, and a wall-time budget. Because it never sees a
label, embedding every crop with one model trained on all donors does not leak labels (like
PCA); the donor-grouped evaluation then happens on the well medians.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssc_assets.core.learn.augment import AugmentParams
from ssc_assets.core.learn.cell_crops import CropDataset
from ssc_assets.core.learn.cell_models import conv_blocks
from ssc_assets.core.learn.cell_training import (
    BestEpoch,
    _to_tensor,
    split_validation_donors,
    torch_threads,
    train_epoch,
)
from ssc_assets.core.learn.loop import set_seed

#: Crop intensities for the autoencoder (:class:`~ssc_assets.core.learn.cell_crops.CropParams`
#: ``normalize``): ``"site"``, each channel standardised by its site's mean and SD, as for the
#: cell CNN: a gain or exposure change between objectives or plates is removed before the model.
#: With the pooled readout it beat corrected units (``"none"``) on both held-out studies (A
#: 0.962 vs 0.936, C 0.872 vs 0.808); the linear code needed ``"none"`` (A 0.897 vs 0.641),
#: i.e. it carried mostly brightness, which an objective change inside a plate distorts.
CROP_NORMALIZE = "site"
#: Crop borders for the autoencoder: ``"skip"`` (nuclei whose window leaves the site are not
#: used). Unlike the cell CNN, zero-padded edge crops did not help it: on held-out study A's
#: crops (100 s training) LODO 0.859 / donor rho 0.92 with ``"pad"``, 0.910 / 0.97 with
#: ``"skip"``; on study C both were at chance.
CROP_BORDER = "skip"


class CellAutoencoder(nn.Module):
    def __init__(self, in_channels: int = 3, size: int = 64, width: int = 32, n_blocks: int = 4,
                 embedding_size: int = 16):
        super().__init__()
        if size % (2**n_blocks):
            raise ValueError(f"crop size {size} must be divisible by 2**n_blocks = {2**n_blocks}")
        self.encoder = nn.Sequential(*conv_blocks(in_channels, width, n_blocks))
        self.side = size // 2**n_blocks
        self.to_code = nn.Linear(width * self.side * self.side, embedding_size)
        self.from_code = nn.Linear(embedding_size, width * self.side * self.side)
        dec: list[nn.Module] = []
        for _ in range(n_blocks):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        dec.append(nn.Conv2d(width, in_channels, 3, padding=1))
        self.decoder = nn.Sequential(*dec)
        self.width = width
        self.readout = "pooled"
        self.register_buffer("mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, in_channels, 1, 1))
        self.config = {"in_channels": in_channels, "size": size, "width": width, "n_blocks": n_blocks,
                       "embedding_size": embedding_size}

    def set_standardisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Per-channel mean and std (C,) of the training crops, in crop units."""
        self.mean.copy_(torch.as_tensor(np.asarray(mean, np.float32)).view_as(self.mean))
        self.std.copy_(torch.as_tensor(np.asarray(std, np.float32)).view_as(self.std))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @property
    def embedding_dim(self) -> int:
        """Width of :meth:`embed`: ``width x (n_blocks - 1)`` (pooled), or ``embedding_size``
        for a model saved before the pooled readout (version 2 and older)."""
        if getattr(self, "readout", "code") == "code":
            return self.config["embedding_size"]
        return self.width * max(1, self.config["n_blocks"] - 1)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """Crops (B, C, S, S) -> linear code (B, embedding_size) float32 (the decoder's input)."""
        return self.to_code(self.encoder(self.standardise(x)).flatten(1))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Crops (B, C, S, S) -> (B, width x (n_blocks - 1)) float32: the mean over the crop of
        each feature map after encoder blocks 2..n_blocks (block 1 alone when n_blocks == 1)."""
        h, feats, n = self.standardise(x), [], self.config["n_blocks"]
        per_block = len(self.encoder) // n
        for j, layer in enumerate(self.encoder):
            h = layer(h)
            block = (j + 1) // per_block
            if (j + 1) % per_block == 0 and (block >= 2 or n == 1):
                feats.append(h.mean(dim=(2, 3)))
        return torch.cat(feats, 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Crops (B, C, S, S) -> embedding (B, :attr:`embedding_dim`) float32: :meth:`pooled`
        (models saved before it embed with :meth:`code`)."""
        return self.code(x) if getattr(self, "readout", "code") == "code" else self.pooled(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Crops (B, C, S, S) -> reconstruction of ``standardise(x)`` (B, C, S, S)."""
        h = self.from_code(self.code(x)).view(-1, self.width, self.side, self.side)
        return self.decoder(h)


@dataclass(frozen=True)
class CellAutoencoderParams:
    """CPU regime: at most ``epochs`` x ``crops_per_epoch`` crops, Adam ``lr`` with cosine
    annealing, early stop after ``patience`` epochs without a lower held-out reconstruction
    loss, ``max_seconds`` of wall time (checked after every batch)."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-5
    patience: int | None = 3
    max_seconds: float | None = 150.0
    crops_per_epoch: int | None = 6000
    augment: bool = True
    threads: int | None = None
    val_fraction: float = 0.25
    width: int = 32
    n_blocks: int = 4
    embedding_size: int = 16
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CellAutoencoderResult:
    model: CellAutoencoder  # best held-out weights, eval mode, standardisation inside
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    seconds: float
    stopped: str
    val_donors: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)


def channel_stats(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32 (C,)) of crops (N, C, S, S); std floored at 1e-6."""
    mean = crops.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    std = crops.std(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    return mean, np.maximum(std, 1e-6)


def reconstruction_loss(model: CellAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the reconstruction and the standardised crops."""
    return F.mse_loss(model(x), model.standardise(x))


@torch.inference_mode()
def _recon_loss(model: CellAutoencoder, crops: np.ndarray, batch_size: int = 512) -> float:
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(crops), batch_size):
        x = _to_tensor(crops[i : i + batch_size])
        tot += float(reconstruction_loss(model, x)) * x.numel()
        n += x.numel()
    return tot / max(n, 1)


def train_cell_autoencoder(data: CropDataset, params: CellAutoencoderParams = CellAutoencoderParams(),
                           on_epoch: Callable[[int, dict], None] | None = None) -> CellAutoencoderResult:
    """Train a :class:`CellAutoencoder` on ``data`` crops (N, C, S, S) float32, early-stopped on
    the reconstruction loss of ``val_fraction`` of each condition's donors (held out of training;
    labels are used only to pick validation donors of both conditions). Deterministic for a
    seed and thread count."""
    p = params
    val_donors = split_validation_donors(data.table, p.val_fraction, p.seed)
    is_val = data.table["Metadata_Donor"].astype(str).isin(val_donors).to_numpy()
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if len(train_idx) < 2 or len(val_idx) == 0:
        raise ValueError(f"need training and validation crops, got {len(train_idx)} and {len(val_idx)}")
    mean, std = channel_stats(data.crops[train_idx])
    val_crops = data.crops[val_idx]
    with torch_threads(p.threads):
        set_seed(p.seed)
        rng = np.random.default_rng([p.seed, 23])
        model = CellAutoencoder(data.crops.shape[1], data.crops.shape[-1], p.width, p.n_blocks, p.embedding_size)
        model.set_standardisation(mean, std)
        model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, p.epochs), eta_min=p.lr * 0.05)
        n_epoch = int(min(p.crops_per_epoch or len(train_idx), len(train_idx)))
        aug = AugmentParams()
        best = BestEpoch(model, p.patience)
        history: list[dict] = []
        t0 = time.perf_counter()
        for epoch in range(1, p.epochs + 1):
            te = time.perf_counter()
            order = rng.permutation(train_idx)[:n_epoch]
            deadline = t0 + p.max_seconds if p.max_seconds is not None else None
            tot, n_seen, out_of_time = train_epoch(model, opt, data.crops, order, p.batch_size,
                                                   lambda idx, x: reconstruction_loss(model, x),
                                                   rng if p.augment else None, aug, deadline)
            lr = opt.param_groups[0]["lr"]
            sched.step()
            m = {"epoch": epoch, "train_loss": tot / max(n_seen, 1), "train_crops": n_seen,
                 "val_loss": _recon_loss(model, val_crops), "lr": lr, "seconds": time.perf_counter() - te}
            history.append(m)
            stop = best.update(model, epoch, m["val_loss"], out_of_time)
            if on_epoch:
                on_epoch(epoch, m)
            if stop:
                break
        if best.epoch == 0:
            raise ValueError("no epoch had a finite validation loss: nothing to keep (check the crops for NaN)")
        best.restore(model)
    return CellAutoencoderResult(model, history, best.epoch, best.loss, time.perf_counter() - t0, best.stopped,
                                 val_donors, p.as_dict())


@torch.inference_mode()
def embed_cells_autoencoder(model: CellAutoencoder, crops: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Embeddings float32 (N, model.embedding_dim) of crops float32 (N, C, S, S)
    (:meth:`CellAutoencoder.embed`), eval mode, ``batch_size`` crops at a time."""
    model = model.eval()
    out = [model.embed(_to_tensor(crops[i : i + batch_size])).float().numpy()
           for i in range(0, len(crops), batch_size)]
    if not out:
        return np.zeros((0, model.embedding_dim), np.float32)
    return np.concatenate(out).astype(np.float32)
