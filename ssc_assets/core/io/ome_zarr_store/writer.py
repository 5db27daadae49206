"""HcsPlateWriter: builds one plate's OME-Zarr HCS store in a temp location and commits it."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from ome_zarr.format import CurrentFormat
from ome_zarr.writer import (
    write_label_metadata,
    write_multiscales_metadata,
    write_plate_metadata,
    write_well_metadata,
)

from ssc_assets.core.io import storage
from ssc_assets.core.io.ome_zarr_store import commit
from ssc_assets.core.io.ome_zarr_store.common import (
    CHUNK,
    FIELD_OK,
    FIELD_STATUSES,
    HEARTBEAT_SECONDS,
    LOCAL_BUILD_PREFIX,
    PLACEHOLDER_SHAPE,
    SCALE_FACTORS,
    _is_local,
    _jsonable,
    _local_path,
    _omero,
    _well_path,
)
from ssc_assets.core.io.ome_zarr_store.recovery import recover_store


def site_ranges(image: np.ndarray) -> list[list[float]]:
    """Per-channel 0.5 / 99.5 percentiles of a (C, H, W) image (the ``omero`` display window's inputs)."""
    return [[float(v) for v in np.percentile(image[i], [0.5, 99.5])] for i in range(image.shape[0])]


def _validate(image: np.ndarray, labels: dict[str, np.ndarray] | None, channel_names) -> None:
    if image.ndim != 3 or image.shape[0] != len(channel_names):
        raise ValueError(f"expected (C={len(channel_names)}, H, W), got {image.shape}")
    for name, arr in (labels or {}).items():
        if not np.issubdtype(np.asarray(arr).dtype, np.integer):
            raise ValueError(f"label image {name!r} must be integer, got {np.asarray(arr).dtype}")


def pyramid(array: np.ndarray, labels: bool = False) -> list[np.ndarray]:
    """Levels of a multiscale pyramid of a (..., H, W) array, each half the size of the one
    before (as many below level 0 as :data:`SCALE_FACTORS`): 2 x 2 block means for an image
    (ome-zarr's ``resize`` without its anti-aliasing blur), the bottom-right pixel of each block for
    a label image (ome-zarr's ``nearest``: ids stay ids). Same dtype; odd edges dropped (H // 2).
    The translations in the NGFF metadata (0.5 px at level 1) are those of 2 x 2 blocks."""
    levels = [array]
    for _ in SCALE_FACTORS:
        a = levels[-1]
        h, w = a.shape[-2] // 2, a.shape[-1] // 2
        if labels:
            nxt = a[..., 1:2 * h:2, 1:2 * w:2]
        else:
            nxt = a[..., :2 * h, :2 * w].reshape(*a.shape[:-2], h, 2, w, 2).mean(axis=(-3, -1), dtype=np.float64)
        levels.append(np.ascontiguousarray(nxt, dtype=a.dtype))
    return levels


def _write_multiscale(group: zarr.Group, levels: list[np.ndarray], axes: list[str], chunks: tuple[int, ...],
                      name: str, fmt, **metadata) -> None:
    """Pyramid ``levels`` as arrays ``s0``, ``s1``, ... of ``group`` plus its NGFF ``multiscales``
    metadata (written by ome-zarr's own ``write_multiscales_metadata``)."""
    for i, level in enumerate(levels):
        arr = group.create_array(f"s{i}", shape=level.shape, dtype=level.dtype, chunks=chunks,
                                 dimension_names=axes, fill_value=0, overwrite=True)
        arr[...] = level
    transforms = fmt.generate_coordinate_transformations([lv.shape for lv in levels])
    datasets = [{"path": f"s{i}", "coordinateTransformations": t} for i, t in enumerate(transforms)]
    write_multiscales_metadata(group, datasets=datasets, fmt=fmt, axes=axes, name=name, **metadata)


def _write_pixels(field: zarr.Group, image: np.ndarray, labels: dict[str, np.ndarray] | None, channel_names) -> None:
    """The image pyramid and label pyramids of one field group (no ``ssc`` attributes).

    The NGFF metadata comes from ome-zarr's writer functions; the pixels are written with zarr
    directly. ome-zarr's ``write_image`` / ``write_labels`` build a dask graph per array: a 384²
    masks field (weight map + 5 labels) took 0.48 s that way against 0.22 s here, with the same
    metadata (``benchmarks/zarr_write.py``; all-NaN placeholders downsample to NaN, silently)."""
    fmt = CurrentFormat()
    levels = pyramid(image.astype(np.float32, copy=False))
    _write_multiscale(field, levels, ["c", "y", "x"], (1, CHUNK, CHUNK), "image", fmt,
                      metadata={"omero": {**_omero(list(channel_names)), "version": fmt.version}})
    for name, arr in (labels or {}).items():
        sub = field.require_group(f"labels/{name}")
        _write_multiscale(sub, pyramid(np.asarray(arr), labels=True), ["y", "x"], (CHUNK, CHUNK), name, fmt)
        # ``source`` points readers back to the image (without it ome_zarr warns "no parent found")
        write_label_metadata(field["labels"], name, fmt=fmt, source={"image": "../../"})


def write_field(field_path: str, image: np.ndarray, labels: dict[str, np.ndarray] | None = None,
                channel_names: list[str] | tuple[str, ...] = ()) -> dict:
    """Write one site's pixels into a field group that :meth:`HcsPlateWriter.prepare_site`
    created (run it in the worker that computed the site); returns the small summary
    :meth:`HcsPlateWriter.record_site` takes: ``shape`` (C, H, W), per-channel ``ranges`` and
    the ``label_dtypes``.

    The field group must exist (``mode="r+"``): a worker never re-creates a temp store that its
    job already removed (job crashed, store cleaned up). Each field's arrays are distinct zarr
    v3 arrays and chunks, so workers write their fields concurrently; group and plate/well
    metadata are the job process's (see the module docstring of ``ome_zarr_store``)."""
    image = np.asarray(image)
    _validate(image, labels, channel_names)
    field = zarr.open_group(field_path, mode="r+")
    _write_pixels(field, image, labels, channel_names)
    return {"shape": tuple(int(v) for v in image.shape), "ranges": site_ranges(image),
            "label_dtypes": {k: np.asarray(v).dtype.str for k, v in (labels or {}).items()}}


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

    Worker writes: ``path = prepare_site(well, site)`` creates the (empty) field group in the
    temp store and returns its path; a worker (process pool or Dask, on a filesystem shared
    with the job) writes the pixels there with :func:`write_field` and returns its small
    summary, which the job passes to ``record_site``. The store is committed by the job on
    exit as before, so it stays atomic; a prepared site never recorded (its worker failed) is
    given a placeholder with ``write_placeholder`` (which first clears what the worker left),
    or, if the caller does nothing, an ``error`` placeholder on exit. ``workers_can_write(backend)``:
    False only for a store bound for an fsspec URL (built in a local directory of this host)
    with a ``dask`` backend, whose workers may be elsewhere; then workers return arrays and
    ``write_site`` writes them here.
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
        self._prepared: set[tuple[str, int]] = set()  # field groups created for a worker, not yet recorded
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
        self._prepared.discard((well, site))

    def workers_can_write(self, backend: str) -> bool:
        """Whether site workers of ``backend`` can reach the temp store (see the class docstring)."""
        return not (self.remote and backend == "dask")

    def prepare_site(self, well: str, site: int) -> str:
        """Create the empty field group of (``well``, ``site``) in the temp store; returns its
        path, where a worker writes the pixels with :func:`write_field`."""
        if (well, site) in self._prepared:
            raise ValueError(f"{well} s{site} prepared twice")
        self._claim(well, site)
        row, col = _well_path(well)
        self.root.require_group(row).require_group(col).require_group(str(site - 1))
        self._prepared.add((well, site))
        return str(self._field_dir(well, site))

    def _field_dir(self, well: str, site: int) -> Path:
        row, col = _well_path(well)
        return Path(self.tmp, row, col, str(site - 1))

    def _add_ranges(self, ranges: list, status: str) -> None:
        for i, (lo, hi) in enumerate(ranges):
            if np.isfinite(lo) and np.isfinite(hi):
                targets = [self._any_ranges] + ([self.ranges] if status == FIELD_OK else [])
                for r in targets:
                    r[i] = [min(r[i][0], lo), max(r[i][1], hi)]

    def _check_status(self, status: str) -> None:
        if status not in FIELD_STATUSES:
            raise ValueError(f"unknown field status {status!r} (known: {list(FIELD_STATUSES)})")

    def write_site(
        self, well: str, site: int, image: np.ndarray, labels: dict[str, np.ndarray] | None = None,
        metadata: dict | None = None, *, status: str = FIELD_OK, reason: str | None = None,
    ) -> None:
        """Write one site: ``image`` float32 (C, H, W); ``labels`` name -> integer (H, W) label images.

        ``metadata`` goes to the field's ``attrs["ssc"]`` with ``status`` (see
        :data:`FIELD_STATUSES`; real data is ``ok`` or ``qc_failed``) and ``reason``."""
        _validate(image, labels, self.channel_names)
        self._check_status(status)
        self._claim(well, site)
        self._add_ranges(site_ranges(image), status)
        if self._image_hw is None:
            self._image_hw = tuple(int(v) for v in image.shape[-2:])
        for name, arr in (labels or {}).items():
            self._label_dtypes.setdefault(name, np.asarray(arr).dtype)
        self._write_field(well, site, image, labels, {**(metadata or {}), "status": status, "placeholder": False,
                                                      **({"reason": reason} if reason else {})})

    def record_site(self, well: str, site: int, written: dict, metadata: dict | None = None, *,
                    status: str = FIELD_OK, reason: str | None = None) -> None:
        """Record a site a worker wrote with :func:`write_field` into the field group of
        :meth:`prepare_site`: ``written`` is what ``write_field`` returned. Same flags as
        :meth:`write_site`, written to the field's ``attrs["ssc"]`` here, in the job process."""
        if (well, site) not in self._prepared:
            raise ValueError(f"{well} s{site} was not prepared (prepare_site) or is already recorded")
        self._check_status(status)
        shape = tuple(written["shape"])
        if len(shape) != 3 or shape[0] != len(self.channel_names):
            raise ValueError(f"expected (C={len(self.channel_names)}, H, W), got {shape}")
        self._prepared.discard((well, site))
        self._add_ranges(written["ranges"], status)
        if self._image_hw is None:
            self._image_hw = tuple(int(v) for v in shape[-2:])
        for name, dt in (written.get("label_dtypes") or {}).items():
            self._label_dtypes.setdefault(name, np.dtype(dt))
        self._heartbeat()
        row, col = _well_path(well)
        field = self.root[row][col][str(site - 1)]
        self._set_flags(field, well, site, {**(metadata or {}), "status": status, "placeholder": False,
                                            **({"reason": reason} if reason else {})})

    def write_placeholder(self, well: str, site: int, status: str, reason: str, metadata: dict | None = None) -> None:
        """Record a field without real data (``status`` not ``ok``), written on exit as a NaN
        image of the plate's image shape and empty labels, flagged with ``status`` and ``reason``
        (replacing whatever a failed worker left in a prepared field)."""
        if status == FIELD_OK or status not in FIELD_STATUSES:
            raise ValueError(f"a placeholder needs a non-ok status of {list(FIELD_STATUSES)}, got {status!r}")
        self._claim(well, site)
        self._pending[(well, site)] = {**(metadata or {}), "status": status, "placeholder": True, "reason": reason}

    def _write_field(self, well: str, site: int, image: np.ndarray, labels: dict[str, np.ndarray] | None, flags: dict) -> None:
        self._heartbeat()
        row, col = _well_path(well)
        d = self._field_dir(well, site)
        if d.exists():  # prepared for a worker that failed: drop whatever it wrote
            shutil.rmtree(d)
        field = self.root.require_group(row).require_group(col).require_group(str(site - 1))
        _write_pixels(field, image, labels, self.channel_names)
        self._set_flags(field, well, site, flags)

    def _set_flags(self, field: zarr.Group, well: str, site: int, flags: dict) -> None:
        flags = _jsonable({"well": well, "site": int(site), **flags})
        field.attrs["ssc"] = flags
        self.flags[(well, site)] = flags
        self.fields.setdefault(well, []).append(site)

    def _write_placeholders(self) -> None:
        """Pending placeholders (and an ``error`` one for each prepared site never recorded),
        then (``uniform_fields``) a ``missing`` one for every gap."""
        for well, site in sorted(self._prepared):
            self._pending[(well, site)] = {"status": "error", "placeholder": True,
                                           "reason": "prepared for a worker, never recorded"}
        self._prepared.clear()
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
            commit._step("commit:start")
            if self.remote:
                commit._upload_committed(self.tmp, self.final_url)
            else:
                try:
                    commit._swap_into_place(self.tmp, self.final)
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


