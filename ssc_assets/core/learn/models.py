"""Neural network models of the thesis: U-Net, per-channel autoencoder and patient classifiers.

All models are plain PyTorch modules (CPU-friendly, no Dagster import):

* :class:`UNet` - Ronneberger U-Net with padded convolutions (output size == input size).
* :class:`ChannelAutoencoder` - convolutional autoencoder of Figure A.1, one per channel.
* :class:`CustomClassifier` - small CNN classifier of Figure A.2 (HC vs SSc crops).
* :class:`DenseNetClassifier` - torchvision DenseNet-121 backbone with a small embedding head.

Images are float32 tensors ``(B, C, H, W)``; classifiers return logits ``(B,)`` (apply the
sigmoid through ``BCEWithLogitsLoss`` or ``predict_proba``).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # torchvision (2-3 s to import) only when a DenseNet is built
    import torchvision

logger = logging.getLogger(__name__)

__all__ = [
    "UNet",
    "ChannelAutoencoder",
    "reconstruction_target",
    "CustomClassifier",
    "DenseNetClassifier",
    "load_densenet121_backbone",
    "count_parameters",
    "embedding_size",
]


# --------------------------------------------------------------------------- U-Net


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """(conv3x3 padded - BN - ReLU) x 2; keeps H, W."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Ronneberger U-Net with padded 3x3 convolutions.

    Level ``i`` of the encoder has ``base_channels * 2**i`` channels; after ``depth`` 2x2
    max-pools the bottleneck has ``base_channels * 2**depth`` channels at ``H / 2**depth``
    (base 64, depth 4: a 2x512x512 input gives a 1024x32x32 bottleneck). The decoder uses 2x2
    transposed convolutions and concatenates the matching encoder output (skip connection).

    Input ``(B, in_channels, H, W)`` float32 with ``H`` and ``W`` divisible by ``2**depth``;
    output logits ``(B, n_classes, H, W)`` float32.
    """

    def __init__(self, in_channels: int = 2, n_classes: int = 2, base_channels: int = 64, depth: int = 4):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, not {depth}")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.base_channels = base_channels
        self.depth = depth

        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        ch = in_channels
        for w in widths[:-1]:
            self.down.append(_double_conv(ch, w))
            ch = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for w_hi, w_lo in zip(widths[:0:-1], widths[-2::-1]):
            self.up.append(nn.ConvTranspose2d(w_hi, w_lo, kernel_size=2, stride=2))
            self.up_conv.append(_double_conv(2 * w_lo, w_lo))  # skip + upsampled
        self.head = nn.Conv2d(widths[0], n_classes, kernel_size=1)

    def _check_size(self, h: int, w: int) -> None:
        f = 2**self.depth
        if h % f or w % f or h < f or w < f:
            raise ValueError(
                f"UNet(depth={self.depth}) needs H and W divisible by 2**depth = {f}; got H={h}, W={w}"
            )

    def bottleneck_shape(self, h: int, w: int) -> tuple[int, int, int]:
        """``(channels, h / 2**depth, w / 2**depth)`` of the bottleneck for an ``h x w`` input."""
        self._check_size(h, w)
        f = 2**self.depth
        return (self.base_channels * f, h // f, w // f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> logits ``(B, n_classes, H, W)``."""
        if x.ndim != 4:
            raise ValueError(f"UNet expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        self._check_size(x.shape[-2], x.shape[-1])
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


# --------------------------------------------------------------------------- autoencoder


class ChannelAutoencoder(nn.Module):
    """Convolutional autoencoder of the thesis (Figure A.1), trained on one channel.

    Encoder: conv blocks ``Conv2d(k4, s2, p1) + LeakyReLU(0.01) + Dropout`` with ``widths``
    channels (1x256x256 -> 256x128x128 -> 128x64x64 -> 64x32x32 -> 32x16x16 by default),
    flatten, ``Linear(flat, hidden)``, ``Linear(hidden, embedding_size)`` (each + LeakyReLU +
    Dropout). The decoder mirrors it and ends with ``ConvTranspose2d(widths[0], 2)`` and a
    softmax over the 2 classes (background, object).

    Input ``(B, 1, patch_size, patch_size)`` float32; ``forward`` returns probabilities
    ``(B, 2, patch_size, patch_size)`` (channel 1 = P(object)); ``encode`` returns the
    embedding ``(B, embedding_size)``. Train with ``MSE(probs, reconstruction_target(x))``.
    """

    def __init__(
        self,
        patch_size: int = 256,
        embedding_size: int = 256,
        dropout: float = 0.4,
        widths: tuple[int, ...] = (256, 128, 64, 32),
        hidden: int = 512,
    ):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths:
            raise ValueError("widths must contain at least one conv width")
        f = 2 ** len(widths)
        if patch_size % f or patch_size < f:
            raise ValueError(
                f"patch_size must be divisible by 2**len(widths) = {f}; got patch_size={patch_size}"
            )
        self.patch_size = patch_size
        self.embedding_size = embedding_size
        self.widths = widths
        self.hidden = hidden
        side = patch_size // f
        self.bottleneck_shape = (widths[-1], side, side)
        self.flatten_size = widths[-1] * side * side

        def act_drop() -> list[nn.Module]:
            return [nn.LeakyReLU(0.01), nn.Dropout(dropout)]

        # encoder: conv blocks, then fully connected layers down to the embedding
        blocks = []
        ch = 1
        for w in widths:
            blocks.append(nn.Sequential(nn.Conv2d(ch, w, kernel_size=4, stride=2, padding=1), *act_drop()))
            ch = w
        self.encoder_convs = nn.Sequential(*blocks)
        self.encoder_fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.flatten_size, hidden),
            *act_drop(),
            nn.Linear(hidden, embedding_size),
            nn.LeakyReLU(0.01),  # output = embedding
        )
        self.embedding_dropout = nn.Dropout(dropout)

        # decoder: mirror image
        self.decoder_fc = nn.Sequential(
            nn.Linear(embedding_size, hidden),
            *act_drop(),
            nn.Linear(hidden, self.flatten_size),
            *act_drop(),
            nn.Unflatten(1, self.bottleneck_shape),
        )
        rev = widths[::-1]
        up = [
            nn.Sequential(nn.ConvTranspose2d(a, b, kernel_size=4, stride=2, padding=1), *act_drop())
            for a, b in zip(rev[:-1], rev[1:])
        ]
        up.append(nn.ConvTranspose2d(widths[0], 2, kernel_size=4, stride=2, padding=1))
        self.decoder_convs = nn.Sequential(*up, nn.Softmax(dim=1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, P, P)`` float32 -> embedding ``(B, embedding_size)`` (after LeakyReLU, before dropout)."""
        return self.encoder_fc(self.encoder_convs(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Embedding ``(B, embedding_size)`` -> probabilities ``(B, 2, P, P)``."""
        return self.decoder_convs(self.decoder_fc(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, P, P)`` -> probabilities ``(B, 2, P, P)``, summing to 1 over dim 1."""
        return self.decode(self.embedding_dropout(self.encode(x)))


def reconstruction_target(x: torch.Tensor) -> torch.Tensor:
    """Two-class reconstruction target of the autoencoder.

    ``x`` is ``(B, 1, H, W)`` (normalized intensities). Per image, ``p = (x - q01) / (q99 - q01)``
    clipped to [0, 1], with q01 / q99 the 1st / 99th percentiles (``torch.quantile``, linear
    interpolation) of the image; a flat image (q99 == q01) gives ``p = 0``.
    Returns ``cat([1 - p, p], dim=1)`` of shape ``(B, 2, H, W)``, float (dtype of ``x``
    if floating, else float32).
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"reconstruction_target expects (B, 1, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    flat = x.detach().flatten(1)
    qs = torch.quantile(flat, torch.tensor([0.01, 0.99], dtype=flat.dtype, device=flat.device), dim=1)
    q01 = qs[0].view(-1, 1, 1, 1)
    q99 = qs[1].view(-1, 1, 1, 1)
    span = q99 - q01
    ok = span > 0
    p = ((x.detach() - q01) / torch.where(ok, span, torch.ones_like(span))).clamp(0.0, 1.0)
    p = torch.where(ok, p, torch.zeros_like(p))  # guard flat images
    return torch.cat([1.0 - p, p], dim=1)


# --------------------------------------------------------------------------- classifiers


class _BinaryClassifierAPI:
    """Shared ``predict_proba``; subclasses define ``embed`` and ``forward``."""

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> P(class 1) ``(B,)`` float32 = sigmoid(logits)."""
        return torch.sigmoid(self(x))


class CustomClassifier(_BinaryClassifierAPI, nn.Module):
    """Small CNN classifier of the thesis (Figure A.2).

    ``n_blocks`` blocks ``Conv2d(3x3, s1, p1) - BatchNorm2d - LeakyReLU - Dropout - MaxPool2d(2)``
    with widths ``first_width`` halved at each block (never below 1; 256, 128, ..., 2 by
    default); flatten (``last_width * (crop_size / 2**n_blocks)**2``, 8 by default);
    ``Linear(flat, 64) + LeakyReLU``, ``Linear(64, embedding_size) + LeakyReLU`` (embedding),
    ``Linear(embedding_size, 1)``.

    Input ``(B, in_channels, crop_size, crop_size)`` float32; ``forward`` -> logits ``(B,)``,
    ``embed`` -> ``(B, embedding_size)``, ``predict_proba`` -> ``(B,)`` in [0, 1].
    """

    def __init__(
        self,
        in_channels: int = 3,
        crop_size: int = 512,
        n_blocks: int = 8,
        first_width: int = 256,
        embedding_size: int = 8,
        dropout: float = 0.4,
    ):
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, not {n_blocks}")
        side = crop_size // 2**n_blocks
        if side < 1:
            raise ValueError(
                f"crop_size={crop_size} is too small for n_blocks={n_blocks}: "
                f"crop_size // 2**n_blocks = {side} < 1"
            )
        self.in_channels = in_channels
        self.crop_size = crop_size
        self.embedding_size = embedding_size
        self.widths = tuple(max(1, first_width // 2**i) for i in range(n_blocks))
        self.flatten_size = self.widths[-1] * side * side

        blocks = []
        ch = in_channels
        for w in self.widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(ch, w, kernel_size=3, stride=1, padding=1),
                    nn.BatchNorm2d(w),
                    nn.LeakyReLU(0.01),
                    nn.Dropout(dropout),
                    nn.MaxPool2d(2),
                )
            )
            ch = w
        self.features = nn.Sequential(*blocks)
        self.embedding = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.flatten_size, 64),
            nn.LeakyReLU(0.01),
            nn.Linear(64, embedding_size),
            nn.LeakyReLU(0.01),
        )
        self.head = nn.Linear(embedding_size, 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` -> embedding ``(B, embedding_size)``."""
        return self.embedding(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` -> logits ``(B,)``."""
        return self.head(self.embed(x)).squeeze(-1)


# old torchvision checkpoints name layers 'norm.1' instead of 'norm1': torchvision's regex
# (torchvision.models.densenet._load_state_dict), extended to num_batches_tracked
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _remap_densenet_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename old-style keys (``...denselayer1.norm.1.weight`` -> ``...denselayer1.norm1.weight``)."""
    out = {}
    for key, value in state_dict.items():
        m = _DENSENET_OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def load_densenet121_backbone(weights: str | os.PathLike = "imagenet") -> tuple[torchvision.models.DenseNet, str]:
    """Build a torchvision DenseNet-121 and load its weights.

    ``weights``: ``"imagenet"`` (torchvision IMAGENET1K_V1 from the torch hub cache or the
    network; on ANY failure falls back to random init with a warning and a log record),
    ``"none"`` (random init) or the path of a local ``.pth`` state dict with torchvision's
    keys (old-style keys are remapped). A missing file raises ``FileNotFoundError``, an
    unreadable or mismatching one ``ValueError``; an explicit path never falls back.

    Returns ``(model, source)`` with source ``"imagenet:torchvision IMAGENET1K_V1"``,
    ``"file:<abs path>"`` or ``"random-init (<reason>)"``.
    """
    import torchvision

    tv = torchvision.models
    if not isinstance(weights, os.PathLike) and str(weights).lower() == "none":
        return tv.densenet121(weights=None), "random-init (weights='none')"

    if not isinstance(weights, os.PathLike) and str(weights).lower() == "imagenet":
        model = tv.densenet121(weights=None)
        try:
            state = tv.DenseNet121_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
            model.load_state_dict(_remap_densenet_keys(state))
            return model, "imagenet:torchvision IMAGENET1K_V1"
        except Exception as exc:  # noqa: BLE001 - any failure -> loud fallback
            reason = f"ImageNet weights unavailable: {type(exc).__name__}: {exc}"
            msg = f"DenseNet-121 falls back to RANDOM initialization ({reason})"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            logger.warning(msg)
            return tv.densenet121(weights=None), f"random-init ({reason})"

    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"DenseNet-121 weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read DenseNet-121 state dict {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    model = tv.densenet121(weights=None)
    try:
        model.load_state_dict(_remap_densenet_keys(state))
    except RuntimeError as exc:
        raise ValueError(f"{path} is not a torchvision densenet121 state dict: {exc}") from exc
    return model, f"file:{path.resolve()}"


class DenseNetClassifier(_BinaryClassifierAPI, nn.Module):
    """DenseNet-121 (torchvision) backbone with an embedding layer and a binary head.

    ``backbone`` is torchvision's DenseNet-121 with ``classifier`` replaced by ``Identity``,
    so it returns ``relu(features) -> adaptive avg pool -> flatten`` = ``(B, 1024)``;
    then ``embedding = Linear(1024, E) + LeakyReLU`` and ``head = Linear(E, 1)``.

    Input ``(B, 3, H, W)`` float32 (H, W >= 32); ``forward`` -> logits ``(B,)``,
    ``embed`` -> ``(B, E)``, ``predict_proba`` -> ``(B,)``. ``weights_source`` records where
    the backbone weights came from (see :func:`load_densenet121_backbone`).
    """

    def __init__(self, embedding_size: int = 8, weights: str = "imagenet"):
        super().__init__()
        backbone, self.weights_source = load_densenet121_backbone(weights)
        n_features = backbone.classifier.in_features  # 1024
        backbone.classifier = nn.Identity()
        self.backbone = backbone
        self.n_features = n_features
        self.embedding_size = embedding_size
        self.embedding = nn.Sequential(nn.Linear(n_features, embedding_size), nn.LeakyReLU(0.01))
        self.head = nn.Linear(embedding_size, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> pooled backbone features ``(B, 1024)``."""
        f = F.relu(self.backbone.features(x))
        return torch.flatten(F.adaptive_avg_pool2d(f, (1, 1)), 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> embedding ``(B, embedding_size)``."""
        return self.embedding(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> logits ``(B,)``."""
        return self.head(self.embed(x)).squeeze(-1)


# --------------------------------------------------------------------------- helpers


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``model``; only those with ``requires_grad`` if asked."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def embedding_size(model: nn.Module) -> int:
    """Embedding dimension of a model of this module (``encode`` / ``embed`` output width)."""
    size = getattr(model, "embedding_size", None)
    if not isinstance(size, int):
        raise TypeError(f"{type(model).__name__} has no integer embedding_size")
    return size
