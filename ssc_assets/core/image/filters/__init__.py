"""Per-channel image preprocessing of the thesis (section 5.1), fast and ImageJ-faithful.

The chain, per channel of one site, is::

    remove outliers (ImageJ "Remove Outliers", bright)  -> nuclei r=10 t=50, borders r=50 t=2000
    rolling-ball background subtraction (ImageJ)        -> radius 50, 3x3 pre-smoothing
    median filter (ImageJ RankFilters, circular)        -> radius 2
    total-variation denoising (skimage Chambolle)       -> weight TV_WEIGHT on a [0, 1] scale
    centre crop                                         -> 1536 x 1536 of 2048 x 2048

Conventions: every kernel takes a 2-D ``float32`` (or castable) array ``(H, W)`` in raw
intensity units (camera counts after illumination correction) and returns a new ``float32``
array of the same shape and units (``centre_crop`` returns a smaller view-free copy). Edges
are replicated, as in ImageJ. Each fast kernel has a slow, obviously-correct ``*_reference``
twin used by the tests and ``benchmarks/image_steps.py``; measured speed-ups and deviations
are recorded in ``docs/image-benchmarks.md``.

Pure numpy / scipy / OpenCV: no Dagster import. Work is parallelised over at most
``SSC_IMAGE_THREADS`` threads (default ``min(2, cpu_count)``); numpy and OpenCV release the
GIL in the heavy loops.
"""

from __future__ import annotations

from ssc_assets.core.image.filters.crop import centre_crop
from ssc_assets.core.image.filters.kernels import circular_kernel
from ssc_assets.core.image.filters.median import median_filter, median_filter_reference
from ssc_assets.core.image.filters.outliers import remove_outliers, remove_outliers_reference
from ssc_assets.core.image.filters.preprocess import ChannelPreprocess, PreprocessParams, preprocess_channel
from ssc_assets.core.image.filters.rolling_ball import (
    rolling_ball_background,
    rolling_ball_reference,
    subtract_background,
    subtract_background_reference,
)
from ssc_assets.core.image.filters.tv import TV_WEIGHT, robust_range, tv_denoise, tv_denoise_reference

__all__ = [
    "TV_WEIGHT",
    "ChannelPreprocess",
    "PreprocessParams",
    "centre_crop",
    "circular_kernel",
    "median_filter",
    "median_filter_reference",
    "preprocess_channel",
    "remove_outliers",
    "remove_outliers_reference",
    "rolling_ball_background",
    "rolling_ball_reference",
    "robust_range",
    "subtract_background",
    "subtract_background_reference",
    "tv_denoise",
    "tv_denoise_reference",
]
