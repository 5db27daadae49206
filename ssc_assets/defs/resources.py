"""Resources: where plates come from, and where per-image work runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg
from pydantic import Field

from ssc_assets import settings
from ssc_assets.core.channels import ChannelMap
from ssc_assets.core.metaxpress import sanitize_plate_name


class PlateSource(dg.ConfigurableResource):
    """The folder that receives MetaXpress plate exports (never written to)."""

    plates_dir: str = Field(default_factory=settings.plates_dir, description="Folder holding one sub-folder per plate.")
    channel_map: str = Field(default_factory=settings.channel_map, description="Wavelength index -> channel, e.g. '1=nuclei,2=borders,3=actin,4=mitochondria'.")
    time_point: int = Field(default_factory=settings.time_point, description="Time point to use when a plate has several.")
    settle_seconds: float = Field(default_factory=settings.settle_seconds, description="Files must be unchanged this long before a plate is ingested.")

    def channels(self) -> ChannelMap:
        return ChannelMap.from_string(self.channel_map)

    def plate_folders(self) -> dict[str, Path]:
        """Partition key -> plate folder, for every sub-folder of ``plates_dir``."""
        root = Path(self.plates_dir)
        if not root.is_dir():
            return {}
        out = {}
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                try:
                    out.setdefault(sanitize_plate_name(d.name), d)
                except ValueError:
                    continue
        return out

    def plate_dir(self, plate_key: str) -> Path:
        folders = self.plate_folders()
        if plate_key not in folders:
            raise FileNotFoundError(f"no plate folder for partition {plate_key!r} under {self.plates_dir}")
        return folders[plate_key]


class SiteCompute(dg.ConfigurableResource):
    """Per-image/per-site parallelism: local process pool (default) or a Dask cluster.

    ``SSC_DASK_ADDRESS`` switches to ``dask``; one failing item never kills the others.
    """

    backend: str = Field(default_factory=settings.compute_backend, description="'process', 'serial' or 'dask'.")
    max_workers: int = Field(default_factory=settings.max_workers, description="Local worker processes.")
    dask_address: str | None = Field(default_factory=settings.dask_address, description="Dask scheduler address (tcp://host:8786).")

    def map(self, fn: Callable, items: Sequence, on_result: Callable | None = None) -> list:
        from ssc_assets.core.parallel import map_sites

        return map_sites(
            fn,
            items,
            backend=self.backend,
            max_workers=self.max_workers,
            dask_address=self.dask_address,
            on_result=on_result,
        )


class Storage(dg.ConfigurableResource):
    """Where assets that write their own files (OME-Zarr, arrays, CSV) put them."""

    base_dir: str = Field(default_factory=settings.storage_dir, description="Local path or fsspec URL (SSC_STORAGE_DIR).")

    def path(self, *parts: str) -> str:
        from ssc_assets.core.storage import join

        return join(self.base_dir, *parts)


def default_resources() -> dict:
    return {"plate_source": PlateSource(), "compute": SiteCompute(), "storage": Storage()}

