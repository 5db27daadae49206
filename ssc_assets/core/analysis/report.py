"""Self-contained HTML report (figures embedded as base64 PNG, no external files or scripts).

Generic part: :class:`Section` and :func:`render_html`. Clustering report: the headline a
scientist reads first (per method: donor-grouped accuracy with its interval and chance level,
mAP with p-value, V-measure; with donor scores: donors ranked by SSc-likeness and the
leave-one-donor-out summary), then the data behind it (QC per plate, wells per condition,
example images per condition), then the details (:func:`clustering_report_html`).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ssc_assets.core.analysis.comparison import fmt3
from ssc_assets.core.plots.report_figures import headline_png, one_method_wells
from ssc_assets.core.schema import METHOD, N_SITES

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1180px;
       padding: 0 1.5em; color: #222; font-size: 16px; line-height: 1.45; }
h1 { font-size: 1.75em; margin-bottom: 0.3em; } h2 { font-size: 1.4em; margin-top: 2.2em; border-bottom: 2px solid #ccc; }
h3 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0 1.2em; font-size: 0.95em; max-width: 100%; overflow-x: auto; display: block; }
caption { caption-side: top; text-align: left; color: #555; font-size: 0.9em; padding-bottom: 0.3em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; vertical-align: top; }
th { background: #eef1f5; } tbody tr:nth-child(even) td { background: #fafafa; }
td:first-child, th:first-child { text-align: left; white-space: nowrap; }
td.text, th.text { text-align: left; }
.headline td, .headline th { font-size: 1.05em; padding: 6px 14px; white-space: nowrap; }
.note { color: #555; font-size: 0.9em; } tr td.thesis, th.thesis, tbody tr:nth-child(even) td.thesis { background: #fff4d6; }
.callout { border-left: 6px solid #d9822b; background: #fff3e0; padding: 0.7em 1em; margin: 1em 0; }
.callout strong { color: #a4480f; font-size: 1.1em; }
.toc { font-size: 0.95em; } .toc a { margin-right: 1.2em; }
figure { display: block; margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; margin-top: 0.3em; }
ul.trust li { margin-bottom: 0.35em; }
"""


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # plain text, escaped
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table)
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG bytes)
    callouts: list[str] = field(default_factory=list)  # warnings shown in a box; "TITLE: text" puts TITLE in bold
    bullets: list[str] = field(default_factory=list)  # a list after the paragraphs
    links: list[tuple[str, str]] = field(default_factory=list)  # (label, URL) shown as links after the paragraphs
    level: int = 2  # 2 = h2, 3 = h3 (sub-section)
    anchor: str = ""
    table_class: str = ""
    figures_first: bool = False  # figures before the tables


def _cell(v) -> str:
    if isinstance(v, (list, tuple)):
        return html.escape("/".join(str(x) for x in v))
    if isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, bool):
        return fmt3(v)
    if v is None or (isinstance(v, str) and v.strip().lower() == "nan"):
        return "n/a"
    return html.escape(str(v))


_NUMBERISH = re.compile(r"^\s*(n/a|[-+0-9.e]+(\s*(±|to|/)\s*[-+0-9.e]+)*)\s*$")


def _is_number(v) -> bool:
    if isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, bool):
        return True
    return v is None or (isinstance(v, str) and bool(_NUMBERISH.match(v)))


def _table_html(caption: str, df: pd.DataFrame, css_class: str = "") -> str:
    """Columns, or rows whose first cell, start with ``thesis`` are shaded; numbers with 3
    significant digits (right-aligned), text left-aligned, missing values as ``n/a``."""
    def cls(thesis: bool, text: bool) -> str:
        names = (["thesis"] if thesis else []) + (["text"] if text else [])
        return f" class='{' '.join(names)}'" if names else ""

    text_cols = {c for c in df.columns if not all(_is_number(v) for v in df[c])}
    head = "".join(f"<th{cls(str(c).startswith('thesis'), c in text_cols)}>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        row_thesis = str(r.iloc[0]).startswith("thesis")  # transposed tables: one metric per row
        cells = "".join(f"<td{cls(row_thesis or str(c).startswith('thesis'), not _is_number(v))}>{_cell(v)}</td>"
                        for c, v in r.items())
        rows.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    klass = f" class='{css_class}'" if css_class else ""
    return f"<table{klass}>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _callout(text: str) -> str:
    """A warning box; its first sentence in bold."""
    head, sep, rest = text.partition(". ")
    if sep:
        return f"<div class='callout'><strong>{html.escape(head)}.</strong> {html.escape(rest)}</div>"
    return f"<div class='callout'>{html.escape(text)}</div>"


def render_html(title: str, intro: list[str], sections: list[Section], footer: str = "",
                banner: list[str] | None = None, toc: bool = False) -> str:
    """The report as one HTML string. ``banner``: callouts right under the title."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [_callout(b) for b in banner or []]
    parts += [f"<p>{html.escape(p)}</p>" for p in intro]
    if toc:
        links = [f"<a href='#{html.escape(s.anchor)}'>{html.escape(s.title)}</a>" for s in sections if s.anchor and s.level == 2]
        if links:
            parts.append(f"<p class='toc'>Contents: {''.join(links)}</p>")
    for s in sections:
        anchor = f" id='{html.escape(s.anchor)}'" if s.anchor else ""
        parts.append(f"<h{s.level}{anchor}>{html.escape(s.title)}</h{s.level}>")
        parts += [_callout(c) for c in s.callouts]
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        if s.links:
            parts.append("<p>" + " · ".join(f"<a href='{html.escape(u, quote=True)}'>{html.escape(t)}</a>" for t, u in s.links) + "</p>")
        tables = [_table_html(c, t, s.table_class) for c, t in s.tables]
        figures = [f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,"
                   f"{base64.b64encode(png).decode('ascii')}'/><figcaption>{html.escape(cap)}</figcaption></figure>"
                   for cap, png in s.figures]
        parts += figures + tables if s.figures_first else tables + figures
        if s.bullets:
            parts.append("<ul class='trust'>" + "".join(f"<li>{html.escape(b)}</li>" for b in s.bullets) + "</ul>")
    if footer:
        parts.append(f"<p class=note>{html.escape(footer)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------- data behind the numbers


def qc_summary(qc_by_plate: dict[str, pd.DataFrame | None], wells: pd.DataFrame) -> pd.DataFrame:
    """One row per plate: sites imaged, passed, failed (count, %, by reason), flagged for review,
    wells and sites that entered the embeddings.

    ``qc_by_plate``: plate -> its ``site_qc`` table (one row per site x channel) or None when
    it could not be read (then only the embedded counts, from the wells' ``Metadata_n_sites``).
    """
    from ssc_assets.core.ingest.qc import failure_counts

    w = one_method_wells(wells)
    rows = []
    plates = sorted(set(qc_by_plate) | set(w.get("Metadata_Plate", pd.Series(dtype=str)).astype(str)))
    for plate in plates:
        pw = w[w["Metadata_Plate"].astype(str) == plate] if "Metadata_Plate" in w else w
        row = {"plate": plate, "sites imaged": None, "passed QC": None, "failed QC": None, "failed %": None,
               "failed by reason": "n/a (site_qc not readable)", "review flags": None,
               "wells embedded": int(len(pw)),
               "sites in wells": int(pd.to_numeric(pw.get(N_SITES), errors="coerce").fillna(0).sum()) if N_SITES in pw else None}
        qc = qc_by_plate.get(plate)
        if qc is not None and len(qc) and "passed_qc" in qc:
            keys = [c for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site") if c in qc]
            sites = qc.drop_duplicates(keys)
            passed = sites["passed_qc"].astype(bool)
            n = len(sites)
            counts = failure_counts(sites.loc[~passed, "qc_reason"]) if "qc_reason" in sites else pd.DataFrame()
            row.update({
                "sites imaged": int(n), "passed QC": int(passed.sum()), "failed QC": int((~passed).sum()),
                "failed %": round(100.0 * (~passed).sum() / n, 1) if n else None,
                "failed by reason": ", ".join(f"{r} {c}" for r, c in counts.itertuples(index=False)) or "none",
                "review flags": int(sites["qc_review"].astype(bool).sum()) if "qc_review" in sites else None,
            })
        rows.append(row)
    return pd.DataFrame(rows)


def wells_per_condition(wells: pd.DataFrame) -> pd.DataFrame:
    """Wells per condition and group: one column per plate, the total, donors and the median
    number of QC-passed sites per well."""
    w = one_method_wells(wells)
    if w.empty:
        return pd.DataFrame()
    keys = [c for c in ("Metadata_Condition", "Metadata_Group") if c in w]
    per_plate = w.pivot_table(index=keys, columns="Metadata_Plate", values="Metadata_Well", aggfunc="count", fill_value=0)
    per_plate.columns = [f"wells {c}" for c in per_plate.columns]
    g = w.groupby(keys)
    out = per_plate.assign(**{"wells total": g.size(), "donors": g["Metadata_Donor"].nunique(),
                              "sites/well (median)": g[N_SITES].median() if N_SITES in w else np.nan})
    out = out.reset_index().rename(columns={"Metadata_Condition": "condition", "Metadata_Group": "group"})
    return out


# ---------------------------------------------------------------- the clustering report


def method_details_table(res: dict) -> tuple[pd.DataFrame, list[str]]:
    """A method's scalar results as (metric, value) rows, without ``*_note`` rows; returns the
    table and the non-empty notes (to print as text)."""
    rows, notes = [], []
    for k, v in res.items():
        if k.endswith("_note") or k == "note":
            if isinstance(v, str) and v.strip():
                notes.append(f"{k.removesuffix('_note').replace('_', ' ')}: {v.strip()}")
            continue
        if isinstance(v, (dict, pd.DataFrame, bytes)) or k in ("method",):
            continue
        if isinstance(v, (list, tuple)):
            v = "/".join(str(x) for x in v)
        if isinstance(v, (int, float, str, np.integer, np.floating)):
            rows.append({"metric": k, "value": v})
    return pd.DataFrame(rows, columns=["metric", "value"]), notes


# ---------------------------------------------------------------- donors


#: donor summary column -> header of the compact per-method table in the headline
DONOR_SUMMARY_HEADERS = {"lodo_accuracy": "LODO acc.", "chance": "chance", "permutation_p": "permutation p",
                         "rho_group": "ρ vs HC<SSc<SSCHL", "vmeasure_plate": "V plate",
                         "vmeasure_acquisition": "V objective", "vmeasure_condition": "V condition"}


def donor_summary_frame(donor_summary: pd.DataFrame | None, results: dict[str, dict] | None = None) -> pd.DataFrame:
    """The donor summary (one row per method, ``Metadata_Method`` + metrics): ``donor_summary``
    as given, else rebuilt from the donor-summary keys merged into ``results`` (empty if none)."""
    from ssc_assets.core.analysis.comparison import DONOR_SUMMARY_KEYS

    if donor_summary is not None and len(donor_summary):
        return donor_summary.reset_index(drop=True)
    rows = [{METHOD: m, **{k: r[k] for k in DONOR_SUMMARY_KEYS if k in r}} for m, r in (results or {}).items()
            if any(k in r for k in DONOR_SUMMARY_KEYS)]
    return pd.DataFrame(rows)


def best_donor_method(donor_summary: pd.DataFrame | None, results: dict[str, dict] | None = None,
                      methods: list[str] | None = None) -> str | None:
    """The method whose donor scores follow HC < SSc < SSCHL best: highest ``rho_group``, ties
    (and methods without rho) decided by ``lodo_accuracy``, then by order. ``methods``: only
    these (e.g. those with donor scores). None when there is no method."""
    summ = donor_summary_frame(donor_summary, results)
    cands = list(methods) if methods is not None else (summ[METHOD].astype(str).tolist() if METHOD in summ else [])
    if not cands:
        return None
    by = summ.assign(_m=summ[METHOD].astype(str)).drop_duplicates("_m").set_index("_m") if METHOD in summ else None

    def val(m: str, col: str) -> float:
        try:
            v = float(by.at[m, col]) if by is not None and m in by.index and col in by.columns else float("nan")
        except (TypeError, ValueError):
            v = float("nan")
        return v if np.isfinite(v) else -np.inf

    return max(cands, key=lambda m: (val(m, "rho_group"), val(m, "lodo_accuracy"), -cands.index(m)))


def donor_summary_table(donor_summary: pd.DataFrame) -> pd.DataFrame:
    """Compact per-method table for the headline: LODO accuracy, chance, permutation p, rho (p)
    of the donor scores vs HC < SSc < SSCHL, V-measure vs plate / objective / condition;
    strings with 3 significant digits, ``n/a`` where missing."""
    from ssc_assets.core.analysis.comparison import fmt3, rho_cell

    rows = []
    for _, r in donor_summary.iterrows():
        d = r.to_dict()
        row = {"method": str(d.get(METHOD, ""))}
        for k, head in DONOR_SUMMARY_HEADERS.items():
            row[head] = rho_cell(d) if k == "rho_group" else fmt3(d.get(k))
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", *DONOR_SUMMARY_HEADERS.values()])


def _by_method(df: pd.DataFrame) -> pd.DataFrame:
    """One row per column of ``df`` (except the method), one column per method."""
    t = df.set_index(df[METHOD].astype(str)).drop(columns=[METHOD]).T
    return t.reset_index().rename(columns={"index": "metric"})


DONOR_EXPLANATION = (
    "Each donor's score is the mean, over the donor's wells, of an out-of-fold decision value: a leave-one-donor-out "
    "linear SVM (SSc vs HC) trained on all other donors scores the donor's wells, so the SVM never saw that donor "
    "(cells: the cell model's cross-validated score; classifier and densenet embeddings were trained with donor labels, "
    "see the notes below). Right of 0 (dashed): classified SSc. Bar: 95% bootstrap "
    "interval over the donor's wells. An embedding that captures the disease puts SSCHL donors at the top, SSC in "
    "the middle and HC at the bottom (Spearman ρ vs HC < SSc < SSCHL near 1).")


#: What the donor summary's columns mean (:data:`DONOR_SUMMARY_HEADERS`).
DONOR_LEGEND = (
    "Columns: LODO acc. = leave-one-donor-out accuracy of the well calls (chance = share of the larger class); "
    "permutation p = share of donor-level label permutations doing at least as well; ρ = Spearman rank correlation "
    "(p) of the donor scores with HC < SSc < SSCHL; V plate / V objective / V condition = V-measure (0-1) of KMeans "
    "clusters of the normalised wells against the plate, the acquisition group and the condition: V plate or V "
    "objective above V condition means the clusters follow the batch, not the disease.")


def donor_notes(donor_summary: pd.DataFrame, preset: list[str] | None = None, synthetic: bool = False,
                n_permutations: int | None = None) -> list[str]:
    """How to read the donor scores, as plain sentences, most important first: the demo warning
    (:func:`~ssc_assets.core.analysis.comparison.trust_notes` wording) when ``preset`` (reasons
    the models are a demo) or ``synthetic`` (simulated plates), what a score and its interval
    are, the column legend, the smallest p-value ``n_permutations`` allow, and which methods'
    embeddings saw these donors' labels."""
    from ssc_assets.core.analysis.comparison import DEMO_NOTE, supervision_notes, trust_notes

    notes = [n for n in trust_notes({}, preset, synthetic) if n.startswith(DEMO_NOTE)]
    notes += [DONOR_EXPLANATION, DONOR_LEGEND]
    if n_permutations:
        notes.append(f"{n_permutations} permutations: the smallest possible p is {fmt3(1 / (n_permutations + 1))}.")
    methods = donor_summary[METHOD].astype(str).tolist() if METHOD in donor_summary else []
    notes += supervision_notes({m: {} for m in methods})
    return notes


def _donor_sections(results: dict[str, dict], donors: pd.DataFrame, donor_summary: pd.DataFrame | None
                    ) -> tuple[Section, Section, str | None]:
    """(headline sub-section, details sub-section, best method) of the donor scores."""
    from ssc_assets.core.analysis.comparison import rho_cell
    from ssc_assets.core.plots.donors import donor_ranking_png, donor_table

    summ = donor_summary_frame(donor_summary, results)
    methods = ([str(m) for m in dict.fromkeys(donors[METHOD].astype(str))] if METHOD in donors.columns
               else (summ[METHOD].astype(str).tolist()[:1] if METHOD in summ else [""]))
    best = best_donor_method(summ, methods=methods) if len(summ) else (methods[0] if methods else None)
    head = Section("Donors ranked by SSc-likeness", level=3, anchor="donors", figures_first=True,
                   paragraphs=[DONOR_EXPLANATION])
    if best is not None:
        row = summ[summ[METHOD].astype(str) == best].iloc[0].to_dict() if METHOD in summ and best in set(summ[METHOD].astype(str)) else {}
        why = (f"the method whose donor scores follow HC < SSc < SSCHL best (Spearman ρ {rho_cell(row)})"
               if row and np.isfinite(pd.to_numeric(row.get("rho_group"), errors="coerce")) else
               "no method has a Spearman ρ; first method")
        head.paragraphs.insert(0, f"Shown: {best or 'all wells'}, {why}.")
        png = donor_ranking_png(donors, best or None, summary=summ if len(summ) else None)
        head.figures.append((f"{best}: donors ranked by score, most SSc-like at the top; colour: group (HC / SSC / "
                             "SSCHL); dashed line: decision threshold 0.", png))
    if len(summ):
        head.tables.append(("per method: leave-one-donor-out (LODO) linear SVM accuracy over wells, chance (majority "
                            "class), permutation p (conditions permuted between donors), Spearman ρ (p) of the donor "
                            "scores vs HC < SSc < SSCHL, V-measure of KMeans clusters vs plate, objective and condition "
                            "(batch effect when plate or objective > condition)", donor_summary_table(summ)))

    details = Section("Donor scores per method", level=3, anchor="donors-all",
                      paragraphs=["Every method's donors, most SSc-like first; score [low, high]: mean out-of-fold "
                                  "score and its 95% bootstrap interval over the donor's wells; predicted: SSc if the "
                                  "score > 0."])
    if len(methods) > 1:
        details.figures.append(("all methods: donors ranked by score (one panel per method; x axes differ)",
                                donor_ranking_png(donors, summary=summ if len(summ) else None)))
    for m in methods:
        details.tables.append((f"{m or 'donors'}: donors ranked by SSc-likeness", donor_table(donors, m or None)))
    if len(summ) and METHOD in summ:
        details.tables.append(("donor summary, every column (one column per method)", _by_method(summ)))
    return head, details, best


FIGURE_CAPTIONS = {
    "dendrogram": "hierarchical clustering of the wells (cosine distance, average linkage); leaves: donors coloured by group",
    "pca_clusters": "the wells in the first two principal components; colour: group, marker: cluster (KMeans left, hierarchical right)",
}


def clustering_report_html(
    results: dict[str, dict],
    wells: pd.DataFrame,
    *,
    qc_by_plate: dict[str, pd.DataFrame | None] | None = None,
    examples: bytes | None = None,
    examples_note: str = "",
    preset: list[str] | None = None,
    synthetic: bool = False,
    comparison: pd.DataFrame | None = None,
    guide: list[str] | None = None,
    context: list[str] | None = None,
    run_links: dict[str, str] | None = None,
    footer: str = "",
    donors: pd.DataFrame | None = None,
    donor_summary: pd.DataFrame | None = None,
) -> str:
    """The clustering report, headline first.

    ``results``: method -> :func:`ssc_assets.core.analysis.clustering.cluster_method` output (figures in
    ``report_figures`` or ``figures``); ``wells``: all methods' well embeddings; ``qc_by_plate``:
    plate -> site_qc table or None; ``examples``: PNG of example images per condition (None:
    ``examples_note`` says why not); ``preset``: reasons the models are a demo (a banner);
    ``synthetic``: the plates are the simulator's demo plates (the banner says so for every column);
    ``comparison``: the full comparison table (one row per metric) for the details.
    ``donors`` / ``donor_summary``: the two tables of
    :func:`ssc_assets.core.analysis.donor_scores.donor_report`; with ``donors``, right after
    the headline table comes "Donors ranked by SSc-likeness" (ranking figure of the method
    with the highest Spearman rho vs HC < SSc < SSCHL, ties by LODO accuracy, and a compact
    per-method summary), and the details get every method's donor table.
    """
    from ssc_assets.core.analysis.comparison import DEMO_NOTE, trust_notes

    notes = trust_notes(results, preset, synthetic=synthetic)
    banner = [n for n in notes if n.startswith(DEMO_NOTE)]
    trust = [n for n in notes if not n.startswith(DEMO_NOTE)]
    intro = _report_intro(results, wells, context)
    sections, donor_details = _headline_sections(results, trust, donors, donor_summary)
    sections.append(_data_section(qc_by_plate, wells, examples, examples_note))
    if guide:
        sections.append(Section("How to read the numbers", anchor="guide", bullets=list(guide)))
    sections.append(_details_section(comparison))
    if donor_details is not None:
        sections.append(donor_details)
    sections += _method_sections(results, run_links)
    return render_html("SSc vs HC: patient clusterings per embedding method", intro, sections,
                       footer=footer, banner=banner, toc=True)


def _report_intro(results: dict[str, dict], wells: pd.DataFrame, context: list[str] | None) -> list[str]:
    """Plates, wells, donors and methods in one line, then ``context``."""
    w1 = one_method_wells(wells)
    n_wells, n_donors = len(w1), w1["Metadata_Donor"].nunique() if "Metadata_Donor" in w1 else 0
    plates = sorted(w1["Metadata_Plate"].astype(str).unique()) if "Metadata_Plate" in w1 else []
    return [f"{len(plates)} plate{'s' if len(plates) != 1 else ''} ({', '.join(plates)}), {n_wells} wells, "
            f"{n_donors} donors; methods: {', '.join(results)}.", *(context or [])]


def _headline_sections(results: dict[str, dict], trust: list[str], donors: pd.DataFrame | None,
                       donor_summary: pd.DataFrame | None) -> tuple[list[Section], Section | None]:
    """(headline sections, donor details section or None): the headline table and figure,
    with the donor ranking between them when there are ``donors``."""
    from ssc_assets.core.analysis.comparison import headline_table

    headline_fig = ("Left: donor-grouped accuracy (dot, with its 95% donor-bootstrap interval) against chance (dashed), "
                    "the leaky ungrouped accuracy (circle) and the thesis' number (diamond). Right: mAP with chance "
                    "(dashed) and permutation p-values.", headline_png(results))
    bullets = ["How far to trust these numbers: " + trust[0]] + trust[1:] if trust else []
    headline = Section(
        "Headline: do the embeddings separate SSc from HC?", anchor="headline", table_class="headline",
        paragraphs=["Read the donor-grouped accuracy first: it keeps every donor entirely in training or in test, so "
                    "the classifier cannot recognise donors instead of the disease. Compare it with the chance level "
                    "beneath it and look at the interval. mAP asks the same without training: do wells of the same "
                    "condition find each other (p from a permutation null)?"],
        tables=[("one column per method; ± sd over the donor-grouped folds; 95% CI from resampling donors; "
                 "p: permutation p-value; shaded rows: the thesis (other data, ungrouped folds)", headline_table(results))])
    if donors is not None and len(donors):
        donor_head, donor_details, _ = _donor_sections(results, donors, donor_summary)
        return [headline, donor_head,
                Section("Accuracy and mAP per method", level=3, anchor="headline-figure",
                        figures=[headline_fig], bullets=bullets)], donor_details
    headline.figures.append(headline_fig)
    headline.bullets = bullets
    return [headline], None


def _data_section(qc_by_plate: dict[str, pd.DataFrame | None] | None, wells: pd.DataFrame,
                  examples: bytes | None, examples_note: str) -> Section:
    """QC per plate, wells per condition and the example images (or why there are none)."""
    qc_tab = qc_summary(qc_by_plate or {}, wells)
    data = Section("Data: plates, QC and wells", anchor="data",
                   paragraphs=["Sites that failed QC never enter the embeddings; sites flagged for review are kept. "
                               "'sites in wells': QC-passed sites that were embedded and went into the well medians."],
                   tables=[("QC per plate (sites; a site failing for several reasons counts under each)", qc_tab),
                           ("wells per condition", wells_per_condition(wells))])
    if examples is not None:
        data.figures.append(("Example corrected images per condition (one site per well, different donors first).", examples))
    elif examples_note:
        data.paragraphs.append(f"Example images: {examples_note}")
    return data


def _details_section(comparison: pd.DataFrame | None) -> Section:
    """The "Details: every metric" section, with the full comparison table when given."""
    from ssc_assets.core.analysis.comparison import THESIS_SOURCE

    details = Section("Details: every metric", anchor="details",
                      paragraphs=[f"Columns or rows starting with 'thesis' are the seed thesis' numbers for reference "
                                  f"({THESIS_SOURCE}); they were computed on other data with ungrouped folds."])
    if comparison is not None and len(comparison):
        details.tables.append(("comparison (one column per method)", comparison))
    return details


def _method_sections(results: dict[str, dict], run_links: dict[str, str] | None) -> list[Section]:
    """One section per method: all its metrics, notes, MLflow link and figures."""
    sections = []
    for m, res in results.items():
        table, m_notes = method_details_table(res)
        figs = res.get("report_figures") or res.get("figures") or {}
        link = (run_links or {}).get(m)
        sections.append(Section(
            f"Method: {m}", level=3, anchor=f"method-{m}",
            paragraphs=[f"{res.get('n_wells', '?')} wells, {res.get('n_features', '?')} features."] + m_notes,
            links=[(f"MLflow run of {m} (metrics, figures, assignments.csv)", link)] if link else [],
            tables=[("all metrics (KMeans and hierarchical; SVM; mAP)", table)],
            figures=[(f"{m}: {FIGURE_CAPTIONS.get(name, name.replace('_', ' '))}", png) for name, png in figs.items()]))
    return sections
