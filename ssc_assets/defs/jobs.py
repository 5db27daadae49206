"""Jobs: ``process_plate`` materializes every per-plate asset for one plate partition."""

import dagster as dg

from ssc_assets.defs.partitions import plates

PER_PLATE_GROUPS = ("ingest",)

process_plate = dg.define_asset_job(
    "process_plate",
    selection=dg.AssetSelection.groups(*PER_PLATE_GROUPS),
    partitions_def=plates,
    description="Every per-plate asset of one plate: index, QC (and the image assets as they are added).",
)
