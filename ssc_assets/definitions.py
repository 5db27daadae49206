"""The Dagster ``Definitions`` of ssc-assets (loaded by ``workspace.yaml``)."""

import dagster as dg

from ssc_assets.defs import (
    cell_assets,
    clustering_assets,
    donor_assets,
    embedding_assets,
    image_assets,
    ingest_assets,
    model_assets,
)
from ssc_assets.defs.automation import automation_sensor, nightly_retrain
from ssc_assets.defs.io_managers import ManifestIOManager, ParquetIOManager
from ssc_assets.defs.jobs import (
    augmentation_sweep_job,
    cluster_plates,
    embed_plate,
    in_process_first_executor,
    process_plate,
    train_models,
)
from ssc_assets.defs.mlflow_tracking import MlflowTracking
from ssc_assets.defs.resources import default_resources
from ssc_assets.defs.sensors import plate_sensor


def build_definitions(**resource_overrides) -> dg.Definitions:
    resources = {
        "parquet_io_manager": ParquetIOManager(),
        "manifest_io_manager": ManifestIOManager(),
        "mlflow_tracking": MlflowTracking(),
        **default_resources(),
        **resource_overrides,
    }
    return dg.Definitions(
        assets=dg.load_assets_from_modules([ingest_assets, image_assets, model_assets, cell_assets, embedding_assets,
                                                donor_assets, clustering_assets]),
        jobs=[process_plate, train_models, augmentation_sweep_job, embed_plate, cluster_plates],
        sensors=[plate_sensor, automation_sensor],
        schedules=[nightly_retrain],
        resources=resources,
        executor=in_process_first_executor,  # also UI materializations and automation runs; training jobs set their own
    )


defs = build_definitions()
