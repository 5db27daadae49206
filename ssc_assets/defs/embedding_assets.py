"""Embeddings (group ``embeddings``, per plate) and clusterings (group ``clusterings``, all plates).

One site-embedding asset per method (``site_embeddings_pca``, ``_autoencoder``,
``_classifier``, ``_densenet``, ``_cells``, ``_cell_autoencoder``, ``_profiles``): each has its own lineage (its model ->
its embeddings) and can be re-materialized alone, e.g. after a new champion. Models come
from the MLflow registry (alias ``champion``); the version used is in the metadata.
"""

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from ssc_assets.core.ingest.channels import IMAGE_CHANNELS, MODEL_CHANNELS
from ssc_assets.core.learn.embeddings import (
    autoencoder_embeddings,
    embed_sites,
    embedding_frame,
    pca_embeddings,
)
from ssc_assets.core.learn.embeddings import (
    well_embeddings as aggregate_wells,
)
from ssc_assets.core.learn.fit import training_sites
from ssc_assets.core.schema import DONOR, DONOR_TRAINED, METHOD, N_SITES, SITE_META, WELL, feature_columns, site_meta
from ssc_assets.defs.automation import IO_RETRY, PER_PLATE_DOWNSTREAM, fail_fast
from ssc_assets.defs.core_defaults import core_field
from ssc_assets.defs.manifests import plate_images, plate_masks
from ssc_assets.defs.metadata import check_failure_fraction, md_table, site_failures
from ssc_assets.defs.mlflow_tracking import DEMO, DEMO_WARNING, MlflowTracking
from ssc_assets.defs.model_families import FAMILIES
from ssc_assets.defs.partitions import plates
from ssc_assets.defs.resources import SiteCompute


def _plate_table(context, corrected_images: dict, raw_sites: pd.DataFrame, masks: dict | None = None) -> pd.DataFrame:
    plate = context.partition_key
    table = training_sites([plate_images(plate, corrected_images)], {plate: raw_sites},
                           [plate_masks(plate, masks)] if masks else ())
    if table.empty:
        raise dg.Failure(f"plate {plate}: no corrected sites to embed", allow_retries=False)
    return table


def _model_metadata(mlflow_tracking: MlflowTracking, infos: list[dict]) -> dict:
    md = {}
    for info in infos:
        md[f"model {info['model']}"] = f"{info['uri']} = version {info['version']} (run {info['run_id']})"
    md["model_versions"] = dg.MetadataValue.json({i["model"]: i["version"] for i in infos})
    md["model_presets"] = dg.MetadataValue.json({i["model"]: i.get("preset") for i in infos})
    demo = [f"{i['model']} v{i['version']}" for i in infos if i.get("preset") == DEMO]
    if demo:  # embeddings of a demo-preset champion are a smoke test, said where they are shown
        md["warning"] = dg.MetadataValue.md(DEMO_WARNING + f"\n\nChampion(s) with the demo preset: {', '.join(demo)}.")
    return md


def _emit(context, df: pd.DataFrame, extra: dict) -> pd.DataFrame:
    n_feat = len(feature_columns(df))
    context.add_output_metadata({"n_sites": len(df), "n_features": n_feat, **extra})
    return df


EMBED_KW = dict(partitions_def=plates, group_name="embeddings", io_manager_key="parquet_io_manager", code_version="1",
                automation_condition=PER_PLATE_DOWNSTREAM, retry_policy=IO_RETRY)


@dg.asset(deps=["pca_model"], kinds={"sklearn", "mlflow"}, **EMBED_KW)
@fail_fast
def site_embeddings_pca(context: dg.AssetExecutionContext, corrected_images: dict, raw_sites: pd.DataFrame,
                        mlflow_tracking: MlflowTracking) -> pd.DataFrame:
    """PCA components (64) of each QC-passed site (model ``ssc-pca@champion``)."""
    table = _plate_table(context, corrected_images, raw_sites)
    family = FAMILIES["pca"]
    model, info = mlflow_tracking.load_champion(family.registered_model(), flavor=family.flavor)
    emb = pca_embeddings(model, table, int(info["params"].get("size", 64)))
    return _emit(context, embedding_frame(table, "pca", emb), _model_metadata(mlflow_tracking, [info]))


@dg.asset(deps=["autoencoder_models"], kinds={"pytorch", "mlflow"}, **EMBED_KW)
@fail_fast
def site_embeddings_autoencoder(context: dg.AssetExecutionContext, corrected_images: dict, raw_sites: pd.DataFrame,
                                mlflow_tracking: MlflowTracking) -> pd.DataFrame:
    """actin || borders || nuclei autoencoder bottlenecks (3 x 256) of each site's centre patch."""
    table = _plate_table(context, corrected_images, raw_sites)
    models, infos = {}, []
    for ch in MODEL_CHANNELS:
        family = FAMILIES["autoencoder"]
        models[ch], info = mlflow_tracking.load_champion(family.registered_model(ch), flavor=family.flavor)
        infos.append(info)
    emb = autoencoder_embeddings(models, table, int(infos[0]["params"]["input_size"]))
    return _emit(context, embedding_frame(table, "autoencoder", emb), _model_metadata(mlflow_tracking, infos))


def _classifier_embeddings(context, corrected_images, raw_sites, mlflow_tracking, method: str) -> pd.DataFrame:
    table = _plate_table(context, corrected_images, raw_sites)
    family = FAMILIES[method]
    model, info = mlflow_tracking.load_champion(family.registered_model(), flavor=family.flavor)
    emb = embed_sites(model, table, MODEL_CHANNELS, int(info["params"]["input_size"]))
    md = _model_metadata(mlflow_tracking, [info])
    if "weights_source" in info["params"]:
        md["weights_source"] = info["params"]["weights_source"]
    return _emit(context, embedding_frame(table, method, emb), md)


@dg.asset(deps=["classifier_model"], kinds={"pytorch", "mlflow"}, **EMBED_KW)
@fail_fast
def site_embeddings_classifier(context: dg.AssetExecutionContext, corrected_images: dict, raw_sites: pd.DataFrame,
                               mlflow_tracking: MlflowTracking) -> pd.DataFrame:
    """Custom classifier embedding (E = 8) of each site's centre crop (``ssc-classifier@champion``)."""
    return _classifier_embeddings(context, corrected_images, raw_sites, mlflow_tracking, "classifier")


@dg.asset(deps=["densenet_model"], kinds={"pytorch", "mlflow"}, **EMBED_KW)
@fail_fast
def site_embeddings_densenet(context: dg.AssetExecutionContext, corrected_images: dict, raw_sites: pd.DataFrame,
                             mlflow_tracking: MlflowTracking) -> pd.DataFrame:
    """DenseNet-121 classifier embedding (E = 8) of each site's centre crop (``ssc-densenet@champion``)."""
    return _classifier_embeddings(context, corrected_images, raw_sites, mlflow_tracking, "densenet")


class CellEmbeddingConfig(dg.Config):
    max_crops_per_site: int = core_field("ssc_assets.core.learn.cell_crops:EMBED_CROPS_PER_SITE",
                                         "Cells embedded per site (deterministic draw). The site embedding is their median.")


@dg.asset(deps=["cell_classifier_model"], kinds={"pytorch", "mlflow"}, **EMBED_KW)
@fail_fast
def site_embeddings_cells(context: dg.AssetExecutionContext, config: CellEmbeddingConfig, corrected_images: dict,
                          masks: dict, raw_sites: pd.DataFrame, mlflow_tracking: MlflowTracking) -> pd.DataFrame:
    """Single-cell CNN (``ssc-cells@champion``): the 16-d embedding of each cell crop, median per
    site, plus ``Metadata_Score`` (median cell logit, > 0 = SSc-like) and ``Metadata_n_cells``."""
    from ssc_assets.core.learn.cell_training import cell_outputs

    sites, md, info = _cell_embeddings(context, config, corrected_images, masks, raw_sites, mlflow_tracking, "cells",
                                       cell_outputs)  # embedding and logit from one forward pass
    if sites is None:  # no masks or no nuclei: the other methods of this plate still go on
        return _no_crops(context, md, "cells")
    trained = _champion_donors(mlflow_tracking, info, context)
    sites[DONOR_TRAINED] = sites[DONOR].astype(str).isin(trained) if trained is not None else pd.NA
    return _emit(context, sites, md)


#: Sites whose cell crops are embedded together (bounds memory: ~48 KiB per 64-px crop).
SITES_PER_BATCH = 16


def _cell_embeddings(context, config: CellEmbeddingConfig, corrected_images: dict, masks: dict, raw_sites: pd.DataFrame,
                     mlflow_tracking: MlflowTracking, method: str, embed):
    """Cell crops of the plate's masked sites, :data:`SITES_PER_BATCH` sites at a time, embedded
    by the ``method`` family's champion: ``embed(model, crops) -> (codes (N, E), logits (N,) or
    None)``, then the median per site (:func:`aggregate_cells`). Returns ``(sites or None if no
    crops, metadata, champion info)``."""
    from ssc_assets.core.learn.cell_crops import build_crop_dataset
    from ssc_assets.core.learn.cell_training import aggregate_cells

    table = _plate_table(context, corrected_images, raw_sites, masks)
    table = table[table["masks_store"].notna()].reset_index(drop=True)
    family = FAMILIES[method]
    model, info = mlflow_tracking.load_champion(family.registered_model(), flavor=family.flavor)
    crop = _crop_params(info, config.max_crops_per_site)
    parts, n_cells = [], 0
    for start in range(0, len(table), SITES_PER_BATCH):  # a batch of sites' crops in memory at a time
        data = build_crop_dataset(table.iloc[start:start + SITES_PER_BATCH], crop)
        if len(data):
            codes, logits = embed(model, data.crops)
            parts.append(aggregate_cells(data.table, codes, method, logits=logits)[0])
            n_cells += len(data)
    md = {**_model_metadata(mlflow_tracking, [info]), "n_cells": n_cells}
    if not parts:
        return None, md, info
    sites = pd.concat(parts, ignore_index=True)
    md["cells_per_site_median"] = float(sites["Metadata_n_cells"].median())
    return sites, md, info


def _crop_params(info: dict, max_per_site: int):
    """The champion's crop settings (its run's ``crop_*`` params), ``max_per_site`` cells per site."""
    from ssc_assets.core.learn.cell_crops import CropParams

    p = info["params"]
    return CropParams(size=int(p["crop_size"]), downsample=int(p["crop_downsample"]), border=p["crop_border"],
                      normalize=p["crop_normalize"], max_per_site=max_per_site, seed=int(p.get("seed", 0)))


def _no_crops(context, md: dict, method: str) -> pd.DataFrame:
    context.log.warning(f"plate {context.partition_key}: no cell crops (no masks or no nuclei): no {method} embedding")
    md["warning"] = f"no cell crops on this plate (no masks or no nuclei): no `{method}` embedding"
    return _emit(context, pd.DataFrame(columns=[*SITE_META, METHOD]), md)


@dg.asset(deps=["cell_autoencoder_model"], kinds={"pytorch", "mlflow"}, **{**EMBED_KW, "code_version": "2"})  # 2: pooled maps
@fail_fast
def site_embeddings_cell_autoencoder(context: dg.AssetExecutionContext, config: CellEmbeddingConfig,
                                     corrected_images: dict, masks: dict, raw_sites: pd.DataFrame,
                                     mlflow_tracking: MlflowTracking) -> pd.DataFrame:
    """Cell autoencoder (``ssc-cell_autoencoder@champion``): each cell crop's encoder feature maps
    averaged over the crop (96-d; models registered before code version 3 of the model asset:
    their 16-d code), median per site, plus ``Metadata_n_cells``. Trained without labels, so no
    donor was "seen"."""
    from ssc_assets.core.learn.cell_autoencoder import embed_cells_autoencoder

    sites, md, _ = _cell_embeddings(context, config, corrected_images, masks, raw_sites, mlflow_tracking,
                                    "cell_autoencoder", lambda m, x: (embed_cells_autoencoder(m, x), None))
    if sites is None:
        return _no_crops(context, md, "cell_autoencoder")
    return _emit(context, sites, md)


def _champion_donors(mlflow_tracking: MlflowTracking, info: dict, context) -> set[str] | None:
    """Donors the champion was trained or validated on (its run's ``splits.csv``), or None."""
    try:
        path = mlflow_tracking.client().download_artifacts(info["run_id"], "splits.csv")
        return set(pd.read_csv(path)[DONOR].astype(str))
    except Exception as exc:  # noqa: BLE001 - scores of unknown provenance are then not used for donors
        context.log.warning(f"the champion's training donors are unknown ({type(exc).__name__}: {exc})")
        return None


class ProfilesConfig(dg.Config):
    level: int = core_field("ssc_assets.core.image.site_tasks:ProfileSiteTask.level",
                            "OME-Zarr pyramid level measured (0 = full resolution; 1 = 2x down, ~4x faster).")
    feature_set: str = core_field("ssc_assets.core.image.site_tasks:ProfileSiteTask.feature_set",
                                  "Per-cell features: 'curated' (156 CellProfiler-style features from vectorised "
                                  "per-object sums, ~0.5 core-s per 2048² site) or 'cp_measure' (the full "
                                  "CellProfiler port, ~850 features, ~20 core-s per site).")
    fast: bool = core_field("ssc_assets.core.image.site_tasks:ProfileSiteTask.fast",
                            "cp_measure only: skip texture, granularity and Costes colocalization (~4x faster).")
    max_failed_fraction: float = Field(0.05, description="The asset fails if more sites than this fraction raise.")


@dg.asset(kinds={"python"}, **{**EMBED_KW, "code_version": "2"})  # 2: curated feature set by default
@fail_fast
def site_embeddings_profiles(context: dg.AssetExecutionContext, config: ProfilesConfig, corrected_images: dict,
                             masks: dict, raw_sites: pd.DataFrame, compute: SiteCompute) -> pd.DataFrame:
    """CellProfiler-style profiles: per-cell features, median per site. ``feature_set: curated``
    (default; :mod:`ssc_assets.core.analysis.profile_features`): nuclei, cells and cytoplasm
    shape, intensity, texture, radial distribution, cell-border band (junction / cortex) and
    channel correlations from vectorised per-object sums; ``feature_set: cp_measure``: the full
    cp_measure set (intensity, size/shape, texture, granularity, correlation of the three channels).

    Raw medians; normalization against the plate's HC wells and feature selection
    (pycytominer) happen in ``clusterings``, across all plates.
    """
    from ssc_assets.core.image.site_tasks import PROFILE_FEATURE_SETS, ProfileSiteTask, profile_site

    if config.feature_set not in PROFILE_FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {list(PROFILE_FEATURE_SETS)}, got {config.feature_set!r}")
    table = _plate_table(context, corrected_images, raw_sites, masks)
    table = table[table["masks_store"].notna()].reset_index(drop=True)
    tasks = [ProfileSiteTask(r.store, r.masks_store, r.Metadata_Well, int(r.Metadata_Site), tuple(IMAGE_CHANNELS),
                             config.level, config.fast, config.feature_set) for r in table.itertuples()]
    results = compute.map(profile_site, tasks)
    failures = site_failures(results, tasks, context, "profiles")
    check_failure_fraction(failures, len(tasks), config.max_failed_fraction, "site_embeddings_profiles")
    ok = [i for i, r in enumerate(results) if r.ok]
    prof = pd.DataFrame([results[i].value["profile"] for i in ok])
    errors = sorted({e for i in ok for e in results[i].value["errors"]})
    df = pd.concat([table.loc[ok, site_meta(table)].reset_index(drop=True).assign(**{METHOD: "profiles"}),
                    prof.reset_index(drop=True)], axis=1)
    md = {"feature_set": config.feature_set, "n_features": int(prof.shape[1]) - 1 if len(prof) else 0,
          "n_failed": len(failures), "failed_sites": dg.MetadataValue.md(md_table(failures)),
          "cells_per_site_median": float(np.median([results[i].value["n_cells"] for i in ok])) if ok else 0.0,
          "measurement_errors": dg.MetadataValue.md("\n".join(f"- {e}" for e in errors[:30]) or "_none_")}
    return _emit(context, df, md)


@dg.asset(kinds={"pandas"}, **EMBED_KW)
@fail_fast
def well_embeddings(context: dg.AssetExecutionContext, site_embeddings_pca: pd.DataFrame, site_embeddings_autoencoder: pd.DataFrame,
                    site_embeddings_classifier: pd.DataFrame, site_embeddings_densenet: pd.DataFrame,
                    site_embeddings_cells: pd.DataFrame, site_embeddings_cell_autoencoder: pd.DataFrame,
                    site_embeddings_profiles: pd.DataFrame) -> pd.DataFrame:
    """Median over each well's QC-passed sites, per method (the thesis' sample embedding).

    Columns: ``Metadata_Plate, Metadata_Well, Metadata_Donor, Metadata_Condition,
    Metadata_Group, Metadata_Method, Metadata_n_sites`` + features (``f0000``... for learned embeddings,
    CellProfiler names for profiles; NaN where a method has fewer features).
    """
    frames = [df for df in (site_embeddings_pca, site_embeddings_autoencoder, site_embeddings_classifier,
                            site_embeddings_densenet, site_embeddings_cells, site_embeddings_cell_autoencoder,
                            site_embeddings_profiles) if len(df)]
    wells = aggregate_wells(pd.concat(frames, ignore_index=True))
    summary = wells.groupby(METHOD).agg(n_wells=(WELL, "nunique"), sites_per_well=(N_SITES, "median"))
    feats = feature_columns(wells)
    dims = {m: int(wells.loc[wells[METHOD] == m, feats].notna().any().sum()) for m in wells[METHOD].unique()}
    summary["n_features"] = pd.Series(dims)
    context.add_output_metadata({"n_wells": int(wells["Metadata_Well"].nunique()),
                                 "per_method": dg.MetadataValue.md(md_table(summary.reset_index()))})
    return wells
