"""Settings from environment variables (with defaults relative to the working directory).

| variable | default | meaning |
|---|---|---|
| ``SSC_PLATES_DIR`` | ``data/plates`` | incoming plate folders (read-only for the pipeline) |
| ``SSC_STORAGE_DIR`` | ``data/storage`` | asset outputs (Parquet, OME-Zarr, reports); local path or fsspec URL |
| ``SSC_CHANNEL_MAP`` | ``1=nuclei,2=borders,3=actin,4=mitochondria`` | wavelength index -> channel (validated when read: wavelengths 1-9, known unique channels, nuclei/borders/actin required) |
| ``SSC_TIME_POINT`` | ``1`` | time point used when a plate has several |
| ``SSC_SETTLE_SECONDS`` | ``60`` | a plate's files must be unchanged this long before ingestion |
| ``SSC_COMPUTE_BACKEND`` | ``process`` | per-image work: ``process`` pool, ``serial`` or ``dask`` |
| ``SSC_MAX_WORKERS`` | number of cores | worker processes of the local pool |
| ``SSC_DASK_ADDRESS`` | unset | scheduler address; when set, per-image work runs on that Dask cluster |
"""

from __future__ import annotations

import os

from ssc_assets.core.ingest.channels import DEFAULT_CHANNEL_MAP, ChannelMap


def _path(var: str, default: str) -> str:
    value = os.environ.get(var, default)
    return value if "://" in value else os.path.abspath(value)


def plates_dir() -> str:
    return _path("SSC_PLATES_DIR", "data/plates")


def storage_dir() -> str:
    return _path("SSC_STORAGE_DIR", "data/storage")


def channel_map() -> str:
    """``SSC_CHANNEL_MAP`` (validated: raises ``ValueError`` naming the variable and the bad part)."""
    value = os.environ.get("SSC_CHANNEL_MAP", DEFAULT_CHANNEL_MAP)
    try:
        ChannelMap.from_string(value)
    except ValueError as exc:
        raise ValueError(f"SSC_CHANNEL_MAP={value!r}: {exc}") from None
    return value


def channel_map_explicit() -> bool:
    """True when ``SSC_CHANNEL_MAP`` is set: the user chose the channel map."""
    return bool(os.environ.get("SSC_CHANNEL_MAP", "").strip())


def time_point() -> int:
    return int(os.environ.get("SSC_TIME_POINT", "1"))


def settle_seconds() -> float:
    return float(os.environ.get("SSC_SETTLE_SECONDS", "60"))


def compute_backend() -> str:
    return "dask" if os.environ.get("SSC_DASK_ADDRESS") else os.environ.get("SSC_COMPUTE_BACKEND", "process")


def max_workers() -> int:
    return int(os.environ.get("SSC_MAX_WORKERS", str(os.cpu_count() or 1)))


def dask_address() -> str | None:
    return os.environ.get("SSC_DASK_ADDRESS") or None
