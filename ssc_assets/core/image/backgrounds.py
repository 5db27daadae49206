"""Per-plate sidecar of the illumination background grids, computed by ``site_qc``'s workers.

``site_qc`` reads every raw image of the image channels anyway; its workers also compute the
image's background and foreground grids (:func:`~ssc_assets.core.image.illumination.image_background`,
32 KB per image at 64 x 64) and the asset writes them, atomically, to
``$SSC_STORAGE_DIR/site_qc/<plate>.backgrounds.npz``. ``illumination_profiles`` then builds the
profiles from these grids instead of reading every raw TIFF again (:class:`BackgroundCache`).

A grid is used only when it is exactly what ``illumination_profiles`` would compute:

* the settings of ``image_background`` (:func:`background_settings`: grid size, block
  percentile, bright-area suppression ``n_iter`` / ``k_sd``, median size) and the sidecar
  format version are equal, else the whole sidecar is ignored;
* per image: same path, same expected (H, W), and the file's size and modification time
  (``os.stat``, local files) unchanged since QC read it.

Anything else (no sidecar: a ``site_qc`` materialized before it existed; other settings; a
new or rewritten file) falls back to reading that image, so the profiles never change.
"""

from __future__ import annotations

import inspect
import io
import json
import os

import numpy as np

from ssc_assets.core.image.illumination import image_background

SIDECAR_VERSION = 1
SIDECAR_SUFFIX = ".backgrounds.npz"


def background_settings(n_iter: int | None = None, k_sd: float | None = None) -> dict:
    """Keyword arguments of :func:`image_background` (its defaults, with ``n_iter`` / ``k_sd``
    when given), JSON-normalised: what a sidecar must match to be used."""
    params = inspect.signature(image_background).parameters
    out = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    if n_iter is not None:
        out["n_iter"] = int(n_iter)
    if k_sd is not None:
        out["k_sd"] = float(k_sd)
    return json.loads(json.dumps(out))


def file_stamp(path: str | os.PathLike) -> list[int] | None:
    """``[size, mtime_ns]`` of a local file; None for a URL or a file that cannot be stat'ed."""
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        return None
    try:
        st = os.stat(text.removeprefix("file://"))
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def sidecar_bytes(entries: dict[str, tuple[np.ndarray, tuple[int, int] | None, list[int] | None]], settings: dict) -> bytes:
    """The ``.npz`` of ``entries`` (raw path -> (grid, expected (H, W), file stamp)) and ``settings``."""
    arrays, index = {}, []
    for i, (path, (grid, shape, stamp)) in enumerate(sorted(entries.items())):
        arrays[f"g{i}"] = np.asarray(grid, np.float32)
        index.append({"path": str(path), "key": f"g{i}", "shape": list(shape) if shape else None, "stamp": stamp})
    meta = {"version": SIDECAR_VERSION, "settings": json.loads(json.dumps(settings)), "entries": index}
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    return buf.getvalue()


def write_sidecar(path: str, entries: dict, settings: dict) -> str:
    """Write the sidecar atomically (temp file + rename, local or fsspec). Returns ``path``."""
    from ssc_assets.core.io.storage import atomic_write_bytes

    return atomic_write_bytes(path, sidecar_bytes(entries, settings))


class BackgroundCache:
    """The grids of a sidecar whose settings match; :meth:`get` checks each image."""

    def __init__(self, npz, meta: dict):
        self._npz = npz
        self._entries = {e["path"]: e for e in meta["entries"]}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str, shape: tuple[int, int]) -> np.ndarray | None:
        """The grid of ``path`` if QC computed it for an image of ``shape`` that has not changed since."""
        e = self._entries.get(str(path))
        if e is None or e["shape"] is None or tuple(e["shape"]) != tuple(shape):
            return None
        if e["stamp"] is None or e["stamp"] != file_stamp(path):  # no stamp (e.g. a URL): cannot tell, so re-read
            return None
        return np.asarray(self._npz[e["key"]])


def load_sidecar(path: str, settings: dict) -> tuple[BackgroundCache | None, str]:
    """``(cache, "")`` if the sidecar at ``path`` exists and was computed with ``settings``,
    else ``(None, why not)``."""
    import fsspec

    try:
        with fsspec.open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None, "no background sidecar from site_qc"
    except OSError as exc:
        return None, f"background sidecar unreadable ({exc})"
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        meta = json.loads(str(npz["meta"]))
    except (ValueError, KeyError, OSError) as exc:
        return None, f"background sidecar unreadable ({type(exc).__name__}: {exc})"
    if meta.get("version") != SIDECAR_VERSION:
        return None, f"background sidecar version {meta.get('version')} (expected {SIDECAR_VERSION})"
    want = json.loads(json.dumps(settings))
    if meta.get("settings") != want:
        return None, f"background sidecar computed with other settings ({meta.get('settings')} != {want})"
    return BackgroundCache(npz, meta), ""
