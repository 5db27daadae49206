"""Figures and display tables of the per-donor SSc-likeness scores
(:func:`ssc_assets.core.analysis.donor_scores.donor_report`): donors ranked by score, the
bootstrap interval of each donor's score as a horizontal bar, coloured by group
(HC / SSC / SSCHL). PNG bytes (matplotlib, Agg)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ssc_assets.core.analysis.comparison import fmt3  # noqa: E402
from ssc_assets.core.plots.clustering import GROUP_PALETTE, REPORT_DPI, _group_colour  # noqa: E402
from ssc_assets.core.plots.figures import fig_to_png  # noqa: E402

METHOD = "Metadata_Method"
#: Font size of every text in the ranking figure (ticks, labels, titles, legend).
FONT = 11
#: Widest figure in inches: 12.2 in x 90 dpi = 1100 px.
MAX_WIDTH_IN = 12.2
#: Vertical space per donor (inches): 11 pt labels never overlap.
ROW_IN = 0.27


def _methods(donors: pd.DataFrame) -> list[str]:
    if METHOD in donors.columns:
        return [str(m) for m in dict.fromkeys(donors[METHOD].astype(str))]
    return [""]


def _of_method(donors: pd.DataFrame, method: str | None) -> pd.DataFrame:
    if method and METHOD in donors.columns:
        return donors[donors[METHOD].astype(str) == str(method)]
    return donors


def _ranked(donors: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by score, highest (most SSc-like) first; NaN scores last; ties by donor id."""
    d = donors.copy()
    d["_score"] = pd.to_numeric(d["score"], errors="coerce")
    d["_donor"] = d["Metadata_Donor"].astype(str)
    return d.sort_values(["_score", "_donor"], ascending=[False, True], na_position="last", kind="mergesort")


def _p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def rho_text(rho, p=None, label: str = "ρ") -> str:
    """``ρ = 0.61 (p=0.031)`` (``label`` before the ``=``); empty when rho is missing."""
    try:
        r = float(rho)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(r):
        return ""
    try:
        pv = float(p)
    except (TypeError, ValueError):
        pv = float("nan")
    return f"{label} = {fmt3(r)}" + (f" ({_p_text(pv)})" if math.isfinite(pv) else "")


def _rho_of(method: str, summary: pd.DataFrame | None, rho, rho_p) -> tuple[float | None, float | None]:
    if rho is not None:
        r = rho.get(method) if isinstance(rho, dict) else rho
        p = rho_p.get(method) if isinstance(rho_p, dict) else rho_p
        return r, p
    if summary is not None and len(summary) and "rho_group" in summary.columns:
        rows = summary[summary[METHOD].astype(str) == method] if METHOD in summary.columns else summary
        if len(rows):
            return rows["rho_group"].iloc[0], rows["rho_group_p"].iloc[0] if "rho_group_p" in rows else None
    return None, None


def _panel(ax, d: pd.DataFrame, title: str, show_labels: bool = True) -> None:
    d = _ranked(d)
    n = len(d)
    y = np.arange(n)[::-1]  # first row (highest score) at the top
    score = d["_score"].to_numpy(np.float64)
    lo = pd.to_numeric(d.get("score_low", d["_score"]), errors="coerce").to_numpy(np.float64)
    hi = pd.to_numeric(d.get("score_high", d["_score"]), errors="coerce").to_numpy(np.float64)
    groups = d["Metadata_Group"].astype(str).to_numpy() if "Metadata_Group" in d else np.array([""] * n)
    colours = [_group_colour(g) for g in groups]
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax.hlines(y[ok], lo[ok], hi[ok], colors=np.asarray(colours, dtype=object)[ok].tolist(), lw=5, alpha=0.45)
    fin = np.isfinite(score)
    ax.scatter(score[fin], y[fin], c=np.asarray(colours, dtype=object)[fin].tolist(), s=55, edgecolors="k",
               linewidths=0.6, zorder=3)
    for yy in y[~fin]:
        ax.text(0, yy, "n/a", ha="center", va="center", fontsize=FONT - 1, color="0.4")
    ax.axvline(0.0, color="k", ls="--", lw=1.2, zorder=1)
    ax.set_yticks(y)
    ax.set_yticklabels(d["_donor"].tolist() if show_labels else [], fontsize=FONT)
    for tick, c in zip(ax.get_yticklabels(), colours):
        tick.set_color(c)
    ax.set_ylim(-0.7, n - 0.3)
    vals = np.concatenate([lo[ok], hi[ok], score[fin], [0.0]])
    span = float(vals.max() - vals.min()) if len(vals) else 1.0
    pad = 0.06 * (span if span > 0 else 1.0)
    ax.set_xlim(float(vals.min()) - pad, float(vals.max()) + pad)
    ax.tick_params(axis="x", labelsize=FONT)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("score (> 0: SSc-like)", fontsize=FONT)
    if title:
        ax.set_title(title, fontsize=FONT + 1)


def donor_ranking_png(donors: pd.DataFrame, method: str | None = None, *, summary: pd.DataFrame | None = None,
                      rho: float | dict | None = None, rho_p: float | dict | None = None, ncols: int | None = None,
                      dpi: int = REPORT_DPI) -> bytes:
    """Donors ranked by SSc-likeness, most SSc-like at the top; PNG bytes.

    ``donors``: ``Metadata_Method`` (optional) + :data:`~ssc_assets.core.analysis.donor_scores.DONOR_COLUMNS`.
    Per donor: the point score and its interval ``score_low``..``score_high`` as a horizontal
    bar, coloured (bar, point, donor label) by ``Metadata_Group``; dashed vertical line at 0,
    the decision threshold (right of it: classified SSc). ``method``: only that method (one
    panel); None: one panel per method (small multiples, ``ncols`` per row, default up to 3).
    Titles carry the method and the Spearman rho (p) of the scores vs HC < SSC < SSCHL, from
    ``rho``/``rho_p`` (a number, or method -> number) or else ``summary`` (the
    ``donor_report`` summary: ``rho_group``, ``rho_group_p``). Fonts 11-12 pt; at most
    ~1100 px wide at the default dpi (90).
    """
    methods = [str(method)] if method else _methods(donors)
    if not len(donors):
        fig, ax = plt.subplots(figsize=(6.0, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no donor scores", ha="center", va="center", fontsize=FONT)
        return fig_to_png(fig, dpi=dpi)
    ncols = max(1, min(ncols or 3, len(methods)))
    nrows = int(math.ceil(len(methods) / ncols))
    parts = {m: _of_method(donors, m or None) for m in methods}
    n_max = max((len(p) for p in parts.values()), default=1)
    width = min(MAX_WIDTH_IN, 9.0 if ncols == 1 else 3.9 * ncols + 0.1)  # <= ~1080 px: fits the Dagster dialog
    height = nrows * (ROW_IN * max(n_max, 3) + 1.2) + 0.7
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    for ax in axes.ravel()[len(methods):]:
        ax.axis("off")
    for ax, m in zip(axes.ravel(), methods):
        r, p = _rho_of(m, summary, rho, rho_p)
        rt = rho_text(r, p, "ρ vs HC<SSC<SSCHL")
        if ncols == 1:
            title = (f"{m}: " if m else "") + "donors by SSc-likeness" + (f", {rt}" if rt else "")
        else:
            title = (m or "donors") + (f"\n{rt}" if rt else "")
        _panel(ax, parts[m], title)
    present = [g for g in GROUP_PALETTE if "Metadata_Group" in donors and g in set(donors["Metadata_Group"].astype(str))]
    others = sorted(set(donors["Metadata_Group"].astype(str)) - set(GROUP_PALETTE)) if "Metadata_Group" in donors else []
    handles = [Line2D([], [], marker="o", color=_group_colour(g), lw=5, alpha=0.8, ms=8, label=g) for g in present + others]
    handles.append(Line2D([], [], color="k", ls="--", lw=1.2, label="0 = decision threshold"))
    fig.legend(handles=handles, loc="upper center", ncols=len(handles), fontsize=FONT, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))
    return fig_to_png(fig, dpi=dpi)


def donor_table(donors: pd.DataFrame, method: str | None = None) -> pd.DataFrame:
    """One method's donors for display, most SSc-like first: ``rank``, ``donor``, ``group``,
    ``score [low, high]`` (3 significant digits, ``n/a`` when missing), ``n wells``,
    ``predicted`` (SSc if score > 0, else HC)."""
    d = _ranked(_of_method(donors, method))
    cols = ["rank", "donor", "group", "score [low, high]", "n wells", "predicted"]
    if d.empty:
        return pd.DataFrame(columns=cols)

    def interval(r) -> str:
        s, lo, hi = (fmt3(r.get(k)) for k in ("score", "score_low", "score_high"))
        return s if lo == hi == "n/a" else f"{s} [{lo}, {hi}]"

    rank = pd.to_numeric(d["rank"], errors="coerce") if "rank" in d else pd.Series(np.arange(1, len(d) + 1), index=d.index)
    return pd.DataFrame({
        "rank": [str(int(v)) if np.isfinite(v) else "n/a" for v in rank.astype(float)],
        "donor": d["_donor"].tolist(),
        "group": d["Metadata_Group"].astype(str).tolist() if "Metadata_Group" in d else "",
        "score [low, high]": [interval(r) for _, r in d.iterrows()],
        "n wells": [fmt3(v) for v in d["n_wells"]] if "n_wells" in d else "n/a",
        "predicted": [str(v) if isinstance(v, str) and v else "n/a" for v in d["predicted"]] if "predicted" in d else "n/a",
    }, columns=cols).reset_index(drop=True)
