"""Per-plate OME-Zarr HCS stores (NGFF plate / row / column / field), written atomically.

Two stores per plate (NGFF 0.5 on zarr v3, readable by ``ome_zarr.reader`` and so napari)::

    corrected_images/<plate>.ome.zarr/    plate metadata: rows, columns, wells present
        B/3/                              well metadata: its fields
            0/                            field (site 1): image (c, y, x) float32, channels
                s0, s1, s2                  nuclei/borders/actin; pyramid 1, 1/2, 1/4
    masks/<plate>.ome.zarr/               same plate/well/field layout
        B/3/0/                            image (c=1: weight_map, float32) and
            labels/                       NGFF labels: nuclei, cells (int32 instances),
                                          borders, actin, actin_inside_cells (uint8 0/1)

Field index = site - 1; chunks (1, 512, 512); channel names in the ``omero`` metadata. Masks
live in their own store beside the images (NGFF labels must hang under an image; the weight
map, a float, is that image) so that each asset is written atomically and re-materialized on
its own. In napari, open both stores to overlay the labels on the corrected images.

Atomicity: :class:`HcsPlateWriter` builds the whole store in ``<final>.tmp-<uuid>`` and
renames it into place only when every site is written, so a crash never leaves a store that
looks complete; the previous version stays until the rename (POSIX rename). For fsspec URLs
(``s3://``, ``memory://``...), which have no directory rename, the store is built in a local
temp directory and uploaded with a commit protocol: the old store's root ``zarr.json`` is
deleted first, then every other file is uploaded, and the root ``zarr.json`` (the plate
metadata) last. A crash midway leaves a prefix without root metadata, which no reader opens.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import zarr
from ome_zarr.io import parse_url
from ome_zarr.writer import write_image, write_labels, write_plate_metadata, write_well_metadata

from ssc_assets.core.metaxpress import well_row_col

CHUNK = 512
SCALE_FACTORS = (2, 4)
TMP_MARK = ".tmp-"


def _well_path(well: str) -> tuple[str, str]:
    row, col = well_row_col(well)
    return row, str(col)


def _omero(channel_names: list[str], images_range: list[tuple[float, float]] | None = None) -> dict:
    colours = {"nuclei": "0000FF", "borders": "00FF00", "actin": "FF0000", "mitochondria": "FF00FF"}
    chans = []
    for i, name in enumerate(channel_names):
        lo, hi = images_range[i] if images_range else (0.0, 1.0)
        chans.append({"label": name, "color": colours.get(name, "FFFFFF"), "active": True,
                      "window": {"start": lo, "end": hi, "min": lo, "max": hi}})
    return {"channels": chans}


class HcsPlateWriter:
    """Context manager that writes one plate's images into a fresh OME-Zarr HCS store.

    ``write_site(well, site, image)`` with ``image`` float32 (C, H, W). On a clean exit the
    plate/well metadata list exactly the wells and fields written, and the store is renamed
    to ``final_path`` (replacing any previous version). On an exception the temp store is
    deleted and the previous version is untouched.
    """

    def __init__(self, final_path: str | os.PathLike, plate_name: str, channel_names: list[str]):
        self.remote = not _is_local(final_path)
        self.final_url = str(final_path)  # remote: where the finished store is uploaded
        self.final = Path(_local_path(final_path))  # local: where it is renamed to
        self.plate_name = plate_name
        self.channel_names = list(channel_names)
        tmp_name = f"{self.final.name}{TMP_MARK}{uuid.uuid4().hex}"
        if self.remote:  # built in a local temp dir, uploaded on exit
            self._tmpdir = tempfile.mkdtemp(prefix="ssc-zarr-")
            self.tmp = Path(self._tmpdir, tmp_name)
        else:
            self.tmp = self.final.with_name(tmp_name)
        self.fields: dict[str, list[int]] = {}
        self.ranges: list[list[float]] = [[np.inf, -np.inf] for _ in channel_names]

    def __enter__(self) -> "HcsPlateWriter":
        (self.tmp.parent if self.remote else self.final.parent).mkdir(parents=True, exist_ok=True)
        self.root = zarr.open_group(str(self.tmp), mode="w")
        return self

    def write_site(
        self, well: str, site: int, image: np.ndarray, labels: dict[str, np.ndarray] | None = None, metadata: dict | None = None
    ) -> None:
        """Write one site: ``image`` float32 (C, H, W); ``labels`` name -> integer (H, W) label images."""
        if image.ndim != 3 or image.shape[0] != len(self.channel_names):
            raise ValueError(f"expected (C={len(self.channel_names)}, H, W), got {image.shape}")
        row, col = _well_path(well)
        field = self.root.require_group(row).require_group(col).require_group(str(site - 1))
        for i in range(image.shape[0]):
            lo, hi = np.percentile(image[i], [0.5, 99.5])
            self.ranges[i] = [min(self.ranges[i][0], float(lo)), max(self.ranges[i][1], float(hi))]
        write_image(
            image.astype(np.float32, copy=False), field, scale_factors=SCALE_FACTORS, axes="cyx",
            storage_options={"chunks": (1, CHUNK, CHUNK)},
            omero=_omero(self.channel_names),
            **({"ssc": metadata} if metadata else {}),
        )
        for name, arr in (labels or {}).items():
            arr = np.asarray(arr)
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"label image {name!r} must be integer, got {arr.dtype}")
            write_labels(arr, field, name=name, axes="yx", scaler=None, scale_factors=SCALE_FACTORS,
                         storage_options={"chunks": (CHUNK, CHUNK)})
        self.fields.setdefault(well, []).append(site)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.remote:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
            return False
        wells = sorted(self.fields)
        rows = sorted({_well_path(w)[0] for w in wells})
        cols = sorted({_well_path(w)[1] for w in wells}, key=int)
        write_plate_metadata(self.root, rows, cols, [f"{r}/{c}" for r, c in map(_well_path, wells)],
                             field_count=max((len(v) for v in self.fields.values()), default=0), name=self.plate_name)
        omero = _omero(self.channel_names, [tuple(r) if np.isfinite(r[0]) else (0.0, 1.0) for r in self.ranges])
        for w in wells:
            row, col = _well_path(w)
            well_group = self.root[row][col]
            write_well_metadata(well_group, [{"path": str(s - 1)} for s in sorted(self.fields[w])])
            for s in self.fields[w]:
                g = well_group[str(s - 1)]
                ome = dict(g.attrs.get("ome", {}))
                ome["omero"] = omero
                g.attrs["ome"] = ome
        if self.remote:
            try:
                _upload_committed(self.tmp, self.final_url)
            finally:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
        else:
            _swap_into_place(self.tmp, self.final)
        return False


def _is_local(path: str | os.PathLike) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def _local_path(path: str | os.PathLike) -> str:
    return str(path).removeprefix("file://")


def _upload_committed(local: Path, url: str) -> None:
    """Upload a finished local store to ``url``; the root ``zarr.json`` goes last (the commit)."""
    import fsspec

    fs, inner = fsspec.core.url_to_fs(url)
    root_meta = f"{inner}/zarr.json"
    if fs.exists(inner):
        if fs.exists(root_meta):
            fs.rm(root_meta)  # invalidate the old store before touching anything else
        fs.rm(inner, recursive=True)
    files = sorted(p for p in local.rglob("*") if p.is_file() and p != local / "zarr.json")
    for p in files:
        target = f"{inner}/{p.relative_to(local).as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(p), target)
    fs.put_file(str(local / "zarr.json"), root_meta)


def _swap_into_place(tmp: Path, final: Path) -> None:
    old = final.with_name(f"{final.name}.old-{uuid.uuid4().hex}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def cleanup_stale_tmp(parent: str | os.PathLike) -> list[Path]:
    """Delete temp stores/groups left by crashed runs under ``parent``; returns what was removed."""
    removed = []
    if not _is_local(parent):
        return removed  # remote stores are built in local temp dirs: nothing to clean there
    parent = Path(_local_path(parent))
    if not parent.exists():
        return removed
    for p in parent.iterdir():
        if TMP_MARK in p.name or ".old-" in p.name:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def site_group_path(plate_path: str | os.PathLike, well: str, site: int) -> str:
    """Path or URL of one field's group (``<store>/<row>/<col>/<site - 1>``)."""
    row, col = _well_path(well)
    return f"{str(plate_path).rstrip('/')}/{row}/{col}/{site - 1}"


def list_sites(plate_path: str | os.PathLike) -> list[tuple[str, int]]:
    """(well, site) of every field in the store, from the plate and well metadata."""
    root = zarr.open_group(str(plate_path), mode="r")
    plate = root.attrs.get("ome", {}).get("plate") or root.attrs.get("plate")
    out = []
    for w in plate["wells"]:
        row, col = w["path"].split("/")
        well = f"{row}{int(col):02d}"
        meta = root[row][col].attrs.get("ome", {}).get("well") or root[row][col].attrs.get("well")
        out += [(well, int(img["path"]) + 1) for img in meta["images"]]
    return out


def _level(group: zarr.Group, level: int) -> zarr.Array:
    """Array of pyramid ``level`` of a multiscale group, found through its metadata."""
    attrs = group.attrs.asdict()
    ms = (attrs.get("ome") or attrs)["multiscales"][0]
    return group[ms["datasets"][level]["path"]]


def read_site_image(plate_path: str | os.PathLike, well: str, site: int, level: int = 0) -> np.ndarray:
    """Float32 (C, H, W) image of one site at pyramid ``level`` (0 = full resolution)."""
    g = zarr.open_group(str(site_group_path(plate_path, well, site)), mode="r")
    return np.asarray(_level(g, level)[:])


def read_site_labels(plate_path: str | os.PathLike, well: str, site: int, name: str, level: int = 0) -> np.ndarray:
    """Integer (H, W) label image ``name`` of one site at pyramid ``level`` (nearest-downsampled)."""
    g = zarr.open_group(f"{site_group_path(plate_path, well, site)}/labels/{name}", mode="r")
    return np.asarray(_level(g, level)[:])


def open_reader(plate_path: str | os.PathLike):
    """``ome_zarr.reader.Reader`` nodes of a store (what napari uses)."""
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(str(plate_path)))())
