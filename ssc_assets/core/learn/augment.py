"""Data augmentation and a site-level torch ``Dataset`` over OME-Zarr plate stores (thesis method).

Per split (``mode``):

* ``train``: random square crop of area fraction ``s ~ U(scale)`` of the image's largest centred
  square (side ``round(sqrt(s) * min(H, W))``) at a uniform position, nearest resize to
  ``input_size``, rotation by ``k * 90`` degrees (``k ~ U{0..3}``), horizontal flip (p=0.5),
  vertical flip (p=0.5), per-channel normalization to N(0, 1).
* ``val``: centre crop to ``input_size`` (nearest upscale first if smaller), rotation, flips,
  normalization.
* ``test``: centre crop and normalization only.

Images are float32 (C, H, W). Optional ``targets`` are (H, W) arrays (masks, weight maps) that
receive the same geometric transform (nearest resampling, dtype kept) but no normalization.
Pure numpy + torch; no Dagster import.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

MODES = ("train", "val", "test")
STD_FLOOR = 1e-6


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation settings; ``scale`` bounds the crop's area fraction of the centred square."""

    input_size: int = 512
    scale: tuple[float, float] = (0.5, 1.0)
    rotate: bool = True
    hflip_p: float = 0.5
    vflip_p: float = 0.5


# --- helpers -------------------------------------------------------------------------------


def _check(image: np.ndarray, targets: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validate an image (C, H, W) and targets (H, W) of the same spatial shape."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    targets = [np.asarray(t) for t in targets]
    for t in targets:
        if t.shape != image.shape[1:]:
            raise ValueError(f"target shape {t.shape} does not match image (H, W) {image.shape[1:]}")
    return image, targets


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source indices (int64, (n_out,)) of a nearest-neighbour resize from n_in to n_out."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def _resize_nearest(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Nearest resize of the last two axes of ``a`` ((..., H, W)) to (out_h, out_w); dtype kept."""
    h, w = a.shape[-2:]
    if (h, w) == (out_h, out_w):
        return a
    iy = _nearest_index(h, out_h)
    ix = _nearest_index(w, out_w)
    return a[..., iy[:, None], ix[None, :]]


def _out_image(image: np.ndarray) -> np.ndarray:
    """Fresh C-contiguous float32 copy (never aliases the input or a cache)."""
    return np.array(image, dtype=np.float32, order="C", copy=True)


def _out_targets(targets: Sequence[np.ndarray], dtypes: Sequence[np.dtype]) -> tuple[np.ndarray, ...]:
    return tuple(np.array(t, dtype=d, order="C", copy=True) for t, d in zip(targets, dtypes))


# --- geometric transforms ------------------------------------------------------------------


def random_scaled_crop(
    image: np.ndarray, rng: np.random.Generator, params: AugmentParams, targets: Sequence[np.ndarray] = ()
) -> tuple[np.ndarray, tuple[np.ndarray, ...], dict]:
    """Random square crop of area fraction ``s ~ U(params.scale)``, nearest-resized to input_size.

    ``image`` (C, H, W) -> float32 (C, S, S) with S = ``params.input_size``; targets (H, W) ->
    (S, S), same crop, dtype kept. ``info``: ``scale`` (drawn s), ``side`` (crop side in
    pixels), ``box`` (y0, x0, y1, x1) in input pixels. Draws s, y0, x0 from ``rng`` in that order.
    """
    image, targets = _check(image, targets)
    dtypes = [t.dtype for t in targets]
    _, h, w = image.shape
    m = min(h, w)
    lo, hi = params.scale
    s = float(rng.uniform(lo, hi))
    side = int(min(max(round(math.sqrt(s) * m), 1), m))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    box = (y0, x0, y0 + side, x0 + side)
    size = params.input_size
    out = _resize_nearest(image[:, y0 : y0 + side, x0 : x0 + side], size, size)
    outs = [_resize_nearest(t[y0 : y0 + side, x0 : x0 + side], size, size) for t in targets]
    return _out_image(out), _out_targets(outs, dtypes), {"scale": s, "side": side, "box": box}


def centre_crop_sample(
    image: np.ndarray, size: int, targets: Sequence[np.ndarray] = ()
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Centre ``size`` x ``size`` crop of ``image`` (C, H, W) and targets (H, W).

    If H or W < size, the image is first nearest-resized up (aspect ratio kept) so its short
    side equals ``size``. Crop origin ((H - size) // 2, (W - size) // 2). Returns float32
    (C, size, size) and targets (size, size) with their dtypes.
    """
    image, targets = _check(image, targets)
    dtypes = [t.dtype for t in targets]
    _, h, w = image.shape
    if min(h, w) < size:  # upscale so the short side reaches size
        f = size / min(h, w)
        h2, w2 = max(size, round(h * f)), max(size, round(w * f))
        image = _resize_nearest(image, h2, w2)
        targets = [_resize_nearest(t, h2, w2) for t in targets]
        h, w = h2, w2
    y0, x0 = (h - size) // 2, (w - size) // 2
    out = image[:, y0 : y0 + size, x0 : x0 + size]
    outs = [t[y0 : y0 + size, x0 : x0 + size] for t in targets]
    return _out_image(out), _out_targets(outs, dtypes)


def rotate_flip(
    image: np.ndarray, rng: np.random.Generator, params: AugmentParams, targets: Sequence[np.ndarray] = ()
) -> tuple[np.ndarray, tuple[np.ndarray, ...], dict]:
    """Rotation by ``k * 90`` degrees (``np.rot90`` over the (H, W) axes), then h- and v-flips.

    Always draws k, hflip, vflip from ``rng`` in that order (so the stream does not depend on
    ``params``); ``rotate=False`` forces k = 0. hflip reverses W, vflip reverses H. ``image``
    (C, H, W) float32 -> (C, H', W'); targets (H, W) -> (H', W'), dtype kept.
    ``info``: ``k``, ``hflip``, ``vflip``.
    """
    image, targets = _check(image, targets)
    dtypes = [t.dtype for t in targets]
    k = int(rng.integers(0, 4))
    hflip = bool(rng.random() < params.hflip_p)
    vflip = bool(rng.random() < params.vflip_p)
    if not params.rotate:
        k = 0

    def geo(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k, axes=(a.ndim - 2, a.ndim - 1))
        if hflip:
            a = a[..., :, ::-1]
        if vflip:
            a = a[..., ::-1, :]
        return a

    return (
        _out_image(geo(image)),
        _out_targets([geo(t) for t in targets], dtypes),
        {"k": k, "hflip": hflip, "vflip": vflip},
    )


def normalize(image: np.ndarray) -> np.ndarray:
    """Per-channel ``(x - mean_c) / max(std_c, 1e-6)`` of (C, H, W); float32 C-contiguous out.

    Statistics are computed in float64; a constant channel becomes all zeros (no NaN).
    """
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {x.shape}")
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = np.maximum(x.std(axis=(1, 2), keepdims=True), STD_FLOOR)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def augment(
    image: np.ndarray,
    mode: str,
    rng: np.random.Generator,
    params: AugmentParams,
    targets: Sequence[np.ndarray] = (),
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Apply the ``mode`` pipeline ("train", "val" or "test") to (C, H, W) and targets (H, W).

    Returns float32 (C, S, S) normalized per channel, and the targets (S, S) with their dtypes,
    S = ``params.input_size``. ``rng`` is unused in test mode.
    """
    if mode == "train":
        image, targets, _ = random_scaled_crop(image, rng, params, targets)
        image, targets, _ = rotate_flip(image, rng, params, targets)
    elif mode == "val":
        image, targets = centre_crop_sample(image, params.input_size, targets)
        image, targets, _ = rotate_flip(image, rng, params, targets)
    elif mode == "test":
        image, targets = centre_crop_sample(image, params.input_size, targets)
    else:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    return normalize(image), tuple(targets)


# --- dataset -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteRef:
    """One QC-passed site: image store, well (e.g. "B03"), 1-based site; label 1 = SSc, 0 = HC."""

    store: str
    well: str
    site: int
    label: int = 0
    masks_store: str | None = None
    plate: str = ""
    donor: str = ""


class SiteDataset(Dataset):
    """Augmented sites read from OME-Zarr plate stores.

    Item ``i`` uses ``refs[i % len(refs)]`` and the generator
    ``np.random.default_rng([seed, epoch, i])`` (call :meth:`set_epoch` each epoch). Length is
    ``len(refs) * factor`` for train/val and ``len(refs)`` for test (original centre crops only).

    ``channels`` are picked by name from ``store_channels`` (the store's channel order). Items:

    * ``target=None``: ``(x float32 (C, S, S), y float32 scalar label)``
    * ``target="unet"``: ``(x float32 (C, S, S), mask int64 (S, S) in {0, 1}, weight float32 (S, S))``
      from ``actin_inside_cells`` and the weight map of ``ref.masks_store``.

    ``level`` selects the OME-Zarr pyramid level read (0 = full resolution, 1 = 2x down, ...).
    Site reads go through a per-process LRU cache of at most ``cache_size`` sites (dropped on
    pickling, so each DataLoader worker builds its own).
    """

    def __init__(
        self,
        refs: list[SiteRef],
        channels: tuple[str, ...],
        store_channels: tuple[str, ...],
        mode: str,
        params: AugmentParams,
        factor: int = 1,
        seed: int = 0,
        target: str | None = None,
        cache_size: int = 64,
        level: int = 0,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if target not in (None, "unet"):
            raise ValueError(f"target must be None or 'unet', not {target!r}")
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        missing = [c for c in channels if c not in store_channels]
        if missing:
            raise ValueError(f"channels {missing} not in store channels {tuple(store_channels)}")
        if target == "unet" and any(r.masks_store is None for r in refs):
            raise ValueError("target='unet' needs masks_store on every SiteRef")
        self.refs = list(refs)
        self.channels = tuple(channels)
        self.store_channels = tuple(store_channels)
        self.channel_index = [self.store_channels.index(c) for c in self.channels]
        self.mode = mode
        self.params = params
        self.factor = factor if mode != "test" else 1  # test: original crops only
        self.seed = seed
        self.target = target
        self.cache_size = cache_size
        self.level = int(level)  # OME-Zarr pyramid level read (0 = full resolution, 1 = 2x down, ...)
        self.epoch = 0
        self._cache: OrderedDict = OrderedDict()

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (reproducible per (seed, epoch, item))."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.refs) * self.factor

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # caches are per process
        return state

    def _load(self, ref: SiteRef) -> tuple[np.ndarray, ...]:
        """(image float32 (C, H, W) in ``channels`` order[, mask, weight]) via the LRU cache."""
        key = (str(ref.store), ref.well, int(ref.site))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        from ssc_assets.core.io.ome_zarr_store import read_site_image, read_site_labels

        img = read_site_image(ref.store, ref.well, ref.site, self.level)
        if img.shape[0] != len(self.store_channels):
            raise ValueError(
                f"{ref.store} {ref.well} s{ref.site}: {img.shape[0]} channels, expected {self.store_channels}"
            )
        arrays: tuple[np.ndarray, ...] = (np.ascontiguousarray(img[self.channel_index], dtype=np.float32),)
        if self.target == "unet":
            mask = (read_site_labels(ref.masks_store, ref.well, ref.site, "actin_inside_cells", self.level) > 0).astype(np.int64)
            weight = read_site_image(ref.masks_store, ref.well, ref.site, self.level)[0].astype(np.float32, copy=False)
            if mask.shape != img.shape[1:] or weight.shape != img.shape[1:]:
                raise ValueError(f"{ref.well} s{ref.site}: mask/weight shape does not match image {img.shape}")
            arrays += (mask, weight)
        for a in arrays:
            a.setflags(write=False)  # cached: never modified in place
        if self.cache_size > 0:
            self._cache[key] = arrays
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return arrays

    def __getitem__(self, i: int):
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        i = i % n
        ref = self.refs[i % len(self.refs)]
        arrays = self._load(ref)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        x, targets = augment(arrays[0], self.mode, rng, self.params, arrays[1:])
        x_t = torch.from_numpy(x)
        if self.target == "unet":
            mask, weight = targets
            return x_t, torch.from_numpy(mask.astype(np.int64, copy=False)), torch.from_numpy(weight.astype(np.float32, copy=False))
        return x_t, torch.tensor(float(ref.label), dtype=torch.float32)
