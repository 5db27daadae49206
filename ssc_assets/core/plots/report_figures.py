"""Figures of the clustering report: example images per condition (picked wells, thumbnails
read from the corrected OME-Zarr stores, composited as RGB) and the headline figure
(accuracy and mAP per method with intervals, chance and p-values)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ssc_assets.core.analysis.comparison import fmt3
from ssc_assets.core.schema import METHOD


def one_method_wells(wells: pd.DataFrame) -> pd.DataFrame:
    """One row per (plate, well): the rows of the method with the most wells."""
    if METHOD in wells and len(wells):
        best = wells.groupby(METHOD).size().idxmax()
        wells = wells[wells[METHOD] == best]
    keys = [c for c in ("Metadata_Plate", "Metadata_Well") if c in wells]
    return wells.drop_duplicates(keys).reset_index(drop=True)


def pick_examples(wells: pd.DataFrame, per_condition: int = 4) -> list[dict]:
    """Example wells per condition: distinct donors first, alternating plates; deterministic.
    Returns dicts with plate, well, donor, condition, group."""
    w = one_method_wells(wells)
    out = []
    if w.empty or "Metadata_Condition" not in w:
        return out
    for cond, d in w.sort_values(["Metadata_Donor", "Metadata_Plate", "Metadata_Well"]).groupby("Metadata_Condition", sort=True):
        chosen, used = [], set()
        donors = list(dict.fromkeys(d["Metadata_Donor"].astype(str)))
        for i, donor in enumerate(donors):  # one well per donor, plates alternating
            dd = d[d["Metadata_Donor"].astype(str) == donor]
            plates = sorted(dd["Metadata_Plate"].astype(str).unique())
            r = dd[dd["Metadata_Plate"].astype(str) == plates[i % len(plates)]].iloc[0]
            chosen.append(r)
            used.add((r["Metadata_Plate"], r["Metadata_Well"]))
            if len(chosen) == per_condition:
                break
        for _, r in d.iterrows():  # fewer donors than tiles: more wells of the same donors
            if len(chosen) >= per_condition:
                break
            if (r["Metadata_Plate"], r["Metadata_Well"]) not in used:
                chosen.append(r)
                used.add((r["Metadata_Plate"], r["Metadata_Well"]))
        out += [{"plate": str(r["Metadata_Plate"]), "well": str(r["Metadata_Well"]), "donor": str(r["Metadata_Donor"]),
                 "condition": str(cond), "group": str(r.get("Metadata_Group", ""))} for r in chosen]
    return out


def read_thumbnail(store: str, well: str, site: int | None = None, max_side: int = 384) -> np.ndarray:
    """(C, h, w) float32 of one corrected site at the coarsest pyramid level that still has
    ``max_side`` pixels (block-mean downsampled to at most ``max_side``). ``site=None``: the
    well's first analysable site (fields flagged other than ``ok``, e.g. QC-failed sites or
    placeholders, are skipped)."""
    import zarr

    from ssc_assets.core.io import ome_zarr_store as oz
    from ssc_assets.core.plots.figures import downsample

    readable = getattr(oz, "_readable_store", lambda p: p)(store)
    candidates = [site] if site is not None else sorted(s for w, s in oz.list_sites(store) if w == well)
    for s in candidates:
        g = zarr.open_group(oz.site_group_path(readable, well, s), mode="r")
        attrs = g.attrs.asdict()
        if site is None and (attrs.get("ssc") or {}).get("status", "ok") != "ok":
            continue
        datasets = (attrs.get("ome") or attrs)["multiscales"][0]["datasets"]
        level = 0
        for i in range(len(datasets)):
            if min(g[datasets[i]["path"]].shape[-2:]) >= max_side:
                level = i
        img = np.asarray(g[datasets[level]["path"]][:], dtype=np.float32)
        return np.stack([downsample(c, max_side) for c in img])
    raise KeyError(f"{well}: no analysable site in {store}")


#: display colour of each corrected channel: actin red, borders (VE-cadherin) green, nuclei blue
CHANNEL_RGB = {"actin": (1.0, 0.15, 0.15), "borders": (0.1, 1.0, 0.1), "nuclei": (0.25, 0.45, 1.0)}


def examples_png(tiles: list[tuple[np.ndarray, str, str]], channels: list[str], ncols: int = 4) -> bytes:
    """Example images, one row per condition: ``(image (C, H, W), caption, condition)``.

    Channels are coloured by :data:`CHANNEL_RGB` and share ONE display range per channel across
    all tiles (1st to 99.7th percentile pooled), so brightness is comparable between conditions.
    """
    import matplotlib.pyplot as plt

    from ssc_assets.core.plots.figures import fig_to_png

    conds = list(dict.fromkeys(c for _, _, c in tiles))
    ranges = []
    for k in range(len(channels)):
        pooled = np.concatenate([t[0][k].ravel()[:: max(1, t[0][k].size // 20000)] for t in tiles])
        lo, hi = np.quantile(pooled, [0.01, 0.997]) if pooled.size else (0.0, 1.0)
        ranges.append((float(lo), float(max(hi, lo + 1e-6))))
    ncols = max(1, min(ncols, max(sum(1 for t in tiles if t[2] == c) for c in conds)))
    fig, axes = plt.subplots(len(conds), ncols, figsize=(2.9 * ncols + 0.6, 3.15 * len(conds)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, cond in enumerate(conds):
        row = [t for t in tiles if t[2] == cond][:ncols]
        for j, (img, cap, _) in enumerate(row):
            rgb = np.zeros(img.shape[-2:] + (3,), dtype=np.float32)
            for k, ch in enumerate(channels):
                lo, hi = ranges[k]
                rgb += np.clip((img[k] - lo) / (hi - lo), 0, 1)[..., None] * np.asarray(CHANNEL_RGB.get(ch, (1, 1, 1)))
            ax = axes[i, j]
            ax.imshow(np.clip(rgb, 0, 1), interpolation="lanczos")
            ax.set_title(cap, fontsize=10)
        axes[i, 0].text(-0.06, 0.5, cond, transform=axes[i, 0].transAxes, rotation=90, va="center", ha="right",
                        fontsize=14, fontweight="bold")
    legend = ", ".join(f"{ch} {('red', 'green', 'blue')[int(np.argmax(CHANNEL_RGB[ch]))]}" for ch in channels if ch in CHANNEL_RGB)
    fig.suptitle(f"corrected images ({legend}; same display range per channel in every tile)", fontsize=11)
    fig.tight_layout()
    return fig_to_png(fig, dpi=90)


def headline_png(results: dict[str, dict]) -> bytes:
    """Two panels, one x position per method: (1) donor-grouped SVM accuracy with its 95 % donor
    bootstrap interval, the leaky ungrouped accuracy, the thesis' figure and the chance level;
    (2) mAP SSc vs HC and donor replicates with their chance levels and p-values. ~1080 px wide."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from ssc_assets.core.analysis.comparison import THESIS_METHOD_NAMES, THESIS_TABLE_6_1
    from ssc_assets.core.plots.figures import fig_to_png

    methods = list(results)
    x = np.arange(len(methods))
    g = lambda m, k: float(results[m].get(k, np.nan)) if results[m].get(k) is not None else np.nan  # noqa: E731
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12.0, 5.4))
    for i, m in enumerate(methods):
        ch = g(m, "svm_chance")
        if np.isfinite(ch):
            a1.hlines(ch, i - 0.35, i + 0.35, colors="0.4", linestyles="--", lw=1.5)
        acc, lo, hi = g(m, "svm_accuracy_donor_grouped"), g(m, "svm_accuracy_donor_grouped_ci_low"), g(m, "svm_accuracy_donor_grouped_ci_high")
        if np.isfinite(lo) and np.isfinite(hi):
            a1.vlines(i, lo, hi, colors="tab:blue", lw=3, alpha=0.5)
        if np.isfinite(acc):
            a1.plot(i, acc, "o", color="tab:blue", ms=10)
            a1.annotate(fmt3(acc), (i, acc), xytext=(9, 4), textcoords="offset points", fontsize=10,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
        a1.plot(i - 0.18, g(m, "svm_accuracy_ungrouped"), "o", mfc="none", mec="0.35", ms=8)
        name = THESIS_METHOD_NAMES.get(m)
        if name in THESIS_TABLE_6_1.index:
            a1.plot(i + 0.18, THESIS_TABLE_6_1.at[name, "svm_accuracy"], "D", color="tab:orange", ms=7)
    a1.set_ylim(0, 1.05)
    a1.set_ylabel("SVM accuracy (SSc vs HC)", fontsize=11)
    a1.set_title("Can a classifier tell SSc from HC? (donor-grouped CV)", fontsize=12)
    a1.legend(handles=[Line2D([], [], marker="o", color="tab:blue", ls="-", lw=3, ms=9, label="donor-grouped, 95% CI"),
                       Line2D([], [], marker="o", mfc="none", mec="0.35", ls="", ms=8, label="ungrouped (leaky)"),
                       Line2D([], [], marker="D", color="tab:orange", ls="", label="thesis (ungrouped)"),
                       Line2D([], [], color="0.4", ls="--", label="chance (majority class)")],
              fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    w = 0.36
    for i, m in enumerate(methods):
        for off, key, colour in ((-w / 2, "map_condition", "tab:purple"), (w / 2, "map_donor_replicate", "tab:green")):
            v, p, ch = g(m, key), g(m, f"{key}_p"), g(m, f"{key}_chance")
            if np.isfinite(v):
                a2.bar(i + off, v, w * 0.95, color=colour, alpha=0.75)
                a2.text(i + off, v + 0.02, f"p={fmt3(p)}", ha="center", fontsize=9, rotation=90, va="bottom")
            else:
                a2.text(i + off, 0.02, "n/a", ha="center", fontsize=9, rotation=90)
            if np.isfinite(ch):
                a2.hlines(ch, i + off - w / 2, i + off + w / 2, colors="k", linestyles="--", lw=1.5)
    a2.set_ylim(0, 1.3)
    a2.set_yticks(np.linspace(0, 1, 6))
    a2.set_ylabel("mean average precision", fontsize=11)
    a2.set_title("Do wells retrieve their own kind? (copairs mAP)", fontsize=12)
    a2.legend(handles=[plt.Rectangle((0, 0), 1, 1, color="tab:purple", alpha=0.75, label="same condition (SSc/HC)"),
                       plt.Rectangle((0, 0), 1, 1, color="tab:green", alpha=0.75, label="same donor, other plate"),
                       Line2D([], [], color="k", ls="--", label="chance")],
              fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    for ax in (a1, a2):
        ax.set_xticks(x, methods, fontsize=11)
        ax.tick_params(axis="y", labelsize=10)
        ax.set_xlim(-0.6, len(methods) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig_to_png(fig, dpi=90)
