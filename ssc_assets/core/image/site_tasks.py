"""Per-site work units of the image assets (picklable tasks for :func:`parallel.map_sites`).

Each function takes one small, picklable task, reads what it needs from disk (so that a Dask
worker on another machine can run it). A correction or mask task with ``out`` (a field group
that :meth:`HcsPlateWriter.prepare_site` created in the plate's temp store) writes its site's
pixels there itself and returns only small results (summary, previews, display ranges);
without ``out`` it returns the arrays and the caller writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ssc_assets.core.image.filters import PreprocessParams, preprocess_channel
from ssc_assets.core.image.illumination import IlluminationProfile, apply_illumination, image_background
from ssc_assets.core.image.segmentation import MaskParams, compute_masks, mask_summary
from ssc_assets.core.io.ome_zarr_store import read_site_image, read_site_labels, write_field
from ssc_assets.core.io.tiff import read_image
from ssc_assets.core.plots.figures import downsample

PREVIEW_SIDE = 128


def illumination_background(item: tuple) -> np.ndarray:
    """Cleaned background and foreground-level grids (float32, (2, ~64, ~64), raw units) of
    one raw image (:func:`~ssc_assets.core.image.illumination.image_background`).
    ``item`` = (path, expected (H, W)[, n_iter, k_sd]) (bright-area suppression settings)."""
    path, shape, *rest = item
    kw = dict(zip(("n_iter", "k_sd"), rest))
    return image_background(read_image(path, expected_shape=shape), **kw)


@lru_cache(maxsize=8)
def _load_profile(flatfield_path: str, darkfield: float) -> IlluminationProfile:
    import fsspec

    with fsspec.open(flatfield_path, "rb") as fh:  # local path or fsspec URL
        return IlluminationProfile.from_arrays(np.load(fh), darkfield)


@dataclass(frozen=True)
class CorrectSiteTask:
    """One site to correct and preprocess.

    ``paths``: (channel, raw TIFF path) in output channel order; ``profiles``: (channel,
    flatfield .npy path, darkfield in raw units); ``shape``: expected raw (H, W). ``out``:
    field group to write the image to (then ``channel_names``, the store's channels, default
    those of ``paths``), or None to return it.
    """

    well: str
    site: int
    paths: tuple[tuple[str, str], ...]
    profiles: tuple[tuple[str, str, float], ...]
    shape: tuple[int, int]
    params: PreprocessParams
    preview: bool = False
    out: str | None = None
    channel_names: tuple[str, ...] = ()


def correct_site(task: CorrectSiteTask) -> dict:
    """Illumination correction then the thesis preprocessing chain, per channel.

    Returns ``image``: float32 (C, h, w) after the centre crop, channels in ``task.paths``
    order (with ``task.out``: ``written``, the :func:`write_field` summary, instead), and,
    if ``task.preview``, small ``raw_preview`` / ``corrected_preview`` (C, <=128, <=128)
    float32 thumbnails for the before/after montage.
    """
    profiles = {ch: _load_profile(p, d) for ch, p, d in task.profiles}
    out, raw_prev, cor_prev = [], [], []
    for ch, path in task.paths:
        raw = read_image(path, expected_shape=task.shape)
        corrected = apply_illumination(raw, profiles[ch])
        pre = preprocess_channel(corrected, ch, task.params)
        out.append(pre)
        if task.preview:
            raw_prev.append(downsample(raw, PREVIEW_SIDE))
            cor_prev.append(downsample(pre, PREVIEW_SIDE))
    image = np.stack(out).astype(np.float32, copy=False)
    if task.out is not None:
        result = {"written": write_field(task.out, image, channel_names=task.channel_names or [ch for ch, _ in task.paths])}
    else:
        result = {"image": image}
    if task.preview:
        result["raw_preview"] = np.stack(raw_prev)
        result["corrected_preview"] = np.stack(cor_prev)
    return result


@dataclass(frozen=True)
class MaskSiteTask:
    """One site to segment: read from the corrected OME-Zarr store (channels in store order).
    ``out``: masks-store field group to write to (weight map image + labels), or None to return the masks."""

    store: str
    well: str
    site: int
    channel_names: tuple[str, ...]
    params: MaskParams = MaskParams()
    out: str | None = None


def mask_site(task: MaskSiteTask) -> dict:
    """Masks of one site (see :func:`segmentation.compute_masks`) plus its summary counts:
    ``{"masks", "summary"}``, or with ``task.out`` ``{"written", "summary"}`` (the masks are
    written there: image ``weight_map``, the other masks as labels)."""
    image = read_site_image(task.store, task.well, task.site)
    ch = {name: image[i] for i, name in enumerate(task.channel_names)}
    masks = compute_masks(ch["nuclei"], ch["borders"], ch["actin"], task.params)
    summary = mask_summary(masks)
    if task.out is None:
        return {"masks": masks, "summary": summary}
    written = write_field(task.out, masks["weight_map"][None], labels={k: v for k, v in masks.items() if k != "weight_map"},
                          channel_names=("weight_map",))
    return {"written": written, "summary": summary}


#: Per-cell feature sets of the profiles: ``curated`` (:mod:`ssc_assets.core.analysis.profile_features`,
#: 156 features, ~0.5 core-s per 2048² site) or ``cp_measure`` (the full CellProfiler port,
#: :func:`ssc_assets.core.analysis.profiles.cell_features`, ~850 features, ~20 core-s).
PROFILE_FEATURE_SETS = ("curated", "cp_measure")


@dataclass(frozen=True)
class ProfileSiteTask:
    """One site to profile: corrected image store + masks store (nuclei and cells labels).

    ``feature_set``: one of :data:`PROFILE_FEATURE_SETS`; ``fast`` only applies to
    ``cp_measure`` (skips texture, granularity and Costes).
    """

    store: str
    masks_store: str
    well: str
    site: int
    channel_names: tuple[str, ...]
    level: int = 0
    fast: bool = False
    feature_set: str = "curated"


def profile_site(task: ProfileSiteTask) -> dict:
    """CellProfiler-style per-cell measurements of one site (``task.feature_set``), as the site median.

    Returns ``{"profile": {feature: float}, "n_cells": int, "errors": [str]}``; ValueError
    for an unknown feature set.
    """
    from ssc_assets.core.analysis.profile_features import curated_cell_features
    from ssc_assets.core.analysis.profiles import cell_features, site_profile

    if task.feature_set not in PROFILE_FEATURE_SETS:
        raise ValueError(f"unknown feature_set {task.feature_set!r} (known: {list(PROFILE_FEATURE_SETS)})")
    image = read_site_image(task.store, task.well, task.site, task.level)
    nuclei = read_site_labels(task.masks_store, task.well, task.site, "nuclei", task.level)
    cells = read_site_labels(task.masks_store, task.well, task.site, "cells", task.level)
    if task.feature_set == "curated":
        df = curated_cell_features(image, nuclei, cells, channels=task.channel_names, downsample=2.0**task.level)
    else:
        df = cell_features(image, nuclei, cells, channels=task.channel_names, fast=task.fast)
    errors = df.attrs.get("errors", [])
    prof = site_profile(df)
    return {"profile": {k: float(v) for k, v in prof.items()}, "n_cells": int(len(df)), "errors": list(errors)}
