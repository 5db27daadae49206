"""The per-channel thesis chain (section 5.1): parameters and :func:`preprocess_channel`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ssc_assets.core.image.filters.crop import centre_crop
from ssc_assets.core.image.filters.kernels import _as_f32
from ssc_assets.core.image.filters.median import median_filter
from ssc_assets.core.image.filters.outliers import remove_outliers
from ssc_assets.core.image.filters.rolling_ball import subtract_background
from ssc_assets.core.image.filters.tv import TV_WEIGHT, tv_denoise


@dataclass(frozen=True)
class ChannelPreprocess:
    """Parameters of the chain for one channel (thesis defaults in :class:`PreprocessParams`).

    Radii are in pixels, thresholds in raw intensity units, ``tv_weight`` on the robust
    [0, 1] scale. ``None`` (or 0) disables a step.
    """

    outlier_radius: float | None = None
    outlier_threshold: float | None = None
    rolling_ball_radius: float | None = 50.0
    presmooth: bool = True
    median_radius: float | None = 2.0
    tv_weight: float | None = TV_WEIGHT
    crop_fraction: float = 0.75
    crop_size: int | None = None


@dataclass(frozen=True)
class PreprocessParams:
    """Thesis section 5.1 defaults per channel ("nuclei", "borders", "actin")."""

    nuclei: ChannelPreprocess = field(
        default_factory=lambda: ChannelPreprocess(outlier_radius=10.0, outlier_threshold=50.0)
    )
    borders: ChannelPreprocess = field(
        default_factory=lambda: ChannelPreprocess(outlier_radius=50.0, outlier_threshold=2000.0)
    )
    actin: ChannelPreprocess = field(default_factory=ChannelPreprocess)

    def scaled(self, factor: float) -> "PreprocessParams":
        """The same chain for another pixel size: every radius x ``factor`` (= reference
        pixel size / this site's pixel size), so that radii stay the same in um. A median
        radius that falls below 0.5 px is disabled; thresholds and crops are unchanged."""
        if factor == 1.0:
            return self

        def one(c: ChannelPreprocess) -> ChannelPreprocess:
            med = c.median_radius * factor if c.median_radius else None
            return replace(
                c,
                outlier_radius=max(1.0, c.outlier_radius * factor) if c.outlier_radius else c.outlier_radius,
                rolling_ball_radius=max(1.0, c.rolling_ball_radius * factor) if c.rolling_ball_radius else c.rolling_ball_radius,
                median_radius=med if med and med >= 0.5 else None,
            )

        return PreprocessParams(nuclei=one(self.nuclei), borders=one(self.borders), actin=one(self.actin))

    def for_channel(self, channel: str) -> ChannelPreprocess:
        try:
            return getattr(self, channel)
        except AttributeError:
            raise KeyError(f"no preprocessing parameters for channel {channel!r}") from None


def preprocess_channel(
    img: np.ndarray, channel: str, params: PreprocessParams | None = None, *, crop: bool = True
) -> np.ndarray:
    """Thesis chain for one channel of one site: outliers -> rolling ball -> median -> TV
    -> centre crop. ``img`` (H, W) in raw units (illumination-corrected); returns float32,
    ``(0.75 H, 0.75 W)`` by default (``crop=False`` keeps the full frame)."""
    p = (params or PreprocessParams()).for_channel(channel)
    x = _as_f32(img)
    if p.outlier_radius and p.outlier_threshold is not None:
        x = remove_outliers(x, p.outlier_radius, p.outlier_threshold)
    if p.rolling_ball_radius:
        x = subtract_background(x, p.rolling_ball_radius, presmooth=p.presmooth)
    if p.median_radius:
        x = median_filter(x, p.median_radius)
    if p.tv_weight:
        x = tv_denoise(x, p.tv_weight)
    if crop:
        x = centre_crop(x, p.crop_size, p.crop_fraction)
    return x
