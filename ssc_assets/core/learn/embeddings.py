"""Site and well embeddings from trained models (pure: no Dagster, no MLflow).

Embeddings are computed on unaugmented centre crops (the test transform: centre crop +
per-channel normalization), read from the same pyramid level rule as training
(:func:`model_training.pick_level`), as the thesis did. Well embeddings are the median over
a well's QC-passed sites.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ssc_assets.core.ingest.channels import IMAGE_CHANNELS, MODEL_CHANNELS
from ssc_assets.core.learn.augment import AugmentParams, SiteDataset
from ssc_assets.core.learn.fit import pick_level, refs, site_vectors
from ssc_assets.core.schema import (
    METHOD,
    N_SITES,
    OPTIONAL_META,
    PLATEMAP_COLUMNS,
    WELL_AGGREGATES,
    WELL_KEY,
    feature_columns,
    site_meta,
)

METHODS = ("pca", "autoencoder", "classifier", "densenet", "cells", "profiles")


def feature_names(n: int) -> list[str]:
    return [f"f{i:04d}" for i in range(n)]


@torch.no_grad()
def embed_sites(encode, table: pd.DataFrame, channels: tuple[str, ...], input_size: int,
                batch_size: int = 8) -> np.ndarray:
    """Embeddings (n_sites, E) float32 of centre crops of ``input_size`` px.

    ``encode``: a model in eval mode with ``embed`` (the classifiers), or any callable mapping
    a batch (B, len(channels), S, S) to (B, E). Each site is read once. The pyramid level is
    chosen per plate from the stored side, with the training rule.
    """
    if isinstance(encode, torch.nn.Module):
        encode.eval()
        encode = encode.embed
    result: np.ndarray | None = None
    position = {idx: i for i, idx in enumerate(table.index)}
    for _, part in table.groupby("Metadata_Plate", sort=False):
        level = pick_level(int(part["side"].max() or input_size), input_size)
        ds = SiteDataset(refs(part), channels, IMAGE_CHANNELS, "test", AugmentParams(input_size=input_size), level=level)
        emb = np.concatenate([encode(x).float().cpu().numpy() for x, _ in DataLoader(ds, batch_size=batch_size)])
        if result is None:
            result = np.full((len(table), emb.shape[1]), np.nan, np.float32)
        result[[position[i] for i in part.index]] = emb
    return result if result is not None else np.zeros((0, 0), np.float32)


def autoencoder_embeddings(models: dict[str, torch.nn.Module], table: pd.DataFrame, patch_size: int) -> np.ndarray:
    """actin || borders || nuclei encodings (n_sites, 3 x E), the thesis' order.

    One read per site: each channel of the (per-channel normalized) crop goes to its model.
    """
    for m in models.values():
        m.eval()

    def encode(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([models[ch].encode(x[:, i : i + 1]) for i, ch in enumerate(MODEL_CHANNELS)], dim=1)

    return embed_sites(encode, table, MODEL_CHANNELS, patch_size)


def pca_embeddings(pipeline, table: pd.DataFrame, size: int) -> np.ndarray:
    """PCA components (n_sites, k) of flattened, downsampled sites (the training transform)."""
    return pipeline.transform(site_vectors(table, size)).astype(np.float32)


def embedding_frame(table: pd.DataFrame, method: str, emb: np.ndarray, names: list[str] | None = None) -> pd.DataFrame:
    """``SITE_META + Metadata_Method`` columns and one column per embedding dimension (``f0000``...)."""
    meta = table[site_meta(table)].reset_index(drop=True).copy()
    meta[METHOD] = method
    feats = pd.DataFrame(emb, columns=names or feature_names(emb.shape[1]))
    return pd.concat([meta, feats], axis=1)


def well_embeddings(site_emb: pd.DataFrame) -> pd.DataFrame:
    """Median over each well's sites, per method.

    Input: site rows (``Metadata_*`` + features, any QC-failed sites already absent).
    Output columns: ``Metadata_Plate, Metadata_Well, Metadata_Donor, Metadata_Condition,
    Metadata_Group[, Metadata_AcquisitionGroup], Metadata_Method, Metadata_n_sites[, Metadata_Score
    (median), Metadata_n_cells (sum)]`` + the features (the median ignores NaN); bracketed
    columns when the sites have them (:data:`~ssc_assets.core.schema.OPTIONAL_META`,
    :data:`~ssc_assets.core.schema.WELL_AGGREGATES`).
    """
    keys = [*WELL_KEY, METHOD]
    feats = feature_columns(site_emb)
    g = site_emb.groupby(keys, sort=True)
    out = g[feats].median()
    out.insert(0, N_SITES, g.size())
    carried = PLATEMAP_COLUMNS + [c for c in OPTIONAL_META if c in site_emb.columns]
    meta = g[carried].first()
    aggs = {c: how for c, how in WELL_AGGREGATES.items() if c in site_emb.columns}
    extra = g.agg(aggs) if aggs else pd.DataFrame(index=out.index)
    for c in aggs:  # all-NaN (another method's rows): NaN, not a sum of 0
        extra.loc[g[c].count() == 0, c] = np.nan
    out = pd.concat([meta, extra, out], axis=1).reset_index()
    return out[[*WELL_KEY, *carried, METHOD, N_SITES, *aggs, *feats]]
