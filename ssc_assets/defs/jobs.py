"""Jobs: ``process_plate`` materializes every per-plate asset for one plate partition."""

import dagster as dg

PER_PLATE_GROUPS = ("ingest", "images")
#: Run monitoring fails a per-plate run still going after this long (s): a run whose worker
#: and code server both died would otherwise stay STARTED. A 384-site plate takes ~20-90 min.
PER_PLATE_MAX_RUNTIME = {"dagster/max_runtime": str(6 * 3600)}


def _group_job(name: str, group: str, description: str, per_plate: bool = False):
    """A job materializing one asset group; per-plate jobs carry :data:`PER_PLATE_MAX_RUNTIME`."""
    return dg.define_asset_job(name, selection=dg.AssetSelection.groups(group), description=description,
                               tags=PER_PLATE_MAX_RUNTIME if per_plate else None)


process_plate = dg.define_asset_job(
    "process_plate",
    selection=dg.AssetSelection.groups(*PER_PLATE_GROUPS),
    description="Every per-plate asset of one plate: index, QC (and the image assets as they are added).",
    tags=PER_PLATE_MAX_RUNTIME,
)
train_models = _group_job("train_models", "models", "Every model, trained on all materialized plates and tracked in MLflow.")
augmentation_sweep_job = _group_job(
    "run_augmentation_sweep", "model_sweeps",
    "Classifier (or DenseNet) at several augmentation factors, one MLflow run each (Figures C.1.1/C.1.2).")
embed_plate = _group_job(
    "embed_plate", "embeddings",
    "Site embeddings of every method (champion models) and well embeddings of one plate.", per_plate=True)
cluster_plates = _group_job("cluster_plates", "clusterings", "Clusterings, metrics, comparison table and HTML report over all plates.")
