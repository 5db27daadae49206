"""Masks from preprocessed images: nuclei, cells (Voronoi propagation), borders, actin, U-Net
weight map (thesis section 5.3.1). Pure numpy / scipy / scikit-image / centrosome.

Every parameter that depends on object size is derived from ``expected_diameter_px``, the
equivalent diameter of a typical nucleus in pixels, so the same code works at any
magnification or binning: set it from the pixel size (see :func:`NucleiParams.from_pixel_size`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi
from centrosome.propagate import propagate
from skimage.filters import threshold_otsu
from skimage.morphology import disk, h_maxima
from skimage.segmentation import clear_border, find_boundaries, relabel_sequential, watershed

#: HUVEC nuclei: about 18 x 12 um ellipses, i.e. ~14.7 um equivalent diameter; at the
#: ImageXpress Micro Confocal 20x pixel size (~0.34 um on a 2048 sCMOS) that is ~43 px. The
#: default is a little smaller (36 px) to keep small and mitotic nuclei whole.
DEFAULT_NUCLEUS_DIAMETER_PX = 36.0
#: The same default in um, at the thesis pixel size of 0.34 um (what the masks asset takes).
DEFAULT_NUCLEUS_DIAMETER_UM = DEFAULT_NUCLEUS_DIAMETER_PX * 0.34


@dataclass(frozen=True)
class NucleiParams:
    """Nuclei segmentation. Every size scales with the expected diameter D (px).

    - ``opening_radius``: the thesis' opening (removes specks and thin bridges), 3 px at the
      default D = 36 px, i.e. round(D / 12) (at least 1) when left as ``None``;
    - minimum area: ``min_area_fraction`` x area of a disk of diameter D (debris is smaller);
    - distance map smoothed with sigma = D / 24 (removes ragged-edge ridges);
    - markers: regional maxima of the smoothed distance map deeper than h = D / 12, so two
      touching nuclei are split when the neck is narrower than their radius minus D/12, while
      one elongated nucleus (a single distance ridge) keeps one marker.
    """

    expected_diameter_px: float = DEFAULT_NUCLEUS_DIAMETER_PX
    opening_radius: int | None = None
    min_area_fraction: float = 0.1
    clear_border: bool = True

    @classmethod
    def from_pixel_size(cls, pixel_size_um: float, nucleus_diameter_um: float = 12.0, **kw) -> "NucleiParams":
        return cls(expected_diameter_px=nucleus_diameter_um / pixel_size_um, **kw)

    @property
    def min_area_px(self) -> float:
        return self.min_area_fraction * np.pi * (self.expected_diameter_px / 2) ** 2

    @property
    def opening_px(self) -> int:
        """Opening radius in px: ``opening_radius`` if set, else round(D / 12), at least 1."""
        return self.opening_radius if self.opening_radius is not None else max(1, int(round(self.expected_diameter_px / 12.0)))

    @property
    def smoothing_sigma(self) -> float:
        return self.expected_diameter_px / 24.0

    @property
    def h(self) -> float:
        return self.expected_diameter_px / 12.0


def _fill_holes_per_object(mask: np.ndarray) -> np.ndarray:
    return ndi.binary_fill_holes(mask)


def _h_maxima_markers(dist: np.ndarray, fg: np.ndarray, h: float) -> np.ndarray:
    """Labelled h-maxima of ``dist`` inside ``fg``, computed per connected component.

    Same result as ``h_maxima`` on the whole image (components do not interact: ``dist`` is
    0 between them) but only over the components' bounding boxes, ~10x less work.
    """
    comp, _ = ndi.label(fg)
    maxima = np.zeros(fg.shape, bool)
    for i, sl in enumerate(ndi.find_objects(comp), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        d = np.where(comp[sl] == i, dist[sl], 0.0)
        maxima[sl] |= h_maxima(d, h).astype(bool) & (comp[sl] == i)
    return ndi.label(maxima)[0]


def segment_nuclei(nuclei_img: np.ndarray, params: NucleiParams = NucleiParams()) -> np.ndarray:
    """Labelled nuclei, int32 (H, W), 0 = background, labels 1..n.

    Otsu threshold -> opening (disk 3) -> holes filled -> small objects removed ->
    distance-transform watershed with h-maxima markers -> border-touching nuclei cleared.
    A blank image gives all zeros.
    """
    img = np.asarray(nuclei_img, dtype=np.float32)
    if img.size == 0 or float(img.max()) - float(img.min()) < 1e-6:
        return np.zeros(img.shape, np.int32)
    fg = img > threshold_otsu(img)
    fg = ndi.binary_opening(fg, structure=disk(params.opening_px))
    fg = _fill_holes_per_object(fg)
    lab, n = ndi.label(fg)
    if n == 0:
        return np.zeros(img.shape, np.int32)
    areas = np.bincount(lab.ravel())
    small = areas < params.min_area_px
    small[0] = False
    fg[small[lab]] = False
    if not fg.any():
        return np.zeros(img.shape, np.int32)
    dist = ndi.distance_transform_edt(fg)
    if params.smoothing_sigma > 0:
        dist = ndi.gaussian_filter(dist, params.smoothing_sigma)
    markers = _h_maxima_markers(dist, fg, params.h)
    labels = watershed(-dist, markers, mask=fg)
    # objects that got no marker (flat, tiny) keep their connected component
    orphan = fg & (labels == 0)
    if orphan.any():
        extra, _ = ndi.label(orphan)
        labels = np.where(orphan, extra + labels.max(), labels)
    if params.clear_border:
        labels = clear_border(labels)
    return relabel_sequential(labels.astype(np.int32))[0].astype(np.int32)


def scale_unit(img: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Robust scaling to [0, 1] (float64): percentiles map to 0 and 1, then clipped."""
    lo, hi = np.percentile(img, percentiles)
    return np.clip((np.asarray(img, np.float64) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)


def segment_cells(
    borders_img: np.ndarray, nuclei_labels: np.ndarray, regularization: float = 0.05, scale: int = 1
) -> np.ndarray:
    """Cells by Voronoi-based propagation from the nuclei over the VE-cadherin image, int32.

    Jones et al. 2005 (CellProfiler IdentifySecondaryObjects "Propagation", EBImage
    ``propagate``): ``centrosome.propagate.propagate`` on the borders image scaled to [0, 1]
    with CellProfiler's default regularization 0.05. The mask is the whole field: the
    monolayer is confluent, so cells tile the image and meet on the junctions. Cell labels
    equal the labels of their nuclei.

    ``scale`` > 1 propagates on a block-mean image downsampled by ``scale`` (seeds sampled
    by nearest neighbour) and enlarges the labels back, ~scale^2 times faster; boundaries
    then sit within ``scale`` px of the full-resolution result (see docs/image-pipeline.md).
    Nuclei keep their own pixels either way.
    """
    labels = np.asarray(nuclei_labels, dtype=np.int32)
    if labels.max() == 0:
        return np.zeros(labels.shape, np.int32)
    img = scale_unit(borders_img)
    if scale > 1:
        h, w = labels.shape
        hs, ws = h // scale, w // scale
        small = img[: hs * scale, : ws * scale].reshape(hs, scale, ws, scale).mean(axis=(1, 3))
        seeds = labels[scale // 2 :: scale, scale // 2 :: scale][:hs, :ws]
        cells_small, _ = propagate(small, np.ascontiguousarray(seeds), np.ones(small.shape, bool), regularization)
        cells = np.repeat(np.repeat(cells_small, scale, axis=0), scale, axis=1)
        cells = np.pad(cells, ((0, h - cells.shape[0]), (0, w - cells.shape[1])), mode="edge")
        cells = np.where(labels > 0, labels, cells)
    else:
        cells, _ = propagate(img, labels, np.ones(labels.shape, bool), regularization)
    return cells.astype(np.int32)


def borders_mask(cell_labels: np.ndarray, width_px: int = 3) -> np.ndarray:
    """Cell-label boundaries as uint8 0/1, about ``width_px`` wide (thick boundaries, dilated)."""
    b = find_boundaries(cell_labels, mode="thick")
    extra = max(0, (width_px - 2) // 2)
    if extra:
        b = ndi.binary_dilation(b, structure=disk(extra))
    return b.astype(np.uint8)


def actin_mask(actin_img: np.ndarray) -> np.ndarray:
    """Otsu threshold of the ACTIN channel (the thesis' "nuclei channel" is a slip), uint8 0/1."""
    img = np.asarray(actin_img, dtype=np.float32)
    if float(img.max()) - float(img.min()) < 1e-6:
        return np.zeros(img.shape, np.uint8)
    return (img > threshold_otsu(img)).astype(np.uint8)


def class_weights(target: np.ndarray) -> dict[int, float]:
    """Balanced class weights N / (K x n_c) of a binary target (mean weight over pixels = 1)."""
    t = np.asarray(target).astype(bool)
    n = t.size
    counts = {0: int((~t).sum()), 1: int(t.sum())}
    present = [c for c, k in counts.items() if k > 0]
    return {c: (n / (len(present) * counts[c]) if counts[c] else 0.0) for c in (0, 1)}


def two_nearest_distances(instances: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances (px, float32) from every pixel to the nearest and second-nearest instance.

    Each instance's Euclidean distance transform is computed only in its bounding box grown
    by ``max_distance``; beyond that the distance counts as infinite. Pixels inside an
    instance are at distance 0 from it.
    """
    inst = np.asarray(instances)
    h, w = inst.shape
    d1 = np.full((h, w), np.inf, np.float32)
    d2 = np.full((h, w), np.inf, np.float32)
    m = int(np.ceil(max_distance))
    for idx, sl in enumerate(ndi.find_objects(inst), start=1):
        if sl is None:
            continue
        y0, y1 = max(sl[0].start - m, 0), min(sl[0].stop + m, h)
        x0, x1 = max(sl[1].start - m, 0), min(sl[1].stop + m, w)
        win = inst[y0:y1, x0:x1] == idx
        d = ndi.distance_transform_edt(~win).astype(np.float32)
        a1, a2 = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
        closer = d < a1
        a2[:] = np.where(closer, a1, np.minimum(a2, d))
        a1[:] = np.where(closer, d, a1)
    return d1, d2


def unet_weight_map(target: np.ndarray, instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """Ronneberger et al. 2015 weight map, float32 (H, W).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)), with w_c the balanced class
    weight of the target (:func:`class_weights`) and d1, d2 the distances to the nearest and
    second-nearest cell instance. Cells tile the monolayer, so the border term peaks on the
    junctions between cells and decays over ~sigma px into each cell.
    """
    cw = class_weights(target)
    wc = np.where(np.asarray(target).astype(bool), cw[1], cw[0]).astype(np.float32)
    d1, d2 = two_nearest_distances(instances, max_distance=4 * sigma)
    s = d1 + d2
    border = np.where(np.isfinite(s), w0 * np.exp(-(s**2) / (2 * sigma**2)), 0.0).astype(np.float32)
    return wc + border


@dataclass(frozen=True)
class MaskParams:
    """Mask settings of one site (the home of the launchpad defaults); sizes in px.

    ``regularization``: propagation regularization of the cells (CellProfiler default 0.05);
    ``propagate_scale``: propagate on a grid downsampled by this factor (1 = full resolution);
    ``border_width_px``: width of the borders mask; ``w0`` / ``sigma`` (px): border weight and
    decay of the U-Net weight map.
    """

    nuclei: NucleiParams = NucleiParams()
    regularization: float = 0.05
    propagate_scale: int = 2
    border_width_px: int = 3
    w0: float = 10.0
    sigma: float = 5.0


def compute_masks(nuclei_img: np.ndarray, borders_img: np.ndarray, actin_img: np.ndarray, params: MaskParams = MaskParams()) -> dict[str, np.ndarray]:
    """All masks of one site from its preprocessed channels (each float32 (H, W)).

    Returns ``nuclei``/``cells`` int32 labels, ``borders``/``actin``/``actin_inside_cells``
    uint8 0/1 and ``weight_map`` float32.
    """
    nuclei = segment_nuclei(nuclei_img, params.nuclei)
    cells = segment_cells(borders_img, nuclei, params.regularization, params.propagate_scale)
    borders = borders_mask(cells, params.border_width_px) if cells.max() else np.zeros(cells.shape, np.uint8)
    actin = actin_mask(actin_img)
    inside = (actin.astype(bool) & ~borders.astype(bool) & (cells > 0)).astype(np.uint8)
    weight = unet_weight_map(inside, cells, params.w0, params.sigma)
    return {"nuclei": nuclei, "cells": cells, "borders": borders, "actin": actin,
            "actin_inside_cells": inside, "weight_map": weight}


def mask_summary(masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-site counts: nuclei, cells, mean areas (px), actin fractions."""
    nuc, cells = masks["nuclei"], masks["cells"]
    n_nuc, n_cells = int(nuc.max()), int(len(np.unique(cells[cells > 0])))
    cell_areas = np.bincount(cells.ravel())[1:]
    nuc_areas = np.bincount(nuc.ravel())[1:]
    return {
        "n_nuclei": n_nuc,
        "n_cells": n_cells,
        "mean_cell_area_px": float(cell_areas[cell_areas > 0].mean()) if n_cells else 0.0,
        "mean_nucleus_area_px": float(nuc_areas[nuc_areas > 0].mean()) if n_nuc else 0.0,
        "actin_fraction": float(masks["actin"].mean()),
        "actin_inside_fraction": float(masks["actin_inside_cells"].mean()),
    }
