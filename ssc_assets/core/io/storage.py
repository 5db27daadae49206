"""One storage abstraction for local paths and fsspec URLs (``s3://``, ``memory://``, ``file://``).

Every write is atomic: data goes to ``<name>.tmp-<owner>-<uuid>`` beside the target and is
renamed into place, so a crash never leaves a half-written file that looks complete.

Temporary names carry their owner (``<host id>-<pid>``, see :func:`owner_tag`) so that a
clean-up run by one process (another plate's run, a later run) removes only what belongs to
a process that is gone, never what a live process is still writing (:func:`owner_alive`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import pandas as pd
from fsspec.implementations.local import LocalFileSystem

# A temp/backup entry whose owner runs on another host (or another boot / PID namespace),
# where its PID cannot be checked, counts as abandoned after this long without a write.
STALE_AFTER_SECONDS = 6 * 3600

_TEMP_RE = re.compile(
    r"^(?P<base>.+?)\.(?P<kind>tmp|old)-(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-)?(?P<token>[0-9a-f]+)$"
)
_ACTIVE: set[str] = set()  # names of temp/backup entries this process is using right now


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


# --- ownership of temporary names ---------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


_HOST_ID: str | None = None


def host_id() -> str:
    """8 hex digits naming this host, boot and PID namespace: where a PID in a name can be checked."""
    global _HOST_ID
    if _HOST_ID is None:
        try:
            pidns = str(os.stat("/proc/self/ns/pid").st_ino)
        except OSError:
            pidns = ""
        key = "|".join([socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), pidns])
        _HOST_ID = hashlib.sha1(key.encode()).hexdigest()[:8]
    return _HOST_ID


def owner_tag() -> str:
    """``<host id>-<pid>`` of this process, embedded in every temp and backup name."""
    return f"{host_id()}-{os.getpid()}"


def temp_name(target_name: str, kind: str = "tmp") -> str:
    """``<target>.<kind>-<host>-<pid>-<uuid>`` (kind ``tmp``: being built; ``old``: backup of a store being replaced)."""
    return f"{target_name}.{kind}-{owner_tag()}-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class TempName:
    """A parsed temp/backup name. ``pid``/``host`` are ``None`` for names written by older versions."""

    name: str
    base: str  # the target's name (``P1.ome.zarr``, ``P1.parquet``)
    kind: str  # "tmp" or "old"
    host: str | None
    pid: int | None


def parse_temp_name(name: str) -> TempName | None:
    m = _TEMP_RE.match(name)
    if not m:
        return None
    return TempName(name, m["base"], m["kind"], m["host"], int(m["pid"]) if m["pid"] else None)


@contextlib.contextmanager
def claimed(name: str) -> Iterator[None]:
    """Mark a temp/backup ``name`` as in use by this process for the duration of the block."""
    _ACTIVE.add(name)
    try:
        yield
    finally:
        _ACTIVE.discard(name)


def _pid_state(pid: int) -> tuple[bool, float | None]:
    """(alive, start time as a UNIX timestamp or None); zombies count as dead."""
    try:
        import psutil

        try:
            p = psutil.Process(pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                return False, None
            return True, p.create_time()
        except psutil.NoSuchProcess:
            return False, None
        except psutil.AccessDenied:
            return True, None
    except ImportError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        return True, None
    stat = _read(f"/proc/{pid}/stat")
    if stat and stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]:
        return False, None
    return True, None


def owner_alive(t: TempName, mtime: float | None, *, max_age: float = STALE_AFTER_SECONDS) -> bool:
    """Whether the process that owns temp/backup ``t`` (last written at ``mtime``) may still be using it.

    Same host: its PID is alive and started before the entry was last written (else the PID was
    reused). Other host: the entry was written less than ``max_age`` seconds ago (``mtime``
    unknown: assume alive). Names without an owner come from older versions: stale.
    """
    if t.pid is None:
        return False
    if t.host != host_id():
        return mtime is None or time.time() - mtime < max_age
    if t.pid == os.getpid():
        return t.name in _ACTIVE
    alive, started = _pid_state(t.pid)
    if not alive:
        return False
    return started is None or mtime is None or started <= mtime + 1.0


def matches_plate(base: str, plate: str | None) -> bool:
    """Whether a target name (``P1.ome.zarr``, ``P1.parquet``) belongs to ``plate`` (any if None)."""
    if plate is None:
        return True
    return base == plate or base.removesuffix(".ome.zarr") == plate or base.rsplit(".", 1)[0] == plate


# --- atomic files -------------------------------------------------------------------------


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (temp file + rename). Returns ``path``."""
    fs, inner = filesystem(path)
    parent = inner.rsplit("/", 1)[0] if "/" in inner else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp_base = temp_name(inner.rsplit("/", 1)[-1])
    tmp = f"{parent}/{tmp_base}" if parent else tmp_base
    with claimed(tmp_base):
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
