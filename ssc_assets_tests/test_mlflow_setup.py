"""What a user sees in MLflow: experiment kind, saved key-metrics view, run / model / version
descriptions with Dagster links, and the demo marker. A real SQLite store in tmp, no training."""

import functools
import json
import logging
import shutil
from types import SimpleNamespace

import dagster as dg
import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA

from ssc_assets.defs.mlflow_tracking import (
    CHAMPION,
    DEMO_WARNING,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    KEY_VIEW_ID,
    NOTE_TAG,
    SAVED_VIEW_PREFIX,
    MlflowTracking,
    ModelCard,
)

DAGSTER_UI = "http://dagster.example:3000"
VIEW_TAG = SAVED_VIEW_PREFIX + KEY_VIEW_ID


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """One migrated, empty SQLite store (creating the schema takes seconds), copied per test."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowTracking(tracking_uri=f"sqlite:///{db}", artifact_root=str(db.parent / "artifacts")).client().search_experiments()
    return db


@pytest.fixture
def tracking(tmp_path, empty_store, monkeypatch):
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    t = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"),
                       ui_url="http://mlflow.example:5000", dagster_ui_url=DAGSTER_UI)
    t.client()  # sets the tracking URI for the module-level mlflow calls below
    # skip pip-requirement inference (a subprocess per model) and the skops import (~20 s on a busy machine)
    monkeypatch.setattr(mlflow.sklearn, "log_model", functools.partial(
        mlflow.sklearn.log_model, pip_requirements=["scikit-learn"], serialization_format="cloudpickle"))
    return t


def fake_context(run_id="0123abcd-0000-4000-8000-000000000001", asset="classifier_model", run_tags=None):
    return SimpleNamespace(run=SimpleNamespace(run_id=run_id, tags=run_tags or {}), asset_key=dg.AssetKey(asset),
                           log=logging.getLogger("test_mlflow_setup"))


def tiny_model_uri() -> str:
    info = mlflow.sklearn.log_model(PCA(2).fit(np.random.default_rng(0).normal(size=(10, 4))), name="model")
    return info.model_uri


def test_new_experiment_is_model_training_kind_with_key_metrics_view(tracking):
    exp = mlflow.get_experiment(tracking.experiment_id("ssc-classifier"))
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    view = json.loads(exp.tags[VIEW_TAG])  # the envelope the MLflow UI's "Save view" writes
    assert isinstance(view["name"], str) and isinstance(view["createdAt"], int)
    cols = json.loads(view["state"])["selectedColumns"]
    assert "metrics.`best_val_loss`" in cols and "metrics.`final_test_accuracy`" in cols and "tags.`ssc.preset`" in cols
    assert exp.tags["mlflow.experiment.primaryMetric.name"] == "best_val_loss"
    # MLflow 3.17 takes its layout from the URL (else the browser's last choice): every link carries it
    link = tracking.experiment_link(exp.experiment_id, "ssc-classifier")
    assert link.endswith(f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={KEY_VIEW_ID}")
    assert f"({link})" in exp.tags[NOTE_TAG]
    assert exp.artifact_location.startswith("file://")  # absolute artifact root kept
    # idempotent: same id, no second view
    assert tracking.experiment_id("ssc-classifier") == exp.experiment_id
    assert mlflow.get_experiment(exp.experiment_id).tags[VIEW_TAG] == exp.tags[VIEW_TAG]
    # an experiment this project does not know still gets the kind (no view)
    other = mlflow.get_experiment(tracking.experiment_id("scratch"))
    assert other.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND and VIEW_TAG not in other.tags


def test_existing_experiments_are_tagged(tracking):
    plain = mlflow.create_experiment("ssc-clustering")  # made before this change: no kind tag
    genai = mlflow.create_experiment("ssc-unet", tags={EXPERIMENT_KIND_TAG: "genai_development", NOTE_TAG: "my notes"})
    with tracking.start_run(fake_context(asset="clusterings"), "ssc-clustering", "pca", ["P1"]):
        pass
    assert tracking.experiment_id("ssc-unet") == genai
    for exp_id in (plain, genai):
        tags = mlflow.get_experiment(exp_id).tags
        assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND and VIEW_TAG in tags
    assert mlflow.get_experiment(genai).tags[NOTE_TAG] == "my notes"  # a user's description is kept
    cols = json.loads(json.loads(mlflow.get_experiment(plain).tags[VIEW_TAG])["state"])["selectedColumns"]
    assert "metrics.`svm_accuracy_donor_grouped`" in cols and "tags.`ssc.method`" in cols


def test_run_description_links_the_dagster_run(tracking):
    ctx = fake_context()
    with tracking.start_run(ctx, "ssc-classifier", "custom x5", ["PLATE_A", "PLATE_B"], preset="thesis") as run:
        mlflow.log_metric("best_val_loss", 0.5)
    note = mlflow.get_run(run.info.run_id).data.tags[NOTE_TAG]
    assert f"({DAGSTER_UI}/runs/{ctx.run.run_id})" in note
    assert f"({DAGSTER_UI}/assets/classifier_model)" in note
    assert "`PLATE_A`, `PLATE_B`" in note and "**thesis**" in note and DEMO_WARNING not in note
    text = tracking.describe_run(run.info.run_id, {"best_val_loss": 0.5}, ["Registered: x"])
    stored = mlflow.get_run(run.info.run_id).data.tags[NOTE_TAG]
    assert stored == text and "`best_val_loss` 0.5" in stored and "- Registered: x" in stored
    assert f"/runs/{ctx.run.run_id}" in stored
    assert tracking.run_link(run).endswith(f"/runs/{run.info.run_id}?workflowType=machine_learning")


def test_demo_run_is_marked(tracking):
    ctx = fake_context(run_tags={"ssc/source": "ssc-assets demo"}, asset="clusterings")
    with tracking.start_run(ctx, "ssc-clustering", "pca", ["P1"]) as run:
        pass
    r = mlflow.get_run(run.info.run_id)
    assert r.data.tags["ssc.preset"] == "demo" and r.info.run_name == "[demo] pca"
    assert r.data.tags[NOTE_TAG].startswith(DEMO_WARNING)


def test_registered_model_and_version_descriptions(tracking):
    ctx = fake_context()
    card = ModelCard(about="Tiny test model: embeds sites.", preset="demo", preset_detail="demo_config.py: epochs=4",
                     partitions=["PLATE_A"], dagster_run_id=ctx.run.run_id, score="validation loss 0.5",
                     lines=["Headline: `best_val_loss` 0.5"])
    with tracking.start_run(ctx, "ssc-pca", "first", ["PLATE_A"], preset="demo") as run:
        reg1 = tracking.register(run.info.run_id, "ssc-test", 0.5, model_uri=tiny_model_uri(), card=card)
    client = tracking.client()
    v1 = client.get_model_version("ssc-test", "1")
    assert reg1["champion"] and v1.tags["ssc.preset"] == "demo" and v1.tags["dagster.run_id"] == ctx.run.run_id
    assert v1.description.startswith(DEMO_WARNING)
    for text in ("Tiny test model", "`PLATE_A`", "validation loss 0.5", "**demo**", f"{DAGSTER_UI}/runs/{ctx.run.run_id}",
                 "became `@champion`"):
        assert text in v1.description, text
    model = client.get_registered_model("ssc-test").description
    assert "DEMO PRESET: NOT MEANINGFUL" in model and "Tiny test model" in model and "[v1]" in model
    assert f"{DAGSTER_UI}/runs/{ctx.run.run_id}" in model

    # a worse thesis-preset version: not promoted; the model description keeps naming v1 as champion
    ctx2 = fake_context(run_id="0123abcd-0000-4000-8000-000000000002")
    card2 = ModelCard(about=card.about, preset="thesis", partitions=["PLATE_A", "PLATE_B"], dagster_run_id=ctx2.run.run_id,
                      score="validation loss 0.9")
    with tracking.start_run(ctx2, "ssc-pca", "second", ["PLATE_A", "PLATE_B"], preset="thesis") as run2:
        reg2 = tracking.register(run2.info.run_id, "ssc-test", 0.9, model_uri=tiny_model_uri(), card=card2)
    assert not reg2["champion"] and str(client.get_model_version_by_alias("ssc-test", CHAMPION).version) == "1"
    v2 = client.get_model_version("ssc-test", "2").description
    assert "DEMO PRESET" not in v2 and "not promoted" in v2 and f"/runs/{ctx2.run.run_id}" in v2
    model = client.get_registered_model("ssc-test").description
    assert "`@champion`: [v1]" in model and "latest: [v2]" in model and "DEMO PRESET" in model
    assert tracking.champion("ssc-test")["preset"] == "demo"


def test_settings_preset_detects_demo_thesis_custom():
    from ssc_assets.defs.model_assets import ClassifierConfig, PcaConfig, SweepConfig, settings_preset
    from ssc_assets.demo_config import DEMO_MODEL_CONFIG

    assert settings_preset("classifier_model", ClassifierConfig(**DEMO_MODEL_CONFIG["classifier_model"]))[0] == "demo"
    assert settings_preset("classifier_model", ClassifierConfig(device="cpu", seed=3))[0] == "thesis"
    preset, detail = settings_preset("classifier_model", ClassifierConfig(epochs=2))
    assert preset == "custom" and "epochs=2" in detail
    assert settings_preset("pca_model", PcaConfig(**DEMO_MODEL_CONFIG["pca_model"]))[0] == "demo"
    assert settings_preset("augmentation_sweep", SweepConfig(**DEMO_MODEL_CONFIG["classifier_model"]))[0] == "demo"


def test_log_fit_end_to_end_pca(tracking):
    """The model assets' own logging path on a fitted sklearn PCA: headline metrics, run and
    version descriptions, demo marker."""
    from ssc_assets.core.learn.fit import FitOutput
    from ssc_assets.defs.model_assets import PcaConfig, log_fit, settings_preset
    from ssc_assets.demo_config import DEMO_MODEL_CONFIG

    X = np.random.default_rng(1).normal(size=(12, 6))
    fit = FitOutput(PCA(2).fit(X), [], 0, float("nan"),
                    {"cv_grouped": {"accuracy": 0.6, "f1": 0.5}, "cv_ungrouped": {"accuracy": 0.8},
                     "pca": {"explained_variance": 0.4}}, {}, X[:1], {"n_components": 2})
    table = pd.DataFrame({"split": ["train", "val", "test"] * 2, "Metadata_Donor": list("abcabc"),
                          "label": [0, 1, 0, 1, 0, 1], "Metadata_Plate": ["P1"] * 3 + ["P2"] * 3})
    config = PcaConfig(**DEMO_MODEL_CONFIG["pca_model"])
    preset = settings_preset("pca_model", config)
    ctx = fake_context(asset="pca_model")
    with tracking.start_run(ctx, "ssc-pca", "pca+svm", ["P1", "P2"], preset=preset[0], preset_detail=preset[1]):
        run, reg = log_fit(ctx, tracking, "ssc-pca", fit, config, table, flavor="sklearn")
    r = mlflow.get_run(run.info.run_id)
    assert r.data.metrics["final_cv_grouped_accuracy"] == pytest.approx(0.6)
    note = r.data.tags[NOTE_TAG]
    assert note.startswith(DEMO_WARNING) and "`final_cv_grouped_accuracy` 0.6" in note and "[ssc-pca v1]" in note
    assert r.info.run_name == "[demo] pca+svm"
    desc = tracking.client().get_model_version("ssc-pca", str(reg["version"])).description
    assert desc.startswith(DEMO_WARNING) and "donor-grouped SVM accuracy 0.6" in desc and "`P1`, `P2`" in desc
    assert "PCA" in tracking.client().get_registered_model("ssc-pca").description
