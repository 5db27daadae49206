"""Classic morphological profiles (CellProfiler-style baseline) from the masks of one site.

"Profile" here means a *morphological* profile: a vector of cell measurements per site or
well (the ``profiles`` embedding method). Not the illumination (flat-field) model of
:class:`ssc_assets.core.image.illumination.IlluminationProfile`.

Three steps, each usable on its own:

1. :func:`cell_features` - one row per cell, measured with ``cp_measure`` (a port of
   CellProfiler's measurement modules) on the nucleus and cell masks of a site. The
   pipeline's default is the much faster curated set of the same contract,
   :func:`ssc_assets.core.analysis.profile_features.curated_cell_features`; this one is
   ``feature_set: cp_measure``.
2. :func:`site_profile` - median over the cells of a site.
3. :func:`select_and_normalize` - per-plate standardisation against the HC wells with
   ``pycytominer.normalize``, then ``pycytominer.feature_select``.

Column names follow CellProfiler's ``<Object>_<Feature>_<channel>``, e.g.
``Cells_AreaShape_Area`` (shape: no channel), ``Nuclei_Intensity_MeanIntensity_actin``,
``Cells_Texture_Contrast_3_00_256_borders``, ``Cells_Granularity_1_nuclei`` and
``Cells_Correlation_Pearson_actin_borders``. The channel always comes last (CellProfiler
puts it before the texture scale; here one rule is used for every family).
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ssc_assets.core.ingest.channels import IMAGE_CHANNELS
from ssc_assets.core.schema import feature_columns, metadata_columns

log = logging.getLogger(__name__)

#: Object sets measured (CellProfiler names), in output order: nuclei mask, cell mask.
OBJECTS: tuple[str, ...] = ("Nuclei", "Cells")
#: cp_measure shape families (measured once per object set, no channel).
SHAPE_FAMILIES: tuple[str, ...] = ("sizeshape", "zernike", "feret")
#: cp_measure per-channel families (measured per object set and channel).
CHANNEL_FAMILIES: tuple[str, ...] = ("intensity", "radial_distribution", "texture", "granularity")
#: Families skipped by ``fast=True``: texture (~0.5-1.5 s per channel and object set on
#: a 384 x 384 site), granularity, and Costes (~0.2-1 s per channel pair).
SLOW_FAMILIES: frozenset[str] = frozenset({"texture", "granularity", "costes"})
#: cp_measure correlation families, measured on Cells for every channel pair.
CORRELATION_FAMILIES: tuple[str, ...] = ("pearson", "manders_fold", "rwc", "costes")
#: Costes threshold grid for [0, 1] float pixels: the 16-bit acquisition range.
COSTES_SCALE_MAX = 65535
#: Percentile of a channel that is mapped to 1.0 before measuring.
SCALE_PERCENTILE = 99.9

# Prefix added to cp_measure keys (the other families already carry their prefix).
_PREFIX = {"sizeshape": "AreaShape_", "feret": "AreaShape_", "zernike": "AreaShape_",
           "texture": "Texture_"}

#: Position-dependent (non-biological) features blocked in feature selection, as substrings.
POSITION_PATTERNS: tuple[str, ...] = (
    "_Location_",
    "_AreaShape_Center_",
    "_AreaShape_BoundingBoxMinimum_",
    "_AreaShape_BoundingBoxMaximum_",
    "_AreaShape_SpatialMoment_",  # raw moments depend on the object's position
    "_AreaShape_Orientation",
)

#: Feature-selection operations, in the order they are applied.
SELECT_OPERATIONS: tuple[str, ...] = (
    "blocklist",
    "drop_na_columns",
    "variance_threshold",
    "correlation_threshold",
)


# ---------------------------------------------------------------------------
# 1. per-cell features
# ---------------------------------------------------------------------------


def scale_channels(
    image: np.ndarray,
    channel_scale: Sequence[float] | None = None,
    percentile: float = SCALE_PERCENTILE,
) -> tuple[np.ndarray, np.ndarray]:
    """Scale each channel to [0, 1] the way CellProfiler sees images.

    ``image`` float (C, H, W) in preprocessed units (background-subtracted, not 0-1).
    Each channel is divided by ``channel_scale[c]`` if given (e.g. a plate-wide
    percentile, which keeps intensities comparable between sites), else by its own
    ``percentile`` (99.9th by default; the max, then 1.0, if that is not > 0), then
    clipped to [0, 1]. Non-finite pixels become 0.

    Returns ``(scaled float64 (C, H, W), scales float64 (C,))``.
    """
    img = np.asarray(image, dtype=np.float64)
    img = np.where(np.isfinite(img), img, 0.0)
    if channel_scale is not None:
        scales = np.asarray(channel_scale, dtype=np.float64).reshape(-1)
        if scales.shape[0] != img.shape[0] or not np.all(np.isfinite(scales) & (scales > 0)):
            raise ValueError(f"channel_scale must be {img.shape[0]} positive numbers, got {channel_scale!r}")
    else:
        scales = np.empty(img.shape[0])
        for c, ch in enumerate(img):
            s = float(np.percentile(ch, percentile))
            if not s > 0:
                s = float(ch.max())
            scales[c] = s if s > 0 else 1.0
    scaled = np.clip(img / scales[:, None, None], 0.0, 1.0)
    return scaled, scales


def _common_labels(nuclei_labels: np.ndarray, cell_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep labels present in both masks and relabel both to 1..N with one mapping.

    Returns ``(ids int64 (N,) original labels sorted, nuclei int32 (H, W), cells int32 (H, W))``;
    row ``i`` of every measurement is then object ``ids[i]``.
    """
    top = int(max(nuclei_labels.max(initial=0), cell_labels.max(initial=0)))
    if top <= 4 * nuclei_labels.size:  # label counts: much faster than np.unique
        both = ((np.bincount(nuclei_labels.ravel().astype(np.intp, copy=False), minlength=top + 1) > 0)
                & (np.bincount(cell_labels.ravel().astype(np.intp, copy=False), minlength=top + 1) > 0))
        ids = np.flatnonzero(both)
    else:
        ids = np.intersect1d(np.unique(nuclei_labels), np.unique(cell_labels))
    ids = ids[ids > 0].astype(np.int64)
    lut = np.zeros(top + 1, dtype=np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return ids, lut[nuclei_labels], lut[cell_labels]


def _check_inputs(image: np.ndarray, nuclei_labels: np.ndarray, cell_labels: np.ndarray,
                  channels: Sequence[str]) -> None:
    if image.ndim != 3 or image.shape[0] != len(channels):
        raise ValueError(f"image must be (C={len(channels)}, H, W), got {image.shape}")
    for name, lab in (("nuclei_labels", nuclei_labels), ("cell_labels", cell_labels)):
        if lab.shape != image.shape[1:]:
            raise ValueError(f"{name} shape {lab.shape} != image (H, W) {image.shape[1:]}")
        if not np.issubdtype(lab.dtype, np.integer):
            raise TypeError(f"{name} must be an integer label image, got {lab.dtype}")
        if lab.min(initial=0) < 0:
            raise ValueError(f"{name} has negative labels")
    if len(set(channels)) != len(channels):
        raise ValueError(f"channel names must be unique: {channels}")


def prepare_site(image, nuclei_labels: np.ndarray, cell_labels: np.ndarray, channels: Sequence[str],
                 channel_scale: Sequence[float] | None = None):
    """The common start of both per-cell feature sets: checked inputs, channels scaled to
    [0, 1] (:func:`scale_channels`) and the labels present in both masks relabelled 1..N
    (:func:`_common_labels`). Returns ``(channels tuple, scaled (C, H, W) float64, scales (C,),
    ids (N,) int64, nuclei int32 (H, W), cells int32 (H, W))``."""
    image = np.asarray(image)
    channels = tuple(channels)
    _check_inputs(image, nuclei_labels, cell_labels, channels)
    scaled, scales = scale_channels(image, channel_scale)
    return (channels, scaled, scales, *_common_labels(nuclei_labels, cell_labels))


def _measure(fn, args: tuple, kwargs: dict, n: int, where: str, errors: list[str]) -> dict[str, np.ndarray]:
    """Call one cp_measure function; on failure record it in ``errors`` and return {}.

    Per-object undefined values (NaN, e.g. texture of a 1-pixel object) are kept; a raise
    or a wrong-length result drops only this call's columns. ``inf`` becomes NaN.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # undefined Costes, 0/0 ...
            raw = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - guard, reported to the caller
        errors.append(f"{where}: {type(exc).__name__}: {exc}")
        return {}
    out: dict[str, np.ndarray] = {}
    for key, values in raw.items():
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.shape[0] != n:
            errors.append(f"{where}: {key} has {arr.shape[0]} values for {n} objects, skipped")
            continue
        arr[np.isinf(arr)] = np.nan
        out[key] = arr
    return out


def _correlation_names(key: str, a: str, b: str) -> str:
    """cp_measure correlation key -> CellProfiler name for the pair (a, b).

    ``X_1`` is the coefficient of ``a`` against ``b`` (``X_a_b``), ``X_2`` the reverse.
    """
    if key.endswith("_1"):
        return f"{key[:-2]}_{a}_{b}"
    if key.endswith("_2"):
        return f"{key[:-2]}_{b}_{a}"
    return f"{key}_{a}_{b}"


def cell_features(
    image: np.ndarray,
    nuclei_labels: np.ndarray,
    cell_labels: np.ndarray,
    channels: Sequence[str] = IMAGE_CHANNELS,
    *,
    fast: bool = False,
    channel_scale: Sequence[float] | None = None,
) -> pd.DataFrame:
    """CellProfiler-style features of every cell of one site.

    Parameters
    ----------
    image : float (C, H, W), preprocessed units, channels in ``channels`` order
        (default ``("nuclei", "borders", "actin")``). Scaled to [0, 1] by
        :func:`scale_channels` before measuring (CellProfiler measures 0-1 images;
        texture quantises with ``img_as_ubyte`` and Costes needs [0, 1]).
    nuclei_labels, cell_labels : int (H, W); 0 is background and a cell carries the
        label of its nucleus. Only labels present in both masks are measured.
    fast : skip :data:`SLOW_FAMILIES` (texture, granularity, Costes) for tests / previews.
    channel_scale : optional divisors (C,) instead of the per-site percentile.

    Returns
    -------
    DataFrame, one row per cell sorted by label: ``ObjectNumber`` (int64, the original
    label) then float64 features. For Nuclei and Cells: AreaShape (size/shape, Zernike,
    Feret; once per object set) and per channel Intensity, Location, RadialDistribution,
    Texture, Granularity; for Cells also Correlation (Pearson, Slope, Manders, RWC, Costes)
    for every channel pair (names sorted, e.g. ``actin_borders``).
    ``df.attrs["errors"]`` (list[str]) lists measurement calls that failed (their columns
    are absent, other families are kept); ``df.attrs["channel_scale"]`` the divisors used.
    """
    from cp_measure.bulk import get_core_measurements, get_correlation_measurements

    channels, scaled, scales, ids, nuc, cel = prepare_site(image, nuclei_labels, cell_labels, channels, channel_scale)
    n = int(ids.size)
    errors: list[str] = []
    cols: dict[str, np.ndarray] = {"ObjectNumber": ids}

    if n:
        _object_features(get_core_measurements(), (nuc, cel), scaled, channels, n, fast, errors, cols)
        _correlation_features(get_correlation_measurements(), cel, scaled, channels, n, fast, errors, cols)
    else:
        errors.append("no label present in both nuclei_labels and cell_labels")

    df = pd.DataFrame(cols)
    df["ObjectNumber"] = df["ObjectNumber"].astype(np.int64)
    for e in errors:
        log.warning("cell_features: %s", e)
    df.attrs["errors"] = errors
    df.attrs["channel_scale"] = dict(zip(channels, scales.tolist()))
    return df


def _object_features(core: dict, object_masks: tuple[np.ndarray, np.ndarray], scaled: np.ndarray,
                     channels: tuple[str, ...], n: int, fast: bool, errors: list[str],
                     cols: dict[str, np.ndarray]) -> None:
    """Shape families once per object set (:data:`OBJECTS`), channel families per object set
    and channel, into ``cols`` (``<obj>_<feature>[_<channel>]``); failures go to ``errors``."""
    for obj, masks in zip(OBJECTS, object_masks):
        for fam in SHAPE_FAMILIES:
            res = _measure(core[fam], (masks, None), {}, n, f"{obj}/{fam}", errors)
            for key, v in res.items():
                cols[f"{obj}_{_PREFIX.get(fam, '')}{key}"] = v
        for fam in CHANNEL_FAMILIES:
            if fast and fam in SLOW_FAMILIES:
                continue
            for c, ch in enumerate(channels):
                res = _measure(core[fam], (masks, scaled[c]), {}, n, f"{obj}/{fam}/{ch}", errors)
                for key, v in res.items():
                    cols[f"{obj}_{_PREFIX.get(fam, '')}{key}_{ch}"] = v


def _correlation_features(corr: dict, cel: np.ndarray, scaled: np.ndarray, channels: tuple[str, ...], n: int,
                          fast: bool, errors: list[str], cols: dict[str, np.ndarray]) -> None:
    """Correlations within the cells, one call per unordered channel pair, into ``cols``."""
    index = {ch: c for c, ch in enumerate(channels)}
    for a, b in itertools.combinations(sorted(channels), 2):
        for fam in CORRELATION_FAMILIES:
            if fast and fam in SLOW_FAMILIES:
                continue
            kwargs = {"scale_max": COSTES_SCALE_MAX} if fam == "costes" else {}
            res = _measure(corr[fam], (scaled[index[a]], scaled[index[b]], cel), kwargs, n,
                           f"Cells/{fam}/{a}_{b}", errors)
            for key, v in res.items():
                cols[f"Cells_{_correlation_names(key, a, b)}"] = v


# ---------------------------------------------------------------------------
# 2. site profile
# ---------------------------------------------------------------------------


def site_profile(cell_df: pd.DataFrame) -> pd.Series:
    """Median over cells (NaN skipped) of every feature column, float64, plus
    ``Metadata_n_cells`` (number of rows). An empty table gives NaN features."""
    feats = feature_columns(cell_df)
    med = cell_df[feats].astype(np.float64).median(axis=0, skipna=True)
    out = pd.concat([pd.Series({"Metadata_n_cells": float(len(cell_df))}), med])
    return out.astype(np.float64)


# ---------------------------------------------------------------------------
# 3. normalisation and feature selection
# ---------------------------------------------------------------------------


def position_blocklist(features: Sequence[str]) -> list[str]:
    """Features of ``features`` that describe where an object is, not what it is."""
    return [f for f in features if any(p in f for p in POSITION_PATTERNS)]


def select_and_normalize(
    site_profiles: pd.DataFrame,
    features: list[str] | None = None,
    *,
    control: str = "HC",
    corr_threshold: float = 0.9,
    na_cutoff: float = 0.05,
    min_variance: float = 1e-6,
) -> tuple[pd.DataFrame, list[str]]:
    """Per-plate standardisation against the control wells, then feature selection.

    ``site_profiles``: one row per site with ``Metadata_Plate`` and ``Metadata_Condition``
    (``control`` marks the reference, e.g. HC vs SSc), other ``Metadata_*`` columns and
    float feature columns (``features``; default every non-``Metadata_`` column).

    For each plate, ``pycytominer.normalize(method="standardize")`` subtracts the mean
    and divides by the (population, ddof=0) std of the plate's control sites; with
    fewer than 2 control sites the plate's own sites are the reference (noted). A
    feature constant in the reference gets scale 1 (sklearn), so no inf/NaN; ``inf``
    inputs become NaN. Then ``pycytominer.feature_select`` runs one operation at a time
    (:data:`SELECT_OPERATIONS`): blocklist (pycytominer default + position features),
    drop_na_columns, variance_threshold, correlation_threshold. An operation that fails
    is skipped and noted.

    Returns ``(table, kept)``: ``Metadata_*`` columns then the kept float64 features, in
    the input row order; ``kept`` the kept feature names. ``table.attrs["notes"]`` lists
    fallbacks and skipped operations, ``table.attrs["dropped"]`` operation -> features.
    """
    from pycytominer.cyto_utils import Blocklist

    meta, feats = _profile_columns(site_profiles, features)
    notes: list[str] = []

    values = site_profiles[feats].astype(np.float64).replace([np.inf, -np.inf], np.nan)
    # _row restores the input order after the per-plate loop
    df = pd.concat([site_profiles[meta].reset_index(drop=True), values.reset_index(drop=True),
                    pd.Series(np.arange(len(site_profiles)), name="_row")], axis=1)
    meta_cols = meta + ["_row"]
    normed = _normalize_per_plate(df, feats, meta_cols, control, notes)

    blocklist = Blocklist(blocklist_name="default", features_to_block=position_blocklist(feats))
    kept, dropped = _select_features(normed, feats, meta_cols, notes, blocklist=blocklist, na_cutoff=na_cutoff,
                                     corr_threshold=corr_threshold, min_variance=min_variance)

    out = normed[meta + kept].reset_index(drop=True)
    out[kept] = out[kept].astype(np.float64)
    for note in notes:
        log.warning("select_and_normalize: %s", note)
    out.attrs["notes"] = notes
    out.attrs["dropped"] = dropped
    return out, kept


def _profile_columns(site_profiles: pd.DataFrame, features: list[str] | None) -> tuple[list[str], list[str]]:
    """(metadata columns, feature columns) of ``site_profiles``; KeyError without a plate or
    condition column, ValueError without features."""
    for col in ("Metadata_Plate", "Metadata_Condition"):
        if col not in site_profiles.columns:
            raise KeyError(f"site_profiles needs a {col} column")
    meta = metadata_columns(site_profiles)
    feats = list(features) if features is not None else feature_columns(site_profiles)
    if not feats:
        raise ValueError("no feature columns")
    return meta, feats


def _normalize_per_plate(df: pd.DataFrame, feats: list[str], meta_cols: list[str], control: str,
                         notes: list[str]) -> pd.DataFrame:
    """``pycytominer.normalize`` (standardize) per plate against its ``control`` sites (all
    sites, noted, with fewer than 2), back in ``_row`` order, ``inf`` as NaN."""
    from pycytominer import normalize

    parts = []
    for plate, sub in df.groupby("Metadata_Plate", sort=False):
        n_ref = int((sub["Metadata_Condition"] == control).sum())
        if n_ref >= 2:
            samples = f"Metadata_Condition == {control!r}"
        else:
            samples = "all"
            notes.append(f"plate {plate}: {n_ref} {control} site(s), normalised against all "
                         f"{len(sub)} sites of the plate")
        parts.append(normalize(profiles=sub, features=feats, meta_features=meta_cols,
                               samples=samples, method="standardize"))
    normed = pd.concat(parts).sort_values("_row")
    normed[feats] = normed[feats].replace([np.inf, -np.inf], np.nan)
    return normed


def _select_features(normed: pd.DataFrame, feats: list[str], meta_cols: list[str], notes: list[str],
                     **options) -> tuple[list[str], dict[str, list[str]]]:
    """``pycytominer.feature_select`` one operation of :data:`SELECT_OPERATIONS` at a time
    (``options``: blocklist, na_cutoff, corr_threshold, min_variance); a failing operation is
    skipped and noted. Returns (kept features, operation -> dropped features)."""
    from pycytominer import feature_select

    kept = list(feats)
    dropped: dict[str, list[str]] = {}
    for op in SELECT_OPERATIONS:
        try:
            sel = feature_select(profiles=normed[meta_cols + kept], features=kept, operation=op, **options)
        except Exception as exc:  # noqa: BLE001 - skipped and reported
            notes.append(f"feature_select {op} skipped: {type(exc).__name__}: {exc}")
            continue
        left = [f for f in kept if f in sel.columns]
        dropped[op] = [f for f in kept if f not in sel.columns]
        kept = left
    return kept, dropped


def feature_set_mismatch(wells: pd.DataFrame, min_overlap: float = 0.5) -> str | None:
    """Why profile wells of several plates cannot be analysed together, or None.

    Plates profiled with different feature sets (``curated`` vs ``cp_measure``, or different
    settings) have few measured (non-NaN) columns in common; after concatenation each set's
    columns are NaN on the other plates and feature selection would silently drop nearly all
    of them. Flags any two plates whose measured-column sets overlap (Jaccard) below
    ``min_overlap``.
    """
    from ssc_assets.core import schema

    feats = feature_columns(wells)
    measured = {p: frozenset(c for c in feats if sub[c].notna().any())
                for p, sub in wells.groupby(schema.PLATE, sort=True)}
    plates = list(measured)
    for i, a in enumerate(plates):
        for b in plates[i + 1:]:
            union = measured[a] | measured[b]
            if union and len(measured[a] & measured[b]) / len(union) < min_overlap:
                return (f"profiles of plates {a} ({len(measured[a])} features) and {b} ({len(measured[b])} features) "
                        f"were measured with different feature sets; re-materialize site_embeddings_profiles and "
                        f"well_embeddings for every plate with the same feature_set")
    return None
