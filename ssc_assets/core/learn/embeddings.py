"""Site and well embeddings from trained models (pure: no Dagster, no MLflow).

Embeddings are computed on unaugmented centre crops (the test transform: centre crop +
per-channel normalization), read from the same pyramid level rule as training
(:func:`model_training.pick_level`), as the thesis did. Well embeddings are the median over
a well's QC-passed sites.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager

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

METHODS = ("pca", "autoencoder", "classifier", "densenet", "cells", "cell_autoencoder", "profiles")


def feature_names(n: int) -> list[str]:
    return [f"f{i:04d}" for i in range(n)]


def inference_threads(workers: int = 1) -> int:
    """Torch intra-op threads for one of ``workers`` processes embedding side by side:
    ``max(1, cores // workers)``. The per-plate jobs run their steps in one process, one after
    the other (``in_process_first_executor``), so the default is all cores; steps in parallel
    processes (the multiprocess executor) should pass their number, or ``threads=1``: measured
    under load, two processes with 2 threads each on 2 cores ran DenseNet-121 2x slower than
    with 1 thread each."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@contextmanager
def inference_context(threads: int | None = None):
    """``torch.inference_mode()`` with ``threads`` intra-op threads (None:
    :func:`inference_threads`), restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads or inference_threads())
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(old)


def embed_sites(encode, table: pd.DataFrame, channels: tuple[str, ...], input_size: int,
                batch_size: int = 8, threads: int | None = None, channels_last: bool = True) -> np.ndarray:
    """Embeddings (n_sites, E) float32 of centre crops of ``input_size`` px.

    ``encode``: a model in eval mode with ``embed`` (the classifiers), or any callable mapping
    a batch (B, len(channels), S, S) to (B, E). Each site is read once; ``batch_size`` sites
    go through the model at a time, under ``torch.inference_mode()`` with ``threads`` torch
    threads (:func:`inference_context`). ``channels_last``: batches in channels-last memory
    format, and a model's weights too for the call (restored afterwards); on CPU convolutions
    run up to ~2x faster so (measured by ``benchmarks/embed_inference.py``). The pyramid
    level is chosen per plate from the stored side, with the training rule. Results equal the
    unbatched, contiguous forward pass up to float rounding (~1e-6).
    """
    model = encode if isinstance(encode, torch.nn.Module) else None
    if model is not None:
        model.eval()
        encode = model.embed
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    result: np.ndarray | None = None
    position = {idx: i for i, idx in enumerate(table.index)}
    with _memory_format(model, fmt), inference_context(threads):  # weights converted outside inference mode
        for _, part in table.groupby("Metadata_Plate", sort=False):
            level = pick_level(int(part["side"].max() or input_size), input_size)
            ds = SiteDataset(refs(part), channels, IMAGE_CHANNELS, "test", AugmentParams(input_size=input_size), level=level)
            emb = np.concatenate([encode(x.contiguous(memory_format=fmt)).float().cpu().numpy()
                                  for x, _ in DataLoader(ds, batch_size=batch_size)])
            if result is None:
                result = np.full((len(table), emb.shape[1]), np.nan, np.float32)
            result[[position[i] for i in part.index]] = emb
    return result if result is not None else np.zeros((0, 0), np.float32)


@contextmanager
def _memory_format(model: torch.nn.Module | None, fmt: torch.memory_format):
    """Convolution weights of ``model`` in ``fmt`` for the block, then back to contiguous."""
    if model is None or fmt == torch.contiguous_format:
        yield
        return
    model.to(memory_format=fmt)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def autoencoder_embeddings(models: dict[str, torch.nn.Module], table: pd.DataFrame, patch_size: int,
                           threads: int | None = None) -> np.ndarray:
    """actin || borders || nuclei encodings (n_sites, 3 x E), the thesis' order.

    One read per site: each channel of the (per-channel normalized) crop goes to its model.
    """
    fmt = torch.channels_last
    for m in models.values():
        m.eval()

    def encode(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([models[ch].encode(x[:, i : i + 1].contiguous(memory_format=fmt))
                          for i, ch in enumerate(MODEL_CHANNELS)], dim=1)

    with ExitStack() as stack:
        for m in models.values():
            stack.enter_context(_memory_format(m, fmt))
        return embed_sites(encode, table, MODEL_CHANNELS, patch_size, threads=threads)


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
