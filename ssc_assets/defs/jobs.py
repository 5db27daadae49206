"""Jobs: ``process_plate`` materializes every per-plate asset for one plate partition."""

import dagster as dg

PER_PLATE_GROUPS = ("ingest", "images")
#: Run monitoring fails a per-plate run still going after this long (s): a run whose worker
#: and code server both died would otherwise stay STARTED. A 384-site plate takes ~20-90 min.
PER_PLATE_MAX_RUNTIME = {"dagster/max_runtime": str(6 * 3600)}


_DEFAULT_EXECUTOR = dg.multi_or_in_process_executor


@dg.executor(
    name="in_process_or_multiprocess",
    config_schema=dg.Field(_DEFAULT_EXECUTOR.config_schema.config_type, default_value={"in_process": {}}),
    requirements=lambda executor_config: _DEFAULT_EXECUTOR.get_requirements(executor_config),
)
def in_process_first_executor(init_context):
    """Dagster's default executor with ``in_process`` as its default mode.

    Used by the per-plate and clustering jobs: their steps form a chain (or share the cores
    anyway) and the per-site work already runs in worker processes (``SiteCompute``), while a
    step process of the multiprocess mode first re-imports the code location (torch, MLflow,
    Dagster: ~8 s per step on an idle 2-core machine, ~30 s under load). A run can still ask for
    ``execution: config: multiprocess: {}`` in the Launchpad.
    """
    return _DEFAULT_EXECUTOR.executor_creation_fn(init_context)


def _group_job(name: str, group: str, description: str, per_plate: bool = False, in_process: bool = False):
    """A job materializing one asset group; per-plate jobs carry :data:`PER_PLATE_MAX_RUNTIME`;
    ``in_process`` gives it :func:`in_process_first_executor`, else Dagster's multiprocess default
    (model trainings: a step process per model isolates memory and crashes)."""
    return dg.define_asset_job(name, selection=dg.AssetSelection.groups(group), description=description,
                               tags=PER_PLATE_MAX_RUNTIME if per_plate else None,
                               executor_def=in_process_first_executor if in_process else dg.multi_or_in_process_executor)


process_plate = dg.define_asset_job(
    "process_plate",
    selection=dg.AssetSelection.groups(*PER_PLATE_GROUPS),
    description="Every per-plate asset of one plate: index, QC, illumination, corrected images, masks. Steps run in "
                "the run's process by default (per-site work in worker processes); one process per step: "
                "`execution: config: multiprocess: {}`.",
    tags=PER_PLATE_MAX_RUNTIME,
    executor_def=in_process_first_executor,
)
train_models = _group_job("train_models", "models", "Every model, trained on all materialized plates and tracked in MLflow.")
augmentation_sweep_job = _group_job(
    "run_augmentation_sweep", "model_sweeps",
    "Classifier (or DenseNet) at several augmentation factors, one MLflow run each (Figures C.1.1/C.1.2).")
embed_plate = _group_job(
    "embed_plate", "embeddings",
    "Site embeddings of every method (champion models) and well embeddings of one plate. Steps run in the run's "
    "process by default; one process per step: `execution: config: multiprocess: {}`.", per_plate=True,
    in_process=True)
cluster_plates = _group_job("cluster_plates", "clusterings", "Clusterings, metrics, comparison table and HTML report over all plates.",
                            in_process=True)
