"""Single-cell crops centred on nuclei, for the per-cell classifier (issue 11). Pure: no Dagster, no MLflow.

Why: whole-site crops (the thesis input) give a CPU-budget model a handful of examples per
donor and it learns nothing. One crop per nucleus multiplies the examples by ~100 per site and
puts every example at the same scale and position (the cell in the middle, its neighbours
around it: the context matters, 128 px windows beat 64 px ones).

Geometry (all in pixels of the corrected image at full resolution, pyramid level 0):

* centre: the centroid (row ``y``, column ``x``, float) of each nucleus of the ``nuclei``
  label image of the masks store, rounded to the nearest pixel;
* window: ``size`` x ``size`` px (default 128 px, ~44 um at 0.34 um/px, i.e. the nucleus and
  about one cell around it) with the centre at index ``size // 2``;
* output: the window block-averaged by ``downsample`` (default 2), i.e.
  ``size // downsample`` px per side (64 px by default); the centre pixel of the window lands
  at output index ``size // 2 // downsample``;
* borders (``border``): ``"pad"`` (default) keeps nuclei whose window leaves the image and
  fills the outside with 0 (the corrected images are background-subtracted, so 0 is the
  background level) before normalisation; ``"skip"`` drops them (no invented pixels, but the
  cells near the site's edge are never seen: on 384 px corrected sites that is ~45 % of the
  nuclei with 128 px windows). Measured on two held-out 15-donor studies of 384 px sites
  (``benchmarks/study_eval.py`` storages, the cell CNN's out-of-fold well accuracy with the
  product's settings): ``pad`` 0.974 / 0.923 vs ``skip`` 0.962 / 0.577 (the second study has
  an objective split inside each plate), donor rho 0.95 / 0.90 vs 0.80 / 0.82;
* cap: at most ``max_per_site`` nuclei per site, drawn without replacement by a generator
  seeded with ``(seed, crc32("plate/well/site"))`` (same crops on every run and machine,
  different subsets on different sites); kept crops are in label order.

Intensities: ``normalize="site"`` (default) standardises each channel with the mean and
standard deviation of the whole site (so brightness differences between cells of a site are
kept, plate/objective brightness differences are removed); ``"crop"`` standardises each crop
on its own (the thesis' per-image rule: removes all intensity information); ``"none"``
keeps corrected units.

Memory: float32 (N, 3, 64, 64) is 48 KiB per crop; 30,000 crops are ~1.5 GB.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ssc_assets.core.ingest.channels import IMAGE_CHANNELS

#: Cells embedded per site by the ``cells`` site embedding (more than the training cap: the
#: site's median embedding is then stable).
EMBED_CROPS_PER_SITE = 256
BORDER_MODES = ("skip", "pad")
NORMALIZE_MODES = ("site", "crop", "none")
STD_FLOOR = 1e-6
#: Columns of the per-crop table (``build_crop_dataset`` adds the site table's plate map and
#: ``label``): identity of the site, nucleus label id, centroid (px, level 0, float).
CROP_COLUMNS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_CellLabel",
                "Metadata_CentroidY", "Metadata_CentroidX"]


@dataclass(frozen=True)
class CropParams:
    """How crops are cut (see the module docstring). ``size`` and ``downsample`` in px."""

    size: int = 128
    downsample: int = 2
    border: str = "pad"
    max_per_site: int | None = 32
    seed: int = 0
    normalize: str = "site"
    channels: tuple[str, ...] = IMAGE_CHANNELS

    def __post_init__(self):
        if self.size < 2 or self.downsample < 1 or self.size % self.downsample:
            raise ValueError(f"size ({self.size}) must be >= 2 and a multiple of downsample ({self.downsample})")
        if self.border not in BORDER_MODES:
            raise ValueError(f"border must be one of {BORDER_MODES}, not {self.border!r}")
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, not {self.normalize!r}")
        if self.max_per_site is not None and self.max_per_site < 0:
            raise ValueError("max_per_site must be >= 0 or None")

    @property
    def out_size(self) -> int:
        """Side (px) of the returned crops: ``size // downsample``."""
        return self.size // self.downsample

    def as_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels), "out_size": self.out_size}


def nucleus_centroids(nuclei_labels: np.ndarray) -> pd.DataFrame:
    """Centroid of every nucleus of an integer (H, W) label image (0 = background).

    Returns columns ``label`` (int), ``y``, ``x`` (float64, px; row/column of the centre of
    mass of the label's pixels, unweighted), one row per label present, ascending.
    """
    lab = np.asarray(nuclei_labels)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"nuclei_labels must be an integer (H, W) array, got {lab.dtype} {lab.shape}")
    ids = np.unique(lab)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return pd.DataFrame({"label": np.zeros(0, np.int64), "y": np.zeros(0), "x": np.zeros(0)})
    com = np.asarray(ndi.center_of_mass(np.ones(lab.shape, np.float32), lab, ids), dtype=np.float64).reshape(-1, 2)
    return pd.DataFrame({"label": ids.astype(np.int64), "y": com[:, 0], "x": com[:, 1]})


def site_seed(seed: int, plate: str, well: str, site: int) -> np.random.Generator:
    """Generator for one site's random choices: stable across runs, processes and machines."""
    return np.random.default_rng([int(seed), zlib.crc32(f"{plate}/{well}/{int(site)}".encode())])


def _block_mean(x: np.ndarray, f: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H/f, W/f) mean over f x f blocks (H, W multiples of f)."""
    if f == 1:
        return x
    n, c, h, w = x.shape
    return x.reshape(n, c, h // f, f, w // f, f).mean(axis=(3, 5))


def extract_cell_crops(
    image: np.ndarray,
    nuclei_labels: np.ndarray,
    params: CropParams = CropParams(),
    *,
    plate: str = "",
    well: str = "",
    site: int = 0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Crops centred on the nuclei of one site.

    ``image``: float (C, H, W) corrected image, channels ``params.channels`` in that order
    (the corrected store's order is :data:`IMAGE_CHANNELS` = nuclei, borders, actin);
    ``nuclei_labels``: integer (H, W) label image of the same site and resolution.
    Returns ``(crops, table)``: ``crops`` float32 (N, C, S, S) with S = ``params.out_size``
    (C-contiguous; normalised as ``params.normalize``), ``table`` with :data:`CROP_COLUMNS`
    (one row per crop, same order; centroids in px of ``image``). N = 0 gives (0, C, S, S).
    NaN pixels (placeholders) are treated as 0.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got {img.shape}")
    lab = np.asarray(nuclei_labels)
    if lab.shape != img.shape[1:]:
        raise ValueError(f"labels {lab.shape} and image {img.shape[1:]} differ in size")
    img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
    c, h, w = img.shape
    p, half = params, params.size // 2
    cen = nucleus_centroids(lab)
    cy = np.rint(cen["y"].to_numpy()).astype(np.int64)
    cx = np.rint(cen["x"].to_numpy()).astype(np.int64)
    if p.border == "skip":
        inside = (cy - half >= 0) & (cx - half >= 0) & (cy - half + p.size <= h) & (cx - half + p.size <= w)
        cen, cy, cx = cen[inside], cy[inside], cx[inside]
    if p.max_per_site is not None and len(cen) > p.max_per_site:
        pick = np.sort(site_seed(p.seed, plate, well, site).choice(len(cen), size=p.max_per_site, replace=False))
        cen, cy, cx = cen.iloc[pick], cy[pick], cx[pick]
    n = len(cen)
    if p.normalize == "site":
        mean = img.mean(axis=(1, 2), dtype=np.float64)[:, None, None]
        std = np.maximum(img.std(axis=(1, 2), dtype=np.float64), STD_FLOOR)[:, None, None]
    src = img
    off = 0
    if p.border == "pad" and n:
        src = np.pad(img, ((0, 0), (half, half), (half, half)), mode="constant", constant_values=0.0)
        off = half
    out = np.empty((n, c, p.size, p.size), np.float32)
    for i, (y, x) in enumerate(zip(cy, cx)):
        y0, x0 = y - half + off, x - half + off
        out[i] = src[:, y0 : y0 + p.size, x0 : x0 + p.size]
    out = _block_mean(out, p.downsample)
    if p.normalize == "site":
        out = (out - mean[None]) / std[None]
    elif p.normalize == "crop" and n:
        m = out.mean(axis=(2, 3), keepdims=True, dtype=np.float64)
        s = np.maximum(out.std(axis=(2, 3), keepdims=True, dtype=np.float64), STD_FLOOR)
        out = (out - m) / s
    table = pd.DataFrame({
        "Metadata_Plate": [plate] * n, "Metadata_Well": [well] * n, "Metadata_Site": np.full(n, int(site), np.int64),
        "Metadata_CellLabel": cen["label"].to_numpy(np.int64),
        "Metadata_CentroidY": cen["y"].to_numpy(np.float64), "Metadata_CentroidX": cen["x"].to_numpy(np.float64),
    }, columns=CROP_COLUMNS)
    return np.ascontiguousarray(out, dtype=np.float32), table


def site_cell_crops(store: str, masks_store: str, well: str, site: int, params: CropParams = CropParams(),
                    *, plate: str = "", store_channels: Sequence[str] = IMAGE_CHANNELS) -> tuple[np.ndarray, pd.DataFrame]:
    """:func:`extract_cell_crops` of one site read from the stores (level 0).

    ``store``: the corrected-images OME-Zarr plate (channels ``store_channels``, by default
    the asset's nuclei/borders/actin); ``masks_store``: the masks plate (``nuclei`` labels).
    """
    from ssc_assets.core.io.ome_zarr_store import read_site_image, read_site_labels

    image = read_site_image(store, well, int(site))
    idx = [list(store_channels).index(ch) for ch in params.channels]
    labels = read_site_labels(masks_store, well, int(site), "nuclei")
    return extract_cell_crops(image[idx], labels, params, plate=plate, well=well, site=int(site))


@dataclass
class CropDataset:
    """Crops of many sites: ``crops`` float32 (N, C, S, S), ``table`` one row per crop.

    ``table``: :data:`CROP_COLUMNS` + the site table's ``Metadata_Donor, Metadata_Condition,
    Metadata_Group`` and ``label`` (1 = SSc, 0 = HC) + ``site_index`` (row position in the
    input site table). ``params``: the :class:`CropParams` used.
    """

    crops: np.ndarray
    table: pd.DataFrame
    params: CropParams

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, mask) -> "CropDataset":
        """Rows where boolean ``mask`` (array or Series aligned with ``table``) is true."""
        m = np.asarray(mask, dtype=bool)
        return CropDataset(self.crops[m], self.table[m].reset_index(drop=True), self.params)


def build_crop_dataset(sites: pd.DataFrame, params: CropParams = CropParams(),
                       store_channels: Sequence[str] = IMAGE_CHANNELS,
                       on_site: Callable[[int, int], None] | None = None) -> CropDataset:
    """Crops of every site of a site table (as :func:`ssc_assets.core.learn.fit.training_sites`).

    ``sites`` needs ``Metadata_Plate, Metadata_Well, Metadata_Site, store, masks_store`` and
    carries ``Metadata_Donor, Metadata_Condition, Metadata_Group, label`` when present. Sites
    without a masks store (``masks_store`` None/NaN) are skipped. ``on_site(i, n)`` is called
    after each site (progress). Crops are read site by site (one site in memory at a time
    besides the output).
    """
    carry = [c for c in ("Metadata_Donor", "Metadata_Condition", "Metadata_Group", "Metadata_AcquisitionGroup", "label")
             if c in sites.columns]
    parts, tables = [], []
    rows = list(sites.reset_index(drop=True).itertuples(index=True))
    for k, r in enumerate(rows):
        ms = getattr(r, "masks_store", None)
        if isinstance(ms, str) and ms:
            crops, t = site_cell_crops(r.store, ms, r.Metadata_Well, int(r.Metadata_Site), params,
                                       plate=str(r.Metadata_Plate), store_channels=store_channels)
            for col in carry:
                t[col] = getattr(r, col)
            t["site_index"] = r.Index
            parts.append(crops)
            tables.append(t)
        if on_site:
            on_site(k + 1, len(rows))
    s, c = params.out_size, len(params.channels)
    crops = np.concatenate(parts) if parts else np.zeros((0, c, s, s), np.float32)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=CROP_COLUMNS + carry + ["site_index"])
    return CropDataset(crops, table, params)
