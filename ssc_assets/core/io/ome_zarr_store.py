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

Field index = site - 1; chunks (1, 512, 512); channel names in the ``omero`` metadata.

Uniform fields and flags. NGFF plate readers (``ome_zarr.reader``, so napari-ome-zarr) take
the field paths and image shapes of the *first* well for every well, so a well without that
field logs ``Failed to load <row>/<col>/<field>/s0``. With ``uniform_fields=True`` (what the
assets use) every well gets the same field paths: sites whose data is not analysis data are
still written, and their ``status`` is recorded under the ``ssc`` key of the attributes:

* field group ``attrs["ssc"]``: ``status``, ``placeholder`` (True: no real pixels), ``passed_qc``,
  ``qc_reason``, ``error`` and whatever the asset adds (plate, well, site, pixel size);
* well group ``attrs["ssc"]["fields"]``: field path -> ``{site, status, placeholder, reason}``;
* plate root ``attrs["ssc"]``: ``field_status`` (count per status) and ``flagged_fields``.

Statuses (:data:`FIELD_STATUSES`): ``ok`` (QC-passed, processed: the only analysis data),
``qc_failed`` (QC-failed site, data written for review), ``error`` (processing raised),
``unreadable`` (raw images unreadable or missing), ``missing`` (no images for that site; added
by the writer). Placeholders hold a NaN image of the plate's image shape and empty (0) labels.
:func:`list_sites` returns ``ok`` fields only; :func:`field_flags` returns every field's flags.
The ``omero`` display window is computed from ``ok`` fields only (saturated QC failures would
otherwise stretch it). Masks
live in their own store beside the images (NGFF labels must hang under an image; the weight
map, a float, is that image) so that each asset is written atomically and re-materialized on
its own. In napari, open both stores to overlay the labels on the corrected images.

Atomicity and crashes. A store is *complete* when its root ``zarr.json`` holds the plate
metadata, which :class:`HcsPlateWriter` writes last. The writer builds the whole store in
``<store>.tmp-<host>-<pid>-<uuid>`` (the owner is in the name, see ``storage.owner_tag``) and
puts it in place only when every site is written:

* local paths: one atomic ``renameat2(RENAME_EXCHANGE)`` swaps the new store and the old one
  (Linux; the old one then sits under the temp name and is deleted), so ``<store>`` is always
  the old or the new version. Where the exchange is unsupported (not Linux, NFS), the old
  store is renamed to ``<store>.old-<owner>-<uuid>``, the new one renamed into place, the
  backup deleted; a crash between the two renames leaves a complete backup, which readers
  fall back to and the next writer or :func:`cleanup_stale_tmp` renames back.
* fsspec URLs (``s3://``, ``memory://``...), which have no directory rename: the store is
  built in a local temp directory; on commit the current store is first copied to
  ``<store>.old-<owner>-<uuid>`` (root ``zarr.json`` last), then its root ``zarr.json`` is
  deleted, the new files uploaded and the new root ``zarr.json`` put last, then the backup
  deleted. A crash or failed upload leaves a prefix without root metadata (no reader opens
  it) and the complete backup, which the next writer of that store, or
  :func:`cleanup_stale_tmp` on its folder, copies back.

Temp stores and backups are removed only once their owner is gone (PID dead on this host, or
no write for ``storage.STALE_AFTER_SECONDS`` from another host), so runs of different plates,
or of the same plate, never delete each other's work in progress.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import zarr
from ome_zarr.io import parse_url
from ome_zarr.writer import write_image, write_labels, write_plate_metadata, write_well_metadata

from ssc_assets.core.io import storage
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


def _step(name: str) -> None:
    """Fault-injection point between the steps of a commit (a no-op; tests replace it)."""


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

    ``write_site(well, site, image)`` with ``image`` float32 (C, H, W); ``write_placeholder``
    records a field without data (written on exit as a NaN image and empty labels). On a clean
    exit the plate/well metadata list exactly the wells and fields written, and the store
    replaces ``final_path`` atomically (see the module docstring). On an exception the temp
    store is deleted and the previous version is untouched. On entry, the writer first repairs
    what a crashed writer of the same store left behind (:func:`recover_store`).

    ``uniform_fields``: on exit, give every well the same field paths (the union over the
    plate), filling the gaps with ``missing`` placeholders, so that every NGFF plate reader
    opens the store. ``placeholder_shape`` (H, W) and ``placeholder_labels`` (name -> dtype)
    are used for placeholders when no site with real data was written.
    """

    def __init__(self, final_path: str | os.PathLike, plate_name: str, channel_names: list[str], *,
                 uniform_fields: bool = False, placeholder_shape: tuple[int, int] | None = None,
                 placeholder_labels: dict[str, str | np.dtype] | None = None):
        self.remote = not _is_local(final_path)
        self.final_url = str(final_path)  # remote: where the finished store is uploaded
        self.final = Path(_local_path(final_path))  # local: where it is renamed to
        self.plate_name = plate_name
        self.channel_names = list(channel_names)
        self.uniform_fields = uniform_fields
        self.placeholder_shape = tuple(placeholder_shape) if placeholder_shape else None
        self.placeholder_labels = {k: np.dtype(v) for k, v in (placeholder_labels or {}).items()}
        self._tmp_name = storage.temp_name(self.final.name)
        self._tmpdir: str | None = None
        self.tmp = None if self.remote else self.final.with_name(self._tmp_name)
        self.fields: dict[str, list[int]] = {}
        self.flags: dict[tuple[str, int], dict] = {}  # (well, site) -> the field's ssc attributes
        self._pending: dict[tuple[str, int], dict] = {}  # placeholders, written on exit
        self._image_hw: tuple[int, int] | None = None
        self._label_dtypes: dict[str, np.dtype] = {}
        self.ranges: list[list[float]] = [[np.inf, -np.inf] for _ in channel_names]  # ok fields only
        self._any_ranges: list[list[float]] = [[np.inf, -np.inf] for _ in channel_names]  # any real data

    def __enter__(self) -> "HcsPlateWriter":
        storage._ACTIVE.add(self._tmp_name)
        try:
            if self.remote:  # built in a local temp dir, uploaded on exit
                recover_store(self.final_url)
                self._tmpdir = tempfile.mkdtemp(prefix=f"{LOCAL_BUILD_PREFIX}{storage.owner_tag()}-")
                self.tmp = Path(self._tmpdir, self._tmp_name)
            else:
                self.final.parent.mkdir(parents=True, exist_ok=True)
                recover_store(self.final)
            self.root = zarr.open_group(str(self.tmp), mode="w")
        except BaseException:
            self._release()
            raise
        self._beat = time.monotonic()
        return self

    def _claim(self, well: str, site: int) -> None:
        if site < 1:
            raise ValueError(f"site numbers start at 1, got {site}")
        if (well, site) in self.flags or (well, site) in self._pending:
            raise ValueError(f"{well} s{site} written twice")

    def write_site(
        self, well: str, site: int, image: np.ndarray, labels: dict[str, np.ndarray] | None = None,
        metadata: dict | None = None, *, status: str = FIELD_OK, reason: str | None = None,
    ) -> None:
        """Write one site: ``image`` float32 (C, H, W); ``labels`` name -> integer (H, W) label images.

        ``metadata`` goes to the field's ``attrs["ssc"]`` with ``status`` (see
        :data:`FIELD_STATUSES`; real data is ``ok`` or ``qc_failed``) and ``reason``."""
        if image.ndim != 3 or image.shape[0] != len(self.channel_names):
            raise ValueError(f"expected (C={len(self.channel_names)}, H, W), got {image.shape}")
        if status not in FIELD_STATUSES:
            raise ValueError(f"unknown field status {status!r} (known: {list(FIELD_STATUSES)})")
        for name, arr in (labels or {}).items():
            if not np.issubdtype(np.asarray(arr).dtype, np.integer):
                raise ValueError(f"label image {name!r} must be integer, got {np.asarray(arr).dtype}")
        self._claim(well, site)
        for i in range(image.shape[0]):
            lo, hi = (float(v) for v in np.percentile(image[i], [0.5, 99.5]))
            if np.isfinite(lo) and np.isfinite(hi):
                targets = [self._any_ranges] + ([self.ranges] if status == FIELD_OK else [])
                for r in targets:
                    r[i] = [min(r[i][0], lo), max(r[i][1], hi)]
        if self._image_hw is None:
            self._image_hw = tuple(int(v) for v in image.shape[-2:])
        for name, arr in (labels or {}).items():
            self._label_dtypes.setdefault(name, np.asarray(arr).dtype)
        self._write_field(well, site, image, labels, {**(metadata or {}), "status": status, "placeholder": False,
                                                      **({"reason": reason} if reason else {})})

    def write_placeholder(self, well: str, site: int, status: str, reason: str, metadata: dict | None = None) -> None:
        """Record a field without real data (``status`` not ``ok``), written on exit as a NaN
        image of the plate's image shape and empty labels, flagged with ``status`` and ``reason``."""
        if status == FIELD_OK or status not in FIELD_STATUSES:
            raise ValueError(f"a placeholder needs a non-ok status of {list(FIELD_STATUSES)}, got {status!r}")
        self._claim(well, site)
        self._pending[(well, site)] = {**(metadata or {}), "status": status, "placeholder": True, "reason": reason}

    def _write_field(self, well: str, site: int, image: np.ndarray, labels: dict[str, np.ndarray] | None, flags: dict) -> None:
        self._heartbeat()
        row, col = _well_path(well)
        field = self.root.require_group(row).require_group(col).require_group(str(site - 1))
        with warnings.catch_warnings():
            if flags.get("placeholder"):  # downsampling an all-NaN image warns "All-NaN slice"
                warnings.simplefilter("ignore", RuntimeWarning)
            write_image(
                image.astype(np.float32, copy=False), field, scale_factors=SCALE_FACTORS, axes="cyx",
                storage_options={"chunks": (1, CHUNK, CHUNK)},
                omero=_omero(self.channel_names),
            )
        for name, arr in (labels or {}).items():
            # ``source`` points readers back to the image (without it ome_zarr warns "no parent found")
            write_labels(np.asarray(arr), field, name=name, axes="yx", scaler=None, scale_factors=SCALE_FACTORS,
                         storage_options={"chunks": (CHUNK, CHUNK)}, label_metadata={"source": {"image": "../../"}})
        flags = _jsonable({"well": well, "site": int(site), **flags})
        field.attrs["ssc"] = flags
        self.flags[(well, site)] = flags
        self.fields.setdefault(well, []).append(site)

    def _write_placeholders(self) -> None:
        """Pending placeholders, then (``uniform_fields``) a ``missing`` one for every gap."""
        if self.uniform_fields:
            every = sorted({s for w, s in [*self.flags, *self._pending]})
            wells = sorted({w for w, _ in [*self.flags, *self._pending]})
            have = set(self.flags) | set(self._pending)
            for w in wells:
                for s in every:
                    if (w, s) not in have:
                        self._pending[(w, s)] = {"status": "missing", "placeholder": True,
                                                 "reason": "no images for this site in this well"}
        if not self._pending:
            return
        hw = self._image_hw or self.placeholder_shape or PLACEHOLDER_SHAPE
        image = np.full((len(self.channel_names), *hw), np.nan, np.float32)
        dtypes = self._label_dtypes or self.placeholder_labels
        labels = {name: np.zeros(hw, dt) for name, dt in dtypes.items()}
        for (well, site), flags in sorted(self._pending.items()):
            self._write_field(well, site, image, labels, flags)
        self._pending.clear()

    def _heartbeat(self) -> None:
        """Refresh the temp store's mtime: other hosts judge a temp store abandoned by its age."""
        now = time.monotonic()
        if now - self._beat >= HEARTBEAT_SECONDS:
            self._beat = now
            try:
                os.utime(self.tmp)
            except OSError:
                pass

    def _release(self) -> None:
        if self.remote and self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        storage._ACTIVE.discard(self._tmp_name)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            self._write_placeholders()
            self._write_metadata()
            _step("commit:start")
            if self.remote:
                _upload_committed(self.tmp, self.final_url)
            else:
                try:
                    _swap_into_place(self.tmp, self.final)
                except BaseException:
                    shutil.rmtree(self.tmp, ignore_errors=True)  # never needed to restore anything
                    raise
        finally:
            self._release()
        return False

    def _write_metadata(self) -> None:
        """Well and field metadata, then the plate metadata: the last write, which makes the store complete."""
        wells = sorted(self.fields)
        ranges = self.ranges if any(np.isfinite(r[0]) for r in self.ranges) else self._any_ranges
        omero = _omero(self.channel_names, [tuple(r) if np.isfinite(r[0]) else (0.0, 1.0) for r in ranges])
        flagged, counts = [], {}
        for w in wells:
            row, col = _well_path(w)
            well_group = self.root[row][col]
            sites = sorted(self.fields[w])
            write_well_metadata(well_group, [{"path": str(s - 1)} for s in sites])
            summary = {}
            for s in sites:
                g = well_group[str(s - 1)]
                ome = dict(g.attrs.get("ome", {}))
                ome["omero"] = omero
                g.attrs["ome"] = ome
                f = self.flags[(w, s)]
                summary[str(s - 1)] = {k: f[k] for k in ("site", "status", "placeholder", "reason") if k in f}
                counts[f["status"]] = counts.get(f["status"], 0) + 1
                if f["status"] != FIELD_OK:
                    flagged.append({"well": w, "site": s, "path": f"{row}/{col}/{s - 1}", "status": f["status"],
                                    "reason": f.get("reason")})
            well_group.attrs["ssc"] = {"fields": summary}
        rows = sorted({_well_path(w)[0] for w in wells})
        cols = sorted({_well_path(w)[1] for w in wells}, key=int)
        self.root.attrs["ssc"] = {"field_status": counts, "flagged_fields": flagged,
                                  "statuses": FIELD_STATUSES}
        write_plate_metadata(self.root, rows, cols, [f"{r}/{c}" for r, c in map(_well_path, wells)],
                             field_count=max((len(v) for v in self.fields.values()), default=0), name=self.plate_name)


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


# --- recovery and clean-up -------------------------------------------------------------------


def _mtime(p: Path) -> float | None:
    try:
        return p.lstat().st_mtime
    except OSError:
        return None


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


# --- readers ------------------------------------------------------------------------------------


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
