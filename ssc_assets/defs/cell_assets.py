"""The single-cell model (family ``cells``, group ``models``): the CPU training regime.

``cell_classifier_model`` cuts nucleus-centred crops (all three channels) from every
materialized plate's ``corrected_images`` at the ``masks`` nuclei, then, within one wall-time
budget (default 10 min on 2 cores, the ``cpu`` preset):

1. trains one small CNN per donor-grouped fold and scores the held-out donors' cells: every
   well gets an **out-of-fold** score from a model that never saw its donor
   (``Metadata_OofScore``, used by ``donor_scores``);
2. trains the final model on every donor (validation donors held out for early stopping) and
   registers it as ``ssc-cells`` (``champion`` when its validation loss is lower).

Per-epoch metrics of the final model (and ``fold<k>_*`` of the folds), the out-of-fold well
scores (``out_of_fold_wells.csv``) and the learning curves are in the MLflow run. The thesis'
whole-site models stay in ``model_assets`` for comparison.
"""


import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from ssc_assets import settings
from ssc_assets.core.io.storage import write_parquet
from ssc_assets.core.learn.cell_crops import CropParams, build_crop_dataset
from ssc_assets.core.learn.cell_training import CellTrainParams, fit_with_out_of_fold
from ssc_assets.core.learn.fit import FitOutput, training_sites
from ssc_assets.core.plots import training as training_plots
from ssc_assets.defs.core_defaults import core_field
from ssc_assets.defs.manifests import all_plate_images, all_plate_masks
from ssc_assets.defs.mlflow_tracking import MlflowTracking
from ssc_assets.defs.model_assets import (
    ALL_PLATES,
    epoch_logger,
    fit_manifest,
    fit_metadata,
    log_fit,
    plate_partitions,
    settings_preset,
    training_tags,
)
from ssc_assets.defs.model_families import FAMILIES
from ssc_assets.defs.resources import Storage

_TP = "ssc_assets.core.learn.cell_training:CellTrainParams"
_CP = "ssc_assets.core.learn.cell_crops:CropParams"
_CT = "ssc_assets.core.learn.cell_training"


class CropConfig(dg.Config):
    """Cell crops (:class:`CropParams` defaults), shared by the cell models' Configs."""

    crop_size: int = core_field(f"{_CP}.size", "Crop side around each nucleus centroid (px at full resolution).")
    downsample: int = core_field(f"{_CP}.downsample", "Block-mean downsampling of the crops (crop_size / downsample px input).")
    max_crops_per_site: int = core_field(f"{_CP}.max_per_site", "At most this many cells per site (deterministic draw).")
    border: str = core_field(f"{_CP}.border", "'skip' nuclei whose crop leaves the image, or 'pad' with 0.")
    normalize: str = core_field(f"{_CP}.normalize", "Intensity standardisation: 'site', 'crop' or 'none'.")
    register_model: bool = Field(True, description="Register the model in the MLflow registry.")

    def crop_params(self) -> CropParams:
        return CropParams(size=self.crop_size, downsample=self.downsample, border=self.border,
                          max_per_site=self.max_crops_per_site, seed=getattr(self, "seed", 0), normalize=self.normalize)

    def core_params(self, cls):
        """An instance of the core dataclass ``cls`` from the fields both have, by keyword, with
        ``SSC_TRAIN_THREADS`` torch threads."""
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)} & set(type(self).model_fields)
        return cls(**{n: getattr(self, n) for n in names}, threads=settings.train_threads())


class CellModelConfig(CropConfig):
    """The ``cpu`` preset (:meth:`CellTrainParams.cpu` and :class:`CropParams` defaults)."""

    epochs: int = core_field(f"{_TP}.epochs", "Upper bound of epochs per training.")
    batch_size: int = core_field(f"{_TP}.batch_size", "Batch size.")
    lr: float = core_field(f"{_TP}.lr", "Adam learning rate (cosine annealed).")
    weight_decay: float = core_field(f"{_TP}.weight_decay", "Adam weight decay.")
    patience: int | None = core_field(f"{_TP}.patience", "Early stop after this many epochs without a lower validation loss.")
    min_epochs: int = core_field(f"{_TP}.min_epochs", "No early stop before this epoch (patience counts from here).")
    crops_per_epoch: int | None = core_field(f"{_TP}.crops_per_epoch", "Training crops drawn per epoch.")
    balance: str = core_field(f"{_TP}.balance", "Sampling balance: 'donor', 'condition', 'loss' or 'none'.")
    augment: bool = core_field(f"{_TP}.augment", "The thesis' rotations by 90 degrees and flips.")
    val_fraction: float = core_field(f"{_TP}.val_fraction", "Fraction of each condition's donors held out for validation.")
    width: int = core_field(f"{_TP}.width", "Channels of every convolution block.")
    n_blocks: int = core_field(f"{_TP}.n_blocks", "Convolution blocks.")
    embedding_size: int = core_field(f"{_TP}.embedding_size", "Embedding size (the `cells` site embedding).")
    dropout: float = core_field(f"{_TP}.dropout", "Dropout before the embedding.")
    seed: int = core_field(f"{_TP}.seed", "Seed for folds, crops, sampling and initialisation.")
    max_seconds: float | None = core_field(f"{_TP}.max_seconds", "Wall-time cap of one training (s).")
    oof_folds: int = core_field(f"{_CT}:OOF_FOLDS", "Donor-grouped folds for the out-of-fold scores.")
    budget_seconds: float = core_field(f"{_CT}:MODEL_BUDGET_SECONDS",
                                       "Wall-time budget of the whole asset (folds + final model), split evenly (s).")

    def to_core(self) -> CellTrainParams:
        """The core training parameters, by keyword (the fields both have)."""
        return self.core_params(CellTrainParams)


def _fold_logger():
    import mlflow

    def on_fold_epoch(fold: int, epoch: int, metrics: dict) -> None:
        mlflow.log_metrics({f"fold{fold}_{k}": float(v) for k, v in metrics.items()
                            if k in ("train_loss", "val_loss", "val_balanced_accuracy") and np.isfinite(v)}, step=epoch)

    return on_fold_epoch


def _training_crops(context, config: CropConfig, corrected_images: dict, masks: dict, raw_sites: dict):
    """(site table of every plate's masked sites, their cell crops, (preset, detail)); fails
    clearly when no plate has masks yet."""
    table = training_sites(all_plate_images(corrected_images), raw_sites, all_plate_masks(masks))
    table = table[table["masks_store"].notna()].reset_index(drop=True)
    if table.empty:
        raise dg.Failure("no sites with masks: materialize corrected_images and masks for at least one plate first",
                         allow_retries=False)
    data = build_crop_dataset(table, config.crop_params())
    context.log.info(f"{len(data)} cell crops of {len(table)} sites, {table['Metadata_Donor'].nunique()} donors")
    return table, data, settings_preset(context.asset_key.to_user_string(), config)


def _split_table(table: pd.DataFrame, val_donors: list[str]) -> pd.DataFrame:
    out = table.copy()
    out["split"] = np.where(out["Metadata_Donor"].astype(str).isin(val_donors), "val", "train")
    return out


@dg.asset(ins={"corrected_images": ALL_PLATES, "masks": ALL_PLATES, "raw_sites": ALL_PLATES}, group_name="models",
          io_manager_key="manifest_io_manager", kinds={"pytorch", "mlflow"}, pool="training", code_version="2",
          op_tags=training_tags("cell_classifier_model"))
def cell_classifier_model(context: dg.AssetExecutionContext, config: CellModelConfig, corrected_images: dict,
                          masks: dict, raw_sites: dict, mlflow_tracking: MlflowTracking, storage: Storage) -> dict:
    """Single-cell CNN (4 conv blocks x 32 channels, 16-d embedding, SSc-vs-HC logit) on
    nucleus-centred crops: out-of-fold well scores + the registered ``ssc-cells`` model.

    Output: manifest (run, registered version, ``oof_wells`` parquet path, out-of-fold metrics).
    """
    family = FAMILIES["cells"]
    table, data, preset = _training_crops(context, config, corrected_images, masks, raw_sites)
    with mlflow_tracking.start_run(context, family.experiment, f"cells {config.crop_size}/{config.downsample}",
                                   plate_partitions(table), preset=preset[0], preset_detail=preset[1]) as run:
        try:
            res = fit_with_out_of_fold(data, config.to_core(), n_folds=config.oof_folds, budget_seconds=config.budget_seconds,
                                       seed=config.seed, on_epoch=epoch_logger(context), on_fold_epoch=_fold_logger())
        except ValueError as exc:
            raise dg.Failure(f"cell model: {exc}", allow_retries=False) from exc
        val = {k.removeprefix("val_"): v for k, v in res.final.history[res.final.best_epoch - 1].items() if k.startswith("val_")}
        fit = FitOutput(
            model=res.final.model, history=res.final.history, best_epoch=res.final.best_epoch,
            best_val_loss=res.final.best_val_loss, metrics={"val": val, "oof": res.metrics},
            figures={"learning_curves.png": training_plots.curves_png(res.final.history, "cells: final model")},
            input_example=data.crops[:2], seconds=res.seconds,
            params={**{f"crop_{k}": v for k, v in data.params.as_dict().items()}, "n_crops": len(data),
                    "stopped": res.final.stopped, "oof_folds_used": res.metrics["folds"]})
        import mlflow

        mlflow.log_text(res.oof_wells.to_csv(index=False), "out_of_fold_wells.csv")
        run, reg = log_fit(context, mlflow_tracking, family.registered_model(), fit, config,
                           _split_table(table, res.final.val_donors), flavor=family.flavor, register=config.register_model)
    oof_path = storage.path("cell_classifier_model", "out_of_fold_wells.parquet")
    write_parquet(res.oof_wells, oof_path)
    md = fit_metadata(mlflow_tracking, run, reg, fit, _split_table(table, res.final.val_donors), preset)
    md.update({"n_crops": len(data), "out_of_fold_wells": dg.MetadataValue.path(oof_path),
               **{f"oof_{k}": (int(v) if k == "folds" else float(f"{v:.4g}"))
                  for k, v in res.metrics.items() if np.isfinite(v)}})
    context.add_output_metadata(md)
    return {**fit_manifest(run, reg, fit, preset[0]), "oof_wells": oof_path, "oof": res.metrics,
            "crop": data.params.as_dict()}


_AP = "ssc_assets.core.learn.cell_autoencoder:CellAutoencoderParams"


class CellAutoencoderConfig(CropConfig):
    """The CPU regime of the cell autoencoder (:class:`CellAutoencoderParams` and :class:`CropParams`
    defaults, but edge nuclei skipped, ``CROP_BORDER``; crops standardised per site, ``CROP_NORMALIZE``)."""

    normalize: str = core_field("ssc_assets.core.learn.cell_autoencoder:CROP_NORMALIZE",
                                "Intensity standardisation of the crops: 'site' (each channel by its site's mean "
                                "and SD), 'none' (corrected units) or 'crop'. The model then standardises "
                                "per channel with the training crops' statistics.")
    border: str = core_field("ssc_assets.core.learn.cell_autoencoder:CROP_BORDER",
                             "'skip' nuclei whose crop leaves the image, or 'pad' with 0.")

    epochs: int = core_field(f"{_AP}.epochs", "Upper bound of epochs.")
    batch_size: int = core_field(f"{_AP}.batch_size", "Batch size.")
    lr: float = core_field(f"{_AP}.lr", "Adam learning rate (cosine annealed).")
    patience: int | None = core_field(f"{_AP}.patience", "Early stop after this many epochs without a lower held-out loss.")
    crops_per_epoch: int | None = core_field(f"{_AP}.crops_per_epoch", "Training crops drawn per epoch.")
    embedding_size: int = core_field(f"{_AP}.embedding_size", "Size of the linear code the decoder redraws a crop from. "
                                        "The site embedding is the pooled encoder maps (width x (n_blocks - 1), 96-d by default).")
    max_seconds: float | None = core_field(f"{_AP}.max_seconds", "Wall-time cap of the training (s).")
    seed: int = core_field(f"{_AP}.seed", "Seed for validation donors, crops, sampling and initialisation.")

    def to_core(self):
        from ssc_assets.core.learn.cell_autoencoder import CellAutoencoderParams

        return self.core_params(CellAutoencoderParams)


@dg.asset(ins={"corrected_images": ALL_PLATES, "masks": ALL_PLATES, "raw_sites": ALL_PLATES}, group_name="models",
          io_manager_key="manifest_io_manager", kinds={"pytorch", "mlflow"}, pool="training", code_version="3",
          op_tags=training_tags("cell_autoencoder_model"))
def cell_autoencoder_model(context: dg.AssetExecutionContext, config: CellAutoencoderConfig, corrected_images: dict,
                           masks: dict, raw_sites: dict, mlflow_tracking: MlflowTracking) -> dict:
    """Convolutional autoencoder on nucleus-centred, per-site standardised crops (16-d code),
    trained without labels, early-stopped on held-out donors' reconstruction loss: the registered
    ``ssc-cell_autoencoder``. It embeds a crop by its encoder maps averaged over the crop (96-d).

    Output: manifest (run, registered version, crop settings).
    """
    from ssc_assets.core.learn.cell_autoencoder import train_cell_autoencoder

    family = FAMILIES["cell_autoencoder"]
    table, data, preset = _training_crops(context, config, corrected_images, masks, raw_sites)
    with mlflow_tracking.start_run(context, family.experiment, f"cell autoencoder {config.crop_size}/{config.downsample}",
                                   plate_partitions(table), preset=preset[0], preset_detail=preset[1]) as run:
        try:
            res = train_cell_autoencoder(data, config.to_core(), on_epoch=epoch_logger(context))
        except ValueError as exc:
            raise dg.Failure(f"cell autoencoder: {exc}", allow_retries=False) from exc
        fit = FitOutput(
            model=res.model, history=res.history, best_epoch=res.best_epoch, best_val_loss=res.best_val_loss,
            metrics={"val": {"loss": res.best_val_loss}},
            figures={"learning_curves.png": training_plots.curves_png(res.history, "cell autoencoder")},
            input_example=data.crops[:2], seconds=res.seconds,
            params={**{f"crop_{k}": v for k, v in data.params.as_dict().items()}, "n_crops": len(data),
                    "stopped": res.stopped})
        split = _split_table(table, res.val_donors)
        run, reg = log_fit(context, mlflow_tracking, family.registered_model(), fit, config, split,
                           flavor=family.flavor, register=config.register_model)
    md = fit_metadata(mlflow_tracking, run, reg, fit, split, preset)
    md["n_crops"] = len(data)
    context.add_output_metadata(md)
    return {**fit_manifest(run, reg, fit, preset[0]), "crop": data.params.as_dict()}
