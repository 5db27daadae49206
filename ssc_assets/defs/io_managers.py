"""Parquet IO manager on the storage abstraction (local path or fsspec URL), atomic writes."""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd
from pydantic import Field
from upath import UPath

from ssc_assets import settings
from ssc_assets.core.io.storage import read_parquet, write_parquet, write_text


class _PlateUPathIOManager(dg.UPathIOManager):
    def load_partitions(self, context: dg.InputContext):
        # A per-plate asset gets its own plate's object; an all-plates asset ALWAYS gets
        # {plate: object}, even when only one plate exists. With the input's metadata
        # ``allow_missing_partitions`` (``ALL_PLATES``), a plate never materialized (its
        # process_plate run failed: a blank plate, a half-copied folder) is left out with a
        # warning naming it, instead of failing every cross-plate asset of the study.
        if context.has_partition_key:
            return super().load_partitions(context)
        paths = self._get_paths_for_partitions(context)
        loaded = {k: self._load_partition_from_path(context, k, paths[k]) for k in context.asset_partition_keys}
        return {k: v for k, v in loaded.items() if v is not None}


class _ParquetUPathIOManager(_PlateUPathIOManager):
    extension = ".parquet"

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath):
        write_parquet(obj, str(path))

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        return read_parquet(str(path))

    def get_metadata(self, context, obj):
        return {"dagster/row_count": len(obj)} if isinstance(obj, pd.DataFrame) else {}


class _JsonUPathIOManager(_PlateUPathIOManager):
    extension = ".json"

    def dump_to_path(self, context: dg.OutputContext, obj: dict, path: UPath):
        write_text(str(path), json.dumps(obj, indent=1, sort_keys=True, default=str))

    def load_from_path(self, context: dg.InputContext, path: UPath) -> dict:
        with path.open("r") as fh:
            return json.load(fh)


class _StorageIOManager(dg.ConfigurableIOManager):
    """Configurable front of a :class:`_PlateUPathIOManager` rooted at ``base_dir``."""

    base_dir: str = Field(default_factory=settings.storage_dir)

    def _inner(self) -> _PlateUPathIOManager:
        raise NotImplementedError

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        self._inner().handle_output(context, obj)

    def load_input(self, context: dg.InputContext):
        return self._inner().load_input(context)


class ParquetIOManager(_StorageIOManager):
    """Stores DataFrames as ``<base_dir>/<asset>/<plate>.parquet``; an all-plates input is
    ``{plate: DataFrame}``."""

    def _inner(self) -> _ParquetUPathIOManager:
        return _ParquetUPathIOManager(base_path=UPath(self.base_dir))


class ManifestIOManager(_StorageIOManager):
    """For assets whose data are files they write themselves (OME-Zarr stores, arrays):
    the asset returns a JSON-able manifest (paths + summary) stored as
    ``<base_dir>/<asset>/<plate>.json``; downstream assets receive the manifest."""

    def _inner(self) -> _JsonUPathIOManager:
        return _JsonUPathIOManager(base_path=UPath(self.base_dir))
