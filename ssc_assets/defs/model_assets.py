"""Model assets (group ``models``): trained on every materialized plate, tracked in MLflow.

Each asset depends on ALL plate partitions of ``corrected_images`` (and ``masks`` for the
U-Net), trains with the thesis settings (all in its launchpad ``Config``), logs params,
per-epoch metrics, figures and the model to MLflow, registers a version and moves the
``champion`` alias when the validation loss improves. The asset value is a small JSON
manifest (registered name, version, run id); downstream assets load ``models:/<name>@champion``.

Every run, registered version and registered model gets a markdown description (what the
model is, plates, settings preset, score, Dagster run link); runs with the demo settings of
``ssc_assets/demo_config.py`` are tagged ``ssc.preset = demo`` and marked "not meaningful".
"""


import dataclasses

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from ssc_assets import settings
from ssc_assets.core.ingest.channels import MODEL_CHANNELS
from ssc_assets.core.learn.fit import FitOutput, assign_splits, split_summary, training_sites
from ssc_assets.core.learn.loop import TrainParams
from ssc_assets.core.plots import figures
from ssc_assets.defs.core_defaults import core_factory_field, core_field
from ssc_assets.defs.manifests import all_plate_images, all_plate_masks
from ssc_assets.defs.metadata import log_png, md_table
from ssc_assets.defs.mlflow_tracking import (
    DEMO,
    DEMO_WARNING,
    EXPERIMENTS,
    MlflowTracking,
    ModelCard,
    model_requirements,
)
from ssc_assets.defs.model_families import FAMILIES, ModelFamily, about

#: Input of a cross-plate asset: every plate partition that has a materialization (a plate whose
#: per-plate run failed is skipped with a warning naming it, see ``io_managers``).
ALL_PLATES = dg.AssetIn(partition_mapping=dg.AllPartitionMapping(), metadata={"allow_missing_partitions": True})

#: Step priority of each training (``dagster/priority``; higher starts first): longest first
#: (measured on a 2 x 39-well study: cell CNN ~335 s, cell autoencoder ~170 s, autoencoders
#: ~120 s, classifier, DenseNet ~105 s, U-Net ~80 s, PCA ~20 s), so that the two ``training``
#: pool slots finish close together and the last step to start is a short one.
TRAINING_PRIORITY = {"cell_classifier_model": 7, "cell_autoencoder_model": 6, "autoencoder_models": 5,
                     "classifier_model": 4, "densenet_model": 3, "segmentation_model": 2, "pca_model": 1,
                     "augmentation_sweep": 0}


def training_tags(asset: str) -> dict[str, str]:
    """Op tags of a training asset: its :data:`TRAINING_PRIORITY`."""
    return {"dagster/priority": str(TRAINING_PRIORITY[asset])}


_LOOP = "ssc_assets.core.learn.loop:TrainParams"
_FIT = "ssc_assets.core.learn.fit"
_MODELS = "ssc_assets.core.learn.models"


class TrainConfig(dg.Config):
    """Thesis training settings (section 6.3.1); defaults from :class:`~ssc_assets.core.learn.loop.TrainParams`
    and the ``core.learn.fit`` functions. Epochs are not given in the thesis: 30, best-val kept."""

    epochs: int = core_field(f"{_LOOP}.epochs", "Training epochs (weights with the lowest validation loss are kept).")
    batch_size: int = core_field(f"{_LOOP}.batch_size", "Batch size.")
    lr: float = core_field(f"{_LOOP}.lr", "Adam learning rate.")
    weight_decay: float = core_field(f"{_LOOP}.weight_decay", "Adam weight decay.")
    beta1: float = core_field(f"{_LOOP}.beta1", "Adam beta1.")
    beta2: float = core_field(f"{_LOOP}.beta2", "Adam beta2.")
    eps: float = core_field(f"{_LOOP}.eps", "Adam epsilon.")
    t_max: int = core_field(f"{_LOOP}.t_max", "Cosine annealing T_max (epochs).")
    eta_min: float = core_field(f"{_LOOP}.eta_min", "Cosine annealing minimum learning rate.")
    seed: int = core_field(f"{_LOOP}.seed", "Seed for splits, augmentation and initialization.")
    augmentation_factor: int = core_field(f"{_FIT}:fit_classifier.factor",
                                          "Train/val sets are this many augmented copies (1, 5, 10, 20, 30, 50).")
    split_by: str = core_field(f"{_FIT}:assign_splits.group_by",
                               "'donor' (no donor in two splits) or 'well' (the thesis; leaks donors).")
    device: str = core_field(f"{_LOOP}.device", "'auto' (CUDA when available), 'cpu' or 'cuda'.")
    max_seconds: float | None = core_field(f"{_LOOP}.max_seconds",
                                           "Wall-time budget of one training (s; None = none): the epoch that "
                                           "crosses it is the last. The autoencoders: per channel.")
    register_model: bool = Field(True, description="Register the model in the MLflow registry.")

    def to_core(self) -> TrainParams:
        """The core training parameters, by keyword (fields TrainParams has and this Config
        sets), with ``SSC_TRAIN_THREADS`` torch threads."""
        return TrainParams(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainParams)
                              if f.name in type(self).model_fields}, threads=settings.train_threads())


class ClassifierConfig(TrainConfig):
    crop_size: int = core_field(f"{_FIT}:fit_classifier.input_size", "Input crop side (px).")
    embedding_size: int = core_field(f"{_MODELS}:CustomClassifier.embedding_size", "Embedding size E.")
    n_blocks: int = core_field(f"{_MODELS}:CustomClassifier.n_blocks", "Convolution blocks (N in Figure 5.9).")
    first_width: int = core_field(f"{_MODELS}:CustomClassifier.first_width",
                                  "Channels of the first convolution block (then halved per block).")
    dropout: float = core_field(f"{_MODELS}:CustomClassifier.dropout", "Dropout rate.")


class DenseNetConfig(TrainConfig):
    crop_size: int = core_field(f"{_FIT}:fit_classifier.input_size", "Input crop side (px).")
    embedding_size: int = core_field(f"{_MODELS}:DenseNetClassifier.embedding_size", "Embedding size E.")
    weights: str = core_factory_field(
        f"{_MODELS}:DenseNetClassifier.weights", settings.densenet_weights,
        "'imagenet' (torchvision weights, needs the torch hub cache or network), a local .pth path, or 'none' "
        "(default: SSC_DENSENET_WEIGHTS).")


class AutoencoderConfig(TrainConfig):
    patch_size: int = core_field(f"{_FIT}:fit_autoencoder.patch_size", "Input patch side (px).")
    embedding_size: int = core_field(f"{_MODELS}:ChannelAutoencoder.embedding_size", "Bottleneck size per channel.")
    dropout: float = core_field(f"{_MODELS}:ChannelAutoencoder.dropout", "Dropout rate.")
    widths: list[int] = core_field(f"{_MODELS}:ChannelAutoencoder.widths", "Encoder convolution widths (Figure A.1).")


class UNetConfig(TrainConfig):
    tile_size: int = core_field(f"{_FIT}:fit_unet.tile_size", "Input tile side (px).")
    base_channels: int = core_field(f"{_MODELS}:UNet.base_channels", "Channels of the first U-Net level.")
    depth: int = core_field(f"{_MODELS}:UNet.depth", "Down-sampling steps.")


class PcaConfig(dg.Config):
    n_components: int = core_field(f"{_FIT}:fit_pca_svm.n_components",
                                   "PCA components (capped by the number of training sites).")
    size: int = core_field(f"{_FIT}:fit_pca_svm.size", "Sites are downsampled to size x size per channel before flattening.")
    n_folds: int = core_field(f"{_FIT}:fit_pca_svm.n_folds", "SVM cross-validation folds.")
    split_by: str = core_field(f"{_FIT}:fit_pca_svm.group_by", "Group CV folds and the PCA train split by 'donor' or 'well'.")
    seed: int = core_field(f"{_FIT}:fit_pca_svm.seed", "Seed.")
    register_model: bool = Field(True, description="Register the PCA model in the MLflow registry.")


# Config fields that do not change what a model is (hardware, bookkeeping, seed, weight source)
PRESET_FREE = frozenset({"device", "register_model", "seed", "weights", "model", "factors"})


def settings_preset(asset: str, config: dg.Config) -> tuple[str, str]:
    """(preset, detail) of a model Config: ``demo`` when every value that
    ``ssc_assets/demo_config.py`` sets for ``asset`` is set so (``make demo``, or
    ``nightly_retrain`` with ``SSC_TRAIN_PRESET=demo``), ``thesis`` when nothing but
    :data:`PRESET_FREE` fields differs from the Config defaults, else ``custom``."""
    from ssc_assets.demo_config import DEMO_MODEL_CONFIG

    values = config.model_dump()
    if asset == "augmentation_sweep":
        asset = FAMILIES["densenet" if values.get("model") == "densenet" else "classifier"].asset
    demo = DEMO_MODEL_CONFIG.get(asset, {})
    if demo and all(values.get(k) == v for k, v in demo.items()):
        return DEMO, "demo_config.py: " + ", ".join(f"{k}={v}" for k, v in demo.items())
    defaults = {k: f.get_default(call_default_factory=True) for k, f in type(config).model_fields.items()}
    diff = {k: v for k, v in values.items() if k not in PRESET_FREE and k in defaults and defaults[k] != v}
    if not diff:
        family = next((f for f in FAMILIES.values() if f.asset == asset), None)
        name = family.default_preset if family else "thesis"
        return name, f"the {name} defaults of the asset Config"
    return "custom", "differs from the thesis defaults in " + ", ".join(f"{k}={v}" for k, v in diff.items())


def _table(corrected_images: dict, raw_sites: dict, masks: dict | None, split_by: str, seed: int) -> pd.DataFrame:
    table = training_sites(all_plate_images(corrected_images), raw_sites, all_plate_masks(masks))
    if table.empty:
        raise dg.Failure("no corrected sites: materialize corrected_images for at least one plate first", allow_retries=False)
    return assign_splits(table, group_by=split_by, seed=seed)


#: Columns of the metrics table: the splits, then the out-of-fold scores of models that have them
#: (the cell CNN's: each well scored by a fold model that never saw its donor).
METRIC_COLUMNS = {"train": "train", "val": "val", "test": "test", "oof": "out_of_fold"}


def _metrics_table(metrics: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per metric, one column per split (and ``out_of_fold``); counts such as ``folds`` left out."""
    splits = [s for s in METRIC_COLUMNS if s in metrics]
    names = sorted({k for s in splits for k in metrics[s] if k != "folds"})
    return pd.DataFrame({"metric": names, **{METRIC_COLUMNS[s]: [round(float(metrics[s].get(n, np.nan)), 4) for n in names]
                                             for s in splits}})


def log_fit(context, mlflow_res: MlflowTracking, model_name: str, fit: FitOutput,
             config: dg.Config, table: pd.DataFrame, flavor: str = "pytorch", register: bool = True,
             extra_params: dict | None = None):
    """Log a finished fit as one MLflow run (metrics per epoch were streamed by ``on_epoch``),
    register it with a described version, and rewrite the run description with the headline."""
    import mlflow

    run = mlflow.active_run()
    params = {**config.model_dump(), **fit.params, **split_summary(table), **(extra_params or {})}
    mlflow.log_params({k: (str(v)[:500]) for k, v in params.items()})
    logged: dict[str, float] = {}
    for split, ms in fit.metrics.items():
        for k, v in ms.items():
            if isinstance(v, (int, float)) and np.isfinite(v):
                logged[f"final_{split}_{k}"] = float(v)
    if np.isfinite(fit.best_val_loss):
        logged["best_val_loss"] = float(fit.best_val_loss)
        logged["best_epoch"] = fit.best_epoch
    mlflow.log_metrics(logged)
    for name, png in fit.figures.items():
        log_png(png, f"figures/{name}")
    mlflow.log_text(_metrics_table(fit.metrics).to_csv(index=False), "metrics.csv")
    mlflow.log_text(table.to_csv(index=False), "splits.csv")
    if flavor == "pytorch":
        import mlflow.pytorch

        fit.model.cpu().eval()
        info = mlflow.pytorch.log_model(fit.model, name="model", input_example=fit.input_example, serialization_format="pickle",
                                        pip_requirements=list(model_requirements("pytorch")))
    else:
        import mlflow.sklearn
        from mlflow.models import infer_signature

        # a transformer (no predict, so no pyfunc flavor): a signature, not an input example to validate
        signature = infer_signature(fit.input_example, fit.model.transform(fit.input_example))
        info = mlflow.sklearn.log_model(fit.model, name="model", signature=signature,
                                        pip_requirements=list(model_requirements("sklearn")))
    tags = mlflow_res.client().get_run(run.info.run_id).data.tags
    spec = EXPERIMENTS.get(mlflow.get_experiment(run.info.experiment_id).name)
    keys = spec.metrics if spec else ("best_val_loss", "best_epoch")
    headline = {k: logged[k] for k in keys if k in logged}
    lines = [f"MLflow run: [{run.info.run_name or run.info.run_id}]({mlflow_res.run_link(run)})"]
    reg = None
    if register:
        # PCA has no validation loss: rank by negative donor-grouped SVM accuracy instead
        if np.isfinite(fit.best_val_loss):
            val_loss, score = fit.best_val_loss, f"validation loss {fit.best_val_loss:.4g} (best epoch {fit.best_epoch})"
        else:
            acc = fit.metrics.get("cv_grouped", {}).get("accuracy", 0.0)
            val_loss, score = -acc, f"donor-grouped SVM accuracy {acc:.4g} (ranked as val_loss = -accuracy)"
        card = ModelCard(about=about(model_name), preset=tags.get("ssc.preset"), preset_detail=tags.get("ssc.preset_detail"),
                         partitions=plate_partitions(table), dagster_run_id=tags.get("dagster.run_id"), score=score,
                         lines=[*lines] + (["Headline: " + ", ".join(f"`{k}` {v:.4g}" for k, v in headline.items())] if headline else []))
        reg = mlflow_res.register(run.info.run_id, model_name, float(val_loss), model_uri=info.model_uri, card=card)
        context.log.info(f"registered {model_name} v{reg['version']}" + (" as champion" if reg["champion"] else
                         f" (champion stays v{reg['previous_champion']})"))
        lines = [f"Registered: [{model_name} v{reg['version']}]({mlflow_res.model_version_link(model_name, reg['version'])})"
                 + (" (became `@champion`)" if reg["champion"] else f" (`@champion` stays v{reg['previous_champion']})")]
    else:
        lines = []
    mlflow_res.describe_run(run.info.run_id, headline, lines)
    return run, reg


def epoch_logger(context, prefix: str = ""):
    import mlflow

    def on_epoch(epoch: int, metrics: dict) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)}, step=epoch)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("train_loss", "val_loss", "val_accuracy", "val_iou_actin"))
        context.log.info(f"{prefix}epoch {epoch}: {shown}")

    return on_epoch


def _preset_metadata(mlflow_res: MlflowTracking, run, preset: tuple[str, str]) -> dict:
    md = {"preset": f"{preset[0]}: {preset[1]}",
          "mlflow_experiment": dg.MetadataValue.url(mlflow_res.experiment_link(run.info.experiment_id))}
    if preset[0] == DEMO:
        md["warning"] = dg.MetadataValue.md(DEMO_WARNING)
    return md


def fit_metadata(mlflow_res: MlflowTracking, run, reg: dict | None, fit: FitOutput, table: pd.DataFrame,
              preset: tuple[str, str]) -> dict:
    md = {
        **_preset_metadata(mlflow_res, run, preset),
        "mlflow_run_id": run.info.run_id,
        "mlflow_run": dg.MetadataValue.url(mlflow_res.run_link(run)),
        "mlflow_tracking_uri": mlflow_res.tracking_uri,
        "metrics": dg.MetadataValue.md(md_table(_metrics_table(fit.metrics))),
        "splits": dg.MetadataValue.json(split_summary(table)),
        "best_epoch": fit.best_epoch,
        "training_seconds": round(fit.seconds, 1),
        "plates": dg.MetadataValue.json(sorted(table["Metadata_Plate"].unique().tolist())),
    }
    if reg:
        md.update({"registered_model": reg["model"], "model_version": reg["version"], "champion": reg["champion"]})
    for name, png in list(fit.figures.items())[:2]:
        md[name.removesuffix(".png")] = dg.MetadataValue.md(figures.png_markdown(png, name))
    return md


def fit_manifest(run, reg: dict | None, fit: FitOutput, preset: str) -> dict:
    return {"run_id": run.info.run_id, "model": reg["model"] if reg else None, "version": reg["version"] if reg else None,
            "champion": bool(reg and reg["champion"]), "best_val_loss": fit.best_val_loss, "preset": preset,
            "test": fit.metrics.get("test", {}), **{k: v for k, v in fit.extra.items() if k != "explained_variance_ratio"}}


def plate_partitions(table: pd.DataFrame) -> list[str]:
    return sorted(table["Metadata_Plate"].unique().tolist())


def _train_classifier(context, config, corrected_images, raw_sites, mlflow_res, family: ModelFamily) -> dict:
    from ssc_assets.core.learn.fit import fit_classifier

    table = _table(corrected_images, raw_sites, None, config.split_by, config.seed)
    fit_kw = family.fit_kwargs(config)
    kind = fit_kw["kind"]
    preset = settings_preset(context.asset_key.to_user_string(), config)
    with mlflow_res.start_run(context, family.experiment, f"{kind} x{config.augmentation_factor}", plate_partitions(table),
                              preset=preset[0], preset_detail=preset[1]) as run:
        fit = fit_classifier(table, params=config.to_core(), factor=config.augmentation_factor,
                             on_epoch=epoch_logger(context), **fit_kw)
        extra = {}
        if family.family == "densenet":
            import mlflow

            extra["weights_source"] = fit.extra["weights_source"]
            mlflow.set_tag("ssc.weights_source", fit.extra["weights_source"])
            if fit.extra["weights_source"].startswith("random-init"):
                context.log.warning(f"DenseNet-121 is NOT ImageNet-initialized: {fit.extra['weights_source']}")
        run, reg = log_fit(context, mlflow_res, family.registered_model(), fit, config, table,
                            flavor=family.flavor, register=config.register_model, extra_params=extra)
    md = fit_metadata(mlflow_res, run, reg, fit, table, preset)
    if family.family == "densenet":
        md["weights_source"] = fit.extra["weights_source"]
    if fit.extra.get("confusion_matrix") is not None:
        md["test_confusion_matrix"] = dg.MetadataValue.json(fit.extra["confusion_matrix"])
    context.add_output_metadata(md)
    return fit_manifest(run, reg, fit, preset[0])


@dg.asset(ins={"corrected_images": ALL_PLATES, "raw_sites": ALL_PLATES}, group_name="models", io_manager_key="manifest_io_manager",
          kinds={"pytorch", "mlflow"}, pool="training", code_version="1",
          op_tags=training_tags("classifier_model"))
def classifier_model(context: dg.AssetExecutionContext, config: ClassifierConfig, corrected_images: dict, raw_sites: dict,
                     mlflow_tracking: MlflowTracking) -> dict:
    """Custom CNN SSc-vs-HC classifier (thesis Figure 5.9 / A.2), embedding E = 8.

    Registered as ``ssc-classifier``; test metrics, confusion matrix and learning curves in MLflow.
    """
    return _train_classifier(context, config, corrected_images, raw_sites, mlflow_tracking, FAMILIES["classifier"])


@dg.asset(ins={"corrected_images": ALL_PLATES, "raw_sites": ALL_PLATES}, group_name="models", io_manager_key="manifest_io_manager",
          kinds={"pytorch", "mlflow"}, pool="training", code_version="1",
          op_tags=training_tags("densenet_model"))
def densenet_model(context: dg.AssetExecutionContext, config: DenseNetConfig, corrected_images: dict, raw_sites: dict,
                   mlflow_tracking: MlflowTracking) -> dict:
    """DenseNet-121 (all weights fine-tuned) + linear E = 8 + sigmoid (thesis Figure A.3).

    ImageNet weights when they can be had (torch hub cache, network, or a local file in
    ``SSC_DENSENET_WEIGHTS``); otherwise random init, logged as a warning and recorded as the
    MLflow tag/param ``weights_source``. Registered as ``ssc-densenet``.
    """
    return _train_classifier(context, config, corrected_images, raw_sites, mlflow_tracking, FAMILIES["densenet"])


@dg.asset(ins={"corrected_images": ALL_PLATES, "raw_sites": ALL_PLATES}, group_name="models", io_manager_key="manifest_io_manager",
          kinds={"pytorch", "mlflow"}, pool="training", code_version="1",
          op_tags=training_tags("autoencoder_models"))
def autoencoder_models(context: dg.AssetExecutionContext, config: AutoencoderConfig, corrected_images: dict, raw_sites: dict,
                       mlflow_tracking: MlflowTracking) -> dict:
    """One autoencoder per channel (thesis Figure 5.8 / A.1), 256-d bottleneck each.

    Site embedding = actin || borders || nuclei (768-d). One MLflow run per channel in the
    ``ssc-autoencoder`` experiment; registered as ``ssc-autoencoder-<channel>``.
    """
    from ssc_assets.core.learn.fit import fit_autoencoder

    table = _table(corrected_images, raw_sites, None, config.split_by, config.seed)
    preset = settings_preset(FAMILIES["autoencoder"].asset, config)
    out, rows = {"channels": list(MODEL_CHANNELS), "models": {}, "preset": preset[0]}, []
    md = {}
    family = FAMILIES["autoencoder"]
    for ch in MODEL_CHANNELS:
        with mlflow_tracking.start_run(context, family.experiment, f"autoencoder {ch}", plate_partitions(table), {"ssc.channel": ch},
                                       preset=preset[0], preset_detail=preset[1]) as run:
            fit = fit_autoencoder(table, ch, params=config.to_core(), factor=config.augmentation_factor,
                                  on_epoch=epoch_logger(context, f"{ch} "), **family.fit_kwargs(config))
            run, reg = log_fit(context, mlflow_tracking, family.registered_model(ch), fit, config, table,
                                flavor=family.flavor, register=config.register_model)
        out["models"][ch] = fit_manifest(run, reg, fit, preset[0])
        rows.append({"channel": ch, **{f"{s}_loss": round(fit.metrics[s]["loss"], 4) for s in ("train", "val", "test")},
                     "best_epoch": fit.best_epoch, "version": reg["version"] if reg else None, "run_id": run.info.run_id})
        md[f"mlflow_run_{ch}"] = dg.MetadataValue.url(mlflow_tracking.run_link(run))
        md[f"reconstructions_{ch}"] = dg.MetadataValue.md(figures.png_markdown(fit.figures["reconstructions.png"], ch))
    md.update(_preset_metadata(mlflow_tracking, run, preset))
    md["losses"] = dg.MetadataValue.md(md_table(pd.DataFrame(rows)))
    md["splits"] = dg.MetadataValue.json(split_summary(table))
    md["embedding_size"] = config.embedding_size * len(MODEL_CHANNELS)
    context.add_output_metadata(md)
    return out


@dg.asset(ins={"corrected_images": ALL_PLATES, "masks": ALL_PLATES, "raw_sites": ALL_PLATES}, group_name="models",
          io_manager_key="manifest_io_manager", kinds={"pytorch", "mlflow"}, pool="training", code_version="1",
          op_tags=training_tags("segmentation_model"))
def segmentation_model(context: dg.AssetExecutionContext, config: UNetConfig, corrected_images: dict, masks: dict,
                       raw_sites: dict, mlflow_tracking: MlflowTracking) -> dict:
    """U-Net: (borders, actin) tiles -> actin inside cells, Ronneberger-weighted cross-entropy.

    Metric: IoU of the actin class. Not used for embeddings (its bottleneck, 1024 x 32 x 32 for
    512 tiles, is larger than its input) but trained and tracked; registered as ``ssc-unet``.
    """
    from ssc_assets.core.learn.fit import fit_unet

    table = _table(corrected_images, raw_sites, masks, config.split_by, config.seed)
    family = FAMILIES["unet"]
    preset = settings_preset(family.asset, config)
    with mlflow_tracking.start_run(context, family.experiment, "unet", plate_partitions(table), preset=preset[0], preset_detail=preset[1]) as run:
        fit = fit_unet(table, params=config.to_core(), factor=config.augmentation_factor, on_epoch=epoch_logger(context),
                       **family.fit_kwargs(config))
        run, reg = log_fit(context, mlflow_tracking, family.registered_model(), fit, config, table,
                            flavor=family.flavor, register=config.register_model)
    md = fit_metadata(mlflow_tracking, run, reg, fit, table, preset)
    md["bottleneck_shape"] = "x".join(map(str, fit.extra["bottleneck"]))
    context.add_output_metadata(md)
    return fit_manifest(run, reg, fit, preset[0])


@dg.asset(ins={"corrected_images": ALL_PLATES, "raw_sites": ALL_PLATES}, group_name="models", io_manager_key="manifest_io_manager",
          kinds={"sklearn", "mlflow"}, code_version="1", op_tags=training_tags("pca_model"))
def pca_model(context: dg.AssetExecutionContext, config: PcaConfig, corrected_images: dict, raw_sites: dict,
              mlflow_tracking: MlflowTracking) -> dict:
    """PCA baseline (64 components of flattened, downsampled sites) + SVM with donor-grouped CV.

    Reproduces the "Baseline classifier (SVM)" column of Table B.2.1, with the thesis'
    ungrouped folds beside the honest donor-grouped ones. Registered as ``ssc-pca``.
    """
    import mlflow

    from ssc_assets.core.learn.fit import fit_pca_svm

    table = _table(corrected_images, raw_sites, None, config.split_by, config.seed)
    family = FAMILIES["pca"]
    preset = settings_preset(family.asset, config)
    with mlflow_tracking.start_run(context, family.experiment, "pca+svm", plate_partitions(table), preset=preset[0], preset_detail=preset[1]) as run:
        fit = fit_pca_svm(table, **family.fit_kwargs(config))
        for i, v in enumerate(fit.extra["explained_variance_ratio"]):
            mlflow.log_metric("explained_variance_ratio", v, step=i + 1)
        run, reg = log_fit(context, mlflow_tracking, family.registered_model(), fit, config, table,
                            flavor=family.flavor, register=config.register_model)
    cv = pd.DataFrame([{"folds": k, **{m: round(v, 4) for m, v in fit.metrics[k].items()}} for k in ("cv_grouped", "cv_ungrouped")])
    context.add_output_metadata({
        **_preset_metadata(mlflow_tracking, run, preset),
        "mlflow_run_id": run.info.run_id,
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_link(run)),
        "svm_cv": dg.MetadataValue.md(md_table(cv)),
        "n_components": int(fit.params["n_components"]),
        "explained_variance": round(fit.metrics["pca"]["explained_variance"], 4),
        "plates": dg.MetadataValue.json(sorted(table["Metadata_Plate"].unique().tolist())),
        "registered_model": reg["model"] if reg else "",
        "model_version": reg["version"] if reg else 0,
    })
    man = fit_manifest(run, reg, fit, preset[0])
    man["svm"] = {k: fit.metrics[k] for k in ("cv_grouped", "cv_ungrouped")}
    return man


class SweepConfig(ClassifierConfig):
    model: str = Field("classifier", description="'classifier' (Figure C.1.1) or 'densenet' (Figure C.1.2).")
    factors: list[int] = Field([1, 5, 10, 20, 30, 50], description="Augmentation factors, one MLflow run each.")
    weights: str = core_factory_field(f"{_MODELS}:DenseNetClassifier.weights", settings.densenet_weights,
                                      "DenseNet weights (see densenet_model).")
    register_model: bool = Field(False, description="Sweep runs are for comparison: not registered by default.")


@dg.asset(ins={"corrected_images": ALL_PLATES, "raw_sites": ALL_PLATES}, group_name="model_sweeps",
          io_manager_key="manifest_io_manager", kinds={"pytorch", "mlflow"}, pool="training", code_version="1",
          op_tags=training_tags("augmentation_sweep"))
def augmentation_sweep(context: dg.AssetExecutionContext, config: SweepConfig, corrected_images: dict, raw_sites: dict,
                       mlflow_tracking: MlflowTracking) -> dict:
    """Train the classifier (or DenseNet) once per augmentation factor (thesis Figures C.1.1/C.1.2).

    Every run goes to the model family's experiment with the tag ``ssc.sweep`` = Dagster run id,
    so the learning curves (``train_loss``/``val_loss`` per epoch) overlay in the MLflow UI.
    """
    from ssc_assets.core.learn.fit import fit_classifier

    table = _table(corrected_images, raw_sites, None, config.split_by, config.seed)
    family = FAMILIES["classifier" if config.model == "classifier" else "densenet"]
    experiment, fit_kw = family.experiment, family.fit_kwargs(config)
    kind = fit_kw["kind"]
    rows, curves = [], {}
    preset = settings_preset("augmentation_sweep", config)
    for factor in config.factors:
        with mlflow_tracking.start_run(context, experiment, f"{kind} sweep x{factor}", plate_partitions(table),
                                       {"ssc.sweep": context.run.run_id}, preset=preset[0], preset_detail=preset[1]) as run:
            fit = fit_classifier(table, params=config.to_core(), factor=factor, on_epoch=epoch_logger(context, f"x{factor} "),
                                 **fit_kw)
            run, _ = log_fit(context, mlflow_tracking, "", fit, config, table, register=False)
        curves[factor] = fit.history
        rows.append({"factor": factor, "best_epoch": fit.best_epoch, "best_val_loss": round(fit.best_val_loss, 4),
                     "test_accuracy": round(fit.metrics["test"].get("accuracy", np.nan), 4), "run_id": run.info.run_id})
    context.add_output_metadata({
        **_preset_metadata(mlflow_tracking, run, preset),
        "runs": dg.MetadataValue.md(md_table(pd.DataFrame(rows))),
        "learning_curves": dg.MetadataValue.md(figures.png_markdown(_sweep_png(curves, kind), "sweep")),
        "mlflow_experiment": experiment,
    })
    return {"model": config.model, "experiment": experiment, "runs": rows, "preset": preset[0]}


def _sweep_png(curves: dict[int, list[dict]], kind: str) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharey=True)
    for factor, hist in curves.items():
        ep = np.arange(1, len(hist) + 1)
        axes[0].plot(ep, [h["train_loss"] for h in hist], label=f"x{factor}")
        axes[1].plot(ep, [h["val_loss"] for h in hist], label=f"x{factor}")
    for ax, t in zip(axes, ("train", "validation")):
        ax.set_title(f"{kind}: {t} loss", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("BCE")
    axes[1].legend(fontsize=7)
    return figures.fig_to_png(fig)

