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


def _robust_range(values: np.ndarray) -> tuple[float, float]:
    """x range that ignores a few extreme values: [q25 - 3 IQR, q75 + 3 IQR], clipped to the
    data's range (a handful of saturated sites must not squash the axis)."""
    vmin, q25, q75, vmax = np.quantile(values, [0.0, 0.25, 0.75, 1.0])
    iqr = max(q75 - q25, 1e-6 * max(abs(q75), 1.0))
    lo, hi = max(vmin, q25 - 3 * iqr), min(vmax, q75 + 3 * iqr)
    pad = 0.05 * max(hi - lo, iqr)
    return float(lo - pad), float(hi + pad)


def qc_histograms(
    qc: pd.DataFrame,
    measures: Sequence[str],
    title: str = "",
    thresholds: dict[tuple[str, str], float] | None = None,
) -> bytes:
    """Grid of histograms (rows: channels, columns: measures), readable at a glance.

    Passed images in blue, failed in red (stacked, so failed bars are never hidden), review
    flags in orange; x ranges are robust (1st-99th percentile plus a margin) and values
    outside are clipped into the edge bins and counted in the panel ("n beyond"); dashed
    lines mark absolute ``thresholds`` ((channel or "*", measure) -> value). ``qc`` needs
    ``channel``, ``image_passed`` (and optionally ``image_review``) and the measure columns.
    """
    thresholds = thresholds or {}
    channels = list(dict.fromkeys(qc["channel"]))
    measures = [m for m in measures if m in qc and qc[m].notna().any()]
    fig, axes = plt.subplots(len(channels), len(measures), figsize=(2.7 * len(measures), 2.1 * len(channels)), squeeze=False)
    review = qc["image_review"] if "image_review" in qc else pd.Series(False, index=qc.index)
    for i, ch in enumerate(channels):
        sub = qc["channel"] == ch
        for j, m in enumerate(measures):
            ax = axes[i, j]
            vals = qc[m].astype(float)
            finite = sub & np.isfinite(vals)
            if not finite.any():
                ax.set_axis_off()
                continue
            lo, hi = _robust_range(vals[finite].to_numpy())
            thr = thresholds.get((ch, m), thresholds.get(("*", m)))
            if thr is not None:
                lo, hi = min(lo, thr - 0.05 * abs(thr)), max(hi, thr + 0.05 * abs(thr))
            clipped = vals.clip(lo, hi)
            beyond = int(((vals < lo) | (vals > hi))[finite].sum())
            bins = np.linspace(lo, hi, 26)
            groups = [(finite & qc["image_passed"] & ~review, "#4477aa", "passed"),
                      (finite & qc["image_passed"] & review, "#ee7733", "review"),
                      (finite & ~qc["image_passed"], "#cc3311", "failed")]
            data = [clipped[g] for g, _, _ in groups]
            ax.hist(data, bins=bins, stacked=True, color=[c for _, c, _ in groups], label=[lab for _, _, lab in groups])
            if thr is not None:
                ax.axvline(thr, color="black", ls="--", lw=1.2)
            if beyond:
                ax.text(0.98, 0.95, f"{beyond} beyond", transform=ax.transAxes, ha="right", va="top", fontsize=8)
            ax.tick_params(labelsize=8)
            if i == 0:
                ax.set_title(m, fontsize=10)
            if j == 0:
                ax.set_ylabel(f"{ch}\nimages", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=9, ncols=3, frameon=False)
    if title:
        fig.suptitle(title + "   (dashed: absolute threshold)", fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig_to_png(fig, dpi=80)


def review_gallery(tiles: Sequence[tuple[np.ndarray | None, str, str, str]], ncols: int = 4) -> bytes:
    """Thumbnails with their QC verdict: ``(image or None, site label, reason, status)`` with
    status "failed" (red caption) or "review" (orange). Reasons are wrapped, not cut."""
    import textwrap

    n = max(len(tiles), 1)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (img, label, reason, status) in zip(axes.ravel(), tiles):
        if img is not None:
            ax.imshow(to_display(img), cmap="gray", interpolation="nearest")
        else:
            ax.text(0.5, 0.5, "no readable image", ha="center", va="center", fontsize=9)
        colour = "#cc3311" if status == "failed" else "#ee7733"
        text = textwrap.fill(f"{label} [{status}] {reason}", 38)
        lines = text.splitlines()
        if len(lines) > 6:
            text = "\n".join(lines[:6]) + " ..."
        ax.set_title(text, fontsize=7.5, color=colour, loc="left")
    fig.tight_layout()
    return fig_to_png(fig, dpi=80)


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
