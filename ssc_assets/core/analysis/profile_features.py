"""Curated CellProfiler-style cell features from vectorised per-object reductions (fast profiles).

The default feature set of the ``profiles`` embedding (``feature_set: curated``). The full
``cp_measure`` set (:func:`ssc_assets.core.analysis.profiles.cell_features`, ~850 features)
costs ~20 core-s per 2048² site, most of it in Costes colocalisation, Haralick texture,
radial distribution and granularity, which loop over objects and thresholds. Here every
per-object number is a sum over the object's pixels, taken with one ``np.bincount`` per
pixel map over a *compartment code* that splits each cell into own nucleus / cytoplasm x
border band / interior x four radial rings: one pass per map gives the Nuclei, Cells and
Cytoplasm values (and the band and ring parts) at once. Quantiles come from one per-object
histogram per channel, shape from one OpenCV call per object on its crop. 156 features for
three channels, ~0.5 core-s per 2048² site (``benchmarks/profiles_site.py``).

Input and output contract: the same as :func:`~ssc_assets.core.analysis.profiles.cell_features`
(image float (C, H, W) in preprocessed units, scaled to [0, 1] per channel by
:func:`~ssc_assets.core.analysis.profiles.scale_channels`; nuclei/cell int label images, a
cell carrying the label of its nucleus; only labels in both masks are measured). One row per
cell sorted by label: ``ObjectNumber`` (int64) then float64 features; ``df.attrs["errors"]``
and ``df.attrs["channel_scale"]``. Undefined values (an empty cytoplasm, the Pearson
correlation of a constant channel) are NaN, never ``inf``.

Objects: ``Nuclei`` (nucleus mask; pixels outside its cell included), ``Cells`` (cell mask),
``Cytoplasm`` (cell pixels outside its own nucleus, like CellProfiler's IdentifyTertiaryObjects).
Names follow ``<Object>_<Family>_<Feature>[_<channel>]`` like the cp_measure set (the channel
last); ``<a>_<b>`` channel pairs are sorted by name. Where a name also exists in the
cp_measure set, the definition is CellProfiler's (checked in the tests: equal up to rounding,
or within a few % for perimeter, solidity and quantiles). Intensities are in scaled [0, 1]
units, lengths in pixels of the measured level. ``<c>`` is each channel; "all three" means
Nuclei, Cells and Cytoplasm.

==================================================  ============  ==========================================
Feature                                             Objects       Definition
==================================================  ============  ==========================================
``AreaShape_Area``                                  all three     pixel count (px²)
``AreaShape_Perimeter``                             Nuclei, Cells outer contour length through the boundary
                                                                  pixel centres (``cv2.arcLength``; within
                                                                  ~2 % of skimage's perimeter)
``AreaShape_FormFactor``                            Nuclei, Cells 4 pi area / perimeter² (1 = disk)
``AreaShape_Eccentricity``                          Nuclei, Cells of the ellipse with the same second moments
``AreaShape_MajorAxisLength``, ``MinorAxisLength``  Nuclei, Cells its axes, 4 sqrt(eigenvalue) (px)
``AreaShape_Solidity``                              Nuclei, Cells area / convex hull area (hull of the contour
                                                                  grown by half a pixel)
``AreaShape_Extent``                                Nuclei, Cells area / bounding box area
``AreaShape_NucleusAreaFraction``                   Cells         own-nucleus area / cell area
``Intensity_IntegratedIntensity_<c>``               all three     sum over the pixels
``Intensity_MeanIntensity_<c>``                     all three     mean
``Intensity_StdIntensity_<c>``                      all three     population standard deviation
``Intensity_LowerQuartileIntensity_<c>``,           all three     quantiles 0.25 / 0.5 / 0.75 from a per-object
``MedianIntensity``, ``UpperQuartileIntensity``                   256-bin histogram uniform in sqrt(v), linear
                                                                  within the bin (bin width 2 sqrt(v) / 256)
``Intensity_MassDisplacement_<c>``                  all three     distance (px) from the centroid to the
                                                                  intensity-weighted centroid
``Texture_GradientMean_<c>``                        all three     mean Sobel gradient magnitude
``Texture_LoGMean_<c>``                             all three     mean abs Laplacian of Gaussian, sigma 2 px
                                                                  (granules, fibre edges)
``Texture_DoGMean_<c>``                             all three     mean abs (Gauss 2 px - Gauss 4 px):
                                                                  band-pass at the stress-fibre / junction
                                                                  scale (~10 px)
``RadialDistribution_FracAtDepth_<k>of4_<c>``       Cells         fraction of the cell's intensity in ring k
                                                                  (1 = centre ... 4 = edge) of the relative
                                                                  depth d / max d, d = distance to the cell
                                                                  edge (not CellProfiler's FracAtD, which
                                                                  measures from the nucleus centre)
``RadialDistribution_MeanFracAtDepth_<k>of4_<c>``   Cells         that fraction / the ring's area fraction
``Border_MeanIntensity_<c>``                        Cells         mean in the border band: pixels less than
                                                                  ``border_width`` (4 px ~ 1.4 um) from the
                                                                  cell edge (VE-cadherin junction, cortical
                                                                  actin)
``Border_IntensityFraction_<c>``                    Cells         band integrated / cell integrated
``Border_InteriorRatio_<c>``                        Cells         band mean / interior mean (actin moving
                                                                  from the cortex into stress fibres lowers it)
``Border_CV_<c>``                                   Cells         band std / band mean (gaps in a junction
                                                                  raise it)
``Border_Continuity_<c>``                           Cells         fraction of the band's pixels >= half of its
                                                                  90th percentile (a continuous junction ~1,
                                                                  a fragmented one less)
``Correlation_Pearson_<a>_<b>``                     all three     Pearson r over the object's pixels
==================================================  ============  ==========================================

Texture maps are computed on the image binned to 2 x 2 blocks (:data:`TEXTURE_BIN_PX`; not
binned again at pyramid level >= 1) and averaged over the block grid of each object; sigmas
are in full-resolution px. The cell edge is the inner boundary of the cell mask (a pixel
whose 4-neighbour has another label or is background; the image frame is not an edge).
``downsample`` (2 at pyramid level 1) divides the border width and the texture sigmas so
that they keep their physical size. Pure numpy / scipy / OpenCV; no Dagster.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd
import scipy.ndimage as ndi

from ssc_assets.core.analysis.profiles import prepare_site
from ssc_assets.core.ingest.channels import IMAGE_CHANNELS

log = logging.getLogger(__name__)

#: Object sets measured, in output order.
CURATED_OBJECTS: tuple[str, ...] = ("Nuclei", "Cells", "Cytoplasm")
#: Width (px at full resolution, ~1.4 um at 0.34 um/px) of the cell border band.
BORDER_WIDTH_PX = 4.0
#: Histogram bins per object, uniform in sqrt of the [0, 1] intensity (quantiles, border continuity).
HIST_BINS = 256
#: Radial rings of the relative depth (1 = centre ... 4 = edge).
N_RINGS = 4
#: Texture and mass displacement use the image binned to blocks of this many full-resolution
#: px (2: a quarter of the pixels; fewer at pyramid level >= 1).
TEXTURE_BIN_PX = 2
#: Gaussian sigmas (px at full resolution) of the LoG and of the DoG pair.
LOG_SIGMA = 2.0
DOG_SIGMAS = (2.0, 4.0)
#: AreaShape features of Nuclei and Cells (see :func:`object_shapes`).
SHAPE_NAMES: tuple[str, ...] = ("Area", "Perimeter", "FormFactor", "Eccentricity", "Solidity", "Extent",
                                "MajorAxisLength", "MinorAxisLength")
#: Continuity threshold: a band pixel is "on" at >= this fraction of the band's ``CONTINUITY_Q`` quantile.
CONTINUITY_FRACTION = 0.5
CONTINUITY_Q = 0.9


# ---------------------------------------------------------------------------
# geometry: per-object shape loop and compartment codes of every pixel
# ---------------------------------------------------------------------------


def object_shapes(labels: np.ndarray, n: int, dist: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Shape of objects 1..n of ``labels`` (int (H, W)), one OpenCV call per object on its crop.

    Returns float64 (n,) arrays named as in :data:`SHAPE_NAMES` (NaN for an absent label) and,
    with ``dist``, ``_dmax``: the largest ``dist`` value inside each object. ``Area`` is the
    pixel count; ``Perimeter`` the length of the outer contour(s) through the boundary pixel
    centres (``cv2.arcLength``, 8-connected); axes and eccentricity of the ellipse with the
    same second moments (4 sqrt(eigenvalues), like regionprops); ``Solidity`` area / convex
    hull area, the hull of the contour points grown by half a pixel (area + perimeter / 2 + 1,
    ~ the pixels it covers); ``Extent`` area / bounding box area.
    """
    out = {name: np.full(n, np.nan) for name in SHAPE_NAMES}
    dmax = np.ones(n)
    for i, sl in enumerate(ndi.find_objects(labels, max_label=n)):
        if sl is None:
            continue
        sub = labels[sl] == i + 1
        crop = sub.view(np.uint8)
        m = cv2.moments(crop, True)
        area = m["m00"]
        if area <= 0:
            continue
        contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        perim = float(sum(cv2.arcLength(c, True) for c in contours))
        hull = cv2.convexHull(np.concatenate(contours))
        hull_area = cv2.contourArea(hull) + cv2.arcLength(hull, True) / 2 + 1.0
        cov = np.array([[m["mu20"], m["mu11"]], [m["mu11"], m["mu02"]]]) / area
        lo, hi = np.sqrt(np.maximum(np.linalg.eigvalsh(cov), 0.0))
        out["Area"][i] = area
        out["Perimeter"][i] = perim
        out["FormFactor"][i] = 4 * np.pi * area / perim**2 if perim > 0 else np.nan
        out["Eccentricity"][i] = np.sqrt(1 - (lo / hi) ** 2) if hi > 0 else 0.0
        out["Solidity"][i] = min(1.0, area / hull_area)
        out["Extent"][i] = area / sub.size
        out["MajorAxisLength"][i] = 4 * hi
        out["MinorAxisLength"][i] = 4 * lo
        if dist is not None:
            dmax[i] = float(dist[sl][sub].max())
    if dist is not None:
        out["_dmax"] = np.where(dmax > 0, dmax, 1.0)
    return out


def cell_edges(cel: np.ndarray) -> np.ndarray:
    """bool (H, W): inner boundary of every object of ``cel`` (a 4-neighbour has another
    label, background included; the image frame is not an edge)."""
    edge = np.zeros(cel.shape, bool)
    diff = cel[1:, :] != cel[:-1, :]
    edge[1:, :] |= diff
    edge[:-1, :] |= diff
    diff = cel[:, 1:] != cel[:, :-1]
    edge[:, 1:] |= diff
    edge[:, :-1] |= diff
    return edge & (cel > 0)


class _Compartments:
    """Per-pixel compartment codes of one site and the reductions over them.

    Every cell pixel gets ``code = cell * 16 + ring * 4 + band * 2 + in_nucleus`` (ring 0 =
    centre ... 3 = edge; band 1 = less than ``border_width`` px from the cell edge;
    in_nucleus 1 = the pixel is in the cell's own nucleus). Background has cell 0. Nucleus
    pixels outside their own cell ("stray", rare) are kept in a separate list so that
    Nuclei sums are exact. ``coarse`` sums use every second pixel in y and x (texture).
    """

    def __init__(self, nuc: np.ndarray, cel: np.ndarray, n: int, border_width: float, dist: np.ndarray,
                 dmax: np.ndarray, step: int = 2):
        self.n = n
        self.step = step
        h, w = cel.shape
        self.coarse_shape = (h // step, w // step)
        grid = (slice(0, step * (h // step), step), slice(0, step * (w // step), step))
        dm = np.concatenate([[1.0], dmax]).astype(np.float32)
        depth = dist / dm[cel]  # 1 at the deepest pixel, 0 on the edge
        ring = np.clip(((1.0 - depth) * N_RINGS).astype(np.int64), 0, N_RINGS - 1)
        band = (dist < border_width) & (cel > 0)
        own = (nuc == cel) & (cel > 0)
        cell_lab = cel.astype(np.int64)
        code = cell_lab * (N_RINGS * 4) + ring * 4 + band * 2 + own
        self.code = code.ravel()
        self.code_coarse = np.ascontiguousarray(code[grid]).ravel()
        self.size = (n + 1) * N_RINGS * 4
        # histogram code without the ring: (cell * 4 + band * 2 + own) * bins
        self.hcode = ((cell_lab * 4 + band * 2 + own) * HIST_BINS).ravel()
        stray = (nuc > 0) & (nuc != cel)
        self.stray = np.flatnonzero(stray)
        self.stray_lab = nuc.ravel()[self.stray].astype(np.int64)
        self.stray_coarse = np.flatnonzero(stray[grid])
        self.stray_lab_coarse = np.ascontiguousarray(nuc[grid]).ravel()[self.stray_coarse].astype(np.int64)
        self.y = np.repeat(np.arange(h, dtype=np.float64), w)  # pixel coordinates, flat
        self.x = np.tile(np.arange(w, dtype=np.float64), h)

    def sums(self, w: np.ndarray | None, coarse: bool = False) -> dict[str, np.ndarray]:
        """Sums of the pixel map ``w`` per object and compartment; None for pixel counts.

        ``coarse=False``: ``w`` flat (H*W,), every pixel. ``coarse=True``: ``w`` flat over the
        coarse grid (every ``step``-th pixel in y and x, ``coarse_shape``), e.g. a map computed
        on the ``step`` x ``step`` binned image (its block top-left pixel gives the code).

        Returns (n,) arrays for ``Nuclei``, ``Cells``, ``Cytoplasm``, ``Band``, ``Interior``
        (Cells minus Band) and ``rings`` (n, 4).
        """
        if coarse:
            code, stray_i, stray_lab = self.code_coarse, self.stray_coarse, self.stray_lab_coarse
        else:
            code, stray_i, stray_lab = self.code, self.stray, self.stray_lab
        s = np.bincount(code, weights=w, minlength=self.size).reshape(self.n + 1, N_RINGS, 2, 2)[1:]
        stray = np.bincount(stray_lab, weights=None if w is None else w[stray_i], minlength=self.n + 1)[1:]
        by_nuc = s.sum(axis=(1, 2))  # (n, 2): cytoplasm, own nucleus
        by_band = s.sum(axis=(1, 3))  # (n, 2): interior, band
        return {"Nuclei": by_nuc[:, 1] + stray, "Cells": by_nuc.sum(axis=1), "Cytoplasm": by_nuc[:, 0],
                "Band": by_band[:, 1], "Interior": by_band[:, 0], "rings": s.sum(axis=(2, 3))}

    def histograms(self, v: np.ndarray) -> dict[str, np.ndarray]:
        """Per-object histograms (n, HIST_BINS) of the [0, 1] pixel map ``v`` (flat), bins
        uniform in sqrt(v) (see :func:`hist_bin`)."""
        b = hist_bin(v)
        h = np.bincount(self.hcode + b, minlength=(self.n + 1) * 4 * HIST_BINS)
        h = h.reshape(self.n + 1, 2, 2, HIST_BINS)[1:].astype(np.float64)  # (n, band, own, bins)
        stray = np.bincount(self.stray_lab * HIST_BINS + b[self.stray],
                            minlength=(self.n + 1) * HIST_BINS).reshape(self.n + 1, HIST_BINS)[1:]
        return {"Nuclei": h[:, :, 1].sum(axis=1) + stray, "Cells": h.sum(axis=(1, 2)),
                "Cytoplasm": h[:, :, 0].sum(axis=1), "Band": h[:, 1].sum(axis=1)}


# ---------------------------------------------------------------------------
# histogram helpers (bins uniform in sqrt(v): relative resolution ~ 2 / (B sqrt(v)))
# ---------------------------------------------------------------------------


def hist_bin(v: np.ndarray) -> np.ndarray:
    """Bin index (int64) of values in [0, 1]: floor(sqrt(v) * HIST_BINS), top bin closed."""
    b = np.sqrt(np.asarray(v, dtype=np.float32))
    b *= HIST_BINS
    b = b.astype(np.int32)
    np.minimum(b, HIST_BINS - 1, out=b)
    return b


def hist_quantile(h: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` per row of histograms ``h`` (n, B) built with :func:`hist_bin`, linear
    in sqrt(v) within the bin. NaN for an empty row."""
    n, nb = h.shape
    cdf = np.cumsum(h, axis=1)
    total = cdf[:, -1]
    target = q * total
    i = np.minimum((cdf < target[:, None]).sum(axis=1), nb - 1)  # first bin with cdf >= target
    rows = np.arange(n)
    below = np.where(i > 0, cdf[rows, np.maximum(i - 1, 0)], 0.0)
    inbin = h[rows, i]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(inbin > 0, (target - below) / inbin, 0.0)
        out = ((i + np.clip(frac, 0.0, 1.0)) / nb) ** 2
    return np.where(total > 0, out, np.nan)


def hist_fraction_above(h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Fraction of each row's values >= ``x`` (n,) from histograms of :func:`hist_bin`,
    linear in sqrt(v) within the bin. NaN for an empty row."""
    n, nb = h.shape
    cdf = np.cumsum(h, axis=1)
    total = cdf[:, -1]
    pos = np.sqrt(np.clip(np.where(np.isfinite(x), x, 0.0), 0.0, 1.0)) * nb
    i = np.minimum(pos.astype(np.int64), nb - 1)
    rows = np.arange(n)
    below = np.where(i > 0, cdf[rows, np.maximum(i - 1, 0)], 0.0) + (pos - i) * h[rows, i]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1.0 - below / total, np.nan)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b with NaN where b is 0 or either is not finite."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.asarray(a, np.float64) / np.asarray(b, np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


# ---------------------------------------------------------------------------
# texture maps
# ---------------------------------------------------------------------------


def bin_image(img: np.ndarray, step: int) -> np.ndarray:
    """float32 (H // step, W // step): means of ``step`` x ``step`` blocks (the last rows and
    columns that do not fill a block are dropped); ``step`` 1 gives a float32 copy."""
    f = np.asarray(img, dtype=np.float32)
    if step <= 1:
        return np.ascontiguousarray(f)
    h, w = f.shape[0] // step, f.shape[1] // step
    return cv2.resize(np.ascontiguousarray(f[: h * step, : w * step]), (w, h), interpolation=cv2.INTER_AREA)


def texture_maps(binned: np.ndarray, px: float = 2.0) -> dict[str, np.ndarray]:
    """Per-pixel texture maps (float32, same shape) of one binned scaled channel whose pixels
    are ``px`` full-resolution pixels wide: ``GradientMean`` (Sobel magnitude / 8, intensity
    per binned px), ``LoGMean`` (|Laplacian of the Gaussian, sigma :data:`LOG_SIGMA`|) and
    ``DoGMean`` (|Gauss(s1) - Gauss(s2)|, :data:`DOG_SIGMAS`); sigmas are in full-resolution
    px, divided by ``px`` (at least 0.5)."""
    f = np.ascontiguousarray(binned, dtype=np.float32)
    border = cv2.BORDER_REFLECT
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3, borderType=border)
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3, borderType=border)
    grad = cv2.magnitude(gx, gy)
    grad *= 1.0 / 8.0
    g1 = cv2.GaussianBlur(f, (0, 0), max(LOG_SIGMA / px, 0.5), borderType=border)
    log_ = np.abs(cv2.Laplacian(g1, cv2.CV_32F, ksize=1, borderType=border))
    ga = cv2.GaussianBlur(f, (0, 0), max(DOG_SIGMAS[0] / px, 0.5), borderType=border)
    gb = cv2.GaussianBlur(f, (0, 0), max(DOG_SIGMAS[1] / px, 1.0), borderType=border)
    ga -= gb
    return {"GradientMean": grad, "LoGMean": log_, "DoGMean": np.abs(ga, out=ga)}


# ---------------------------------------------------------------------------
# main entry point
# ---------------------------------------------------------------------------


def curated_cell_features(
    image: np.ndarray,
    nuclei_labels: np.ndarray,
    cell_labels: np.ndarray,
    channels: Sequence[str] = IMAGE_CHANNELS,
    *,
    channel_scale: Sequence[float] | None = None,
    downsample: float = 1.0,
    border_width: float | None = None,
) -> pd.DataFrame:
    """Curated per-cell features of one site (see the module docstring for the list).

    Parameters
    ----------
    image : float (C, H, W), preprocessed units, channels in ``channels`` order; scaled to
        [0, 1] per channel by :func:`~ssc_assets.core.analysis.profiles.scale_channels`.
    nuclei_labels, cell_labels : int (H, W); 0 is background, a cell carries the label of
        its nucleus; only labels present in both masks are measured.
    channel_scale : optional divisors (C,) instead of the per-site percentile.
    downsample : resolution of the images relative to full resolution (2 at pyramid level 1);
        divides the border width and the texture sigmas.
    border_width : width (px of these images) of the cell border band; default
        :data:`BORDER_WIDTH_PX` / ``downsample`` (at least 1).

    Returns
    -------
    DataFrame, one row per cell sorted by label: ``ObjectNumber`` (int64, the original
    label) then float64 features. ``df.attrs["errors"]`` (list[str]) lists failed steps
    (their columns are absent), ``df.attrs["channel_scale"]`` the divisors used.
    """
    channels, scaled, scales, ids, nuc, cel = prepare_site(image, nuclei_labels, cell_labels, channels, channel_scale)
    n = int(ids.size)
    errors: list[str] = []
    cols: dict[str, np.ndarray] = {"ObjectNumber": ids}
    width = max(1.0, BORDER_WIDTH_PX / downsample) if border_width is None else float(border_width)

    if n:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            inside = (cel > 0) & ~cell_edges(cel)
            dist = cv2.distanceTransform(inside.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
            np.minimum(dist, float(sum(cel.shape)), out=dist)  # a cell without any edge pixel
            shapes = {"Nuclei": object_shapes(nuc, n), "Cells": object_shapes(cel, n, dist)}
            for obj in ("Nuclei", "Cells"):
                for name in SHAPE_NAMES:
                    cols[f"{obj}_AreaShape_{name}"] = shapes[obj][name]
            step = max(1, int(round(TEXTURE_BIN_PX / downsample)))
            comp = _Compartments(nuc, cel, n, width, dist, shapes["Cells"]["_dmax"], step)
            counts = comp.sums(None)
            cols["Cytoplasm_AreaShape_Area"] = counts["Cytoplasm"]
            cols["Cells_AreaShape_NucleusAreaFraction"] = _div(counts["Cells"] - counts["Cytoplasm"], counts["Cells"])
            coarse = comp.sums(None, coarse=True)
            sy, sx = comp.sums(comp.y), comp.sums(comp.x)
            centroid = {o: (_div(sy[o], counts[o]), _div(sx[o], counts[o])) for o in CURATED_OBJECTS}
            buf = np.empty(nuc.size)
            first = {}
            for c, ch in enumerate(channels):
                ch_cols: dict = {}  # merged only if the whole channel succeeds (no partial columns)
                try:
                    first[ch] = _channel_features(comp, counts, coarse, centroid, scaled[c], ch, step * downsample,
                                                  buf, ch_cols)
                    cols.update(ch_cols)
                except Exception as exc:  # noqa: BLE001 - reported to the caller, other channels kept
                    errors.append(f"channel {ch}: {type(exc).__name__}: {exc}")
            _correlations(comp, counts, scaled, channels, first, buf, errors, cols)
    else:
        errors.append("no label present in both nuclei_labels and cell_labels")

    df = _frame(cols)
    for e in errors:
        log.warning("curated_cell_features: %s", e)
    df.attrs["errors"] = errors
    df.attrs["channel_scale"] = dict(zip(channels, scales.tolist()))
    return df


def _frame(cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """``ObjectNumber`` (int64) then the float64 features (``inf`` as NaN), built in one block."""
    ids = np.asarray(cols.pop("ObjectNumber"), dtype=np.int64)
    names = list(cols)
    values = np.column_stack([np.asarray(cols[k], np.float64) for k in names]) if names else np.zeros((ids.size, 0))
    values[np.isinf(values)] = np.nan
    df = pd.DataFrame(values, columns=names)
    df.insert(0, "ObjectNumber", ids)
    return df


def _channel_features(comp: _Compartments, counts: dict, coarse: dict, centroid: dict, img2d: np.ndarray, ch: str,
                      px: float, buf: np.ndarray, cols: dict) -> dict:
    """Intensity, texture, radial and border features of one scaled channel (H, W) into
    ``cols``; returns the per-object sums of v and v² (reused by the correlations).
    ``px``: full-resolution px per coarse-grid px; ``buf``: float64 (H*W,) scratch space."""
    v = np.ascontiguousarray(img2d, dtype=np.float64).ravel()
    s1 = comp.sums(v)
    s2 = comp.sums(np.multiply(v, v, out=buf))
    hist = comp.histograms(v)
    sy = comp.sums(np.multiply(v, comp.y, out=buf))
    sx = comp.sums(np.multiply(v, comp.x, out=buf))
    for o in CURATED_OBJECTS:
        cnt = counts[o]
        mean = _div(s1[o], cnt)
        var = np.maximum(_div(s2[o], cnt) - mean**2, 0.0)
        cols[f"{o}_Intensity_IntegratedIntensity_{ch}"] = np.where(cnt > 0, s1[o], np.nan)
        cols[f"{o}_Intensity_MeanIntensity_{ch}"] = mean
        cols[f"{o}_Intensity_StdIntensity_{ch}"] = np.sqrt(var)
        for q, name in ((0.25, "LowerQuartileIntensity"), (0.5, "MedianIntensity"), (0.75, "UpperQuartileIntensity")):
            cols[f"{o}_Intensity_{name}_{ch}"] = hist_quantile(hist[o], q)
        cy, cx = centroid[o]
        wy, wx = _div(sy[o], s1[o]), _div(sx[o], s1[o])
        cols[f"{o}_Intensity_MassDisplacement_{ch}"] = np.hypot(wy - cy, wx - cx)
    for name, m in texture_maps(bin_image(img2d, comp.step), px).items():
        t = comp.sums(m.ravel(), coarse=True)
        for o in CURATED_OBJECTS:
            cols[f"{o}_Texture_{name}_{ch}"] = _div(t[o], coarse[o])
    # radial distribution of the cell (ring 0 = centre -> name 1of4)
    frac = _div(s1["rings"], s1["Cells"][:, None])
    area = _div(counts["rings"], counts["Cells"][:, None])
    for r in range(N_RINGS):
        cols[f"Cells_RadialDistribution_FracAtDepth_{r + 1}of{N_RINGS}_{ch}"] = frac[:, r]
        cols[f"Cells_RadialDistribution_MeanFracAtDepth_{r + 1}of{N_RINGS}_{ch}"] = _div(frac[:, r], area[:, r])
    # border band of the cell
    bmean = _div(s1["Band"], counts["Band"])
    imean = _div(s1["Interior"], counts["Interior"])
    bstd = np.sqrt(np.maximum(_div(s2["Band"], counts["Band"]) - bmean**2, 0.0))
    cols[f"Cells_Border_MeanIntensity_{ch}"] = bmean
    cols[f"Cells_Border_IntensityFraction_{ch}"] = _div(s1["Band"], s1["Cells"])
    cols[f"Cells_Border_InteriorRatio_{ch}"] = _div(bmean, imean)
    cols[f"Cells_Border_CV_{ch}"] = _div(bstd, bmean)
    thr = CONTINUITY_FRACTION * hist_quantile(hist["Band"], CONTINUITY_Q)
    cols[f"Cells_Border_Continuity_{ch}"] = hist_fraction_above(hist["Band"], thr)
    return {"s1": s1, "s2": s2}


def _correlations(comp: _Compartments, counts: dict, scaled: np.ndarray, channels: tuple[str, ...], first: dict,
                  buf: np.ndarray, errors: list[str], cols: dict) -> None:
    """Pearson r per object of every channel pair (names sorted), from sums of products."""
    index = {ch: c for c, ch in enumerate(channels)}
    for a, b in itertools.combinations(sorted(channels), 2):
        if a not in first or b not in first:
            continue
        try:
            sab = comp.sums(np.multiply(scaled[index[a]].ravel(), scaled[index[b]].ravel(), out=buf))
        except Exception as exc:  # noqa: BLE001 - reported
            errors.append(f"Correlation {a}_{b}: {type(exc).__name__}: {exc}")
            continue
        fa, fb = first[a], first[b]
        for o in CURATED_OBJECTS:
            cnt = counts[o]
            cov = sab[o] - fa["s1"][o] * fb["s1"][o] / np.where(cnt > 0, cnt, np.nan)
            va = fa["s2"][o] - fa["s1"][o] ** 2 / np.where(cnt > 0, cnt, np.nan)
            vb = fb["s2"][o] - fb["s1"][o] ** 2 / np.where(cnt > 0, cnt, np.nan)
            den = np.sqrt(np.maximum(va, 0) * np.maximum(vb, 0))
            # a constant channel in the object (variance ~ rounding) has no correlation
            tiny = den <= 1e-12 * np.maximum(cnt, 1)
            r = np.where(tiny, np.nan, _div(cov, den))
            cols[f"{o}_Correlation_Pearson_{a}_{b}"] = np.clip(r, -1.0, 1.0)
