"""Masks from preprocessed images: nuclei, cells (Voronoi propagation), borders, actin, U-Net
weight map (thesis section 5.3.1). Pure numpy / scipy / scikit-image / centrosome.

Every parameter that depends on object size is derived from ``expected_diameter_px``, the
equivalent diameter of a typical nucleus in pixels, so the same code works at any
magnification or binning: set it from the pixel size (see :func:`NucleiParams.from_pixel_size`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.ndimage as ndi
from centrosome.propagate import propagate
from skimage.filters import threshold_otsu
from skimage.morphology import disk, h_maxima
from skimage.segmentation import relabel_sequential, watershed

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


_EIGHT = np.ones((3, 3), bool)


def _windows(lab: np.ndarray, margin: int, objects: list | None = None):
    """(label, bounding box, bounding box grown by ``margin`` and clipped) of each object;
    ``objects``: ``ndi.find_objects(lab)`` if already computed."""
    h, w = lab.shape
    for i, sl in enumerate(ndi.find_objects(lab) if objects is None else objects, start=1):
        if sl is not None:
            yield i, sl, (slice(max(sl[0].start - margin, 0), min(sl[0].stop + margin, h)),
                          slice(max(sl[1].start - margin, 0), min(sl[1].stop + margin, w)))


def _open_and_fill_per_component(fg: np.ndarray, radius: int) -> np.ndarray:
    """``ndi.binary_fill_holes(ndi.binary_opening(fg, disk(radius)))``, computed per
    8-connected component of ``fg`` in its bounding box (~5x less work).

    Identical result: a disk that fits in the union fits in one 8-component (the disk is
    connected, separate 8-components are not adjacent), so the opening is the union of the
    components' openings, each inside its component; the outline of a 4-connected hole is
    8-connected, so one component encloses each hole. Objects narrower than the disk vanish.
    """
    se = disk(radius)
    lab, _ = ndi.label(fg, _EIGHT)
    out = np.zeros(fg.shape, bool)
    for i, sl, win in _windows(lab, radius + 1):
        if sl[0].stop - sl[0].start >= 2 * radius + 1 and sl[1].stop - sl[1].start >= 2 * radius + 1:
            out[win] |= ndi.binary_fill_holes(ndi.binary_opening(lab[win] == i, structure=se))
    return out


def _edt_per_component(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """``ndi.distance_transform_edt(fg)`` per 8-component in its box grown by 1 px (identical:
    the background pixel nearest to a component pixel touches the component), the 8-connected
    labels and their ``find_objects``."""
    lab, _ = ndi.label(fg, _EIGHT)
    objects = ndi.find_objects(lab)
    dist = np.zeros(fg.shape, np.float64)
    for i, _, win in _windows(lab, 1, objects):
        m = lab[win] == i
        dist[win][m] = ndi.distance_transform_edt(m)[m]
    return dist, lab, objects


def _gaussian_on_components(dist: np.ndarray, lab: np.ndarray, sigma: float, objects: list | None = None) -> np.ndarray:
    """``ndi.gaussian_filter(dist, sigma)`` on the labelled pixels (0 elsewhere), each object's
    box grown by the kernel radius + 1: every output pixel sees the same inputs (identical)."""
    r = int(4.0 * float(sigma) + 0.5)  # gaussian_filter's radius at truncate=4
    out = np.zeros_like(dist)
    for i, _, win in _windows(lab, r + 1, objects):
        m = lab[win] == i
        out[win][m] = ndi.gaussian_filter(dist[win], sigma)[m]
    return out


def _h_maxima_markers(dist: np.ndarray, fg: np.ndarray, h: float, comp: np.ndarray | None = None,
                      objects: list | None = None) -> np.ndarray:
    """Labelled h-maxima of ``dist`` inside ``fg``, computed per connected component.

    Same result as ``h_maxima`` on the whole image (components do not interact: ``dist`` is
    0 between them) but only over the components' bounding boxes, ~10x less work. ``comp``
    (and ``objects``): labels of the components of ``fg`` (and their ``find_objects``) if
    already known.
    """
    if comp is None:
        comp, _ = ndi.label(fg)
    maxima = np.zeros(fg.shape, bool)
    for i, _, sl in _windows(comp, 1, objects):
        m = comp[sl] == i
        d = np.where(m, dist[sl], 0.0)
        maxima[sl] |= h_maxima(d, h).astype(bool) & m
    return ndi.label(maxima)[0]


def _clear_border_and_relabel(labels: np.ndarray) -> np.ndarray:
    """``relabel_sequential(clear_border(labels))`` as int32 for labels whose objects are each
    connected (watershed basins, labelled orphans): a lookup table instead of a relabelling
    of connected components."""
    n = int(labels.max())
    keep = np.bincount(labels.ravel(), minlength=n + 1) > 0
    edges = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    keep[edges] = False
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def _downsample_mask(fg: np.ndarray, scale: int) -> np.ndarray:
    """Block majority (mean >= 0.5) of a bool mask, blocks of ``scale`` x ``scale`` (edge rows
    and columns that do not fill a block are dropped)."""
    h, w = fg.shape[0] // scale, fg.shape[1] // scale
    return fg[: h * scale, : w * scale].reshape(h, scale, w, scale).mean(axis=(1, 3)) >= 0.5


def _upsample_labels(lab: np.ndarray, scale: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour enlargement by ``scale`` to ``shape`` (missing edge rows repeated)."""
    up = np.repeat(np.repeat(lab, scale, axis=0), scale, axis=1)
    return np.pad(up, ((0, shape[0] - up.shape[0]), (0, shape[1] - up.shape[1])), mode="edge")


def _snap_to_foreground(labels: np.ndarray, fg: np.ndarray, steps: int) -> np.ndarray:
    """``labels`` inside ``fg`` only; foreground pixels left unlabelled take a neighbouring
    label (up to ``steps`` 3x3 dilations, highest label wins), the rest keep a new label per
    connected piece."""
    out = np.where(fg, labels, 0)
    for _ in range(steps):
        missing = fg & (out == 0)
        if not missing.any():
            break
        out = np.where(missing, ndi.grey_dilation(out, size=(3, 3)), out)
    missing = fg & (out == 0)
    if missing.any():
        extra, _ = ndi.label(missing)
        out = np.where(missing, extra + out.max(), out)
    return out


#: Half-resolution nuclei splitting needs this nucleus diameter (px) at the reduced scale.
MIN_SPLIT_DIAMETER_PX = 16.0


def nuclei_foreground(nuclei_img: np.ndarray, params: NucleiParams = NucleiParams()) -> np.ndarray:
    """Nuclei foreground, bool: Otsu threshold -> opening (disk) -> holes filled -> objects
    smaller than ``params.min_area_px`` removed. All zeros for a blank image."""
    img = np.asarray(nuclei_img, dtype=np.float32)
    if img.size == 0 or float(img.max()) - float(img.min()) < 1e-6:
        return np.zeros(img.shape, bool)
    fg = _open_and_fill_per_component(img > threshold_otsu(img), params.opening_px)
    lab, n = ndi.label(fg)
    if n == 0:
        return fg
    small = np.bincount(lab.ravel()) < params.min_area_px
    small[0] = False
    fg[small[lab]] = False
    return fg


def split_nuclei(fg: np.ndarray, params: NucleiParams = NucleiParams()) -> np.ndarray:
    """Distance-transform watershed of a foreground with h-maxima markers, labels (not cleared
    of the border, not relabelled); objects without a marker keep their connected component."""
    dist, comp8, objects = _edt_per_component(fg)
    if params.smoothing_sigma > 0:
        dist = _gaussian_on_components(dist, comp8, params.smoothing_sigma, objects)
    markers = _h_maxima_markers(dist, fg, params.h, comp8, objects)
    labels = watershed(-dist, markers, mask=fg)
    orphan = fg & (labels == 0)
    if orphan.any():
        extra, _ = ndi.label(orphan)
        labels = np.where(orphan, extra + labels.max(), labels)
    return labels


def segment_nuclei(nuclei_img: np.ndarray, params: NucleiParams = NucleiParams(), scale: int = 1) -> np.ndarray:
    """Labelled nuclei, int32 (H, W), 0 = background, labels 1..n.

    Otsu threshold -> opening (disk 3) -> holes filled -> small objects removed ->
    distance-transform watershed with h-maxima markers -> border-touching nuclei cleared.
    A blank image gives all zeros.

    ``scale`` > 1 splits touching nuclei on the foreground downsampled by ``scale`` (block
    majority; every size divided by ``scale``), enlarges the labels back and snaps them to the
    full-resolution foreground, which is always found at full resolution. It falls back to 1
    when the nucleus would be smaller than :data:`MIN_SPLIT_DIAMETER_PX` at that scale.
    """
    fg = nuclei_foreground(nuclei_img, params)
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    if scale > 1 and params.expected_diameter_px / scale >= MIN_SPLIT_DIAMETER_PX:
        small = _downsample_mask(fg, scale)
        p = replace(params, expected_diameter_px=params.expected_diameter_px / scale)
        labels = _snap_to_foreground(_upsample_labels(split_nuclei(small, p), scale, fg.shape), fg, scale + 1)
    else:
        labels = split_nuclei(fg, params)
    if params.clear_border:
        return _clear_border_and_relabel(labels)
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


def _thick_boundaries(labels: np.ndarray) -> np.ndarray:
    """``find_boundaries(labels, mode="thick")`` (4-connectivity) from neighbour differences,
    ~10x faster: a pixel is a boundary when a 4-neighbour has another label."""
    b = np.zeros(labels.shape, bool)
    d = labels[1:] != labels[:-1]
    b[1:] |= d
    b[:-1] |= d
    d = labels[:, 1:] != labels[:, :-1]
    b[:, 1:] |= d
    b[:, :-1] |= d
    return b


def borders_mask(cell_labels: np.ndarray, width_px: int = 3) -> np.ndarray:
    """Cell-label boundaries as uint8 0/1, about ``width_px`` wide (thick boundaries, dilated)."""
    b = _thick_boundaries(np.asarray(cell_labels))
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


def distance_to_other_instance(instances: np.ndarray, max_distance: float) -> np.ndarray:
    """For a tiling (every pixel in an instance): distance (px, float32) from each pixel to the
    nearest pixel of another instance, ``inf`` beyond ``max_distance``.

    Equals ``d1 + d2`` of :func:`two_nearest_distances` wherever that is <= ``max_distance``
    (d1 = 0 inside an instance), with one distance transform per instance in its bounding box
    grown by 1 px (the nearest outside pixel touches the instance), ~3x less work.
    """
    inst = np.asarray(instances)
    out = np.full(inst.shape, np.inf, np.float32)
    for i, _, win in _windows(inst, 1):
        m = inst[win] == i
        if m.all():  # no other instance around (a single cell): no second distance
            continue
        d = ndi.distance_transform_edt(m)[m].astype(np.float32)
        d[d > max_distance] = np.inf
        out[win][m] = d
    return out


def unet_weight_map(target: np.ndarray, instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """Ronneberger et al. 2015 weight map, float32 (H, W).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)), with w_c the balanced class
    weight of the target (:func:`class_weights`) and d1, d2 the distances to the nearest and
    second-nearest cell instance. Cells tile the monolayer, so the border term peaks on the
    junctions between cells and decays over ~sigma px into each cell. The border term is 0
    where d1 + d2 > 4 sigma (there it would be < w0 e^-8 = 3e-4 w0).
    """
    cw = class_weights(target)
    wc = np.where(np.asarray(target).astype(bool), cw[1], cw[0]).astype(np.float32)
    inst = np.asarray(instances)
    if inst.size and inst.min() > 0:  # a tiling (the cells): d1 = 0, d2 = distance out of the own cell
        s = distance_to_other_instance(inst, max_distance=4 * sigma)
    else:
        d1, d2 = two_nearest_distances(inst, max_distance=4 * sigma)
        s = d1 + d2
        s[s > 4 * sigma] = np.inf
    border = np.zeros(s.shape, np.float32)
    near = np.isfinite(s)
    border[near] = w0 * np.exp(-(s[near] ** 2) / (2 * sigma**2))
    return wc + border


@dataclass(frozen=True)
class MaskParams:
    """Mask settings of one site (the home of the launchpad defaults); sizes in px.

    ``regularization``: propagation regularization of the cells (CellProfiler default 0.05);
    ``nuclei_scale``: split touching nuclei on the foreground downsampled by this factor
    (see :func:`segment_nuclei`; 2 agrees with full resolution at matched IoU 0.99 but saves
    only ~0.03 s per site, so the default stays 1, full resolution, docs/image-pipeline.md);
    ``propagate_scale``: propagate on a grid downsampled by this factor (1 = full resolution);
    ``border_width_px``: width of the borders mask; ``w0`` / ``sigma`` (px): border weight and
    decay of the U-Net weight map.
    """

    nuclei: NucleiParams = NucleiParams()
    nuclei_scale: int = 1
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
    nuclei = segment_nuclei(nuclei_img, params.nuclei, params.nuclei_scale)
    cells = segment_cells(borders_img, nuclei, params.regularization, params.propagate_scale)
    borders = borders_mask(cells, params.border_width_px) if cells.max() else np.zeros(cells.shape, np.uint8)
    actin = actin_mask(actin_img)
    inside = (actin.astype(bool) & ~borders.astype(bool) & (cells > 0)).astype(np.uint8)
    weight = unet_weight_map(inside, cells, params.w0, params.sigma)
    return {"nuclei": nuclei, "cells": cells, "borders": borders, "actin": actin,
            "actin_inside_cells": inside, "weight_map": weight}


def label_agreement(reference: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Agreement of two label images of the same objects (e.g. a reduced-resolution result
    against full resolution).

    Each reference object is matched to the object of ``labels`` it overlaps with the highest
    IoU. ``mean_iou``: mean IoU of the matched objects (IoU >= 0.5); ``matched``: fraction of
    reference objects matched; ``pixels``: fraction of pixels whose label maps to the same
    object (the matched reference label, background to background).
    """
    ref = np.asarray(reference).astype(np.int64).ravel()
    lab = np.asarray(labels).astype(np.int64).ravel()
    nr, nl = int(ref.max()) + 1, int(lab.max()) + 1
    inter = np.bincount(ref * nl + lab, minlength=nr * nl).reshape(nr, nl)
    area_r, area_l = inter.sum(1), inter.sum(0)
    iou = inter / np.maximum(area_r[:, None] + area_l[None, :] - inter, 1)
    iou[0, :] = iou[:, 0] = 0
    present = area_r[1:] > 0
    if not present.any():
        return {"mean_iou": 1.0 if nl == 1 else 0.0, "matched": 1.0, "pixels": float((lab == 0).mean()), "n": 0}
    best = iou[1:].max(axis=1)[present]
    ok = best >= 0.5
    mapping = np.zeros(nl, np.int64)
    cols = iou.argmax(axis=0)  # each label -> the reference object it overlaps best
    mapping[1:] = np.where(iou[cols[1:], np.arange(1, nl)] >= 0.5, cols[1:], -1)
    return {"mean_iou": float(best[ok].mean()) if ok.any() else 0.0, "matched": float(ok.mean()),
            "pixels": float((mapping[lab] == ref).mean()), "n": int(present.sum())}


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
