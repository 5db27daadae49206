"""Readers of a plate store: fields and their flags, site images and labels (with fallback to a
complete backup when a swap died midway)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr
from ome_zarr.io import parse_url

from ssc_assets.core.io import storage
from ssc_assets.core.io.ome_zarr_store.common import (
    FIELD_OK,
    _is_complete_local,
    _is_local,
    _local_path,
    _mtime,
    _well_path,
)


def _readable_store(plate_path: str | os.PathLike) -> str:
    """``plate_path``, or, if a local store is missing because a swap died midway, its complete backup."""
    text = str(plate_path)
    if not _is_local(text):
        return text
    final = Path(_local_path(text))
    if final.exists() or not final.parent.is_dir():
        return text
    backups = [p for p in final.parent.iterdir()
               if (t := storage.parse_temp_name(p.name)) and t.kind == "old" and t.base == final.name and _is_complete_local(p)]
    if not backups:
        return text
    return str(max(backups, key=lambda p: _mtime(p) or 0.0))


def site_group_path(plate_path: str | os.PathLike, well: str, site: int) -> str:
    """Path or URL of one field's group (``<store>/<row>/<col>/<site - 1>``)."""
    row, col = _well_path(well)
    return f"{str(plate_path).rstrip('/')}/{row}/{col}/{site - 1}"


def _well_fields(plate_path: str | os.PathLike):
    """(well, site, field flags) of every field in the store, from the plate and well metadata
    (flags ``{"status": "ok"}`` for stores written before fields were flagged)."""
    root = zarr.open_group(_readable_store(plate_path), mode="r")
    plate = root.attrs.get("ome", {}).get("plate") or root.attrs.get("plate")
    for w in plate["wells"]:
        row, col = w["path"].split("/")
        well = f"{row}{int(col):02d}"
        attrs = root[row][col].attrs
        meta = attrs.get("ome", {}).get("well") or attrs.get("well")
        flags = (attrs.get("ssc") or {}).get("fields") or {}
        for img in meta["images"]:
            site = int(img["path"]) + 1
            yield well, site, {"site": site, "status": FIELD_OK, **flags.get(img["path"], {})}


def list_sites(plate_path: str | os.PathLike, include_flagged: bool = False) -> list[tuple[str, int]]:
    """(well, site) of every ``ok`` field in the store (QC-passed and processed), from the
    plate and well metadata. ``include_flagged``: every field, placeholders and QC-failed
    sites included (see :func:`field_flags`)."""
    return [(w, s) for w, s, f in _well_fields(plate_path) if include_flagged or f.get("status") == FIELD_OK]


def field_flags(plate_path: str | os.PathLike) -> dict[tuple[str, int], dict]:
    """(well, site) -> ``{site, status, placeholder, reason}`` of every field in the store
    (statuses: :data:`FIELD_STATUSES`); the field group's ``attrs["ssc"]`` has the details."""
    return {(w, s): f for w, s, f in _well_fields(plate_path)}


def _level(group: zarr.Group, level: int) -> zarr.Array:
    """Array of pyramid ``level`` of a multiscale group, found through its metadata."""
    attrs = group.attrs.asdict()
    ms = (attrs.get("ome") or attrs)["multiscales"][0]
    return group[ms["datasets"][level]["path"]]


def read_site_image(plate_path: str | os.PathLike, well: str, site: int, level: int = 0) -> np.ndarray:
    """Float32 (C, H, W) image of one site at pyramid ``level`` (0 = full resolution)."""
    g = zarr.open_group(site_group_path(_readable_store(plate_path), well, site), mode="r")
    return np.asarray(_level(g, level)[:])


def read_site_labels(plate_path: str | os.PathLike, well: str, site: int, name: str, level: int = 0) -> np.ndarray:
    """Integer (H, W) label image ``name`` of one site at pyramid ``level`` (nearest-downsampled)."""
    g = zarr.open_group(f"{site_group_path(_readable_store(plate_path), well, site)}/labels/{name}", mode="r")
    return np.asarray(_level(g, level)[:])


def open_reader(plate_path: str | os.PathLike):
    """``ome_zarr.reader.Reader`` nodes of a store (what napari uses)."""
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(_readable_store(plate_path)))())
