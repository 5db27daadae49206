"""Jobs: ``process_plate`` materializes every per-plate asset for one plate partition."""

import dagster as dg

PER_PLATE_GROUPS = ("ingest", "images")

process_plate = dg.define_asset_job(
    "process_plate",
    selection=dg.AssetSelection.groups(*PER_PLATE_GROUPS),
    description="Every per-plate asset of one plate: index, QC (and the image assets as they are added).",
)
