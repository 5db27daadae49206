"""Augmentation (train / val / test pipelines) and SiteDataset over OME-Zarr plate stores."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from ssc_assets.core.io.ome_zarr_store import HcsPlateWriter
from ssc_assets.core.learn import augment as A

STORE_CHANNELS = ("nuclei", "borders", "actin")


def hand_normalize(x: np.ndarray) -> np.ndarray:
    """Independent per-channel z-score in float64 (no std floor needed for these inputs)."""
    x = x.astype(np.float64)
    return (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)


def dihedral(a: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations/flips of the last two axes."""
    out = []
    for k in range(4):
        r = np.rot90(a, k, axes=(a.ndim - 2, a.ndim - 1))
        out += [r, r[..., ::-1]]
    return out


# --- pure numpy transforms -----------------------------------------------------------------


def test_train_crop_scale_is_uniform_area_fraction():
    img = np.random.default_rng(1).random((3, 100, 120)).astype(np.float32)
    p = A.AugmentParams(input_size=32)
    rng = np.random.default_rng(0)
    scales, areas = [], []
    for _ in range(200):
        out, _, info = A.random_scaled_crop(img, rng, p)
        assert out.shape == (3, 32, 32) and out.dtype == np.float32 and out.flags.c_contiguous
        y0, x0, y1, x1 = info["box"]
        assert 0 <= y0 < y1 <= 100 and 0 <= x0 < x1 <= 120 and y1 - y0 == x1 - x0 == info["side"]
        scales.append(info["scale"])
        areas.append(info["side"] ** 2 / 100**2)  # area fraction of the centred 100x100 square
    scales = np.array(scales)
    assert scales.min() >= 0.5 and scales.max() <= 1.0
    assert abs(scales.mean() - 0.75) < 0.05
    assert abs(np.mean(areas) - 0.75) < 0.05 and min(areas) > 0.48  # side follows sqrt(s)
    # whole train pipeline gives (C, S, S) float32
    x, _ = A.augment(img, "train", rng, p)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous


@pytest.mark.parametrize("shape,size", [((40, 40), 64), ((200, 150), 32)])  # upscale and downscale
def test_crop_resize_is_nearest(shape, size):
    rng = np.random.default_rng(3)
    values = np.array([0, 3, 7, 11])
    lab = values[rng.integers(0, 4, shape)].astype(np.int32)
    img = np.stack([lab, lab * 2]).astype(np.float32)
    p = A.AugmentParams(input_size=size)
    for _ in range(10):
        out, (t,), _ = A.random_scaled_crop(img, rng, p, targets=[lab])
        assert set(np.unique(out[0])) <= set(values.astype(np.float32))
        assert set(np.unique(out[1])) <= set((2 * values).astype(np.float32))
        assert t.dtype == np.int32 and t.shape == (size, size)
        np.testing.assert_array_equal(t, out[0])  # target cropped/resized exactly like the image


def test_rotate_flip_preserves_content_and_moves_targets():
    img = np.random.default_rng(0).random((3, 12, 12)).astype(np.float32)
    seen_k = set()
    for seed in range(40):
        out, (t,), info = A.rotate_flip(img, np.random.default_rng(seed), A.AugmentParams(), targets=[img[0].copy()])
        seen_k.add(info["k"])
        np.testing.assert_array_equal(np.sort(out.ravel()), np.sort(img.ravel()))
        np.testing.assert_array_equal(t, out[0])
        # image equals the transform described by info
        ref = np.rot90(img, info["k"], axes=(1, 2))
        ref = ref[:, :, ::-1] if info["hflip"] else ref
        ref = ref[:, ::-1, :] if info["vflip"] else ref
        np.testing.assert_array_equal(out, ref)
    assert seen_k == {0, 1, 2, 3}
    # k = 1 without flips is np.rot90 over (H, W)
    no_flip = A.AugmentParams(hflip_p=0.0, vflip_p=0.0)
    seed = next(s for s in range(100) if A.rotate_flip(img, np.random.default_rng(s), no_flip)[2]["k"] == 1)
    out, _, info = A.rotate_flip(img, np.random.default_rng(seed), no_flip)
    assert info == {"k": 1, "hflip": False, "vflip": False}
    np.testing.assert_array_equal(out, np.rot90(img, 1, axes=(1, 2)))
    assert not np.array_equal(out, img)
    # rotation off
    for s in range(10):
        assert A.rotate_flip(img, np.random.default_rng(s), A.AugmentParams(rotate=False))[2]["k"] == 0


def test_normalize_per_channel_and_constant_channel():
    rng = np.random.default_rng(0)
    img = np.stack([
        rng.normal(500.0, 80.0, (64, 64)),
        rng.random((64, 64)) * 1e-3,
        np.full((64, 64), 1234.5),  # constant
    ]).astype(np.float32)
    out = A.normalize(img)
    assert out.dtype == np.float32 and out.shape == img.shape and np.isfinite(out).all()
    mean = out.astype(np.float64).mean(axis=(1, 2))
    std = out.astype(np.float64).std(axis=(1, 2))
    assert np.all(np.abs(mean) < 1e-5)
    assert np.all(np.abs(std[:2] - 1) < 1e-4)
    np.testing.assert_array_equal(out[2], 0)


def test_test_mode_is_deterministic_centre_crop():
    img = np.random.default_rng(0).random((3, 50, 70)).astype(np.float32) * 100
    p = A.AugmentParams(input_size=32)
    a, _ = A.augment(img, "test", np.random.default_rng(1), p)
    b, _ = A.augment(img, "test", np.random.default_rng(2), p)
    np.testing.assert_array_equal(a, b)
    expected = hand_normalize(img[:, 9:41, 19:51])  # (50-32)//2 = 9, (70-32)//2 = 19
    np.testing.assert_allclose(a, expected, atol=1e-5)
    # smaller than the input size: nearest upscale (each pixel -> 2x2 block), then centre crop
    small = np.random.default_rng(1).random((2, 20, 20)).astype(np.float32)
    up, (t,) = A.centre_crop_sample(small, 40, targets=[np.arange(400, dtype=np.int16).reshape(20, 20)])
    np.testing.assert_array_equal(up, small.repeat(2, axis=1).repeat(2, axis=2))
    assert t.dtype == np.int16
    np.testing.assert_array_equal(t, np.arange(400).reshape(20, 20).repeat(2, 0).repeat(2, 1))


def test_val_mode_is_dihedral_transform_of_centre_crop():
    img = np.random.default_rng(0).random((3, 60, 60)).astype(np.float32)
    p = A.AugmentParams(input_size=32)
    crop = img[:, 14:46, 14:46]
    candidates = dihedral(hand_normalize(crop))
    target_candidates = dihedral(crop[1])
    used = set()
    for seed in range(30):
        out, (t,) = A.augment(img, "val", np.random.default_rng(seed), p, targets=[img[1]])
        assert out.shape == (3, 32, 32)
        match = [j for j, c in enumerate(candidates) if np.allclose(out, c, atol=1e-5)]
        assert len(match) == 1, "val output must be a rotation/flip of the normalized centre crop"
        np.testing.assert_array_equal(t, target_candidates[match[0]])
        used.add(match[0])
    assert len(used) > 2  # rotations/flips are actually applied


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        A.augment(np.zeros((1, 8, 8), np.float32), "training", np.random.default_rng(0), A.AugmentParams(input_size=8))


def test_module_does_not_import_dagster():
    code = "import sys, ssc_assets.core.learn.augment; assert 'dagster' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- SiteDataset ---------------------------------------------------------------------------

SITES = [("B03", 1), ("B03", 2), ("B04", 1), ("B04", 2)]
LABELS = {"B03": 0, "B04": 1}


def raw_site(k: int) -> np.ndarray:
    """(3, 40, 40) float32: channels told apart by offset (0/100/200) and spatial pattern."""
    rng = np.random.default_rng(100 + k)
    yy, xx = np.mgrid[0:40, 0:40].astype(np.float64)
    nuclei = xx + rng.random((40, 40))
    borders = 100 + yy + rng.random((40, 40))
    actin = 200 + 5 * ((xx // 4 + yy // 4) % 2) + rng.random((40, 40))
    return np.stack([nuclei, borders, actin]).astype(np.float32)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    images, masks = root / "P1.ome.zarr", root / "P1_masks.ome.zarr"
    raw = {}
    with HcsPlateWriter(images, "P1", list(STORE_CHANNELS)) as w:
        for k, (well, site) in enumerate(SITES):
            raw[(well, site)] = raw_site(k)
            w.write_site(well, site, raw[(well, site)])
    with HcsPlateWriter(masks, "P1", ["weight_map"]) as w:
        for well, site in SITES:
            actin = raw[(well, site)][2]
            # weight map = actin values, mask = bright actin: both must track the image's actin
            w.write_site(well, site, actin[None].copy(),
                         labels={"actin_inside_cells": (actin > np.median(actin)).astype(np.uint8)})
    refs = [A.SiteRef(str(images), well, site, label=LABELS[well], masks_store=str(masks), plate="P1",
                      donor=f"D{well}") for well, site in SITES]
    return refs, raw


def make_ds(refs, mode, **kw):
    kw.setdefault("params", A.AugmentParams(input_size=32))
    return A.SiteDataset(refs, kw.pop("channels", ("actin", "borders", "nuclei")), STORE_CHANNELS, mode, **kw)


def test_dataset_length(stores):
    refs, _ = stores
    assert len(make_ds(refs, "train", factor=3)) == 12
    assert len(make_ds(refs, "val", factor=3)) == 12
    assert len(make_ds(refs, "test", factor=3)) == 4
    with pytest.raises(ValueError):
        make_ds(refs, "holdout")
    with pytest.raises(ValueError):
        make_ds(refs, "test", channels=("mitochondria",))


def test_final_training_metrics_see_each_site_once(stores):
    from ssc_assets.core.learn.fit import final_items

    refs, _ = stores
    items = final_items(make_ds(refs, "train", factor=3))
    assert len(items) == 4
    assert [float(items[i][1]) for i in range(4)] == [r.label for r in refs]  # site i, in ref order
    one = make_ds(refs, "train", factor=1)
    assert final_items(one) is one


def test_dataset_channel_order_and_labels(stores):
    refs, raw = stores
    ds = make_ds(refs, "test", factor=3)
    for i, ref in enumerate(refs):
        x, y = ds[i]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        assert y.dtype == torch.float32 and y.shape == () and float(y) == ref.label
        expected = hand_normalize(raw[(ref.well, ref.site)][[2, 1, 0], 4:36, 4:36])  # actin, borders, nuclei
        np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)
    # a single channel (per-channel autoencoders)
    x, _ = make_ds(refs, "test", channels=("borders",))[0]
    np.testing.assert_allclose(x.numpy(), hand_normalize(raw[SITES[0]][[1], 4:36, 4:36]), atol=1e-5)


def test_dataset_item_uses_ref_modulo(stores):
    refs, raw = stores
    ds = make_ds(refs, "val", factor=3)
    for i in (1, 5, 11):
        ref = refs[i % 4]
        x, y = ds[i]
        cands = dihedral(hand_normalize(raw[(ref.well, ref.site)][[2, 1, 0], 4:36, 4:36]))
        assert any(np.allclose(x.numpy(), c, atol=1e-5) for c in cands)
        assert float(y) == ref.label


def test_dataset_reproducible_and_epoch_changes_augmentation(stores):
    refs, _ = stores
    a, b = make_ds(refs, "train", factor=3, seed=7), make_ds(refs, "train", factor=3, seed=7)
    first = [a[i][0] for i in range(len(a))]
    for i in range(len(a)):
        assert torch.equal(first[i], b[i][0])
    a.set_epoch(1)
    changed = [not torch.equal(first[i], a[i][0]) for i in range(len(a))]
    assert sum(changed) >= len(a) // 2
    a.set_epoch(0)
    assert all(torch.equal(first[i], a[i][0]) for i in range(len(a)))
    other = make_ds(refs, "train", factor=3, seed=8)
    assert any(not torch.equal(first[i], other[i][0]) for i in range(len(a)))
    # the same ref gives different augmentations at different indices
    assert not torch.equal(first[0], first[4])
    # a pickled copy (as sent to DataLoader workers) draws the same items
    c = pickle.loads(pickle.dumps(a))
    assert torch.equal(c[3][0], first[3])


def test_dataset_cache_is_bounded_and_not_aliased(stores):
    refs, _ = stores
    ds = make_ds(refs, "test", cache_size=2)
    x0 = ds[0][0].clone()
    for i in range(len(ds)):
        ds[i]
    assert len(ds._cache) <= 2
    x, _ = ds[0]
    x.zero_()  # returned tensors are fresh copies: the cache is untouched
    assert torch.equal(ds[0][0], x0)


def test_dataset_unet_target_aligned(stores):
    refs, _ = stores
    ds = make_ds(refs, "train", factor=2, target="unet", seed=3)
    assert len(ds) == 8
    for i in range(len(ds)):
        x, mask, weight = ds[i]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        assert mask.dtype == torch.int64 and mask.shape == (32, 32)
        assert weight.dtype == torch.float32 and weight.shape == (32, 32)
        assert set(mask.unique().tolist()) <= {0, 1}
        # weight map = raw actin: normalized, it equals the image's actin channel (same crop/rotation)
        np.testing.assert_allclose(A.normalize(weight.numpy()[None])[0], x[0].numpy(), atol=1e-4)
        # mask = actin above the site median: every masked pixel is brighter in the image than every unmasked one
        m, actin = mask.numpy().astype(bool), x[0].numpy()
        if m.any() and (~m).any():
            assert actin[m].min() > actin[~m].max()
    with pytest.raises(ValueError, match="masks_store"):
        make_ds([A.SiteRef(refs[0].store, "B03", 1)], "train", target="unet")
