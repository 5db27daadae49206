"""A study with one whole-plate failure: the failed plate stops with a message naming it, and
the cross-plate assets go on with the other plates (a warning names the missing one).

Before, every cross-plate input loaded every plate partition, so one blank plate in the folder
failed every model, embedding table and clustering of the study until someone deleted the
partition by hand.
"""

import logging

import dagster as dg
import pytest

from ssc_assets.core.simulate import PlateSpec, default_wells, simulate_demo, simulate_plate
from ssc_assets.defs.mlflow_tracking import MlflowTracking
from ssc_assets.defs.partitions import plates
from ssc_assets_tests.conftest import make_definitions


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("failed-plate")
    plates_dir = root / "plates"
    simulate_demo(plates_dir, root / "truth", n_plates=1, seed=5, image_size=128, n_wells=8)
    good = next(p.name for p in plates_dir.iterdir() if p.is_dir())
    spec = PlateSpec(wells=default_wells(4), n_sites=2, image_size=128, n_failed_sites=0, plate_failure="blank",
                     include_thumbs=False)
    blank = simulate_plate(plates_dir, root / "truth", "BLANK-01", spec, seed=3).name
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_root=str(root / "artifacts"))
    defs = make_definitions(plates_dir, root / "storage", mlflow_tracking=tracking)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(plates.name, [good, blank])
        runs = {k: defs.resolve_job_def("process_plate").execute_in_process(instance=instance, partition_key=k,
                                                                            raise_on_error=False)
                for k in (good, blank)}
        yield {"defs": defs, "instance": instance, "good": good, "blank": blank, "runs": runs}


def test_blank_plate_fails_with_a_message_naming_it(study):
    assert study["runs"][study["good"]].success
    res = study["runs"][study["blank"]]
    assert not res.success
    failure = next(e for e in res.all_events if e.is_step_failure)
    assert failure.step_key == "illumination_profiles"
    assert "BLANK-01: no QC-passed site" in failure.step_failure_data.error.message


def test_cross_plate_asset_uses_the_processed_plates_and_names_the_missing_one(study, caplog):
    defs, instance = study["defs"], study["instance"]
    job = defs.resolve_job_def("train_models")
    with caplog.at_level(logging.WARNING):
        res = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("pca_model")],
                                     run_config={"ops": {"pca_model": {"config": {"n_components": 4, "size": 16}}}})
    assert res.success
    md = next(e for e in res.get_asset_materialization_events()).step_materialization_data.materialization.metadata
    assert md["plates"].value == [study["good"]]
    warnings = [e.user_message for e in instance.all_logs(res.run_id) if e.level == logging.WARNING]
    assert any("BLANK-01" in m for m in warnings), warnings
