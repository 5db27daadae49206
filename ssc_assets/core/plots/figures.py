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
    """Histograms of QC measures (rows: measures, columns: channels), about 1000 px wide.

    Images are coloured by their SITE's verdict (``passed_qc`` / ``qc_review``; falls back to
    ``image_passed``): passed blue, review orange, failed red, stacked so failed bars are never
    hidden. x ranges are robust (quartiles +- 3 IQR, clipped to the data) and values beyond are
    drawn in the edge bins and counted ("n beyond"); dashed lines mark absolute ``thresholds``
    ((channel or "*", measure) -> value). Axis labels never use an offset.
    """
    thresholds = thresholds or {}
    channels = list(dict.fromkeys(qc["channel"]))
    measures = [m for m in measures if m in qc and qc[m].notna().any()]
    passed = qc["passed_qc"] if "passed_qc" in qc else qc["image_passed"]
    review = (qc["qc_review"] if "qc_review" in qc else pd.Series(False, index=qc.index)) & passed
    fig, axes = plt.subplots(len(measures), len(channels), figsize=(3.9 * len(channels), 1.9 * len(measures)), squeeze=False)
    for i, m in enumerate(measures):
        for j, ch in enumerate(channels):
            ax = axes[i, j]
            vals = qc[m].astype(float)
            finite = (qc["channel"] == ch) & np.isfinite(vals)
            if not finite.any():
                ax.set_axis_off()
                continue
            lo, hi = _robust_range(vals[finite].to_numpy())
            thr = thresholds.get((ch, m), thresholds.get(("*", m)))
            if thr is not None:
                lo, hi = min(lo, thr - 0.05 * abs(thr)), max(hi, thr + 0.05 * abs(thr))
            beyond = int(((vals < lo) | (vals > hi))[finite].sum())
            clipped = vals.clip(lo, hi)
            groups = [(finite & passed & ~review, "#4477aa", "site passed"), (finite & review, "#ee7733", "site review"),
                      (finite & ~passed, "#cc3311", "site failed")]
            ax.hist([clipped[g] for g, _, _ in groups], bins=np.linspace(lo, hi, 26), stacked=True,
                    color=[c for _, c, _ in groups], label=[lab for _, _, lab in groups])
            if thr is not None:
                ax.axvline(thr, color="black", ls="--", lw=1.2)
            if beyond:
                ax.text(0.98, 0.95, f"{beyond} beyond", transform=ax.transAxes, ha="right", va="top", fontsize=8)
            ax.ticklabel_format(axis="x", useOffset=False, style="plain") if hi - lo > 1e-3 else None
            ax.tick_params(labelsize=8)
            if i == 0:
                ax.set_title(ch, fontsize=11)
            if j == 0:
                ax.set_ylabel(m, fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=9, ncols=3, frameon=False)
    if title:
        fig.suptitle(title + "   (images; dashed: absolute threshold)", fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig_to_png(fig, dpi=80)


def review_gallery(
    tiles: Sequence[tuple[np.ndarray | None, str, str, str]],
    ncols: int = 4,
    display_range: Sequence[tuple[float, float] | None] | None = None,
    footer: str = "",
) -> bytes:
    """Thumbnails with their QC verdict: ``(image or None, label, reason, status)`` with status
    "failed" (red caption) or "review" (orange). The whole reason is printed under each tile
    (wrapped, never cut). ``display_range`` gives each tile's (low, high) grey levels, e.g. the
    plate's typical range for that channel, so that an empty field looks empty; None
    stretches the tile itself."""
    import textwrap

    n = max(len(tiles), 1)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    captions = [textwrap.fill(f"{label} [{status}] {reason}", 40) for _, label, reason, status in tiles]
    lines = max((c.count("\n") + 1 for c in captions), default=1)
    cap_in = 0.17 * lines + 0.1
    fig = plt.figure(figsize=(3.0 * ncols, (2.8 + cap_in) * nrows))
    for k, ((img, _, _, status), cap) in enumerate(zip(tiles, captions)):
        r, c = divmod(k, ncols)
        top = 1 - r / nrows
        h_img = 2.8 / (2.8 + cap_in) / nrows
        ax = fig.add_axes((c / ncols + 0.01, top - h_img, 1 / ncols - 0.02, h_img * 0.97))
        ax.axis("off")
        rng = display_range[k] if display_range is not None and k < len(display_range) else None
        if img is not None:
            if rng is not None:
                lo, hi = rng
                ax.imshow(np.clip((np.asarray(img, np.float32) - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray",
                          vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(to_display(img), cmap="gray", interpolation="nearest")
        else:
            ax.text(0.5, 0.5, "no readable image", ha="center", va="center", fontsize=9)
        colour = "#cc3311" if status == "failed" else "#c25e00"
        fig.text(c / ncols + 0.01, top - h_img - 0.005 / nrows, cap, fontsize=8.5, color=colour, va="top", ha="left",
                 family="DejaVu Sans")
    if footer:
        fig.text(0.01, 0.0, footer, fontsize=9, va="bottom")
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
