"""Masks against known synthetic ground truth and hand-computed weight-map values."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.draw import ellipse
from skimage.segmentation import find_boundaries, relabel_sequential

from ssc_assets.core.image import segmentation as S
from ssc_assets.core.simulate import render_site


def nuclei_phantom(seed=0, size=256, touching=True):
    rng = np.random.default_rng(seed)
    gt = np.zeros((size, size), np.int32)
    k = 0
    centres = [(60, 60), (60, 160), (170, 70), (180, 180)]
    for cy, cx in centres:
        k += 1
        rr, cc = ellipse(cy, cx, 20, 14, shape=gt.shape, rotation=rng.uniform(0, np.pi))
        gt[rr, cc] = k
    if touching:  # a touching pair: two discs whose outlines meet
        for cx in (100, 134):
            k += 1
            rr, cc = ellipse(120, cx, 17, 17, shape=gt.shape)
            gt[rr, cc] = np.where(gt[rr, cc] == 0, k, gt[rr, cc])
    ramp = np.linspace(0.6, 1.0, size)[None, :]  # uneven brightness
    img = (gt > 0) * 1000.0 * ramp + 100
    img = gaussian_filter(img, 1.5) + rng.normal(0, 20, img.shape)
    return img.astype(np.float32), gt


def matched_f1(pred, gt, iou=0.5):
    tp = 0
    for g in range(1, gt.max() + 1):
        m = gt == g
        ids, counts = np.unique(pred[m], return_counts=True)
        for i, c in zip(ids, counts):
            if i and c / (m.sum() + (pred == i).sum() - c) >= iou:
                tp += 1
                break
    return 2 * tp / (gt.max() + pred.max())


def test_nuclei_recovered_and_touching_pair_split():
    img, gt = nuclei_phantom()
    pred = S.segment_nuclei(img, S.NucleiParams(expected_diameter_px=32))
    assert pred.max() == gt.max() == 6
    assert matched_f1(pred, gt) == 1.0
    # the touching pair is split: its two discs get different labels
    assert pred[120, 100] != pred[120, 134] and pred[120, 100] and pred[120, 134]


def test_border_nuclei_cleared_and_debris_removed():
    img, gt = nuclei_phantom(touching=False)
    rr, cc = ellipse(5, 128, 15, 15, shape=img.shape)
    img[rr, cc] += 900  # cut by the top edge
    img[230:233, 230:233] += 5000  # bright debris far smaller than a nucleus
    pred = S.segment_nuclei(img, S.NucleiParams(expected_diameter_px=32))
    assert pred.max() == 4 and pred[5, 128] == 0 and pred[231, 231] == 0


def test_blank_image_gives_zeros():
    assert S.segment_nuclei(np.full((64, 64), 7.0, np.float32)).max() == 0
    assert S.segment_cells(np.zeros((64, 64)), np.zeros((64, 64), np.int32)).max() == 0


def voronoi_phantom(size=200, seed=1):
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(20, size - 20, (8, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    cells = d.argmin(-1).astype(np.int32) + 1
    edges = find_boundaries(cells, mode="thick")
    borders = gaussian_filter(edges * 1.0, 1.0) + rng.normal(0, 0.02, cells.shape)
    nuclei = np.zeros_like(cells)
    for k, (cy, cx) in enumerate(seeds, start=1):
        rr, cc = ellipse(cy, cx, 6, 6, shape=cells.shape)
        nuclei[rr, cc] = k
    return borders, nuclei, cells


@pytest.mark.parametrize("scale", [1, 2])
def test_propagation_recovers_voronoi_cells(scale):
    borders, nuclei, cells = voronoi_phantom()
    pred = S.segment_cells(borders, nuclei, 0.05, scale=scale)
    agree = (pred == cells).mean()
    assert agree > (0.98 if scale == 1 else 0.96)
    assert set(np.unique(pred)) == set(range(1, 9))


def test_borders_and_actin_inside_cells():
    borders, nuclei, cells = voronoi_phantom()
    b = S.borders_mask(cells, width_px=3)
    assert b.dtype == np.uint8 and set(np.unique(b)) == {0, 1}
    # every label change between horizontal neighbours is covered by the mask
    change = cells[:, 1:] != cells[:, :-1]
    assert b[:, 1:][change].all() and b[:, :-1][change].all()
    actin_img = np.random.default_rng(0).random(cells.shape).astype(np.float32)
    masks = S.compute_masks(gaussian_filter((nuclei > 0) * 1.0, 1), borders, actin_img)
    inside = masks["actin_inside_cells"].astype(bool)
    assert not (inside & masks["borders"].astype(bool)).any()
    assert (inside <= masks["actin"].astype(bool)).all()


def test_class_weights_hand_values():
    t = np.zeros((10, 10), bool)
    t[:2] = True  # 20 % foreground
    cw = S.class_weights(t)
    assert cw[1] == pytest.approx(100 / (2 * 20)) and cw[0] == pytest.approx(100 / (2 * 80))


def test_weight_map_border_term_hand_value():
    inst = np.zeros((21, 41), np.int32)
    inst[:, :15] = 1
    inst[:, 26:] = 2  # gap of 11 px (columns 15..25) between two cells
    target = np.zeros(inst.shape, bool)
    w = S.unet_weight_map(target, inst, w0=10, sigma=5)
    # midpoint column 20: d1 = 20 - 14 = 6, d2 = 26 - 20 = 6
    assert w[10, 20] == pytest.approx(1.0 + 10 * np.exp(-(12**2) / 50), rel=1e-5)
    # inside cell 1, far from cell 2 (beyond 4 sigma): only the class weight remains
    assert w[10, 0] == pytest.approx(1.0, abs=1e-6)


def test_elongated_nucleus_not_over_split():
    img = np.full((160, 160), 100.0, np.float32)
    rr, cc = ellipse(80, 80, 16, 40, shape=img.shape, rotation=0.3)  # 2.5:1, area ~ a D=36 disk
    img[rr, cc] += 900
    img = gaussian_filter(img, 1.5) + np.random.default_rng(1).normal(0, 20, img.shape).astype(np.float32)
    assert S.segment_nuclei(img, S.NucleiParams(expected_diameter_px=36)).max() == 1


def test_parameters_scale_with_expected_diameter():
    """The same scene imaged at 2x the pixel density, with D doubled, gives the same objects."""
    img, gt = nuclei_phantom()
    big = np.kron(img, np.ones((2, 2), np.float32))
    pred = S.segment_nuclei(big, S.NucleiParams(expected_diameter_px=64))
    assert pred.max() == 6
    assert matched_f1(pred, np.kron(gt, np.ones((2, 2), gt.dtype))) == 1.0
    p = S.NucleiParams(expected_diameter_px=64)
    assert (p.h, p.smoothing_sigma) == (64 / 12, 64 / 24)


def test_nuclei_on_simulated_site_through_preprocessing():
    """Simulator ground truth (independent of the segmenter) after the real preprocessing chain."""
    from skimage.segmentation import clear_border

    from ssc_assets.core.image.filters import preprocess_channel

    scores = []
    for seed in (3, 4, 5):
        imgs, truth = render_site(seed, 512, 0.3)
        pre = preprocess_channel(imgs["nuclei"].astype(np.float32) - 100.0, "nuclei")
        gt = truth["nuclei_labels"]
        off = (gt.shape[0] - pre.shape[0]) // 2
        gt = relabel_sequential(clear_border(gt[off : off + pre.shape[0], off : off + pre.shape[1]]))[0]
        assert gt.max() >= 5
        scores.append(matched_f1(S.segment_nuclei(pre), gt))
    # edge cases differ only where a nucleus is cut by the crop
    assert np.mean(scores) >= 0.9 and min(scores) >= 0.8


def _simulated_nuclei(seed, size=1024, severity=0.4):
    from skimage.segmentation import clear_border

    from ssc_assets.core.image.filters import preprocess_channel

    imgs, truth = render_site(seed, size, severity)
    pre = preprocess_channel(imgs["nuclei"].astype(np.float32) - 100.0, "nuclei")
    gt = truth["nuclei_labels"]
    off = (gt.shape[0] - pre.shape[0]) // 2
    gt = relabel_sequential(clear_border(gt[off : off + pre.shape[0], off : off + pre.shape[1]]))[0]
    return pre, gt


def test_half_resolution_nuclei_agree_with_full_resolution():
    """Splitting at half resolution (labels enlarged and snapped to the full-resolution
    foreground) matches full resolution at IoU >= 0.95, and both match the ground truth."""
    pre, gt = _simulated_nuclei(6)
    full = S.segment_nuclei(pre, S.NucleiParams(), scale=1)
    half = S.segment_nuclei(pre, S.NucleiParams(), scale=2)
    assert gt.max() >= 20
    a = S.label_agreement(full, half)
    assert a["mean_iou"] >= 0.95 and a["matched"] >= 0.95 and a["pixels"] >= 0.99
    assert ((full > 0) == (half > 0)).mean() > 0.999  # same foreground (up to cleared border objects)
    assert matched_f1(full, gt) >= 0.9 and matched_f1(half, gt) >= 0.9
    # too-small nuclei (binned images) fall back to full resolution
    small = S.NucleiParams(expected_diameter_px=S.MIN_SPLIT_DIAMETER_PX * 1.5)
    assert (S.segment_nuclei(pre, small, scale=2) == S.segment_nuclei(pre, small, scale=1)).all()


def test_windowed_steps_equal_whole_image_reference():
    """The per-component and neighbour-difference fast paths give the whole-image results."""
    import scipy.ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, h_maxima
    from skimage.segmentation import clear_border, watershed

    pre, _ = _simulated_nuclei(8, size=768)
    p = S.NucleiParams()
    fg0 = pre > threshold_otsu(pre)
    ref_fg = ndi.binary_fill_holes(ndi.binary_opening(fg0, structure=disk(p.opening_px)))
    assert (S._open_and_fill_per_component(fg0, p.opening_px) == ref_fg).all()
    fg = S.nuclei_foreground(pre, p)
    ref_dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg), p.smoothing_sigma)
    dist, comp8, objects = S._edt_per_component(fg)
    assert (dist == ndi.distance_transform_edt(fg)).all()
    smooth = S._gaussian_on_components(dist, comp8, p.smoothing_sigma, objects)
    assert (smooth[fg] == ref_dist[fg]).all()
    markers = ndi.label(h_maxima(ref_dist, p.h).astype(bool) & fg)[0]
    assert ((S._h_maxima_markers(smooth, fg, p.h, comp8, objects) > 0) == (markers > 0)).all()
    labels = watershed(-ref_dist, markers, mask=fg)
    assert (S._clear_border_and_relabel(labels) == relabel_sequential(clear_border(labels))[0]).all()
    cells = S.segment_cells(np.random.default_rng(0).random(pre.shape), S.segment_nuclei(pre), 0.05, 2)
    assert (S.borders_mask(cells, 3) == find_boundaries(cells, mode="thick")).all()
    assert (S._thick_boundaries(np.where(cells % 3 == 0, 0, cells)) == find_boundaries(np.where(cells % 3 == 0, 0, cells), mode="thick")).all()
    # weight map: the tiling path (one EDT per cell box) == the general path within 4 sigma
    s_fast = S.distance_to_other_instance(cells, 20.0)
    d1, d2 = S.two_nearest_distances(cells, 20.0)
    near = (d1 + d2) <= 20.0
    assert (s_fast[near] == (d1 + d2)[near]).all() and not np.isfinite(s_fast[~near]).any()
    one = S.unet_weight_map(np.zeros((5, 5), bool), np.ones((5, 5), np.int32))  # one cell: no border term
    assert np.allclose(one, 1.0)


def test_label_agreement_hand_values():
    ref = np.zeros((10, 10), np.int32)
    ref[:, :5] = 1
    ref[:, 5:] = 2
    out = np.zeros_like(ref)
    out[:, :4] = 7  # IoU 40 / 50 with object 1
    out[:, 4:] = 3  # object 2 inside a 60-px label: IoU 50 / 60
    a = S.label_agreement(ref, out)
    assert a["matched"] == 1.0 and a["n"] == 2
    assert a["mean_iou"] == pytest.approx((0.8 + 50 / 60) / 2)
    assert a["pixels"] == pytest.approx(0.9)  # column 4 maps to object 2
    assert S.label_agreement(ref, ref) == {"mean_iou": 1.0, "matched": 1.0, "pixels": 1.0, "n": 2}
