"""Patient clustering of well embeddings, as in section 6 of the seed thesis, plus grouped checks.

Input everywhere is a "well embeddings" DataFrame for ONE method: one row per well with
``Metadata_Plate, Metadata_Well, Metadata_Donor, Metadata_Condition (HC|SSc),
Metadata_Group (HC|SSC|SSCHL), method, n_sites`` and numeric feature columns.

Thesis recipe (Table 6.1): standardize, PCA to 2 components, KMeans k=2 (Euclidean);
hierarchical clustering with cosine distance and average linkage; external metrics
(homogeneity, completeness, V-measure) against the condition, internal metrics
(silhouette, Davies-Bouldin) in the 2-D PCA space; SVM 5-fold accuracy with ungrouped folds.
Additions here: donor-grouped SVM folds and copairs mAP retrieval (donor replicates, condition).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy.cluster.hierarchy import dendrogram, fcluster, linkage  # noqa: E402
from scipy.spatial.distance import pdist  # noqa: E402

from ssc_assets.core.plots.figures import fig_to_png  # noqa: E402

NON_FEATURE = {"method", "n_sites"}
WELL_KEYS = ["Metadata_Plate", "Metadata_Well", "Metadata_Donor", "Metadata_Condition", "Metadata_Group"]
GROUP_PALETTE = {"HC": "tab:blue", "SSC": "tab:orange", "SSCHL": "tab:red"}
OTHER_COLOUR = "tab:gray"
CLUSTER_MARKERS = ["o", "^", "s", "D", "v", "P", "X", "*"]


# ---------------------------------------------------------------- features


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Numeric feature columns: not ``Metadata_*``, not ``method``/``n_sites``, not all-NaN.

    Non-numeric columns are skipped (they cannot be features).
    """
    cols = []
    for c in df.columns:
        if str(c).startswith("Metadata_") or c in NON_FEATURE:
            continue
        if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):
            continue
        if df[c].isna().all():
            continue
        cols.append(c)
    return cols


def clean_wells(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Drop all-NaN feature columns, then rows with any NaN feature.

    Returns (cleaned frame with a fresh RangeIndex, feature column names).
    """
    feats = feature_columns(df)
    out = df.dropna(subset=feats).reset_index(drop=True) if feats else df.reset_index(drop=True)
    return out, feats


def _standardize(X: np.ndarray) -> np.ndarray:
    """z-score per column (population std); constant columns become 0. float64 (n, d)."""
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit_transform(np.asarray(X, dtype=np.float64))


# ---------------------------------------------------------------- clustering


def kmeans_on_pca(X: np.ndarray, seed: int = 0, n_clusters: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """StandardScaler -> PCA(min(2, d)) -> KMeans(n_clusters, n_init=10), all seeded.

    ``X``: (n, d) float. Returns (labels int64 (n,) with ids 0..k-1, pcs float64 (n, min(2, d))).
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    Xs = _standardize(X)
    n_comp = max(1, min(2, Xs.shape[1], Xs.shape[0]))
    pcs = PCA(n_components=n_comp, random_state=seed).fit_transform(Xs)
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed)
    labels = km.fit_predict(pcs).astype(np.int64)
    return labels, pcs


def hierarchical_cosine(X: np.ndarray) -> np.ndarray:
    """Average-linkage tree on cosine distances of standardized features.

    Same as ``linkage(X_std, method="average", metric="cosine")``, except that distances
    involving an all-zero standardized row (undefined cosine) are set to 1 (orthogonal).
    Returns the scipy linkage matrix, float64 (n-1, 4).
    """
    Xs = _standardize(X)
    d = np.nan_to_num(pdist(Xs, metric="cosine"), nan=1.0)
    return linkage(d, method="average")


def hierarchical_labels(Z: np.ndarray, k: int = 2) -> np.ndarray:
    """Cut the tree into at most ``k`` clusters (fcluster ``maxclust``); int64 (n,), ids 0..k-1."""
    return fcluster(Z, t=k, criterion="maxclust").astype(np.int64) - 1


def cluster_metrics(labels: np.ndarray, condition: np.ndarray, X_for_internal: np.ndarray) -> dict:
    """Table 6.1 metrics for one clustering.

    ``labels``: int (n,); ``condition``: str (n,) e.g. HC/SSc, the external truth;
    ``X_for_internal``: (n, p) space the clusters were found in (the 2-D PCA space).
    Returns ``cluster_sizes`` (list[int] by ascending cluster id), ``homogeneity``,
    ``completeness``, ``v_measure`` (sklearn, vs condition), ``silhouette`` and
    ``davies_bouldin`` (sklearn, Euclidean; NaN with fewer than 2 clusters or no singleton-free split).
    """
    from sklearn import metrics

    labels = np.asarray(labels)
    condition = np.asarray(condition).astype(str)
    ids, counts = np.unique(labels, return_counts=True)
    h, c, v = metrics.homogeneity_completeness_v_measure(condition, labels)
    n = len(labels)
    internal_ok = 2 <= len(ids) <= n - 1
    X = np.asarray(X_for_internal, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    return {
        "cluster_sizes": [int(x) for x in counts],
        "homogeneity": float(h),
        "completeness": float(c),
        "v_measure": float(v),
        "silhouette": float(metrics.silhouette_score(X, labels)) if internal_ok else float("nan"),
        "davies_bouldin": float(metrics.davies_bouldin_score(X, labels)) if internal_ok else float("nan"),
    }


# ---------------------------------------------------------------- supervised check


def svm_cv_accuracy(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    n_splits: int = 5,
    seed: int = 0,
) -> dict:
    """Cross-validated accuracy of StandardScaler + SVC(rbf, C=1).

    ``groups=None``: StratifiedKFold (the thesis' ungrouped folds; replicate wells of a donor
    can sit in train and test). With ``groups`` (e.g. donors): StratifiedGroupKFold, no group in
    both train and test; ``n_splits`` is reduced to the smallest number of groups per class.
    Both shuffle with ``seed``. Returns ``accuracy`` (mean over folds), ``std``, ``n_splits``,
    ``fold_accuracies``, ``correct`` (float (n,): 1/0 whether each row was right when it was
    in a test fold; every row is tested once) and ``folds``: list of (train set, test set) of
    group labels when grouped, of row positions when ungrouped. NaN accuracy plus ``note`` if
    fewer than 2 folds are possible.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(str)
    if groups is None:
        per_class = pd.Series(y).value_counts()
    else:
        groups = np.asarray(groups).astype(str)
        per_class = pd.DataFrame({"y": y, "g": groups}).groupby("y")["g"].nunique()
    n = int(min(n_splits, per_class.min())) if len(per_class) >= 2 else 0
    if n < 2:
        return {"accuracy": float("nan"), "std": float("nan"), "n_splits": n, "fold_accuracies": [],
                "correct": np.full(len(y), np.nan), "folds": [],
                "note": "need two classes with at least 2 members (groups) each"}
    if groups is None:
        splits = StratifiedKFold(n_splits=n, shuffle=True, random_state=seed).split(X, y)
    else:
        splits = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed).split(X, y, groups)
    accs, folds = [], []
    correct = np.full(len(y), np.nan)
    for tr, te in splits:
        model = make_pipeline(StandardScaler(), SVC(kernel="rbf", C=1.0))
        if len(np.unique(y[tr])) < 2:  # degenerate fold: predict the only class seen
            pred = np.full(len(te), y[tr][0])
        else:
            pred = model.fit(X[tr], y[tr]).predict(X[te])
        accs.append(float(np.mean(pred == y[te])))
        correct[te] = (pred == y[te]).astype(np.float64)
        if groups is None:
            folds.append((set(tr.tolist()), set(te.tolist())))
        else:
            folds.append((set(groups[tr]), set(groups[te])))
    return {"accuracy": float(np.mean(accs)), "std": float(np.std(accs)), "n_splits": n,
            "fold_accuracies": accs, "correct": correct, "folds": folds}


def chance_accuracy(y) -> float:
    """Accuracy of always predicting the larger class (the majority-class rate); NaN if empty."""
    counts = pd.Series(np.asarray(y).astype(str)).value_counts()
    return float(counts.iloc[0] / counts.sum()) if len(counts) else float("nan")


def bootstrap_ci(correct, groups, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the accuracy when whole groups (donors) are resampled.

    ``correct``: 1/0 (NaN = not tested) per row; ``groups``: the row's donor. Each bootstrap
    draws as many donors as there are, with replacement, and takes the accuracy over their
    rows. Returns (low, high), NaN if fewer than 2 groups were tested.
    """
    c = np.asarray(correct, dtype=np.float64)
    g = np.asarray(groups).astype(str)
    ok = np.isfinite(c)
    c, g = c[ok], g[ok]
    ids, inv = np.unique(g, return_inverse=True)
    if len(ids) < 2:
        return float("nan"), float("nan")
    hits = np.bincount(inv, weights=c, minlength=len(ids))
    sizes = np.bincount(inv, minlength=len(ids)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    acc = hits[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    a = (1.0 - level) / 2.0
    return float(np.quantile(acc, a)), float(np.quantile(acc, 1.0 - a))


# ---------------------------------------------------------------- retrieval (copairs mAP)


def retrieval_map(
    df: pd.DataFrame,
    pos_sameby: list[str],
    pos_diffby: list[str],
    neg_sameby: list[str],
    neg_diffby: list[str],
    null_size: int = 10000,
    seed: int = 0,
    threshold: float = 0.05,
    standardize: bool = True,
    cache_dir: str | Path | None = None,
) -> dict:
    """copairs mean average precision of wells retrieving their positives by cosine similarity.

    Every well is a query; its positives/negatives follow the copairs pair rules. Features are
    the (optionally z-scored) feature columns of the NaN-free wells. APs are summarized per
    ``pos_sameby`` group with ``copairs.map.mean_average_precision`` (null of ``null_size``
    random rankings, BH correction, ``threshold``). ``cache_dir`` is copairs' null cache
    (default ``~/.copairs``).

    Returns:
      ``mean_average_precision``: mean AP over all queries with >= 1 positive (each well counts once);
      ``p_value``: median of the per-group (uncorrected) p-values;
      ``fraction_significant``: fraction of groups with BH-corrected p < ``threshold``;
      ``chance``: mean over queries of positives / candidates (the AP of a random ranking, about);
      ``n_queries``: wells with >= 1 positive; ``n_groups``;
      ``group_map``: dict group label -> group mAP;
      ``per_group``: copairs' table (group columns, ``mean_average_precision``, ``p_value``,
      ``corrected_p_value``, ``below_p``, ``below_corrected_p``, ...);
      ``note``: "" or why NaNs were returned (no positive or negative pairs).
    """
    from copairs.map import average_precision, mean_average_precision
    from copairs.matching import UnpairedException

    clean, feats = clean_wells(df)
    meta_cols = [c for c in clean.columns if str(c).startswith("Metadata_")]
    empty = {
        "mean_average_precision": float("nan"), "p_value": float("nan"),
        "fraction_significant": float("nan"), "chance": float("nan"), "n_queries": 0, "n_groups": 0,
        "group_map": {}, "per_group": pd.DataFrame(),
    }
    if not feats or len(clean) < 2:
        return {**empty, "note": "fewer than 2 wells with features"}
    X = clean[feats].to_numpy(np.float64)
    if standardize:
        X = _standardize(X)
    meta = clean[meta_cols].astype(str)
    try:
        ap = average_precision(meta, X, pos_sameby, pos_diffby, neg_sameby, neg_diffby,
                               distance="cosine", progress_bar=False)
    except UnpairedException as exc:
        return {**empty, "note": f"no pairs: {exc}"}
    ap = ap[ap["n_pos_pairs"] > 0].dropna(subset=["average_precision"])
    if ap.empty:
        return {**empty, "note": "no query has a positive pair"}
    per_group = mean_average_precision(ap, pos_sameby, null_size=null_size, threshold=threshold,
                                       seed=seed, progress_bar=False, cache_dir=cache_dir)
    per_group = per_group.drop(columns=["indices"], errors="ignore")
    key = per_group[pos_sameby].astype(str).agg("/".join, axis=1)
    return {
        "mean_average_precision": float(ap["average_precision"].mean()),
        "p_value": float(per_group["p_value"].median()),
        "fraction_significant": float(per_group["below_corrected_p"].mean()),
        "chance": float((ap["n_pos_pairs"] / ap["n_total_pairs"]).mean()),
        "n_queries": int(len(ap)),
        "n_groups": int(len(per_group)),
        "group_map": dict(zip(key, per_group["mean_average_precision"].astype(float))),
        "per_group": per_group,
        "note": "",
    }


def donor_replicate_map(df: pd.DataFrame, null_size: int = 10000, seed: int = 0, **kw) -> dict:
    """Replicate wells of the same donor retrieved across plates (negatives: other donors).

    ``group_map`` is per donor. NaNs and a ``note`` if no donor has wells on two plates.
    """
    return retrieval_map(df, ["Metadata_Donor"], ["Metadata_Plate"], [], ["Metadata_Donor"],
                         null_size=null_size, seed=seed, **kw)


def condition_map(df: pd.DataFrame, null_size: int = 10000, seed: int = 0, **kw) -> dict:
    """SSc vs HC retrieval: positives share the condition, negatives differ in it.

    ``group_map`` holds the per-condition mAP, ``mean_average_precision`` the overall one.
    """
    return retrieval_map(df, ["Metadata_Condition"], [], [], ["Metadata_Condition"],
                         null_size=null_size, seed=seed, **kw)


# ---------------------------------------------------------------- figures


def _group_colour(g: str) -> str:
    return GROUP_PALETTE.get(str(g), OTHER_COLOUR)


def _group_legend(groups) -> list:
    present = list(dict.fromkeys(str(g) for g in groups))
    order = [g for g in GROUP_PALETTE if g in present] + [g for g in present if g not in GROUP_PALETTE]
    return [Patch(color=_group_colour(g), label=g) for g in order]


#: Report figures: inches x REPORT_DPI = pixels; 12 in at 90 dpi is 1080 px (the report's column).
REPORT_DPI = 90
FONT = 11


def dendrogram_png(Z: np.ndarray, donors: list[str], groups: list[str], title: str = "") -> bytes:
    """Dendrogram with leaves labelled by donor, label text coloured by group; PNG bytes
    (at least 1080 px wide, labels >= 9 pt)."""
    n = len(donors)
    fig, ax = plt.subplots(figsize=(min(max(12.0, 0.2 * n), 40.0), 5.0))
    dn = dendrogram(Z, labels=[str(d) for d in donors], ax=ax, leaf_rotation=90,
                    leaf_font_size=9 if n <= 80 else 7, color_threshold=0, above_threshold_color="k")
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


# ---------------------------------------------------------------- one method end to end


def cluster_method(
    df: pd.DataFrame,
    seed: int = 0,
    null_size: int = 10000,
    cache_dir: str | Path | None = None,
) -> dict:
    """Run the whole section-6 analysis (plus grouped checks) on one method's well embeddings.

    Returns a flat dict: ``method, n_wells, n_features``; ``kmeans_*`` and ``hier_*`` for
    ``cluster_sizes, homogeneity, completeness, v_measure, silhouette, davies_bouldin`` (internal
    metrics of both in the same 2-D PCA space); ``n_donors``, ``n_donors_<cond>``, ``n_plates``;
    ``svm_accuracy_ungrouped(_std)``, ``svm_accuracy_donor_grouped(_std)``,
    ``svm_accuracy_donor_grouped_ci_low/_ci_high`` (95 % donor bootstrap of the out-of-fold
    predictions), ``svm_n_splits_donor_grouped``, ``svm_chance`` (majority-class rate);
    ``map_donor_replicate``, ``map_donor_replicate_p``, ``map_donor_replicate_fraction_significant``,
    ``map_condition``, ``map_condition_p``, ``map_condition_<cond>`` per condition,
    ``map_*_chance``, ``map_*_note``, ``map_null_size``; plus ``figures`` {name: PNG bytes}
    (MLflow), ``report_figures`` (dendrogram and the two clusterings side by side, for the
    report) and ``assignments`` (well keys, ``kmeans_cluster``, ``hier_cluster``, ``pc1``, ``pc2``).
    """
    clean, feats = clean_wells(df)
    method = str(clean["method"].iloc[0]) if "method" in clean and len(clean) else "?"
    if not feats or len(clean) < 3:
        raise ValueError(f"{method}: need >= 3 wells and >= 1 feature, got {len(clean)} x {len(feats)}")
    X = clean[feats].to_numpy(np.float64)
    cond = clean["Metadata_Condition"].astype(str).to_numpy()
    donors = clean["Metadata_Donor"].astype(str).to_numpy()
    groups = clean["Metadata_Group"].astype(str).tolist()

    out: dict = {"method": method, "n_wells": int(len(clean)), "n_features": int(len(feats))}
    km, pcs = kmeans_on_pca(X, seed=seed)
    for k, v in cluster_metrics(km, cond, pcs).items():
        out[f"kmeans_{k}"] = v
    Z = hierarchical_cosine(X)
    hl = hierarchical_labels(Z, 2)
    for k, v in cluster_metrics(hl, cond, pcs).items():
        out[f"hier_{k}"] = v

    out["n_donors"] = int(len(set(donors)))
    for c, n in pd.Series(donors).groupby(cond).nunique().items():
        out[f"n_donors_{c}"] = int(n)
    if "Metadata_Plate" in clean:
        out["n_plates"] = int(clean["Metadata_Plate"].nunique())

    su = svm_cv_accuracy(X, cond, groups=None, seed=seed)
    sg = svm_cv_accuracy(X, cond, groups=donors, seed=seed)
    lo, hi = bootstrap_ci(sg["correct"], donors, seed=seed)
    out.update({
        "svm_accuracy_ungrouped": su["accuracy"], "svm_accuracy_ungrouped_std": su["std"],
        "svm_accuracy_donor_grouped": sg["accuracy"], "svm_accuracy_donor_grouped_std": sg["std"],
        "svm_accuracy_donor_grouped_ci_low": lo, "svm_accuracy_donor_grouped_ci_high": hi,
        "svm_n_splits_donor_grouped": sg["n_splits"], "svm_chance": chance_accuracy(cond),
    })

    dm = donor_replicate_map(clean, null_size=null_size, seed=seed, cache_dir=cache_dir)
    cm = condition_map(clean, null_size=null_size, seed=seed, cache_dir=cache_dir)
    out.update({
        "map_donor_replicate": dm["mean_average_precision"], "map_donor_replicate_p": dm["p_value"],
        "map_donor_replicate_fraction_significant": dm["fraction_significant"],
        "map_donor_replicate_chance": dm["chance"], "map_donor_replicate_note": dm["note"],
        "map_condition": cm["mean_average_precision"], "map_condition_p": cm["p_value"],
        "map_condition_chance": cm["chance"], "map_condition_note": cm["note"],
        "map_null_size": int(null_size),
    })
    for c, v in cm["group_map"].items():
        out[f"map_condition_{c}"] = v

    out["figures"] = {
        "dendrogram": dendrogram_png(Z, donors.tolist(), groups, f"{method}: hierarchical (cosine, average)"),
        "pca_kmeans": pca_scatter_png(pcs, groups, km, f"{method}: PCA + KMeans (k=2)"),
        "pca_hierarchical": pca_scatter_png(pcs, groups, hl, f"{method}: PCA, hierarchical clusters"),
    }
    out["report_figures"] = {
        "dendrogram": out["figures"]["dendrogram"],
        "pca_clusters": pca_clusters_png(pcs, groups, km, hl, f"{method}: clusters in the first two principal components"),
    }
    keys = [c for c in WELL_KEYS if c in clean.columns]
    assign = clean[keys].copy()
    assign["kmeans_cluster"] = km
    assign["hier_cluster"] = hl
    assign["pc1"] = pcs[:, 0]
    assign["pc2"] = pcs[:, 1] if pcs.shape[1] > 1 else np.nan
    out["assignments"] = assign
    return out


# ---------------------------------------------------------------- thesis reference


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

    ``results``: method key -> flat metrics dict from :func:`cluster_method`.
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
    ("V-measure (KMeans)", "kmeans_v_measure"),
    ("silhouette", "kmeans_silhouette"),
    ("Davies-Bouldin", "kmeans_davies_bouldin"),
    ("cluster sizes", lambda r: _sizes_str(r.get("kmeans_cluster_sizes")) or "n/a"),
]
THESIS_ROWS: list[tuple[str, str]] = [("thesis acc. (ungrouped)", "svm_accuracy"), ("thesis V-measure", "v_measure")]


def headline_table(results: dict[str, dict], thesis: bool = True) -> pd.DataFrame:
    """The comparison for reading: one row per metric (short label in ``metric``), one column
    per method, every cell a string rounded to 3 significant digits, ``n/a`` where missing.
    With ``thesis``, two last rows hold the seed thesis' numbers (other data, ungrouped folds)."""
    rows = []
    for label, get in HEADLINE_ROWS:
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


def trust_notes(results: dict[str, dict], preset: list[str] | None = None) -> list[str]:
    """Plain sentences on how far to trust the headline numbers (chance levels, sample size,
    p-value resolution, demo models). The first one is the demo warning (starting with
    :data:`DEMO_NOTE`) when ``preset``."""
    notes = []
    if preset:
        by_why: dict[str, list[str]] = {}
        for r in preset:  # "<model> v<n>: <why>" -> "<model>, <model>: <why>"
            who, _, why = r.partition(": ")
            by_why.setdefault(why or who, []).append(who if why else "")
        what = "; ".join(f"{', '.join(w for w in who if w)}: {why}" for why, who in by_why.items())
        notes.append(DEMO_NOTE + f" The models behind these embeddings are a smoke test ({what}); the numbers show "
                     "that the pipeline runs, not whether an embedding separates SSc from HC.")
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
    return notes
