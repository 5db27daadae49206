"""Resources: where plates come from, and where per-image work runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg
from pydantic import Field, field_validator

from ssc_assets import settings
from ssc_assets.core.ingest.channels import DEFAULT_CHANNEL_MAP, ChannelMap
from ssc_assets.core.ingest.metaxpress import PlateFolders, discover_plate_folders


class PlateSource(dg.ConfigurableResource):
    """The folder that receives MetaXpress plate exports (never written to)."""

    plates_dir: str = Field(default_factory=settings.plates_dir, description="Folder holding one sub-folder per plate.")
    channel_map: str = Field(default_factory=settings.channel_map, description="Wavelength index -> channel, e.g. '1=nuclei,2=borders,3=actin,4=mitochondria'.")
    time_point: int = Field(default_factory=settings.time_point, description="Time point to use when a plate has several.")
    settle_seconds: float = Field(default_factory=settings.settle_seconds, description="Files must be unchanged this long before a plate is ingested.")

    @field_validator("channel_map")
    @classmethod
    def _valid_channel_map(cls, value: str) -> str:
        ChannelMap.from_string(value)  # raises ValueError naming the bad part: fails when definitions load
        return value

    def channel_map_explicit(self) -> bool:
        """The user chose the channel map: ``SSC_CHANNEL_MAP`` (and this resource uses it) or a
        ``channel_map`` other than the default."""
        cmap = ChannelMap.from_string(self.channel_map)
        if not cmap.same_as(ChannelMap.from_string(DEFAULT_CHANNEL_MAP)):
            return True
        if not settings.channel_map_explicit():
            return False
        try:
            return cmap.same_as(ChannelMap.from_string(settings.channel_map()))
        except ValueError:  # an invalid SSC_CHANNEL_MAP is not the map in use
            return False

    def strict_channels(self) -> bool:
        """HTD wavelength names that disagree with the channel map stop a plate unless the
        user chose the map (then they are warnings in ``raw_sites``)."""
        return not self.channel_map_explicit()

    def channels(self) -> ChannelMap:
        """The channel map, carrying whether it was chosen explicitly (see :meth:`strict_channels`)."""
        return ChannelMap.from_string(self.channel_map, explicit=self.channel_map_explicit())

    def find_plate_folders(self) -> PlateFolders:
        """Plate folders and, per partition key, why a folder is not used (e.g. two folders
        whose names give the same key). Never raises for a bad entry."""
        return discover_plate_folders(self.plates_dir)

    def plate_folders(self) -> dict[str, Path]:
        """Partition key -> plate folder, for every usable sub-folder of ``plates_dir``."""
        return self.find_plate_folders().folders

    def plate_dir(self, plate_key: str) -> Path:
        found = self.find_plate_folders()
        if plate_key in found.errors:
            raise FileNotFoundError(f"partition {plate_key!r}: {found.errors[plate_key]}")
        if plate_key not in found.folders:
            raise FileNotFoundError(f"no plate folder for partition {plate_key!r} under {self.plates_dir}")
        return found.folders[plate_key]


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
        from ssc_assets.core.io.storage import join

        return join(self.base_dir, *parts)


def default_resources() -> dict:
    return {"plate_source": PlateSource(), "compute": SiteCompute(), "storage": Storage()}

