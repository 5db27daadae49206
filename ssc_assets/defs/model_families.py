"""The model families, in one registry: per family its training asset, the registered MLflow
model (``ssc-*``, alias ``champion``), its experiment, the MLflow flavour, what it is, and how
an asset ``Config`` becomes the keyword arguments of its ``core.learn.fit`` function.

Used by the model assets (training, registration, descriptions), the embedding assets
(which champion to load, with which flavour), the MLflow resource (experiment specs) and
``demo_config.py``. No other module spells an ``ssc-*`` model or experiment name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PREFIX = "ssc"
CLUSTERING_EXPERIMENT = f"{PREFIX}-clustering"


@dataclass(frozen=True)
class ModelFamily:
    """One model family (see the module docstring)."""

    family: str  # registry key: unet, autoencoder, classifier, densenet, cells, cell_autoencoder, pca
    asset: str  # the training asset
    flavor: str  # MLflow flavour: pytorch or sklearn
    about: str  # markdown: what the model is (``{channel}`` for per-channel families)
    fit: str  # the core fitting function (core.learn.fit, core.learn.cell_training, core.learn.cell_autoencoder)
    fit_kwargs: Callable[[object], dict]  # asset Config -> keyword arguments of ``fit`` (besides data and TrainParams)
    per_channel: bool = False  # one registered model per channel (``ssc-autoencoder-<channel>``)
    default_preset: str = "thesis"  # what the Config defaults are: the thesis' settings, or the CPU regime

    @property
    def experiment(self) -> str:
        return f"{PREFIX}-{self.family}"

    def registered_model(self, channel: str | None = None) -> str:
        """The registered MLflow model name (``ssc-<family>`` or ``ssc-<family>-<channel>``)."""
        if self.per_channel:
            if channel is None:
                raise ValueError(f"{self.family}: one model per channel, name the channel")
            return f"{PREFIX}-{self.family}-{channel}"
        return f"{PREFIX}-{self.family}"

    def describe(self, channel: str | None = None) -> str:
        return self.about.format(channel=channel) if self.per_channel else self.about


def _classifier_kwargs(config) -> dict:
    return {"kind": "custom", "input_size": config.crop_size,
            "model_kwargs": {"embedding_size": config.embedding_size, "n_blocks": config.n_blocks,
                             "first_width": config.first_width, "dropout": config.dropout}}


def _densenet_kwargs(config) -> dict:
    return {"kind": "densenet", "input_size": config.crop_size,
            "model_kwargs": {"embedding_size": config.embedding_size, "weights": config.weights}}


def _autoencoder_kwargs(config) -> dict:
    return {"patch_size": config.patch_size,
            "model_kwargs": {"embedding_size": config.embedding_size, "dropout": config.dropout, "widths": tuple(config.widths)}}


def _cells_kwargs(config) -> dict:
    return {"n_folds": config.oof_folds, "budget_seconds": config.budget_seconds, "seed": config.seed}


def _cell_autoencoder_kwargs(config) -> dict:
    return {}


def _unet_kwargs(config) -> dict:
    return {"tile_size": config.tile_size, "model_kwargs": {"base_channels": config.base_channels, "depth": config.depth}}


def _pca_kwargs(config) -> dict:
    return {"n_components": config.n_components, "size": config.size, "n_folds": config.n_folds, "seed": config.seed,
            "group_by": config.split_by}


FAMILIES: dict[str, ModelFamily] = {f.family: f for f in (
    ModelFamily(
        "unet", "segmentation_model", "pytorch",
        "U-Net segmenting actin inside cells from (borders, actin) tiles, metric IoU of the actin class. "
        "Tracked, not used for embeddings.", "fit_unet", _unet_kwargs),
    ModelFamily(
        "autoencoder", "autoencoder_models", "pytorch",
        "Autoencoder of the {channel} channel (thesis Figure 5.8 / A.1): reconstructs the channel as an "
        "object-probability map; its 256-d bottleneck is the {channel} part of the `autoencoder` site "
        "embedding (actin ‖ borders ‖ nuclei).", "fit_autoencoder", _autoencoder_kwargs, per_channel=True),
    ModelFamily(
        "classifier", "classifier_model", "pytorch",
        "Custom CNN (thesis Figure 5.9 / A.2) predicting SSc (1) vs healthy control (0) per site from "
        "actin, borders and nuclei crops; its 8-d layer before the output is the `classifier` site embedding.",
        "fit_classifier", _classifier_kwargs),
    ModelFamily(
        "densenet", "densenet_model", "pytorch",
        "DenseNet-121 (all weights fine-tuned, then linear 8 + sigmoid; thesis Figure A.3) predicting SSc (1) vs "
        "healthy control (0) per site; its 8-d layer is the `densenet` site embedding.",
        "fit_classifier", _densenet_kwargs),
    ModelFamily(
        "cells", "cell_classifier_model", "pytorch",
        "Single-cell CNN (4 conv blocks x 32 channels, 16-d embedding) predicting SSc (1) vs healthy control (0) "
        "per nucleus-centred crop of actin, borders and nuclei (the CPU regime); the median over a site's cells of its "
        "16-d embedding is the `cells` site embedding, the median cell logit the site's SSc-likeness score.",
        "fit_with_out_of_fold", _cells_kwargs, default_preset="cpu"),
    ModelFamily(
        "cell_autoencoder", "cell_autoencoder_model", "pytorch",
        "Convolutional autoencoder (4 conv blocks x 32 channels, 16-d code) of nucleus-centred crops of actin, borders "
        "and nuclei, trained without labels (the CPU regime); the median over a site's cells of its code is the "
        "`cell_autoencoder` site embedding.",
        "train_cell_autoencoder", _cell_autoencoder_kwargs, default_preset="cpu"),
    ModelFamily(
        "pca", "pca_model", "sklearn",
        "Standardize + PCA of flattened, downsampled sites (actin, borders, nuclei): the `pca` baseline site "
        "embedding; an RBF SVM on it scores SSc vs healthy control (Table B.2.1 baseline).",
        "fit_pca_svm", _pca_kwargs),
)}

#: The training assets of job ``train_models`` (every family).
TRAINING_ASSETS = [f.asset for f in FAMILIES.values()]


def family_of_model(model_name: str) -> tuple[ModelFamily, str | None] | None:
    """(family, channel) of a registered model name, or None for a name no family registers."""
    for f in FAMILIES.values():
        base = f"{PREFIX}-{f.family}"
        if f.per_channel and model_name.startswith(base + "-"):
            return f, model_name[len(base) + 1:]
        if not f.per_channel and model_name == base:
            return f, None
    return None


def about(model_name: str) -> str:
    """What a registered model is (markdown), for its MLflow descriptions."""
    found = family_of_model(model_name)
    if found is None:
        return f"Model {model_name}."
    family, channel = found
    return family.describe(channel)
