"""Declarative automation: a new plate flows to embeddings, then clusterings after the cron
tick; a plate that failed does not freeze the cross-plate asset; a new champion re-embeds."""

import datetime as dt

import dagster as dg

from ssc_assets.definitions import build_definitions
from ssc_assets.defs.partitions import plates

PER_PLATE_UPSTREAM = ["raw_sites", "site_qc", "illumination_profiles", "corrected_images", "masks"]
MODELS = ["segmentation_model", "autoencoder_models", "classifier_model", "densenet_model", "pca_model", "cell_classifier_model",
          "cell_autoencoder_model"]
EMBEDDINGS = [f"site_embeddings_{m}" for m in ("pca", "autoencoder", "classifier", "densenet", "cells", "cell_autoencoder", "profiles")]


def _mat(instance, key, partition=None):
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))


def _requested(result, key):
    return set(result.get_requested_partitions(dg.AssetKey(key)))


def test_new_plate_flows_to_embeddings_then_clusterings(tmp_path):
    defs = build_definitions()
    t0 = dt.datetime(2026, 11, 30, 10, 5, tzinfo=dt.timezone.utc)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(plates.name, ["P1", "P2-FAILED"])
        for m in MODELS:
            _mat(instance, m)
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=t0)
        assert res.total_requested == 0  # nothing has images yet

        # P1 went through process_plate (what plate_sensor requests); P2 failed before its images
        for key in PER_PLATE_UPSTREAM:
            _mat(instance, key, "P1")
        _mat(instance, "raw_sites", "P2-FAILED")
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=res.cursor,
                                                evaluation_time=t0 + dt.timedelta(minutes=1))
        for key in EMBEDDINGS:
            assert _requested(res, key) == {"P1"}, key
        assert res.get_num_requested(dg.AssetKey("clusterings")) == 0

        for key in EMBEDDINGS + ["well_embeddings"]:
            _mat(instance, key, "P1")
        # before the next cron tick (hourly by default): no clustering yet
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=res.cursor,
                                                evaluation_time=t0 + dt.timedelta(minutes=2))
        assert res.get_num_requested(dg.AssetKey("clusterings")) == 0
        # after the tick: clusterings run, although P2-FAILED never got well embeddings
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=res.cursor,
                                                evaluation_time=t0 + dt.timedelta(hours=1))
        assert res.get_num_requested(dg.AssetKey("clusterings")) == 1
        assert res.get_num_requested(dg.AssetKey("donor_scores")) == 1  # the same run, upstream of clusterings
        assert not _requested(res, "site_embeddings_pca")  # nothing new per plate
        _mat(instance, "donor_scores")
        _mat(instance, "clusterings")
        # next tick without new plate data: nothing
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=res.cursor,
                                                evaluation_time=t0 + dt.timedelta(hours=2))
        assert res.get_num_requested(dg.AssetKey("clusterings")) == 0
        assert res.get_num_requested(dg.AssetKey("donor_scores")) == 0

        # a new champion: the nightly retrain re-materialized the classifier -> P1 is re-embedded
        _mat(instance, "classifier_model")
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=res.cursor,
                                                evaluation_time=t0 + dt.timedelta(hours=2, minutes=5))
        assert _requested(res, "site_embeddings_classifier") == {"P1"}
        assert not _requested(res, "site_embeddings_pca")


def test_sensors_and_schedule_run_by_default():
    defs = build_definitions()
    assert defs.resolve_sensor_def("ssc_automation").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_sensor_def("plate_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    sched = defs.resolve_schedule_def("nightly_retrain")
    assert sched.default_status == dg.DefaultScheduleStatus.RUNNING and sched.cron_schedule == "0 2 * * *"
    assert sched.job_name == "train_models"


def test_definitions_load_like_the_webserver():
    """What `dagster dev` / the code server does: every job, sensor and schedule resolves."""
    from ssc_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
