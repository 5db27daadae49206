"""Comparison and headline tables of the clustering results of all methods, next to the
thesis' Table 6.1, and the plain-language notes on how far to trust them (pure pandas)."""

from __future__ import annotations

import numpy as np
import pandas as pd

THESIS_SOURCE = "Table 6.1 and section 6 of the seed thesis (103 wells, ungrouped 5-fold CV)"

# Cluster sizes as printed (small/large); SVM: 5-fold accuracy from the section 6 text, except
# PCA, whose 0.603 is the baseline SVM *validation* accuracy of Table B.2.1.
THESIS_TABLE_6_1 = pd.DataFrame(
    {
        "cluster_sizes": ["37/66", "16/87", "12/91", "41/62"],
        "homogeneity": [0.0024, 0.0037, 0.2171, 0.2499],
        "completeness": [0.0024, 0.0055, 0.2464, 0.2427],
        "v_measure": [0.0024, 0.0044, 0.2309, 0.2463],
        "davies_bouldin": [5.49, 4.94, 0.409, 0.846],
        "silhouette": [0.324, 0.469, 0.738, 0.516],
        "svm_accuracy": [0.603, 0.635, 0.677, 0.735],
        "svm_source": ["Table B.2.1 (validation)", "section 6 text", "section 6 text", "section 6 text"],
    },
    index=pd.Index(["PCA", "Autoencoder", "Custom classifier", "DenseNet classifier"], name="thesis_method"),
)
THESIS_TABLE_6_1.attrs["source"] = THESIS_SOURCE

# our method key -> thesis row (None: no thesis counterpart)
THESIS_METHOD_NAMES: dict[str, str | None] = {
    "pca": "PCA",
    "autoencoder": "Autoencoder",
    "classifier": "Custom classifier",
    "densenet": "DenseNet classifier",
    "profiles": None,
    "cells": None,
    "cell_autoencoder": None,
}

_OURS = [
    "kmeans_homogeneity", "kmeans_completeness", "kmeans_v_measure", "kmeans_davies_bouldin",
    "kmeans_silhouette", "svm_accuracy_ungrouped", "svm_accuracy_donor_grouped",
    "svm_accuracy_donor_grouped_std", "svm_accuracy_donor_grouped_ci_low", "svm_accuracy_donor_grouped_ci_high",
    "svm_chance", "map_donor_replicate", "map_donor_replicate_p", "map_condition", "map_condition_p",
]
_THESIS = ["homogeneity", "completeness", "v_measure", "davies_bouldin", "silhouette", "svm_accuracy"]


def _sizes_str(sizes) -> str:
    """Cluster sizes as "small/large" (cluster ids are arbitrary, the thesis prints small first)."""
    if sizes is None or (isinstance(sizes, float) and np.isnan(sizes)):
        return ""
    return "/".join(str(int(s)) for s in sorted(sizes))


def comparison_table(results: dict[str, dict]) -> pd.DataFrame:
    """One row per method: our numbers, then the thesis' in ``thesis_*`` columns (NaN if none).

    ``results``: method key -> flat metrics dict from :func:`ssc_assets.core.analysis.clustering.cluster_method`.
    Our columns: ``n_wells``, ``kmeans_cluster_sizes`` ("small/large"), ``kmeans_homogeneity``,
    ``kmeans_completeness``, ``kmeans_v_measure``, ``kmeans_davies_bouldin``,
    ``kmeans_silhouette``, ``svm_accuracy_ungrouped``, ``svm_accuracy_donor_grouped`` (with
    ``_std``, ``_ci_low``, ``_ci_high``), ``svm_chance``, ``map_donor_replicate(_p)``,
    ``map_condition(_p)``. Thesis columns: ``thesis_method``,
    ``thesis_cluster_sizes``, ``thesis_homogeneity`` ... ``thesis_svm_accuracy``, ``thesis_source``.
    """
    rows = []
    for method, r in results.items():
        row: dict = {"method": method, "n_wells": r.get("n_wells", np.nan),
                     "kmeans_cluster_sizes": _sizes_str(r.get("kmeans_cluster_sizes"))}
        for c in _OURS:
            row[c] = float(r.get(c, np.nan))
        name = THESIS_METHOD_NAMES.get(method)
        has = name is not None and name in THESIS_TABLE_6_1.index
        row["thesis_method"] = name if has else np.nan
        row["thesis_cluster_sizes"] = THESIS_TABLE_6_1.at[name, "cluster_sizes"] if has else np.nan
        for c in _THESIS:
            row[f"thesis_{c}"] = float(THESIS_TABLE_6_1.at[name, c]) if has else np.nan
        row["thesis_source"] = THESIS_SOURCE if has else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


# ---------------------------------------------------------------- headline: what a reader needs first


def fmt3(v) -> str:
    """A number for people: 3 significant digits, ints as they are, ``n/a`` for None/NaN/inf."""
    if v is None or isinstance(v, bool):
        return "n/a" if v is None else str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    try:
        x = float(v)
    except (TypeError, ValueError):
        text = str(v)
        return "n/a" if text.strip().lower() in ("", "nan", "none") else text
    if not np.isfinite(x):
        return "n/a"
    if x != 0 and abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.3g}"


def _num(r: dict, key: str) -> float:
    v = r.get(key)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return x


def _pm(r: dict, key: str, sd_key: str) -> str:
    v, sd = _num(r, key), _num(r, sd_key)
    if not np.isfinite(v):
        return "n/a"
    return f"{fmt3(v)} ± {fmt3(sd)}" if np.isfinite(sd) else fmt3(v)


def _interval(r: dict, lo_key: str, hi_key: str) -> str:
    lo, hi = _num(r, lo_key), _num(r, hi_key)
    return f"{fmt3(lo)} to {fmt3(hi)}" if np.isfinite(lo) and np.isfinite(hi) else "n/a"


def _wells_donors(r: dict) -> str:
    n, d = r.get("n_wells"), r.get("n_donors")
    return "n/a" if n is None else (f"{n} / {d}" if d is not None else str(n))


def p_short(p) -> str:
    """A p-value in at most 7 characters: ``p<0.001`` or ``p=0.031`` (2 significant digits);
    ``p=n/a`` when missing."""
    x = _num({"p": p}, "p")
    if not np.isfinite(x):
        return "p=n/a"
    return "p<0.001" if x < 0.001 else f"p={x:.2g}"


def rho_cell(r: dict, key: str = "rho_group", p_key: str = "rho_group_p") -> str:
    """``0.612, p=0.031`` (at most 16 characters), ``n/a`` without rho."""
    rho, p = _num(r, key), _num(r, p_key)
    if not np.isfinite(rho):
        return "n/a"
    return f"{fmt3(rho)}, {p_short(p)}" if np.isfinite(p) else fmt3(rho)


#: (row label, how to get the cell from one method's results). Labels are short on purpose:
#: the table must fit a ~1100 px Dagster dialog with five method columns.
HEADLINE_ROWS: list[tuple[str, object]] = [
    ("wells / donors", _wells_donors),
    ("acc. donor-grouped ± sd", lambda r: _pm(r, "svm_accuracy_donor_grouped", "svm_accuracy_donor_grouped_std")),
    ("acc. 95% CI (donors)", lambda r: _interval(r, "svm_accuracy_donor_grouped_ci_low", "svm_accuracy_donor_grouped_ci_high")),
    ("acc. chance (majority)", "svm_chance"),
    ("acc. ungrouped (leaky)", lambda r: _pm(r, "svm_accuracy_ungrouped", "svm_accuracy_ungrouped_std")),
    ("mAP SSc/HC", "map_condition"),
    ("mAP SSc/HC p", "map_condition_p"),
    ("mAP SSc/HC chance", "map_condition_chance"),
    ("mAP donor replicates", "map_donor_replicate"),
    ("mAP donor p", "map_donor_replicate_p"),
    ("V-measure (2 PCs)", "kmeans_v_measure"),
    ("silhouette", "kmeans_silhouette"),
    ("Davies-Bouldin", "kmeans_davies_bouldin"),
    ("cluster sizes", lambda r: _sizes_str(r.get("kmeans_cluster_sizes")) or "n/a"),
]
#: Rows from the donor summary (:func:`ssc_assets.core.analysis.donor_scores.donor_report`,
#: merged into each method's results): (label, cell, keys, insert after this row of
#: :data:`HEADLINE_ROWS`). A row is shown when at least one method has one of its keys; a
#: method without them gets ``n/a`` in that row.
DONOR_ROWS: list[tuple[str, object, tuple[str, ...], str]] = [
    ("acc. leave-one-donor-out", "lodo_accuracy", ("lodo_accuracy",), "acc. ungrouped (leaky)"),
    ("LODO permutation p", "permutation_p", ("permutation_p",), "acc. ungrouped (leaky)"),
    ("ρ donors vs HC<SSc<SSCHL", rho_cell, ("rho_group",), "acc. ungrouped (leaky)"),
    ("V-measure* vs plate", "vmeasure_plate", ("vmeasure_plate",), "V-measure (2 PCs)"),
    ("V-measure* vs objective", "vmeasure_acquisition", ("vmeasure_acquisition",), "V-measure (2 PCs)"),
    ("V-measure* vs condition", "vmeasure_condition", ("vmeasure_condition",), "V-measure (2 PCs)"),
]
#: The keys a donor summary row brings into a method's results.
DONOR_SUMMARY_KEYS = ("lodo_accuracy", "chance", "permutation_p", "rho_group", "rho_group_p", "vmeasure_plate",
                      "vmeasure_acquisition", "vmeasure_condition")


def has_donor_summary(results: dict[str, dict]) -> bool:
    """True when at least one method's results carry donor-summary keys."""
    return any(k in r for r in results.values() for k in DONOR_SUMMARY_KEYS)


def _headline_rows(results: dict[str, dict]) -> list[tuple[str, object]]:
    """:data:`HEADLINE_ROWS` with the :data:`DONOR_ROWS` whose keys some method carries."""
    rows = list(HEADLINE_ROWS)
    for label, get, keys, after in reversed(DONOR_ROWS):  # reversed: each lands right after its anchor, in order
        if any(k in r for r in results.values() for k in keys):
            i = next(j for j, (lab, _) in enumerate(rows) if lab == after)
            rows.insert(i + 1, (label, get))
    return rows
THESIS_ROWS: list[tuple[str, str]] = [("thesis acc. (ungrouped)", "svm_accuracy"), ("thesis V-measure", "v_measure")]


def headline_table(results: dict[str, dict], thesis: bool = True) -> pd.DataFrame:
    """The comparison for reading: one row per metric (short label in ``metric``), one column
    per method, every cell a string rounded to 3 significant digits, ``n/a`` where missing.
    With ``thesis``, two last rows hold the seed thesis' numbers (other data, ungrouped folds).
    Methods whose results carry the donor summary (:data:`DONOR_SUMMARY_KEYS`) add the rows of
    :data:`DONOR_ROWS`: leave-one-donor-out accuracy and its permutation p, Spearman rho (p) of
    the donor scores vs HC < SSc < SSCHL, V-measure vs plate / objective / condition."""
    rows = []
    for label, get in _headline_rows(results):
        row = {"metric": label}
        for m, r in results.items():
            row[m] = get(r) if callable(get) else fmt3(r.get(get))
        rows.append(row)
    if thesis:
        for label, col in THESIS_ROWS:
            row = {"metric": label}
            for m in results:
                name = THESIS_METHOD_NAMES.get(m)
                row[m] = fmt3(THESIS_TABLE_6_1.at[name, col]) if name in THESIS_TABLE_6_1.index else "n/a"
            rows.append(row)
    return pd.DataFrame(rows, columns=["metric", *results])


def headline_markdown(results: dict[str, dict], thesis: bool = True) -> str:
    """:func:`headline_table` as a markdown table (no '|' inside cells)."""
    t = headline_table(results, thesis)
    head = "| " + " | ".join(t.columns) + " |\n|" + "|".join([":---"] + ["---:"] * (len(t.columns) - 1)) + "|\n"
    body = "\n".join("| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in t.itertuples(index=False))
    return head + body


#: result key -> metadata name after ``<method>/``: numbers Dagster plots across materializations.
HEADLINE_METADATA = {
    "svm_accuracy_donor_grouped": "svm_accuracy_donor_grouped",
    "svm_accuracy_donor_grouped_std": "svm_accuracy_donor_grouped_sd",
    "svm_chance": "svm_chance",
    "svm_accuracy_ungrouped": "svm_accuracy_ungrouped",
    "map_condition": "map_condition",
    "map_condition_p": "map_condition_p",
    "map_donor_replicate": "map_donor_replicate",
    "map_donor_replicate_p": "map_donor_replicate_p",
    "kmeans_v_measure": "v_measure",
    "n_wells": "n_wells",
    # donor summary (donor_scores.donor_report)
    "lodo_accuracy": "lodo_accuracy",
    "permutation_p": "lodo_permutation_p",
    "rho_group": "rho_group",
    "rho_group_p": "rho_group_p",
    "vmeasure_plate": "vmeasure_plate",
    "vmeasure_acquisition": "vmeasure_acquisition",
    "vmeasure_condition": "vmeasure_condition",
}


def headline_metadata(results: dict[str, dict]) -> dict[str, float | int]:
    """``<method>/<metric>`` -> finite float (ints stay int), for Dagster metadata; missing
    or non-finite values are left out (never NaN)."""
    out: dict[str, float | int] = {}
    for m, r in results.items():
        for key, name in HEADLINE_METADATA.items():
            v = r.get(key)
            if isinstance(v, (bool, np.bool_)) or v is None:
                continue
            if isinstance(v, (int, np.integer)):
                out[f"{m}/{name}"] = int(v)
            elif isinstance(v, (float, np.floating)) and np.isfinite(v):
                out[f"{m}/{name}"] = round(float(v), 4)
    return out


#: A champion trained for fewer epochs than this is a smoke test (thesis: 30).
MIN_MEANINGFUL_EPOCHS = 10
#: method -> the registered models its embedding comes from
METHOD_MODELS: dict[str, tuple[str, ...]] = {
    "pca": ("ssc-pca",),
    "autoencoder": ("ssc-autoencoder-actin", "ssc-autoencoder-borders", "ssc-autoencoder-nuclei"),
    "classifier": ("ssc-classifier",),
    "densenet": ("ssc-densenet",),
    "cells": ("ssc-cells",),
    "cell_autoencoder": ("ssc-cell_autoencoder",),
    "profiles": (),
}


def preset_reasons(champions: dict[str, dict]) -> list[str]:
    """Why the models behind the embeddings are a demo / smoke test, or [] if nothing says so.

    ``champions``: model name -> ``{"version", "params", "tags"}`` of its champion's MLflow run.
    A run tagged ``ssc.preset=demo`` (or ``ssc/preset``) counts; so does an ``epochs`` param below
    :data:`MIN_MEANINGFUL_EPOCHS`.
    """
    out = []
    for model, info in sorted(champions.items()):
        tags, params = info.get("tags") or {}, info.get("params") or {}
        v = info.get("version")
        who = f"{model} v{v}" if v is not None else model
        preset = str(tags.get("ssc.preset") or tags.get("ssc/preset") or params.get("preset") or "").lower()
        if preset == "demo":
            out.append(f"{who}: trained with the demo preset")
            continue
        try:
            epochs = int(float(params.get("epochs", "nan")))
        except (TypeError, ValueError, OverflowError):
            continue
        if epochs < MIN_MEANINGFUL_EPOCHS:
            out.append(f"{who}: {epochs} epoch{'s' if epochs != 1 else ''} (thesis: 30)")
    return out


#: First words of the demo warning (the report shows it as a banner, the Dagster page in bold).
DEMO_NOTE = "Demo preset: not meaningful."


#: Added to the demo warning when the run comes from ``ssc-assets demo`` (synthetic plates).
SYNTHETIC_NOTE = ("These are the simulator's demo plates: every column, including the cpu-preset cell models and "
                  "the profiles, describes simulated cells, not patients.")


def trust_notes(results: dict[str, dict], preset: list[str] | None = None, synthetic: bool = False) -> list[str]:
    """Plain sentences on how far to trust the headline numbers (chance levels, sample size,
    p-value resolution, demo models). The first one is the demo warning (starting with
    :data:`DEMO_NOTE`) when ``preset`` or ``synthetic`` (a run of ``ssc-assets demo``)."""
    notes = []
    if preset:
        by_why: dict[str, list[str]] = {}
        for r in preset:  # "<model> v<n>: <why>" -> "<model>, <model>: <why>"
            who, _, why = r.partition(": ")
            by_why.setdefault(why or who, []).append(who if why else "")
        what = "; ".join(f"{', '.join(w for w in who if w)}: {why}" for why, who in by_why.items())
        notes.append(DEMO_NOTE + f" The models behind these embeddings are a smoke test ({what}); the numbers show "
                     "that the pipeline runs, not whether an embedding separates SSc from HC."
                     + (" " + SYNTHETIC_NOTE if synthetic else ""))
    elif synthetic:
        notes.append(DEMO_NOTE + " " + SYNTHETIC_NOTE)
    if any("vmeasure_condition" in r for r in results.values()):
        notes.append("V-measure (2 PCs): KMeans (k = 2) on the first 2 principal components, the thesis' setting; "
                     "V-measure* rows: KMeans (k = 2) on all normalised features, scored against plate, objective "
                     "and condition, so the two can differ.")
    r0 = next(iter(results.values()), {})
    chance = [_num(r, "svm_chance") for r in results.values()]
    chance = [c for c in chance if np.isfinite(c)]
    if chance:
        notes.append(f"Accuracy chance level = share of the larger class = {fmt3(max(chance))}; a donor-grouped "
                     "accuracy within one sd (or whose 95% CI includes chance) is no evidence of a disease signal.")
    per = {k.removeprefix("n_donors_"): v for k, v in r0.items() if k.startswith("n_donors_")}
    if per:
        n_small = min(per.values())
        n_folds = r0.get("svm_n_splits_donor_grouped")
        notes.append(f"Donor-grouped CV: {r0.get('n_donors')} donors ({', '.join(f'{k} {v}' for k, v in per.items())}), "
                     f"{n_folds} folds; every test fold holds about {max(1, round(n_small / max(n_folds or 1, 1)))} "
                     "donor(s) per condition, so one donor more or less moves a fold's accuracy a lot"
                     + (" (fewer than 10 donors per condition: treat accuracies as anecdotes)." if n_small < 10 else "."))
    null = r0.get("map_null_size")
    if null:
        notes.append(f"mAP p-values come from {null} permutations (smallest possible p = {fmt3(1 / (null + 1))}); "
                     "'mAP ... chance' is the expected mAP of a random ranking.")
    notes += batch_notes(results)
    notes += supervision_notes(results)
    return notes


#: Embeddings learnt with the SSc/HC labels of (training) donors.
SUPERVISED_METHODS = ("classifier", "densenet")
#: Methods whose donor scores are out of fold (the donor's wells never trained the scorer).
OUT_OF_FOLD_METHODS = ("cells",)


def batch_notes(results: dict[str, dict]) -> list[str]:
    """A note naming the methods whose KMeans clusters follow the plate or the objective more
    than the disease (``vmeasure_plate`` or ``vmeasure_acquisition`` > ``vmeasure_condition``)."""
    which = []
    for m, r in results.items():
        cond = _num(r, "vmeasure_condition")
        batch = {name: _num(r, key) for name, key in (("plate", "vmeasure_plate"), ("objective", "vmeasure_acquisition"))}
        over = {name: v for name, v in batch.items() if np.isfinite(v) and np.isfinite(cond) and v > cond}
        if over:
            which.append(f"{m} ({', '.join(f'{k} {fmt3(v)}' for k, v in over.items())} vs condition {fmt3(cond)})")
    if not which:
        return []
    return [f"Batch effect: the clusters follow the plate/objective more than the disease for {'; '.join(which)} "
            "(V-measure of KMeans clusters after per-plate normalisation to HC). Separation of SSc from HC in "
            "these embeddings may partly be separation of plates or objectives."]


def supervision_notes(results: dict[str, dict]) -> list[str]:
    """A note that the supervised embeddings (:data:`SUPERVISED_METHODS`) saw the training
    donors' labels, so their donor-level figures are optimistic, while the methods of
    :data:`OUT_OF_FOLD_METHODS` are scored out of fold; only for the methods present."""
    sup = [m for m in SUPERVISED_METHODS if m in results]
    oof = [m for m in OUT_OF_FOLD_METHODS if m in results]
    if not sup and not oof:
        return []
    text = ""
    if sup:
        names = " and ".join(sup)
        text = (f"Supervised embeddings ({names}) were trained on the SSc/HC labels of the training donors, so a donor "
                "held out by leave-one-donor-out (or a donor-grouped fold) may have shaped the embedding: their LODO "
                "accuracies, p-values and donor ranks are optimistic.")
    if oof:
        names = " and ".join(oof)
        verb = "is" if len(oof) == 1 else "are"
        text += (" " if text else "") + (f"{names} {verb} scored out of fold: each donor's score, rank and the LODO "
                                         "accuracy come from a model that never saw that donor; {names}' clustering "
                                         "metrics, SVM accuracies and mAP use the final model's embedding, which was "
                                         "trained on these donors' labels and is optimistic like the supervised ones."
                                         .replace("{names}", names))
    return [text]
