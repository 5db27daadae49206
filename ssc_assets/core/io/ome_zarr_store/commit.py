"""Commit of a finished store: atomic local swap (``renameat2(RENAME_EXCHANGE)`` or two
renames with a backup) and the fsspec upload protocol (backup, invalidate, upload, root last).

:func:`_step` is a fault-injection point between the steps (a no-op; tests replace it).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from pathlib import Path

from ssc_assets.core.io import storage
from ssc_assets.core.io.ome_zarr_store.common import _is_complete_remote


def _step(name: str) -> None:
    """Fault-injection point between the steps of a commit (a no-op; tests replace it)."""


# --- local swap -----------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two existing directories (Linux ``renameat2(RENAME_EXCHANGE)``).

    False when the platform or filesystem cannot (then the caller uses two renames)."""
    global _renameat2
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (AttributeError, OSError):
            fn = False
        else:
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
        _renameat2 = fn
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Put the finished store ``tmp`` at ``final`` so that ``final`` is never missing or partial."""
    if not final.exists():
        try:
            os.rename(tmp, final)  # nothing to replace: one atomic rename
            return
        except OSError:
            if not final.exists():
                raise  # (else another writer got there first: replace its store below)
    if _exchange(tmp, final):
        _step("swap:exchanged")  # final = new store; tmp holds the old one
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old_name = storage.temp_name(final.name, "old")
    old = final.with_name(old_name)
    with storage.claimed(old_name):
        os.rename(final, old)
        try:
            os.utime(old)  # its age now tells other hosts that a swap is in progress
        except OSError:
            pass
        _step("swap:old-moved")  # final missing: readers and recovery use the complete backup
        try:
            os.rename(tmp, final)
        except BaseException:
            try:
                os.rename(old, final)
            except OSError:
                pass  # recover_store puts it back
            raise
        _step("swap:new-in-place")
        shutil.rmtree(old, ignore_errors=True)


# --- fsspec commit ------------------------------------------------------------------------------


def _copy_tree(fs, src: str, dst: str) -> None:
    """Copy every file of store ``src`` to ``dst`` (server-side where the filesystem can), root ``zarr.json`` last."""
    root = f"{src}/zarr.json"
    files = sorted(f for f in fs.find(src) if f != root)
    for i, f in enumerate(files + [root]):
        target = dst + f[len(src):]
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.cp_file(f, target)
        if i == len(files) // 2:
            _step("copy:partial")


def _upload_committed(local: Path, url: str) -> None:
    """Upload a finished local store to ``url``; the previous store stays complete in a backup
    until the new root ``zarr.json`` (the commit) is in place."""
    import fsspec

    fs, inner = fsspec.core.url_to_fs(url)
    parent, name = inner.rsplit("/", 1) if "/" in inner else ("", inner)
    root_meta = f"{inner}/zarr.json"
    backup_name = storage.temp_name(name, "old") if _is_complete_remote(fs, inner) else None
    backup = f"{parent}/{backup_name}" if backup_name and parent else backup_name
    if backup_name:
        storage._ACTIVE.add(backup_name)
    try:
        if backup:
            _copy_tree(fs, inner, backup)
            _step("upload:backup-done")
        if fs.exists(root_meta):
            fs.rm(root_meta)  # invalidate the old store before touching anything else
        _step("upload:invalidated")
        if fs.exists(inner):
            fs.rm(inner, recursive=True)
        files = sorted(p for p in local.rglob("*") if p.is_file() and p != local / "zarr.json")
        for i, p in enumerate(files):
            target = f"{inner}/{p.relative_to(local).as_posix()}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(p), target)
            if i == len(files) // 2:
                _step("upload:partial")
        fs.put_file(str(local / "zarr.json"), root_meta)
        _step("upload:committed")
        if backup:
            fs.rm(backup, recursive=True)
    finally:
        if backup_name:
            storage._ACTIVE.discard(backup_name)  # a failed commit's backup is now stale: recovered later


