"""Patient clustering of well embeddings, as in section 6 of the seed thesis, plus grouped checks.

Input everywhere is a "well embeddings" DataFrame for ONE method: one row per well with
``Metadata_Plate, Metadata_Well, Metadata_Donor, Metadata_Condition (HC|SSc),
Metadata_Group (HC|SSC|SSCHL), Metadata_Method, Metadata_n_sites`` and numeric feature columns
(:func:`well_features`). Figures are in :mod:`ssc_assets.core.plots.clustering`, the
comparison and headline tables in :mod:`ssc_assets.core.analysis.comparison`.

Thesis recipe (Table 6.1): standardize, PCA to 2 components, KMeans k=2 (Euclidean);
hierarchical clustering with cosine distance and average linkage; external metrics
(homogeneity, completeness, V-measure) against the condition, internal metrics
(silhouette, Davies-Bouldin) in the 2-D PCA space; SVM 5-fold accuracy with ungrouped folds.
Additions here: donor-grouped SVM folds and copairs mAP retrieval (donor replicates, condition).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from ssc_assets.core.plots.clustering import dendrogram_png, pca_clusters_png, pca_scatter_png
from ssc_assets.core.schema import CONDITION, DONOR, GROUP, METHOD, PLATE, WELL_META, feature_columns, metadata_columns

# ---------------------------------------------------------------- features


def well_features(df: pd.DataFrame) -> list[str]:
    """Numeric feature columns of a well table (:func:`schema.feature_columns`), not all-NaN.

    Non-numeric columns are skipped (they cannot be features).
    """
    return feature_columns(df, numeric=True, drop_all_nan=True)


def clean_wells(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Drop all-NaN feature columns, then rows with any NaN feature.

    Returns (cleaned frame with a fresh RangeIndex, feature column names).
    """
    feats = well_features(df)
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
    meta_cols = metadata_columns(clean)
    if not feats or len(clean) < 2:
        return _empty_retrieval("fewer than 2 wells with features")
    X = clean[feats].to_numpy(np.float64)
    if standardize:
        X = _standardize(X)
    meta = clean[meta_cols].astype(str)
    try:
        ap = average_precision(meta, X, pos_sameby, pos_diffby, neg_sameby, neg_diffby,
                               distance="cosine", progress_bar=False)
    except UnpairedException as exc:
        return _empty_retrieval(f"no pairs: {exc}")
    ap = ap[ap["n_pos_pairs"] > 0].dropna(subset=["average_precision"])
    if ap.empty:
        return _empty_retrieval("no query has a positive pair")
    per_group = mean_average_precision(ap, pos_sameby, null_size=null_size, threshold=threshold,
                                       seed=seed, progress_bar=False, cache_dir=cache_dir)
    return _retrieval_summary(ap, per_group.drop(columns=["indices"], errors="ignore"), pos_sameby)


def _empty_retrieval(note: str) -> dict:
    """The :func:`retrieval_map` result when nothing can be retrieved: NaNs, zeros and ``note``."""
    return {
        "mean_average_precision": float("nan"), "p_value": float("nan"),
        "fraction_significant": float("nan"), "chance": float("nan"), "n_queries": 0, "n_groups": 0,
        "group_map": {}, "per_group": pd.DataFrame(), "note": note,
    }


def _retrieval_summary(ap: pd.DataFrame, per_group: pd.DataFrame, pos_sameby: list[str]) -> dict:
    """The :func:`retrieval_map` result from copairs' per-query APs and per-group mAP table."""
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
    method = str(clean[METHOD].iloc[0]) if METHOD in clean and len(clean) else "?"
    if not feats or len(clean) < 3:
        raise ValueError(f"{method}: need >= 3 wells and >= 1 feature, got {len(clean)} x {len(feats)}")
    X = clean[feats].to_numpy(np.float64)
    cond = clean[CONDITION].astype(str).to_numpy()
    donors = clean[DONOR].astype(str).to_numpy()
    groups = clean[GROUP].astype(str).tolist()

    out: dict = {"method": method, "n_wells": int(len(clean)), "n_features": int(len(feats))}
    km, pcs = kmeans_on_pca(X, seed=seed)
    out.update(_prefixed("kmeans_", cluster_metrics(km, cond, pcs)))
    Z = hierarchical_cosine(X)
    hl = hierarchical_labels(Z, 2)
    out.update(_prefixed("hier_", cluster_metrics(hl, cond, pcs)))
    out.update(_donor_counts(clean, donors, cond))
    out.update(_svm_summary(X, cond, donors, seed))
    out.update(_map_summary(clean, null_size, seed, cache_dir))
    out["figures"] = {
        "dendrogram": dendrogram_png(Z, donors.tolist(), groups, f"{method}: hierarchical (cosine, average)"),
        "pca_kmeans": pca_scatter_png(pcs, groups, km, f"{method}: PCA + KMeans (k=2)"),
        "pca_hierarchical": pca_scatter_png(pcs, groups, hl, f"{method}: PCA, hierarchical clusters"),
    }
    out["report_figures"] = {
        "dendrogram": out["figures"]["dendrogram"],
        "pca_clusters": pca_clusters_png(pcs, groups, km, hl, f"{method}: clusters in the first two principal components"),
    }
    out["assignments"] = _assignments(clean, km, hl, pcs)
    return out


def _prefixed(prefix: str, metrics: dict) -> dict:
    """``metrics`` with every key prefixed (e.g. ``kmeans_``)."""
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def _donor_counts(clean: pd.DataFrame, donors: np.ndarray, cond: np.ndarray) -> dict:
    """``n_donors``, ``n_donors_<cond>`` per condition and ``n_plates`` (when known)."""
    out: dict = {"n_donors": int(len(set(donors)))}
    for c, n in pd.Series(donors).groupby(cond).nunique().items():
        out[f"n_donors_{c}"] = int(n)
    if PLATE in clean:
        out["n_plates"] = int(clean[PLATE].nunique())
    return out


def _svm_summary(X: np.ndarray, cond: np.ndarray, donors: np.ndarray, seed: int) -> dict:
    """Ungrouped and donor-grouped SVM accuracies, the donor bootstrap interval and chance."""
    su = svm_cv_accuracy(X, cond, groups=None, seed=seed)
    sg = svm_cv_accuracy(X, cond, groups=donors, seed=seed)
    lo, hi = bootstrap_ci(sg["correct"], donors, seed=seed)
    return {
        "svm_accuracy_ungrouped": su["accuracy"], "svm_accuracy_ungrouped_std": su["std"],
        "svm_accuracy_donor_grouped": sg["accuracy"], "svm_accuracy_donor_grouped_std": sg["std"],
        "svm_accuracy_donor_grouped_ci_low": lo, "svm_accuracy_donor_grouped_ci_high": hi,
        "svm_n_splits_donor_grouped": sg["n_splits"], "svm_chance": chance_accuracy(cond),
    }


def _map_summary(clean: pd.DataFrame, null_size: int, seed: int, cache_dir: str | Path | None) -> dict:
    """Donor-replicate and condition mAP (with p-values, chance, notes, per-condition mAP)."""
    dm = donor_replicate_map(clean, null_size=null_size, seed=seed, cache_dir=cache_dir)
    cm = condition_map(clean, null_size=null_size, seed=seed, cache_dir=cache_dir)
    out = {
        "map_donor_replicate": dm["mean_average_precision"], "map_donor_replicate_p": dm["p_value"],
        "map_donor_replicate_fraction_significant": dm["fraction_significant"],
        "map_donor_replicate_chance": dm["chance"], "map_donor_replicate_note": dm["note"],
        "map_condition": cm["mean_average_precision"], "map_condition_p": cm["p_value"],
        "map_condition_chance": cm["chance"], "map_condition_note": cm["note"],
        "map_null_size": int(null_size),
    }
    for c, v in cm["group_map"].items():
        out[f"map_condition_{c}"] = v
    return out


def _assignments(clean: pd.DataFrame, km: np.ndarray, hl: np.ndarray, pcs: np.ndarray) -> pd.DataFrame:
    """Well keys with their KMeans and hierarchical cluster and first two PCs."""
    keys = [c for c in WELL_META if c in clean.columns]
    assign = clean[keys].copy()
    assign["kmeans_cluster"] = km
    assign["hier_cluster"] = hl
    assign["pc1"] = pcs[:, 0]
    assign["pc2"] = pcs[:, 1] if pcs.shape[1] > 1 else np.nan
    return assign
