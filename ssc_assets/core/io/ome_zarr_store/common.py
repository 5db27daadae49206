"""Constants, field statuses and small helpers shared by the writer, commit, recovery and reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ssc_assets.core.ingest.metaxpress import well_row_col

CHUNK = 512
SCALE_FACTORS = (2, 4)
TMP_MARK = ".tmp-"
OLD_MARK = ".old-"
LOCAL_BUILD_PREFIX = "ssc-zarr-"  # local build directories of stores bound for fsspec URLs
HEARTBEAT_SECONDS = 30.0  # a writer touches its temp store at least this often while writing
PLACEHOLDER_SHAPE = (64, 64)  # (H, W) of placeholders when no site has real data and no shape was given

#: Field statuses (``attrs["ssc"]["status"]``); only ``ok`` fields are analysis data.
FIELD_OK = "ok"
FIELD_STATUSES = {
    "ok": "QC-passed site, processed: analysis data",
    "qc_failed": "QC-failed site: written for review, never used downstream",
    "error": "processing raised: placeholder (NaN image, empty labels)",
    "unreadable": "raw images unreadable or missing: placeholder",
    "missing": "no images for this site in this well: placeholder so that every well has the same fields",
}


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

def _jsonable(value):
    """``value`` with numpy scalars, NaN and tuples made JSON-safe (zarr attributes are JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _is_local(path: str | os.PathLike) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def _local_path(path: str | os.PathLike) -> str:
    return str(path).removeprefix("file://")


def _is_plate_root(raw: bytes | str) -> bool:
    try:
        meta = json.loads(raw)
    except ValueError:
        return False
    attrs = meta.get("attributes") or {}
    return bool((attrs.get("ome") or {}).get("plate") or attrs.get("plate"))


def _is_complete_local(path: Path) -> bool:
    """A finished store: its root ``zarr.json`` carries the plate metadata (written last)."""
    try:
        return _is_plate_root((path / "zarr.json").read_bytes())
    except OSError:
        return False


def _is_complete_remote(fs, inner: str) -> bool:
    try:
        return _is_plate_root(fs.cat_file(f"{inner}/zarr.json"))
    except (OSError, KeyError):
        return False


def _mtime(p: Path) -> float | None:
    try:
        return p.lstat().st_mtime
    except OSError:
        return None


