"""One storage abstraction for local paths and fsspec URLs (``s3://``, ``memory://``, ``file://``).

Every write is atomic: data goes to ``<name>.tmp-<uuid>`` beside the target and is renamed
into place, so a crash never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import io
import os
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem
import pandas as pd


def join(base: str, *parts: str) -> str:
    """Join path segments onto a local path or URL with ``/``."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``path`` and the path inside it."""
    fs, inner = fsspec.core.url_to_fs(path)
    return fs, inner


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (temp file + rename). Returns ``path``."""
    fs, inner = filesystem(path)
    parent = inner.rsplit("/", 1)[0] if "/" in inner else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{inner}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
            if hasattr(fh, "flush"):
                fh.flush()
            if hasattr(fh, "fileno"):
                try:
                    os.fsync(fh.fileno())
                except (OSError, io.UnsupportedOperation, AttributeError):
                    pass
        if isinstance(fs, LocalFileSystem):
            os.replace(tmp, inner)
        else:
            fs.mv(tmp, inner)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
    return path


def write_parquet(df: pd.DataFrame, path: str) -> str:
    """Atomically write a DataFrame as Parquet (pyarrow)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return atomic_write_bytes(path, buf.getvalue())


def read_parquet(path: str) -> pd.DataFrame:
    fs, inner = filesystem(path)
    with fs.open(inner, "rb") as fh:
        return pd.read_parquet(fh)


def write_text(path: str, text: str) -> str:
    return atomic_write_bytes(path, text.encode())
