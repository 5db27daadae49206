"""Jobs: ``process_plate`` materializes every per-plate asset for one plate partition."""

import dagster as dg

PER_PLATE_GROUPS = ("ingest", "images")
#: Run monitoring fails a per-plate run still going after this long (s): a run whose worker
#: and code server both died would otherwise stay STARTED. A 384-site plate takes ~20-90 min.
PER_PLATE_MAX_RUNTIME = {"dagster/max_runtime": str(6 * 3600)}

process_plate = dg.define_asset_job(
    "process_plate",
    selection=dg.AssetSelection.groups(*PER_PLATE_GROUPS),
    description="Every per-plate asset of one plate: index, QC (and the image assets as they are added).",
    tags=PER_PLATE_MAX_RUNTIME,
)

train_models = dg.define_asset_job(
    "train_models",
    selection=dg.AssetSelection.groups("models"),
    description="Every model, trained on all materialized plates and tracked in MLflow.",
)

augmentation_sweep_job = dg.define_asset_job(
    "run_augmentation_sweep",
    selection=dg.AssetSelection.groups("model_sweeps"),
    description="Classifier (or DenseNet) at several augmentation factors, one MLflow run each (Figures C.1.1/C.1.2).",
)

embed_plate = dg.define_asset_job(
    "embed_plate",
    selection=dg.AssetSelection.groups("embeddings"),
    description="Site embeddings of every method (champion models) and well embeddings of one plate.",
    tags=PER_PLATE_MAX_RUNTIME,
)

cluster_plates = dg.define_asset_job(
    "cluster_plates",
    selection=dg.AssetSelection.groups("clusterings"),
    description="Clusterings, metrics, comparison table and HTML report over all plates.",
)
