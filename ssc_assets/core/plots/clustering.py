"""Figures of a patient clustering: dendrogram and PCA scatter plots, coloured by group
(HC / SSC / SSCHL), markers by cluster. PNG bytes (matplotlib, Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy.cluster.hierarchy import dendrogram  # noqa: E402

from ssc_assets.core.plots.figures import fig_to_png  # noqa: E402

GROUP_PALETTE = {"HC": "tab:blue", "SSC": "tab:orange", "SSCHL": "tab:red"}
OTHER_COLOUR = "tab:gray"
CLUSTER_MARKERS = ["o", "^", "s", "D", "v", "P", "X", "*"]


def _group_colour(g: str) -> str:
    return GROUP_PALETTE.get(str(g), OTHER_COLOUR)


def _group_legend(groups) -> list:
    present = list(dict.fromkeys(str(g) for g in groups))
    order = [g for g in GROUP_PALETTE if g in present] + [g for g in present if g not in GROUP_PALETTE]
    return [Patch(color=_group_colour(g), label=g) for g in order]


#: Report figures: inches x REPORT_DPI = pixels; 12 in at 90 dpi is 1080 px (the report's column).
REPORT_DPI = 90
FONT = 11
#: Dendrogram width (in): 990 px at REPORT_DPI, ~1090 px with the legend (the Dagster dialog shows ~1120 px).
DENDROGRAM_WIDTH_IN = 11.0


def dendrogram_png(Z: np.ndarray, donors: list[str], groups: list[str], title: str = "") -> bytes:
    """Dendrogram with leaves labelled by donor, label text coloured by group; PNG bytes at most
    ~1100 px wide whatever the number of leaves (it fits the Dagster metadata dialog and the
    report's column): labels 9 pt up to ~75 leaves, smaller beyond (5 pt from ~135)."""
    n = len(donors)
    fig, ax = plt.subplots(figsize=(DENDROGRAM_WIDTH_IN, 5.0))
    dn = dendrogram(Z, labels=[str(d) for d in donors], ax=ax, leaf_rotation=90,
                    leaf_font_size=max(5.0, min(9.0, 680.0 / max(n, 1))), color_threshold=0, above_threshold_color="k")
    for tick, leaf in zip(ax.get_xticklabels(), dn["leaves"]):
        tick.set_color(_group_colour(groups[leaf]))
    ax.set_ylabel("cosine distance (average linkage)", fontsize=FONT)
    ax.tick_params(axis="y", labelsize=FONT - 1)
    ax.legend(handles=_group_legend(groups), title="group", fontsize=FONT - 1, title_fontsize=FONT - 1,
              loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0.0)
    if title:
        ax.set_title(title, fontsize=FONT + 1)
    fig.tight_layout()
    return fig_to_png(fig, dpi=REPORT_DPI)


def _scatter_ax(ax, pcs: np.ndarray, groups, clusters, title: str = "", legend: bool = True) -> list:
    pcs = np.asarray(pcs, dtype=np.float64)
    if pcs.ndim == 1:
        pcs = pcs[:, None]
    pc2 = pcs[:, 1] if pcs.shape[1] > 1 else np.zeros(len(pcs))
    groups = np.asarray([str(g) for g in groups])
    clusters = np.asarray(clusters)
    cl_ids = list(np.unique(clusters))
    for i, c in enumerate(cl_ids):
        m = clusters == c
        ax.scatter(pcs[m, 0], pc2[m], c=[_group_colour(g) for g in groups[m]],
                   marker=CLUSTER_MARKERS[i % len(CLUSTER_MARKERS)], s=60, edgecolors="k", linewidths=0.5)
    handles = _group_legend(groups) + [
        Line2D([], [], marker=CLUSTER_MARKERS[i % len(CLUSTER_MARKERS)], color="k", linestyle="",
               markerfacecolor="w", markersize=8, label=f"cluster {c}")
        for i, c in enumerate(cl_ids)
    ]
    if legend:
        ax.legend(handles=handles, fontsize=FONT - 1, loc="best")
    ax.set_xlabel("PC1", fontsize=FONT)
    ax.set_ylabel("PC2", fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    if title:
        ax.set_title(title, fontsize=FONT + 1)
    return handles


def pca_scatter_png(pcs: np.ndarray, groups: list[str], clusters: np.ndarray, title: str = "") -> bytes:
    """PC1/PC2 scatter: colour by group, marker by cluster; PNG bytes. 1-column pcs: PC2 = 0."""
    fig, ax = plt.subplots(figsize=(7.0, 5.5))
    _scatter_ax(ax, pcs, groups, clusters, title)
    fig.tight_layout()
    return fig_to_png(fig, dpi=REPORT_DPI)


def pca_clusters_png(pcs: np.ndarray, groups: list[str], kmeans: np.ndarray, hier: np.ndarray, title: str = "") -> bytes:
    """KMeans and hierarchical clusters side by side in the same PCA plane; PNG about 1100 px wide."""
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 5.4), sharex=True, sharey=True)
    handles = _scatter_ax(axes[0], pcs, groups, kmeans, "PCA + KMeans (k = 2)", legend=False)
    _scatter_ax(axes[1], pcs, groups, hier, "hierarchical (cosine), cut at 2", legend=False)
    if title:
        fig.suptitle(title, fontsize=FONT + 2)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=FONT, frameon=False)
    return fig_to_png(fig, dpi=REPORT_DPI)
