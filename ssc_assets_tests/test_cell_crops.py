"""Nucleus-centred cell crops (core/learn/cell_crops.py) against synthetic nuclei at known positions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ssc_assets.core.learn.cell_crops import CROP_COLUMNS, CropParams, build_crop_dataset, extract_cell_crops, nucleus_centroids

CENTRES = [(40, 50), (100, 100), (60, 170), (150, 30), (185, 190)]  # (y, x) px on a 200 x 220 site


def synthetic_site(h=200, w=220, r=6):
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), np.int32)
    for i, (y, x) in enumerate(CENTRES, start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = i
    img = np.zeros((3, h, w), np.float32)
    img[0] = (labels > 0) * 100.0  # nuclei
    img[1] = xx.astype(np.float32)  # borders channel: a ramp in x, tells where a crop came from
    img[2] = yy.astype(np.float32)  # actin channel: a ramp in y
    return img, labels


def test_centroids_are_the_planted_centres():
    _, labels = synthetic_site()
    c = nucleus_centroids(labels)
    assert c["label"].tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(c[["y", "x"]].to_numpy(), np.array(CENTRES, float), atol=1e-9)


def test_crops_are_centred_on_the_nuclei_skip_border():
    img, labels = synthetic_site()
    p = CropParams(size=64, downsample=1, border="skip", max_per_site=None, normalize="none")
    crops, table = extract_cell_crops(img, labels, p, plate="P", well="B02", site=3)
    assert list(table.columns) == CROP_COLUMNS
    # windows of 64 px need 32 px on each side: (40,50) (100,100) (60,170) fit; (150,30) and (185,190) do not
    assert table["Metadata_CellLabel"].tolist() == [1, 2, 3]
    assert crops.shape == (3, 3, 64, 64) and crops.dtype == np.float32
    for k, (y, x) in enumerate([CENTRES[0], CENTRES[1], CENTRES[2]]):
        # nucleus blob: its centre of mass is the crop centre (index 32)
        m = crops[k, 0]
        yy, xx = np.nonzero(m)
        assert yy.mean() == pytest.approx(32, abs=1e-9) and xx.mean() == pytest.approx(32, abs=1e-9)
        # the ramps tell the absolute position: pixel (32, 32) of the crop is (y, x) of the image
        assert crops[k, 1, 32, 32] == x and crops[k, 2, 32, 32] == y
        assert crops[k, 1, 0, 0] == x - 32 and crops[k, 2, 0, 0] == y - 32
    assert (table["Metadata_Plate"] == "P").all() and (table["Metadata_Site"] == 3).all()


def test_pad_mode_keeps_border_cells_with_zero_fill():
    img, labels = synthetic_site()
    p = CropParams(size=64, downsample=1, border="pad", max_per_site=None, normalize="none")
    crops, table = extract_cell_crops(img, labels, p)
    assert len(table) == 5
    k = table.index[table["Metadata_CellLabel"] == 4][0]  # (150, 30): 2 px outside on the left
    assert crops[k, 1, 32, 32] == 30 and (crops[k, 1, :, :2] == 0).all() and crops[k, 1, 32, 2] == 0.0
    assert crops[k, 1, 32, 3] == 1.0  # first real column (x = 1 at crop column 3)


def test_downsampling_is_a_block_mean_and_centre_maps_to_half():
    img, labels = synthetic_site()
    p = CropParams(size=64, downsample=2, border="skip", max_per_site=None, normalize="none")
    crops, _ = extract_cell_crops(img, labels, p)
    assert crops.shape == (3, 3, 32, 32)
    full, _ = extract_cell_crops(img, labels, CropParams(size=64, downsample=1, border="skip", max_per_site=None, normalize="none"))
    np.testing.assert_allclose(crops, full.reshape(3, 3, 32, 2, 32, 2).mean(axis=(3, 5)), rtol=1e-6)
    # the x ramp averaged over pixel pairs: column 16 covers image columns x and x + 1
    assert crops[1, 1, 16, 16] == pytest.approx(100.5)


def test_cap_is_deterministic_and_site_dependent():
    img, labels = synthetic_site()
    p = CropParams(size=32, downsample=1, border="pad", max_per_site=2, seed=7)
    a = extract_cell_crops(img, labels, p, plate="P", well="B02", site=1)[1]["Metadata_CellLabel"].tolist()
    b = extract_cell_crops(img, labels, p, plate="P", well="B02", site=1)[1]["Metadata_CellLabel"].tolist()
    assert a == b and len(a) == 2 and a == sorted(a)
    picks = {tuple(extract_cell_crops(img, labels, p, plate="P", well="B02", site=s)[1]["Metadata_CellLabel"]) for s in range(1, 9)}
    assert len(picks) > 1  # different sites draw different subsets


def test_site_normalisation_uses_site_statistics():
    img, labels = synthetic_site()
    crops, _ = extract_cell_crops(img, labels, CropParams(size=32, downsample=1, max_per_site=None, normalize="site"))
    raw, _ = extract_cell_crops(img, labels, CropParams(size=32, downsample=1, max_per_site=None, normalize="none"))
    for c in range(3):
        np.testing.assert_allclose(crops[:, c], (raw[:, c] - img[c].mean()) / img[c].std(), rtol=1e-4, atol=1e-4)
    per_crop, _ = extract_cell_crops(img, labels, CropParams(size=32, downsample=1, max_per_site=None, normalize="crop"))
    np.testing.assert_allclose(per_crop.mean(axis=(2, 3)), 0, atol=1e-5)


def test_no_nuclei_and_bad_params():
    img, labels = synthetic_site()
    crops, table = extract_cell_crops(img, np.zeros_like(labels), CropParams(size=32, downsample=2))
    assert crops.shape == (0, 3, 16, 16) and len(table) == 0
    with pytest.raises(ValueError):
        CropParams(size=30, downsample=4)
    with pytest.raises(ValueError):
        CropParams(border="wrap")


def test_build_crop_dataset_reads_the_stores(tmp_path):
    from ssc_assets.core.ingest.channels import IMAGE_CHANNELS
    from ssc_assets.core.io.ome_zarr_store import HcsPlateWriter

    img, labels = synthetic_site()
    images, masks = str(tmp_path / "P.ome.zarr"), str(tmp_path / "M.ome.zarr")
    with HcsPlateWriter(images, "P", list(IMAGE_CHANNELS)) as w:
        w.write_site("B02", 1, img)
        w.write_site("B03", 1, img[:, ::-1].copy())
    with HcsPlateWriter(masks, "P", ["weight_map"]) as w:
        w.write_site("B02", 1, np.zeros((1, *labels.shape), np.float32), labels={"nuclei": labels})
        w.write_site("B03", 1, np.zeros((1, *labels.shape), np.float32), labels={"nuclei": labels[::-1].copy()})
    sites = pd.DataFrame({"Metadata_Plate": "P", "Metadata_Well": ["B02", "B03", "B04"], "Metadata_Site": 1,
                          "Metadata_Donor": ["D1", "D2", "D3"], "Metadata_Condition": ["HC", "SSc", "SSc"],
                          "Metadata_Group": ["HC", "SSC", "SSC"], "label": [0, 1, 1], "store": images,
                          "masks_store": [masks, masks, None], "side": 200})
    p = CropParams(size=64, downsample=2, border="skip", max_per_site=None, normalize="none")
    ds = build_crop_dataset(sites, p)
    assert ds.crops.shape == (6, 3, 32, 32)  # 3 + 3 nuclei fit, B04 has no masks
    assert ds.table["Metadata_Well"].tolist() == ["B02"] * 3 + ["B03"] * 3
    assert ds.table["label"].tolist() == [0, 0, 0, 1, 1, 1] and ds.table["site_index"].tolist() == [0] * 3 + [1] * 3
    b03 = ds.table[ds.table["Metadata_Well"] == "B03"]
    # flipped site: the nucleus at (40, 50) is now at (159, 50)
    assert sorted(b03["Metadata_CentroidY"].round(6).tolist()) == [99.0, 139.0, 159.0]
    direct, _ = extract_cell_crops(img, labels, p)
    np.testing.assert_allclose(ds.crops[:3], direct)
    assert len(ds.subset(ds.table["label"] == 1)) == 3
