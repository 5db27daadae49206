"""Small PNG figures for asset metadata and reports (matplotlib, Agg backend)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def fig_to_png(fig, dpi: int = 70) -> bytes:
    """Render and close a matplotlib figure; returns PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_markdown(png: bytes, alt: str = "figure") -> str:
    """Markdown image with an inline base64 data URI (Dagster has no image metadata type)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def qc_histograms(qc: pd.DataFrame, measures: Sequence[str], title: str = "") -> bytes:
    """Grid of histograms (rows: channels, columns: measures); failed images in red.

    ``qc`` needs ``channel``, ``image_passed`` and the measure columns.
    """
    channels = list(dict.fromkeys(qc["channel"]))
    fig, axes = plt.subplots(
        len(channels), len(measures), figsize=(2.0 * len(measures), 1.6 * len(channels)), squeeze=False
    )
    for i, ch in enumerate(channels):
        sub = qc[qc["channel"] == ch]
        for j, m in enumerate(measures):
            ax = axes[i, j]
            vals = sub[m].astype(float)
            finite = vals[np.isfinite(vals)]
            bins = np.histogram_bin_edges(finite, bins=20) if len(finite) else 10
            ax.hist(vals[sub["image_passed"] & np.isfinite(vals)], bins=bins, color="#4477aa")
            ax.hist(vals[~sub["image_passed"] & np.isfinite(vals)], bins=bins, color="#cc3311")
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(m, fontsize=8)
            if j == 0:
                ax.set_ylabel(ch, fontsize=8)
    if title:
        fig.suptitle(title + "  (red: flagged)", fontsize=9)
    fig.tight_layout()
    return fig_to_png(fig)


def to_display(img: np.ndarray, lo_q: float = 0.01, hi_q: float = 0.995) -> np.ndarray:
    """Robust contrast stretch of a 2-D image to float [0, 1]."""
    img = np.asarray(img, dtype=np.float32)
    lo, hi = np.quantile(img, [lo_q, hi_q]) if img.size else (0.0, 1.0)
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def montage(tiles: Sequence[np.ndarray], labels: Sequence[str], ncols: int = 4, tile_inches: float = 1.6) -> bytes:
    """Montage of 2-D tiles (each contrast-stretched) with a caption per tile."""
    n = max(len(tiles), 1)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(tile_inches * ncols, tile_inches * nrows + 0.2), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, tile, label in zip(axes.ravel(), tiles, labels):
        ax.imshow(to_display(tile), cmap="gray", interpolation="nearest")
        ax.set_title(label, fontsize=6)
    fig.tight_layout()
    return fig_to_png(fig)


def downsample(img: np.ndarray, max_side: int = 128) -> np.ndarray:
    """Block-mean downsample of a 2-D image so that its longer side is at most ``max_side``."""
    f = int(np.ceil(max(img.shape) / max_side))
    if f <= 1:
        return np.asarray(img, dtype=np.float32)
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).astype(np.float32).mean(axis=(1, 3))
