"""Fit the seed's model families on QC-passed corrected sites (pure: no Dagster, no MLflow).

Inputs are a *site table*, one row per corrected site (:func:`training_sites`), with a donor-grouped
``split`` column (:func:`assign_splits`). Each ``fit_*`` returns a :class:`FitOutput` with the
trained model (best validation loss), per-epoch history, final metrics per split, figures
(PNG bytes) and an input example for model logging.

Scale: sites are read from the OME-Zarr pyramid level whose side is the smallest still
>= 1.4 x the model input (:func:`pick_level`), so training crops (area 0.5-1, resized to the
input) and test centre crops show cells at about the same scale (zoom 1.0-1.5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ssc_assets.core.ingest.channels import IMAGE_CHANNELS, MODEL_CHANNELS
from ssc_assets.core.learn.augment import AugmentParams, SiteDataset, SiteRef
from ssc_assets.core.learn.inputs import PlateImages, PlateMasks
from ssc_assets.core.learn.loop import TrainParams, confusion, evaluate, set_seed, torch_threads, train
from ssc_assets.core.learn.splits import grouped_split
from ssc_assets.core.plots import training as training_plots
from ssc_assets.core.schema import ACQUISITION_GROUP, SITE_META


def training_sites(images: Iterable[PlateImages], raw_sites: Mapping[str, pd.DataFrame],
                   masks: Iterable[PlateMasks] = ()) -> pd.DataFrame:
    """One row per corrected (QC-passed, written) site of every plate.

    ``images`` / ``masks``: per plate, the corrected store and its sites / the masks store and
    the sites that have masks (:mod:`ssc_assets.core.learn.inputs`).
    ``raw_sites``: plate -> raw_sites table (gives the plate-map ``Metadata_*`` columns).
    Columns: ``schema.SITE_META`` + ``Metadata_AcquisitionGroup`` ("" when raw_sites has none) + ``label`` (1 = SSc, 0 = HC) + ``store`` + ``masks_store`` (None
    when the site has no masks) + ``side`` (px, full-resolution side of the stored image).
    """
    masks_of = {m.plate: m for m in masks}
    rows = []
    for img in sorted(images, key=lambda p: p.plate):
        plate = img.plate
        raw = raw_sites[plate]
        meta = raw.drop_duplicates("Metadata_Well").set_index("Metadata_Well")
        acq = (raw.drop_duplicates(["Metadata_Well", "Metadata_Site"]).set_index(["Metadata_Well", "Metadata_Site"])[ACQUISITION_GROUP]
               if ACQUISITION_GROUP in raw.columns else None)
        mask = masks_of.get(plate)
        mask_sites = {(w, int(s)) for w, s in mask.sites} if mask else set()
        for well, site in img.sites:
            m = meta.loc[well]
            rows.append({
                "Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": int(site),
                "Metadata_Donor": str(m["Metadata_Donor"]), "Metadata_Condition": str(m["Metadata_Condition"]),
                "Metadata_Group": str(m["Metadata_Group"]),
                ACQUISITION_GROUP: str(acq.get((well, int(site)), "")) if acq is not None else "",
                "label": int(str(m["Metadata_Condition"]).lower() == "ssc"),
                "store": img.store,
                "masks_store": mask.store if (well, int(site)) in mask_sites else None,
                "side": int(img.side or 0),
            })
    return pd.DataFrame(rows, columns=SITE_META + [ACQUISITION_GROUP, "label", "store", "masks_store", "side"])


def assign_splits(table: pd.DataFrame, group_by: str = "donor", seed: int = 0) -> pd.DataFrame:
    """Add ``split`` (train/val/test, 60/20/20 of the groups per condition, no group in two)."""
    out = table.copy()
    out["split"] = grouped_split(out, (0.6, 0.2, 0.2), group_by=group_by, seed=seed).values
    return out


def split_summary(table: pd.DataFrame) -> dict[str, int]:
    """Sites, donors and SSc fraction per split, flattened (``n_sites_train`` ...)."""
    out = {}
    for s in ("train", "val", "test"):
        part = table[table["split"] == s]
        out[f"n_sites_{s}"] = len(part)
        out[f"n_donors_{s}"] = int(part["Metadata_Donor"].nunique())
        out[f"n_ssc_sites_{s}"] = int(part["label"].sum())
    return out


def refs(table: pd.DataFrame) -> list[SiteRef]:
    return [SiteRef(r.store, r.Metadata_Well, int(r.Metadata_Site), int(r.label),
                    r.masks_store if isinstance(r.masks_store, str) else None, r.Metadata_Plate, r.Metadata_Donor)
            for r in table.itertuples()]


def pick_level(side: int, input_size: int, n_levels: int = 3, margin: float = 1.4) -> int:
    """Deepest pyramid level (0 .. n_levels-1, each 2x smaller) whose side >= margin x input."""
    level = 0
    while level + 1 < n_levels and side / 2 ** (level + 1) >= margin * input_size:
        level += 1
    return level


@dataclass
class FitOutput:
    model: torch.nn.Module
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    metrics: dict[str, dict[str, float]]  # split -> metric -> value
    figures: dict[str, bytes] = field(default_factory=dict)
    input_example: np.ndarray | None = None
    params: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    seconds: float = 0.0


def _datasets(table, channels, input_size, factor, seed, level, target=None):
    params = AugmentParams(input_size=input_size)
    out = {}
    for split in ("train", "val", "test"):
        part = table[table["split"] == split]
        if part.empty:
            raise ValueError(f"the {split} split is empty: need at least 3 donors per condition (have "
                             f"{table.groupby('Metadata_Condition')['Metadata_Donor'].nunique().to_dict()})")
        out[split] = SiteDataset(refs(part), channels, IMAGE_CHANNELS, split, params, factor=factor,
                                 seed=seed + {"train": 0, "val": 1, "test": 2}[split], target=target, level=level)
    return out


def final_items(ds) -> Dataset:
    """The items the final training-split metrics use: one augmented view per site (the first
    ``len(ds.refs)`` items of a :class:`SiteDataset` with ``factor`` views per site). The
    per-epoch ``train_*`` metrics already cover every view; evaluating them all again cost as
    much as a third of an epoch."""
    n = len(getattr(ds, "refs", ds))
    return ds if n >= len(ds) else Subset(ds, range(n))


def _final_metrics(model, datasets, task, batch_size) -> dict[str, dict[str, float]]:
    """Metrics of ``model`` per split: ``train`` on :func:`final_items`, ``val`` and ``test`` on
    every item (validation: the same views as the per-epoch validation)."""
    out = {}
    for split, ds in datasets.items():
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(0)
        items = final_items(ds) if split == "train" else ds
        res = evaluate(model, DataLoader(items, batch_size=batch_size), task, collect=(split == "test"))
        out[split] = {k: v for k, v in res.items() if k not in ("y_true", "prob")}
        if split == "test" and "y_true" in res:
            out["_test_predictions"] = {"y_true": res["y_true"], "prob": res["prob"]}
    return out


@dataclass
class _Trained:
    datasets: dict
    result: object  # training.TrainResult
    metrics: dict
    params: dict  # what every family logs: input size, factor, pyramid level, items per split


def _fit(model, task: str, table: pd.DataFrame, channels: tuple[str, ...], input_size: int, factor: int,
         params: TrainParams, on_epoch: Callable | None, target: str | None = None) -> _Trained:
    """The path every torch family shares: pyramid level, datasets, training, final metrics."""
    level = pick_level(int(table["side"].max() or input_size), input_size)
    ds = _datasets(table, channels, input_size, factor, params.seed, level, target)
    res = train(model, task, ds["train"], ds["val"], params, on_epoch)
    with torch_threads(params.threads):  # the final evaluation shares the machine like the training
        metrics = _final_metrics(model, ds, task, params.batch_size)
    logged = {"input_size": input_size, "augmentation_factor": factor, "pyramid_level": level,
              "stopped": res.stopped, "epochs_run": len(res.history),
              **{f"n_items_{k}": len(v) for k, v in ds.items()},  # n_items_train = sites x factor
              "n_items_final_train": len(final_items(ds["train"]))}
    return _Trained(ds, res, metrics, logged)


def _output(model, t: _Trained, figs: dict, params: dict, extra: dict) -> FitOutput:
    r = t.result
    return FitOutput(model, r.history, r.best_epoch, r.best_val_loss, t.metrics, figs,
                     t.datasets["test"][0][0][None].numpy(), {**t.params, **params},
                     {"level": t.params["pyramid_level"], **extra}, r.seconds)


def fit_classifier(table: pd.DataFrame, kind: str, params: TrainParams, input_size: int = 512, factor: int = 5,
                   model_kwargs: dict | None = None, on_epoch: Callable | None = None) -> FitOutput:
    """SSc-vs-HC classifier on (actin, borders, nuclei) crops: ``kind`` = ``custom`` or ``densenet``."""
    from ssc_assets.core.learn.models import CustomClassifier, DenseNetClassifier

    set_seed(params.seed)
    kw = dict(model_kwargs or {})
    if kind == "custom":
        model = CustomClassifier(in_channels=3, crop_size=input_size, **kw)
    elif kind == "densenet":
        model = DenseNetClassifier(**kw)
    else:
        raise ValueError(f"kind must be 'custom' or 'densenet', not {kind!r}")
    t = _fit(model, "classify", table, MODEL_CHANNELS, input_size, factor, params, on_epoch)
    pred = t.metrics.pop("_test_predictions", None)
    figs = {"learning_curves.png": training_plots.curves_png(t.result.history, f"{kind} classifier, augmentation x{factor}")}
    extra = {"confusion_matrix": None}
    if pred is not None:
        cm = confusion(pred["y_true"], pred["prob"])
        figs["confusion_matrix.png"] = training_plots.confusion_png(cm)
        extra["confusion_matrix"] = cm.tolist()
    if kind == "densenet":
        extra["weights_source"] = model.weights_source
    return _output(model, t, figs, kw, extra)


def fit_autoencoder(table: pd.DataFrame, channel: str, params: TrainParams, patch_size: int = 256, factor: int = 5,
                    model_kwargs: dict | None = None, on_epoch: Callable | None = None) -> FitOutput:
    """One channel's autoencoder (thesis Figure A.1): input 1 x P x P, MSE to the object map."""
    from ssc_assets.core.learn.models import ChannelAutoencoder

    set_seed(params.seed)
    kw = dict(model_kwargs or {})
    model = ChannelAutoencoder(patch_size=patch_size, **kw)
    t = _fit(model, "reconstruct", table, (channel,), patch_size, factor, params, on_epoch)
    figs = {"learning_curves.png": training_plots.curves_png(t.result.history, f"{channel} autoencoder"),
            "reconstructions.png": training_plots.reconstruction_png(model, t.datasets["test"])}
    return _output(model, t, figs, {"channel": channel, **kw}, {})


def fit_unet(table: pd.DataFrame, params: TrainParams, tile_size: int = 512, factor: int = 5,
             model_kwargs: dict | None = None, on_epoch: Callable | None = None) -> FitOutput:
    """U-Net on (borders, actin) tiles -> actin inside cells, weighted cross-entropy, IoU."""
    from ssc_assets.core.learn.models import UNet

    set_seed(params.seed)
    kw = dict(model_kwargs or {})
    model = UNet(in_channels=2, n_classes=2, **kw)
    t = _fit(model, "segment", table[table["masks_store"].notna()], ("borders", "actin"), tile_size, factor, params,
             on_epoch, target="unet")
    figs = {"learning_curves.png": training_plots.curves_png(t.result.history, "U-Net (actin inside cells)"),
            "segmentation_overlays.png": training_plots.segmentation_png(model, t.datasets["test"])}
    return _output(model, t, figs, kw, {"bottleneck": list(model.bottleneck_shape(tile_size, tile_size))})


def site_vectors(table: pd.DataFrame, size: int = 64) -> np.ndarray:
    """Flattened, downsampled corrected sites: (n_sites, 3 * size * size) float32.

    Each site is read from the deepest pyramid level still >= ``size``, channels in MODEL_CHANNELS
    order, area-resized to ``size`` x ``size`` and standardized per channel.
    """
    from skimage.transform import resize

    from ssc_assets.core.io.ome_zarr_store import read_site_image
    from ssc_assets.core.learn.augment import normalize

    idx = [IMAGE_CHANNELS.index(c) for c in MODEL_CHANNELS]
    out = np.empty((len(table), len(idx) * size * size), np.float32)
    for i, r in enumerate(table.itertuples()):
        level = pick_level(int(r.side or size), size, margin=1.0)
        img = read_site_image(r.store, r.Metadata_Well, int(r.Metadata_Site), level)[idx]
        side = min(img.shape[1:])
        y0, x0 = (img.shape[1] - side) // 2, (img.shape[2] - side) // 2
        img = resize(img[:, y0 : y0 + side, x0 : x0 + side], (len(idx), size, size), anti_aliasing=True, preserve_range=True)
        out[i] = normalize(img.astype(np.float32)).ravel()
    return out


def fit_pca_svm(table: pd.DataFrame, n_components: int = 64, size: int = 64, n_folds: int = 5, seed: int = 0,
                group_by: str = "donor") -> FitOutput:
    """PCA baseline (thesis 6.3) + an RBF SVM on the components with grouped CV.

    PCA is fitted on the train split (no test information); the SVM is scored with
    ``n_folds``-fold CV over all sites, folds grouped by ``group_by`` (donor by default; the
    thesis' ungrouped folds are also reported as ``cv_ungrouped``). Returns the sklearn
    pipeline (scaler + PCA) as ``model``.
    """
    from sklearn.decomposition import PCA
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from ssc_assets.core.learn.loop import binary_metrics

    X = site_vectors(table, size)
    y = table["label"].to_numpy()
    train_mask = (table["split"] == "train").to_numpy()
    k = int(min(n_components, train_mask.sum() - 1, X.shape[1]))
    pca = make_pipeline(StandardScaler(), PCA(n_components=k, random_state=seed)).fit(X[train_mask])
    Z = pca.transform(X)
    groups = table["Metadata_Donor"] if group_by == "donor" else table["Metadata_Plate"] + "/" + table["Metadata_Well"]

    def cv(splitter, use_groups: bool) -> dict[str, float]:
        y_true, prob = [], []
        n_splits = splitter.get_n_splits()
        split_iter = splitter.split(Z, y, groups) if use_groups else splitter.split(Z, y)
        for tr, te in split_iter:
            clf = SVC(kernel="rbf", C=1.0, random_state=seed).fit(Z[tr], y[tr])
            y_true.append(y[te])
            prob.append(clf.predict(Z[te]).astype(float))
        m = binary_metrics(np.concatenate(y_true), np.concatenate(prob))
        m["n_folds"] = n_splits
        return m

    n_groups = int(groups.nunique())
    folds = max(2, min(n_folds, n_groups, int(np.bincount(y).min()) if len(np.unique(y)) > 1 else 2))
    grouped = cv(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed), True)
    ungrouped = cv(StratifiedKFold(n_splits=max(2, min(n_folds, int(np.bincount(y).min()))), shuffle=True, random_state=seed), False)
    ev = pca[-1].explained_variance_ratio_
    metrics = {"cv_grouped": grouped, "cv_ungrouped": ungrouped,
               "pca": {"n_components": float(k), "explained_variance": float(ev.sum())}}
    return FitOutput(pca, [], 0, math.nan, metrics, {}, X[:1], {"n_components": k, "size": size, "n_folds": folds, "group_by": group_by},
                     {"explained_variance_ratio": ev.tolist()})
