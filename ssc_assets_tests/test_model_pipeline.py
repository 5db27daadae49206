"""Models through Dagster and a real MLflow store (SQLite + local artifacts, no mocks)."""

from importlib.metadata import version
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
import pytest
import torch
import torchvision

from ssc_assets.core.simulate import simulate_demo
from ssc_assets.defs.mlflow_tracking import MlflowTracking
from ssc_assets.defs.partitions import plates
from ssc_assets_tests.conftest import make_definitions

TINY = {"epochs": 2, "augmentation_factor": 1, "batch_size": 4, "lr": 1e-3}
TINY_CONFIG = {
    "classifier_model": {**TINY, "crop_size": 64, "n_blocks": 3, "first_width": 16},
    "densenet_model": {**TINY, "epochs": 1, "crop_size": 32},
    "autoencoder_models": {**TINY, "patch_size": 32, "embedding_size": 16, "widths": [16, 8, 8, 4]},
    "segmentation_model": {**TINY, "tile_size": 64, "base_channels": 4, "depth": 2},
    "pca_model": {"n_components": 8, "size": 16},
    "cell_classifier_model": {"epochs": 2, "batch_size": 16, "crop_size": 32, "max_crops_per_site": 8, "oof_folds": 2,
                              "budget_seconds": 120.0, "width": 8},
    "cell_autoencoder_model": {"epochs": 2, "batch_size": 16, "crop_size": 32, "max_crops_per_site": 8,
                               "embedding_size": 6, "max_seconds": 60.0},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    plates_dir, storage = root / "plates", root / "storage"
    simulate_demo(plates_dir, root / "truth", n_plates=1, seed=5, image_size=256, n_wells=8)
    key = next(p for p in plates_dir.iterdir() if p.is_dir()).name
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_root=str(root / "artifacts"))
    defs = make_definitions(plates_dir, storage, mlflow_tracking=tracking)
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(root / "torch"))  # empty hub cache: ImageNet weights unavailable

    def offline(*a, **k):
        raise OSError("offline (test)")

    mp.setattr(torch.hub, "load_state_dict_from_url", offline)
    mp.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(plates.name, [key])
        assert defs.resolve_job_def("process_plate").execute_in_process(instance=instance, partition_key=key).success
        result = defs.resolve_job_def("train_models").execute_in_process(
            instance=instance, run_config={"ops": {k: {"config": v} for k, v in TINY_CONFIG.items()}})
        assert result.success
        values = {k: defs.load_asset_value(k, instance=instance) for k in TINY_CONFIG}
        mats = {m.asset_key.to_user_string(): m.step_materialization_data.materialization for m in result.get_asset_materialization_events()}
        yield {"defs": defs, "result": result, "values": values, "mats": mats, "tracking": tracking, "key": key, "instance": instance}
    mp.undo()


def _run(tracking, run_id):
    return tracking.client().get_run(run_id)


def test_classifier_run_is_tracked_and_registered(trained):
    tracking, man = trained["tracking"], trained["values"]["classifier_model"]
    run = _run(tracking, man["run_id"])
    # lineage tags
    assert run.data.tags["dagster.run_id"] == trained["result"].run_id
    assert run.data.tags["dagster.asset_key"] == "classifier_model"
    assert run.data.tags["ssc.partitions"] == trained["key"]
    assert run.data.tags["ssc.code_version"]
    # every Config value and the split sizes are params
    p = run.data.params
    assert p["lr"] == "0.001" and p["crop_size"] == "64" and p["augmentation_factor"] == "1" and p["split_by"] == "donor"
    assert int(p["n_sites_train"]) > 0 and int(p["n_sites_test"]) > 0
    # per-epoch curves and final metrics for train/val/test
    hist = tracking.client().get_metric_history(man["run_id"], "val_loss")
    assert [m.step for m in hist] == [1, 2]
    for split in ("train", "val", "test"):
        for m in ("loss", "accuracy", "recall", "precision", "f1"):
            assert f"final_{split}_{m}" in run.data.metrics
    # registered, champion alias, loadable by alias
    mv = tracking.client().get_model_version_by_alias("ssc-classifier", "champion")
    assert int(mv.version) == man["version"] and man["champion"]
    model = mlflow.pytorch.load_model(tracking.champion_uri("ssc-classifier"))
    assert model.embed(torch.zeros(2, 3, 64, 64)).shape == (2, 8)
    # its requirements are the pinned list, not what MLflow's inference subprocess imported
    reqs = Path(mlflow.pyfunc.get_model_dependencies(tracking.champion_uri("ssc-classifier"))).read_text().split()
    assert reqs == [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "torch", "torchvision", "numpy", "pandas", "cloudpickle")]
    # Dagster metadata links to the run
    md = trained["mats"]["classifier_model"].metadata
    assert md["mlflow_run_id"].value == man["run_id"] and man["run_id"] in md["mlflow_run"].value
    assert "accuracy" in md["metrics"].value


def test_no_donor_in_two_splits(trained):
    tracking, man = trained["tracking"], trained["values"]["classifier_model"]
    path = tracking.client().download_artifacts(man["run_id"], "splits.csv")
    splits = pd.read_csv(path)
    assert set(splits["split"]) == {"train", "val", "test"}
    assert (splits.groupby("Metadata_Donor")["split"].nunique() == 1).all()


def test_densenet_offline_fallback_is_recorded(trained):
    man = trained["values"]["densenet_model"]
    run = _run(trained["tracking"], man["run_id"])
    assert run.data.tags["ssc.weights_source"].startswith("random-init")
    assert run.data.params["weights_source"].startswith("random-init")
    assert trained["mats"]["densenet_model"].metadata["weights_source"].value.startswith("random-init")


def test_every_family_registered_with_champion(trained):
    client = trained["tracking"].client()
    names = ["ssc-classifier", "ssc-densenet", "ssc-unet", "ssc-pca", "ssc-cells", "ssc-cell_autoencoder",
             *[f"ssc-autoencoder-{c}" for c in ("actin", "borders", "nuclei")]]
    for name in names:
        assert int(client.get_model_version_by_alias(name, "champion").version) == 1, name
    ae = trained["values"]["autoencoder_models"]
    assert set(ae["models"]) == {"actin", "borders", "nuclei"}
    unet = _run(trained["tracking"], trained["values"]["segmentation_model"]["run_id"])
    assert "final_test_iou_actin" in unet.data.metrics
    pca = trained["values"]["pca_model"]
    assert {"cv_grouped", "cv_ungrouped"} <= set(pca["svm"])


def test_cell_model_scores_every_well_out_of_fold(trained):
    """Every trained well has a score from a fold model that never saw its donor; the final
    model is registered; fold and final curves are in the run."""
    man = trained["values"]["cell_classifier_model"]
    oof = pd.read_parquet(man["oof_wells"])
    qc = trained["defs"].load_asset_value("site_qc", partition_key=trained["key"], instance=trained["instance"])
    wells_with_sites = set(qc.query("passed_qc")["Metadata_Well"])
    assert set(oof["Metadata_Well"]) == wells_with_sites
    assert oof["Metadata_OofScore"].notna().all() and (oof["Metadata_n_cells"] > 0).all()
    assert man["oof"]["folds"] == 2 and 0.0 <= man["oof"]["well_auc"] <= 1.0
    client = trained["tracking"].client()
    run = client.get_run(man["run_id"])
    assert run.data.params["crop_size"] == "32" and run.data.tags["ssc.preset"] == "custom"
    assert [m.step for m in client.get_metric_history(man["run_id"], "val_loss")][:1] == [1]
    assert client.get_metric_history(man["run_id"], "fold0_val_loss") and "final_oof_well_auc" in run.data.metrics
    # the page's metrics table puts the honest out-of-fold figures next to the validation ones
    table = trained["mats"]["cell_classifier_model"].metadata["metrics"].value
    header, rows = table.splitlines()[0], {r.split("|")[1].strip(): r for r in table.splitlines()[2:]}
    assert "out_of_fold" in header and "well_auc" in rows and "folds" not in rows
    assert float(rows["well_auc"].split("|")[-2]) == pytest.approx(man["oof"]["well_auc"], abs=1e-4)
    model = mlflow.pytorch.load_model(trained["tracking"].champion_uri("ssc-cells"))
    assert model.embed(torch.zeros(2, 3, 16, 16)).shape == (2, 16)


def test_cell_autoencoder_is_tracked_and_embeds_raw_crops(trained):
    """Per-epoch held-out reconstruction loss in its run, held-out donors in splits.csv, and the
    registered model standardises raw crops itself (its buffers are the training crops' stats)."""
    man = trained["values"]["cell_autoencoder_model"]
    client = trained["tracking"].client()
    run = client.get_run(man["run_id"])
    assert run.data.params["crop_size"] == "32" and run.data.params["embedding_size"] == "6"
    assert [m.step for m in client.get_metric_history(man["run_id"], "val_loss")][:1] == [1]
    assert run.data.metrics["best_val_loss"] == pytest.approx(man["best_val_loss"])
    splits = pd.read_csv(client.download_artifacts(man["run_id"], "splits.csv"))
    assert set(splits["split"]) == {"train", "val"}
    model = mlflow.pytorch.load_model(trained["tracking"].champion_uri("ssc-cell_autoencoder"))
    x = torch.rand(3, 3, 16, 16)
    assert model.code(x).shape == (3, 6) and float(model.std.min()) > 0
    assert model.embed(x).shape == (3, 96)  # 32 maps after each of blocks 2-4, averaged over the crop
    assert run.data.params["crop_normalize"] == "site"
    # standardisation inside: shifting a crop by the stored mean is the same as standardising it
    assert torch.allclose(model.standardise(model.mean.expand(1, 3, 16, 16)), torch.zeros(1, 3, 16, 16))


def test_champion_moves_only_on_better_validation_loss(trained):
    tracking, man = trained["tracking"], trained["values"]["classifier_model"]
    worse = tracking.register(man["run_id"], "ssc-classifier", val_loss=man["best_val_loss"] + 1.0)
    assert not worse["champion"] and worse["previous_champion"] == man["version"]
    client = tracking.client()
    assert int(client.get_model_version_by_alias("ssc-classifier", "champion").version) == man["version"]
    better = tracking.register(man["run_id"], "ssc-classifier", val_loss=man["best_val_loss"] - 1.0)
    assert better["champion"]
    assert int(client.get_model_version_by_alias("ssc-classifier", "champion").version) == better["version"]


def test_augmentation_sweep_logs_one_run_per_factor(trained):
    defs, instance = trained["defs"], trained["instance"]
    cfg = {**TINY_CONFIG["classifier_model"], "epochs": 1, "factors": [1, 2]}
    result = defs.resolve_job_def("run_augmentation_sweep").execute_in_process(
        instance=instance, run_config={"ops": {"augmentation_sweep": {"config": cfg}}})
    assert result.success
    runs = mlflow.search_runs(experiment_names=["ssc-classifier"], filter_string=f"tags.`ssc.sweep` = '{result.run_id}'")
    assert sorted(runs["params.augmentation_factor"].astype(int)) == [1, 2]
    # comparable: the same per-epoch metric names in every run
    assert runs["metrics.val_loss"].notna().all() and runs["metrics.train_loss"].notna().all()
    # the factor multiplies the training items, not the sites
    sites = dict(zip(runs["params.augmentation_factor"].astype(int), runs["params.n_sites_train"].astype(int)))
    items = dict(zip(runs["params.augmentation_factor"].astype(int), runs["params.n_items_train"].astype(int)))
    assert sites[1] == sites[2] == items[1] and items[2] == 2 * items[1]


@pytest.fixture(scope="module")
def clustered(trained):
    defs, instance, key = trained["defs"], trained["instance"], trained["key"]
    run_config = {}  # profiles: the curated default set at full resolution
    emb = defs.resolve_job_def("embed_plate").execute_in_process(instance=instance, partition_key=key, run_config=run_config)
    assert emb.success
    res = defs.resolve_job_def("cluster_plates").execute_in_process(
        instance=instance, run_config={"ops": {"clusterings": {"config": {"null_size": 500}}}})
    assert res.success
    return {"emb": emb, "res": res,
            "wells": defs.load_asset_value("well_embeddings", partition_key=key, instance=instance),
            "sites": {m: defs.load_asset_value(f"site_embeddings_{m}", partition_key=key, instance=instance)
                      for m in ("pca", "autoencoder", "classifier", "densenet", "cells", "cell_autoencoder", "profiles")},
            "clusterings": defs.load_asset_value("clusterings", instance=instance),
            "donor_scores": defs.load_asset_value("donor_scores", instance=instance)}


def test_site_embeddings_use_champion_models(trained, clustered):
    sites = clustered["sites"]
    qc = trained["defs"].load_asset_value("site_qc", partition_key=trained["key"], instance=trained["instance"])
    passed = qc.drop_duplicates(["Metadata_Well", "Metadata_Site"]).query("passed_qc")
    for m, df in sites.items():
        assert len(df) == len(passed), m  # one row per QC-passed site
        assert (df["Metadata_Method"] == m).all()
    feats = lambda df: [c for c in df.columns if c.startswith("f0")]  # noqa: E731
    assert len(feats(sites["autoencoder"])) == 3 * 16  # actin || borders || nuclei, 16 each in TINY_CONFIG
    assert len(feats(sites["classifier"])) == 8 and len(feats(sites["densenet"])) == 8
    assert len(feats(sites["pca"])) == 8
    assert sites["profiles"].filter(like="Cells_AreaShape_Area").shape[1] >= 1
    mats = {m.asset_key.to_user_string(): m.step_materialization_data.materialization for m in clustered["emb"].get_asset_materialization_events()}
    champion = int(trained["tracking"].client().get_model_version_by_alias("ssc-classifier", "champion").version)
    assert mats["site_embeddings_classifier"].metadata["model_versions"].value == {"ssc-classifier": champion}
    assert mats["site_embeddings_classifier"].metadata["model_presets"].value == {"ssc-classifier": "custom"}
    assert "warning" not in mats["site_embeddings_classifier"].metadata  # not a demo-preset champion


def test_embeddings_of_a_demo_champion_carry_the_banner():
    from ssc_assets.defs.embedding_assets import _model_metadata

    info = {"model": "ssc-pca", "version": 3, "run_id": "r", "uri": "models:/ssc-pca@champion", "preset": "demo"}
    md = _model_metadata(None, [info])
    assert "NOT MEANINGFUL" in md["warning"].value and "ssc-pca v3" in md["warning"].value
    assert "warning" not in _model_metadata(None, [{**info, "preset": "thesis"}])


def test_well_embeddings_are_medians_of_sites(clustered):
    wells, sites = clustered["wells"], clustered["sites"]["classifier"]
    w = wells[wells["Metadata_Method"] == "classifier"]
    well = w.iloc[0]["Metadata_Well"]
    expected = sites[sites["Metadata_Well"] == well][["f0000", "f0007"]].median()
    got = w[w["Metadata_Well"] == well][["f0000", "f0007"]].iloc[0]
    assert got.to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-6)
    assert int(w[w["Metadata_Well"] == well]["Metadata_n_sites"].iloc[0]) == int((sites["Metadata_Well"] == well).sum())
    for col in ("Metadata_Plate", "Metadata_Well", "Metadata_Donor", "Metadata_Condition", "Metadata_Group", "Metadata_Method", "Metadata_n_sites"):
        assert col in wells.columns


def test_clusterings_report_and_mlflow(trained, clustered):
    import os

    out = clustered["clusterings"]
    comp = pd.read_csv(__import__("io").StringIO(out["comparison_csv"]))
    assert set(comp["method"]) == {"pca", "autoencoder", "classifier", "densenet", "cells", "cell_autoencoder", "profiles"}
    assert "thesis_homogeneity" in comp.columns
    assert comp.loc[comp["method"] == "classifier", "thesis_homogeneity"].iloc[0] == pytest.approx(0.2171)
    assert os.path.exists(out["report"]) and "<img" in open(out["report"]).read()
    runs = mlflow.search_runs(experiment_names=["ssc-clustering"])
    assert set(runs["tags.ssc.method"]) >= {"pca", "classifier", "comparison"}
    assert runs.loc[runs["tags.ssc.method"] == "classifier", "metrics.kmeans_homogeneity"].notna().all()
    md = next(m for m in clustered["res"].get_asset_materialization_events()
              if m.asset_key.to_user_string() == "clusterings").step_materialization_data.materialization.metadata
    assert "thesis_" in md["comparison"].value and "data:image/png;base64," in md["classifier_figures"].value
    # figures and run links come before the per-method numbers (the UI shows the first 100 entries)
    keys = list(md)
    assert max(keys.index(k) for k in keys if k.endswith(("_figures", "_mlflow_run"))) < min(
        i for i, k in enumerate(keys) if "/" in k)


def test_donor_scores_rank_every_donor_with_intervals(trained, clustered):
    wells = clustered["wells"]
    donors = pd.DataFrame(clustered["donor_scores"]["donors"])
    summary = pd.DataFrame(clustered["donor_scores"]["summary"]).set_index("Metadata_Method")
    assert set(summary.index) == set(wells["Metadata_Method"])
    for method, d in donors.groupby("Metadata_Method"):
        assert set(d["Metadata_Donor"]) == set(wells["Metadata_Donor"]), method
        ok = d["score"].notna()
        assert (d.loc[ok, "score_low"] <= d.loc[ok, "score"] + 1e-9).all() and (d.loc[ok, "score"] <= d.loc[ok, "score_high"] + 1e-9).all()
        assert sorted(d["rank"].dropna().astype(int)) == sorted(d["score"].rank(ascending=False, method="min").dropna().astype(int))
    assert ((summary["chance"] >= 0.5) & (summary["chance"] <= 1)).all()
    embedded = summary.drop(index="cells")
    assert ((embedded["permutation_p"] > 0) & (embedded["permutation_p"] <= 1)).all()
    assert pd.isna(summary.at["cells", "permutation_p"])  # out-of-fold score: its fold models used the true labels
    # the clusterings page carries the donor-level numbers of every method
    mats = {e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
            for e in clustered["res"].get_asset_materialization_events()}
    for asset in ("donor_scores", "clusterings"):
        assert {"cells/lodo_accuracy", "pca/lodo_accuracy", "pca/rho_group"} <= set(mats[asset]), asset
    # the page opens with how far to trust it (2-epoch models: a demo), then the answer
    md = mats["donor_scores"]
    assert list(md)[:4] == ["demo_preset", "ranked_donors", "ranking", "summary"]
    assert md["demo_preset"].value.startswith("Demo preset: not meaningful.") and "2 epochs" in md["demo_preset"].value
    assert "Demo preset: not meaningful." in md["ranked_donors"].value and "95 %" in md["ranked_donors"].value
    assert "V objective above V condition" in md["how_to_read"].value and "smallest possible p" in md["how_to_read"].value
    # the MLflow run behind the page holds the same ranking figure
    run_id = clustered["donor_scores"]["mlflow_run"].split("?")[0].rstrip("/").split("/")[-1]
    figs = [a.path for a in trained["tracking"].client().list_artifacts(run_id, "figures")]
    assert figs == ["figures/donors_ranked.png"]


def test_qc_failed_sites_do_not_enter_well_medians(trained, clustered):
    qc = trained["defs"].load_asset_value("site_qc", partition_key=trained["key"], instance=trained["instance"])
    sites = qc.drop_duplicates(["Metadata_Well", "Metadata_Site"])
    failed = sites[~sites["passed_qc"]]
    assert len(failed)  # the simulator plants failed sites
    w = clustered["wells"].query("Metadata_Method == 'pca'").set_index("Metadata_Well")
    for well, n_failed in failed.groupby("Metadata_Well").size().items():
        n_total = int((sites["Metadata_Well"] == well).sum())
        assert int(w.loc[well, "Metadata_n_sites"]) == n_total - n_failed


def test_runs_are_comparable_across_model_experiments(trained):
    trained["tracking"].client()  # sets the tracking URI
    for exp, metrics in {
        "ssc-classifier": ["train_loss", "val_loss", "final_test_accuracy", "final_test_f1", "best_val_loss"],
        "ssc-densenet": ["train_loss", "val_loss", "final_test_accuracy", "final_test_f1", "best_val_loss"],
        "ssc-autoencoder": ["train_loss", "val_loss", "final_test_loss", "best_val_loss"],
        "ssc-unet": ["train_loss", "val_loss", "final_test_iou_actin", "best_val_loss"],
    }.items():
        runs = mlflow.search_runs(experiment_names=[exp])
        assert len(runs) >= 1, exp
        for m in metrics:
            assert runs[f"metrics.{m}"].notna().all(), (exp, m)
        assert runs["tags.dagster.run_id"].notna().all() and runs["tags.ssc.code_version"].notna().all()
