"""Recovery and clean-up of what crashed writers left behind: temp stores, backups and
local build directories, removed or restored only once their owner is gone."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ssc_assets.core.io import storage
from ssc_assets.core.io.ome_zarr_store.commit import _copy_tree
from ssc_assets.core.io.ome_zarr_store.common import (
    LOCAL_BUILD_PREFIX,
    _is_complete_local,
    _is_complete_remote,
    _is_local,
    _local_path,
    _mtime,
)


def _remove_local(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _recover_local(final: Path, max_age: float) -> list[Path]:
    parent = final.parent
    if not parent.is_dir():
        return []
    stale = []
    for p in parent.iterdir():
        t = storage.parse_temp_name(p.name)
        if t is not None and t.base == final.name and not storage.owner_alive(t, _mtime(p), max_age=max_age):
            stale.append((p, t))
    restored = None
    if not final.exists():
        backups = [p for p, t in stale if t.kind == "old" and _is_complete_local(p)]
        for p in sorted(backups, key=lambda q: _mtime(q) or 0.0, reverse=True):
            try:
                os.rename(p, final)  # a swap died between its two renames: put the old version back
                restored = p
                break
            except OSError:
                continue
    removed = []
    for p, _ in stale:
        if p != restored and os.path.lexists(p):
            _remove_local(p)
            removed.append(p)
    return removed


def _remote_mtime(fs, path: str, t: storage.TempName) -> float | None:
    for candidate in ([f"{path}/zarr.json", path] if t.kind == "old" else [path]):
        try:
            return fs.modified(candidate).timestamp()
        except Exception:  # noqa: BLE001 - not every filesystem reports it
            continue
    return None


def _recover_remote(fs, inner: str, max_age: float) -> list[str]:
    parent, name = inner.rsplit("/", 1) if "/" in inner else ("", inner)
    try:
        listing = fs.ls(parent or "/", detail=False)
    except FileNotFoundError:
        return []
    stale = []
    for e in listing:
        t = storage.parse_temp_name(e.rstrip("/").rsplit("/", 1)[-1])
        if t is not None and t.base == name and not storage.owner_alive(t, _remote_mtime(fs, e, t), max_age=max_age):
            stale.append((e.rstrip("/"), t))
    restored = None
    if not _is_complete_remote(fs, inner):
        backups = [e for e, t in stale if t.kind == "old" and _is_complete_remote(fs, e)]
        if backups:
            restored = max(backups, key=lambda e: _remote_mtime(fs, e, storage.TempName(e, name, "old", None, None)) or 0.0)
            if fs.exists(inner):
                fs.rm(inner, recursive=True)  # a partial upload without root metadata
            _copy_tree(fs, restored, inner)
            fs.rm(restored, recursive=True)
    removed = []
    for e, _ in stale:
        if e != restored and fs.exists(e):
            fs.rm(e, recursive=True)
            removed.append(fs.unstrip_protocol(e))
    return removed


def _cleanup_local_builds(plate: str | None, max_age: float) -> list[Path]:
    """Local build directories of fsspec-bound stores whose writer is gone."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"{LOCAL_BUILD_PREFIX}*"):
        parts = d.name[len(LOCAL_BUILD_PREFIX):].split("-")
        if len(parts) < 3 or not parts[1].isdigit() or not d.is_dir():
            continue  # not ours, or from an older version: ownership unknown
        try:
            children = [storage.parse_temp_name(c.name) for c in d.iterdir()]
        except OSError:
            continue
        tmps = [c for c in children if c is not None]
        if not tmps or (plate is not None and not any(storage.matches_plate(c.base, plate) for c in tmps)):
            continue  # (empty: a writer between mkdtemp and its first write)
        owner = storage.TempName(tmps[0].name, tmps[0].base, "tmp", parts[0], int(parts[1]))
        if not storage.owner_alive(owner, _mtime(d), max_age=max_age):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def recover_store(store: str | os.PathLike, *, max_age: float = storage.STALE_AFTER_SECONDS) -> list:
    """Repair what crashed writers of ``store`` left: if the store is missing (local) or has no
    root metadata (fsspec) and a complete backup of a dead writer exists, put it back; then
    delete that store's temp stores and backups whose owner is gone. Returns what was removed."""
    if _is_local(store):
        return _recover_local(Path(_local_path(store)), max_age)
    import fsspec

    fs, inner = fsspec.core.url_to_fs(str(store))
    return _recover_remote(fs, inner.rstrip("/"), max_age)


def cleanup_stale_tmp(parent: str | os.PathLike, plate: str | None = None, *,
                      max_age: float = storage.STALE_AFTER_SECONDS) -> list:
    """Delete temp stores/files and backups under ``parent`` whose owner is gone; returns what was removed.

    ``plate``: only that plate's entries (``<plate>.ome.zarr.tmp-...``); default every plate's.
    Entries of a live process (another plate's run, or this one) are never touched; a store
    whose swap was interrupted is restored first (:func:`recover_store`). For an fsspec
    ``parent``, also removes the local build directories of dead writers.
    """
    text = str(parent)
    if _is_local(text):
        folder = Path(_local_path(text))
        if not folder.is_dir():
            return []
        bases = sorted({t.base for p in folder.iterdir()
                        if (t := storage.parse_temp_name(p.name)) and storage.matches_plate(t.base, plate)})
        removed: list = []
        for base in bases:
            removed += _recover_local(folder / base, max_age)
        return removed
    import fsspec

    fs, inner = fsspec.core.url_to_fs(text)
    inner = inner.rstrip("/")
    removed = list(_cleanup_local_builds(plate, max_age))
    try:
        listing = fs.ls(inner, detail=False) if fs.exists(inner) else []
    except FileNotFoundError:
        listing = []
    bases = sorted({t.base for e in listing
                    if (t := storage.parse_temp_name(e.rstrip("/").rsplit("/", 1)[-1])) and storage.matches_plate(t.base, plate)})
    for base in bases:
        removed += _recover_remote(fs, f"{inner}/{base}", max_age)
    return removed


