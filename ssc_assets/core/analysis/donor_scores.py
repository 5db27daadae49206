"""Per-donor answers from well-level embeddings (issue 11). Pure: numpy, pandas, scikit-learn, pycytominer.

Input everywhere: a *well table*, one row per well, with ``Metadata_Plate``,
``Metadata_Well``, ``Metadata_Donor``, ``Metadata_Condition`` (``HC`` | ``SSc``),
``Metadata_Group`` (``HC`` | ``SSC`` | ``SSCHL``), optionally ``Metadata_AcquisitionGroup``
(or ``Metadata_Objective``), and numeric feature columns (by default
:func:`ssc_assets.core.schema.feature_columns`; the legacy bookkeeping columns ``method``,
``n_sites``, ``label`` are never features). Any embedding of the project fits (PCA,
autoencoder, classifiers, cell CNN, profiles).

* :func:`normalize_wells` - per plate x acquisition group, robust z-scores against that
  batch's HC wells (pycytominer ``normalize``), so HC wells of every batch have median 0,
  then :func:`compress` (asinh: far-out wells stop setting every scale downstream);
* :func:`batch_vmeasure` - V-measure of KMeans clusters against plate, acquisition group and
  condition (a batch effect shows as plate V-measure >> condition V-measure);
* :func:`lodo_accuracy` - leave-one-donor-out linear SVM: well accuracy, out-of-fold decision
  values, optionally with the normalisation refitted inside every fold (:class:`FoldNorm`);
  :func:`permutation_pvalue` - the same with condition labels permuted between donors;
* :func:`donor_scores` - per-donor SSc-likeness (mean out-of-fold decision over the donor's
  wells, bootstrap interval over wells, rank) and :func:`severity_spearman` (rho between the
  score and HC < SSC < SSCHL);
* :func:`donor_report` - all of it for several methods: tidy tables, one row per donor x
  method and one row per method.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ssc_assets.core import schema

log = logging.getLogger(__name__)

CONTROL = "HC"
#: Group order of the severity check: HC (0) < SSc (1) < severe SSc (2).
GROUP_ORDER = {"HC": 0, "SSC": 1, "SSCHL": 2}
LEGACY_NON_FEATURES = frozenset({"method", "n_sites", "label", "site_index", "side", "store", "masks_store", "split"})
#: Columns of :func:`donor_scores` (one row per donor).
DONOR_COLUMNS = ["Metadata_Donor", "Metadata_Condition", "Metadata_Group", "n_wells", "score", "score_low",
                 "score_high", "rank", "predicted", "correct", "well_accuracy"]


def wells_features(wells: pd.DataFrame, features: list[str] | None = None) -> list[str]:
    """The feature columns of a well table (numeric, not all-NaN, not bookkeeping)."""
    if features is not None:
        return list(features)
    return [c for c in schema.feature_columns(wells, numeric=True, drop_all_nan=True) if c not in LEGACY_NON_FEATURES]


def batch_column(wells: pd.DataFrame) -> str | None:
    """The acquisition-group column present (``Metadata_AcquisitionGroup``, else
    ``Metadata_Objective``), or None."""
    for c in (schema.ACQUISITION_GROUP, schema.OBJECTIVE):
        if c in wells.columns:
            return c
    return None


def _matrix(wells: pd.DataFrame, features: list[str]) -> np.ndarray:
    X = wells[features].to_numpy(np.float64)
    X = np.where(np.isfinite(X), X, np.nan)
    med = np.nanmedian(X, axis=0) if len(X) else np.zeros(X.shape[1])
    return np.where(np.isnan(X), np.where(np.isnan(med), 0.0, med)[None, :], X)


# ---------------------------------------------------------------- batch normalisation


def compress(values: np.ndarray) -> np.ndarray:
    """asinh of normalised features: ~linear within +-1 reference unit (MAD or SD), logarithmic
    beyond (asinh(x) ~ sign(x) log(2|x|)). The severe donors' wells can sit hundreds of HC MADs
    out; without it they set every standard deviation downstream (SVM scaling, RBF width,
    KMeans) and HC and mild SSc wells get squeezed together. Measured on a held-out study: the
    whole-site classifier's LODO accuracy 0.551 -> 0.962 at the same rank correlation
    (docs/clustering.md). Order-preserving; 0 stays 0."""
    return np.arcsinh(values)


def normalize_wells(wells: pd.DataFrame, features: list[str] | None = None, *, control: str = CONTROL,
                    by: list[str] | None = None, method: str = "mad_robustize", min_reference: int = 2,
                    compressed: bool = True) -> pd.DataFrame:
    """Per-batch normalisation of the features against the batch's control wells.

    Batches: ``by`` (default: ``Metadata_Plate`` and, if present, the acquisition group
    column of :func:`batch_column`). In each batch, ``pycytominer.normalize(method=method,
    samples="Metadata_Condition == 'HC'")`` fits on the control wells and transforms all wells:
    ``mad_robustize`` (default) gives (x - median_HC) / (1.4826 MAD_HC), so the control wells
    have median exactly 0 per feature; ``standardize`` gives mean 0 / std 1 on them (what
    :func:`ssc_assets.core.analysis.profiles.select_and_normalize` uses for sites). A batch
    with fewer than ``min_reference`` control wells is normalised against all its wells; a
    feature whose reference MAD (or std) is 0 is only centred (no division by ~0). Noted in
    ``out.attrs["notes"]``. ``compressed``: the normalised values pass through :func:`compress`
    (asinh). Returns the same rows (order kept) and columns, features float64.
    """
    from pycytominer import normalize

    feats = wells_features(wells, features)
    if not feats:
        raise ValueError("no feature columns")
    by = list(by) if by is not None else [schema.PLATE] + ([batch_column(wells)] if batch_column(wells) else [])
    meta = [c for c in wells.columns if c not in feats]
    values = wells[feats].reset_index(drop=True).astype(np.float64).replace([np.inf, -np.inf], np.nan)
    df = pd.concat([wells[meta].reset_index(drop=True), values,
                    pd.DataFrame({"_row": np.arange(len(wells))})], axis=1)[[*wells.columns, "_row"]]
    notes: list[str] = []
    parts = []
    for key, sub in df.groupby(by, sort=False, dropna=False):
        is_ref = (sub[schema.CONDITION].astype(str) == control).to_numpy()
        if is_ref.sum() >= min_reference:
            samples, ref = f"{schema.CONDITION} == {control!r}", sub[is_ref]
        else:
            samples, ref = "all", sub
            notes.append(f"batch {key}: {int(is_ref.sum())} {control} well(s), normalised against all {len(sub)} wells")
        out = normalize(profiles=sub, features=feats, meta_features=meta + ["_row"], samples=samples, method=method)
        # features constant in the reference: centre only
        centre = ref[feats].median() if method == "mad_robustize" else ref[feats].mean()
        spread = (ref[feats] - ref[feats].median()).abs().median() if method == "mad_robustize" else ref[feats].std(ddof=0)
        flat = [f for f in feats if not spread[f] > 1e-12]
        if flat:
            out[flat] = sub[flat].to_numpy() - centre[flat].to_numpy()[None, :]
            notes.append(f"batch {key}: {len(flat)} feature(s) constant in the reference, centred only")
        parts.append(out)
    normed = pd.concat(parts).sort_values("_row")
    result = wells.reset_index(drop=True).copy()
    values = normed[feats].to_numpy(np.float64)
    result[feats] = compress(values) if compressed else values
    for n in notes:
        log.info("normalize_wells: %s", n)
    result.attrs["notes"] = notes
    return result


@dataclass(frozen=True)
class FoldNorm:
    """Normalisation refitted inside every LODO fold (no held-out well in the reference).

    ``batches``: int (n,) batch code per well (plate x acquisition group); ``method``:
    ``mad_robustize`` ((x - median) / (1.4826 MAD) of the batch's control wells, as
    :func:`normalize_wells`) or ``standardize``; a batch with fewer than ``min_reference``
    control wells in the fold uses all its training wells, and a batch with none (only the
    held-out donor's wells) the pooled control wells of the fold: the held-out donor is never
    in a reference. A feature with zero spread is only centred; NaN (missing) values become 0
    (the reference centre) after normalising; ``compressed``: then :func:`compress` (asinh), as
    :func:`normalize_wells`."""

    batches: np.ndarray
    method: str = "mad_robustize"
    min_reference: int = 2
    compressed: bool = True

    @classmethod
    def of(cls, wells: pd.DataFrame, method: str = "mad_robustize", min_reference: int = 2,
           compressed: bool = True) -> "FoldNorm":
        by = [schema.PLATE] + ([batch_column(wells)] if batch_column(wells) else [])
        codes = wells[by].astype(str).agg("\x1f".join, axis=1).to_numpy()
        return cls(np.unique(codes, return_inverse=True)[1].astype(np.int64), method, min_reference, compressed)

    def apply(self, X: np.ndarray, reference: np.ndarray, train: np.ndarray, cache: dict | None = None) -> np.ndarray:
        """``X`` (n, f) normalised per batch against the rows where ``reference`` (control wells
        of the training fold) is true; ``train`` (bool, n) is the fallback reference. ``cache``:
        a dict kept by the caller for one ``X``; the centre and spread of a reference set already
        seen are taken from it (the LODO folds that hold out a treated donor share their reference)."""
        out = np.empty_like(X, dtype=np.float64)
        pooled = reference if reference.sum() >= self.min_reference else train
        for b in np.unique(self.batches):
            rows = self.batches == b
            ref = rows & reference
            if ref.sum() < self.min_reference:
                ref = rows & train if (rows & train).sum() >= self.min_reference else pooled
            if cache is None:
                centre, spread = self._centre_spread(X[ref])
            else:
                key = ref.tobytes()
                if key not in cache:
                    cache[key] = self._centre_spread(X[ref])
                centre, spread = cache[key]
            out[rows] = (X[rows] - centre) / np.where(spread > 1e-12, spread, 1.0)
        return np.nan_to_num(compress(out) if self.compressed else out, nan=0.0)

    def _centre_spread(self, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import warnings

        has_nan = bool(np.isnan(R).any())  # the nan-functions cost ~10x more: only when needed
        median = np.nanmedian if has_nan else np.median
        with warnings.catch_warnings():  # an all-NaN column: centre NaN, filled with 0 later
            warnings.simplefilter("ignore", RuntimeWarning)
            if self.method == "mad_robustize":
                centre = median(R, axis=0)
                spread = 1.4826 * median(np.abs(R - centre), axis=0)
            elif has_nan:
                centre, spread = np.nanmean(R, axis=0), np.nanstd(R, axis=0)
            else:
                centre, spread = R.mean(axis=0), R.std(axis=0)
        return centre, np.nan_to_num(spread, nan=0.0)


# ---------------------------------------------------------------- batch effects


def batch_vmeasure(wells: pd.DataFrame, features: list[str] | None = None, *, factors: list[str] | None = None,
                   seed: int = 0, n_init: int = 10) -> pd.DataFrame:
    """V-measure between KMeans clusters of the (standardised) features and each factor.

    ``factors``: default ``Metadata_Plate``, the acquisition group column (if any) and
    ``Metadata_Condition``. For each factor with >= 2 levels, KMeans with k = number of
    levels (``seed``, ``n_init``) is compared with the factor's labels. Returns one row per
    factor: ``factor, n_levels, k, v_measure`` (0 = clusters ignore the factor, 1 = clusters
    are the factor's levels; NaN for a factor with < 2 levels).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import v_measure_score
    from sklearn.preprocessing import StandardScaler

    feats = wells_features(wells, features)
    X = StandardScaler().fit_transform(_matrix(wells, feats)) if len(wells) else np.zeros((0, len(feats)))
    if factors is None:
        factors = [schema.PLATE] + ([batch_column(wells)] if batch_column(wells) else []) + [schema.CONDITION]
    rows = []
    for f in factors:
        labels = wells[f].astype(str).to_numpy()
        k = len(np.unique(labels))
        v = float("nan")
        if 2 <= k < len(wells):
            clusters = KMeans(n_clusters=k, random_state=seed, n_init=n_init).fit_predict(X)
            v = float(v_measure_score(labels, clusters))
        rows.append({"factor": f, "n_levels": k, "k": k, "v_measure": v})
    return pd.DataFrame(rows, columns=["factor", "n_levels", "k", "v_measure"])


# ---------------------------------------------------------------- leave one donor out


def _svm(C: float):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(StandardScaler(), SVC(kernel="linear", C=C, class_weight="balanced"))


def _lodo(X: np.ndarray, y: np.ndarray, donors: np.ndarray, C: float, norm: FoldNorm | None = None) -> np.ndarray:
    """Out-of-fold decision values (n,) of leave-one-donor-out linear SVMs (> 0 = class 1):
    :func:`_svm` per fold without the pipeline's overhead (same numbers, ~2x faster).
    With ``norm``, each fold first normalises the wells against its own control wells
    (``y == 0`` outside the held-out donor): the held-out donor never shapes its reference."""
    import sklearn
    from sklearn.svm import SVC

    X = np.asarray(X, dtype=np.float64)
    dec = np.full(len(y), np.nan)
    cache: dict = {}
    # the inputs are finite (NaN filled by _matrix / FoldNorm) and the parameters fixed: skipping
    # sklearn's per-call checks gives the same numbers ~1.8x faster (a permutation test fits ~20,000)
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        for d in np.unique(donors):
            te = donors == d
            tr = ~te
            if len(np.unique(y[tr])) < 2:  # cannot fit: decide for the only class seen
                dec[te] = 1.0 if y[tr][0] == 1 else -1.0
                continue
            Xf = norm.apply(X, (y == 0) & tr, tr, cache) if norm is not None else X
            mean, scale = _standard_scale(Xf[tr])
            svc = SVC(kernel="linear", C=C, class_weight="balanced").fit((Xf[tr] - mean) / scale, y[tr])
            dec[te] = svc.decision_function((Xf[te] - mean) / scale)
    return dec


def _standard_scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``StandardScaler().fit(X)``'s ``mean_`` and ``scale_`` (population SD; ~0 SD -> 1),
    without sklearn's per-call validation (a LODO permutation test fits ~20,000 of them)."""
    n, eps = len(X), np.finfo(np.float64).eps
    mean = X.mean(axis=0)
    var = ((X - mean) ** 2).mean(axis=0)
    constant = var <= n * eps * var + (n * mean * eps) ** 2  # sklearn's _is_constant_feature
    return mean, np.where(constant, 1.0, np.sqrt(var))


def _xy(wells: pd.DataFrame, features: list[str] | None, control: str,
        keep_nan: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (n, f) float64 (non-finite -> column median, or NaN with ``keep_nan``: for
    :class:`FoldNorm`, which fills them after normalising), labels (1 = SSc), donors."""
    feats = wells_features(wells, features)
    if keep_nan:
        X = wells[feats].to_numpy(np.float64)
        X = np.where(np.isfinite(X), X, np.nan)
    else:
        X = _matrix(wells, feats)
    y = (wells[schema.CONDITION].astype(str) != control).to_numpy().astype(int)
    donors = wells[schema.DONOR].astype(str).to_numpy()
    return X, y, donors


def lodo_accuracy(wells: pd.DataFrame, features: list[str] | None = None, *, C: float = 1.0,
                  control: str = CONTROL, in_fold: bool = False) -> dict:
    """Leave-one-donor-out linear SVM (StandardScaler + SVC(linear, C, class_weight=balanced))
    on the wells: each donor's wells are predicted by a model fitted on all other donors.

    Returns ``accuracy`` (over wells), ``balanced_accuracy`` (mean of per-condition well
    accuracies), ``donor_accuracy`` (donors whose mean well decision has the right sign),
    ``chance`` (majority-class rate of the wells, :func:`clustering.chance_accuracy`),
    ``decision`` (n,) out-of-fold decision values (> 0 = SSc), ``correct`` (n,) 1/0,
    ``n_wells``, ``n_donors``. NaN accuracy with < 2 donors per condition. ``in_fold``: the
    wells are raw; each fold normalises them per batch against its own HC wells
    (:class:`FoldNorm`), instead of the caller normalising all wells once.
    """
    from ssc_assets.core.analysis.clustering import chance_accuracy

    X, y, donors = _xy(wells, features, control, keep_nan=in_fold)  # FoldNorm fills missing values itself
    per = pd.DataFrame({"y": y, "d": donors}).groupby("y")["d"].nunique()
    out = {"n_wells": int(len(y)), "n_donors": int(len(np.unique(donors))),
           "chance": chance_accuracy(wells[schema.CONDITION]) if len(y) else float("nan")}
    if len(per) < 2 or per.min() < 2:
        return {**out, "accuracy": float("nan"), "balanced_accuracy": float("nan"), "donor_accuracy": float("nan"),
                "decision": np.full(len(y), np.nan), "correct": np.full(len(y), np.nan),
                "note": "need at least 2 donors per condition"}
    dec = _lodo(X, y, donors, C, FoldNorm.of(wells) if in_fold else None)
    correct = ((dec > 0).astype(int) == y).astype(float)
    bal = float(np.mean([correct[y == c].mean() for c in (0, 1)]))
    dd = pd.DataFrame({"d": donors, "dec": dec, "y": y}).groupby("d").agg(dec=("dec", "mean"), y=("y", "first"))
    return {**out, "accuracy": float(correct.mean()), "balanced_accuracy": bal,
            "donor_accuracy": float(((dd["dec"] > 0).astype(int) == dd["y"]).mean()),
            "decision": dec, "correct": correct}


def permutation_pvalue(wells: pd.DataFrame, features: list[str] | None = None, *, n_permutations: int = 200,
                       seed: int = 0, C: float = 1.0, control: str = CONTROL,
                       observed: float | None = None, n_jobs: int | None = None, in_fold: bool = False) -> dict:
    """Permutation test of the LODO accuracy, permuting conditions between DONORS.

    Each permutation shuffles the donors' condition labels (every well of a donor keeps its
    donor's label, so the number of donors per condition is kept) and recomputes the LODO
    balanced accuracy. p = (1 + #{permuted >= observed}) / (1 + n_permutations). Returns
    ``observed`` (balanced accuracy, :func:`lodo_accuracy`), ``p_value``, ``null_mean``,
    ``null_sd``, ``n_permutations``. The permutations are drawn in order from ``seed`` and
    scored in ``n_jobs`` processes (None: all cores; 1: in this process): same result for any
    ``n_jobs``. ``in_fold``: as :func:`lodo_accuracy` (each fold of each permutation normalises
    against the wells its permuted labels call control).
    """
    X, y, donors = _xy(wells, features, control, keep_nan=in_fold)
    if observed is None:
        observed = lodo_accuracy(wells, features, C=C, control=control, in_fold=in_fold)["balanced_accuracy"]
    if not np.isfinite(observed):
        return {"observed": observed, "p_value": float("nan"), "null_mean": float("nan"), "null_sd": float("nan"),
                "n_permutations": 0}
    ids, inv = np.unique(donors, return_inverse=True)
    donor_y = pd.Series(y).groupby(inv).first().to_numpy()
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(donor_y)[inv] for _ in range(n_permutations)]
    null = _permuted_accuracies(X, perms, donors, C, n_jobs, FoldNorm.of(wells) if in_fold else None)
    p = (1.0 + float(np.sum(null >= observed - 1e-12))) / (1.0 + n_permutations)
    return {"observed": float(observed), "p_value": p, "null_mean": float(null.mean()), "null_sd": float(null.std()),
            "n_permutations": int(n_permutations)}


def _balanced_lodo(X: np.ndarray, yp: np.ndarray, donors: np.ndarray, C: float, norm: FoldNorm | None = None) -> float:
    dec = _lodo(X, yp, donors, C, norm)
    corr = ((dec > 0).astype(int) == yp).astype(float)
    return float(np.mean([corr[yp == c].mean() for c in (0, 1)]))


def _balanced_lodos(X: np.ndarray, perms: list[np.ndarray], donors: np.ndarray, C: float,
                    norm: FoldNorm | None) -> list[float]:
    return [_balanced_lodo(X, yp, donors, C, norm) for yp in perms]


def _permuted_accuracies(X: np.ndarray, perms: list[np.ndarray], donors: np.ndarray, C: float,
                         n_jobs: int | None, norm: FoldNorm | None = None) -> np.ndarray:
    """LODO balanced accuracy (n_permutations,) of every permuted label vector, in order;
    ``n_jobs`` as joblib (None: the CPUs this process may use, -1: all)."""
    from joblib import Parallel, cpu_count, delayed, effective_n_jobs

    n_jobs = max(1, min(effective_n_jobs(n_jobs) if n_jobs is not None else cpu_count(), len(perms)))
    if n_jobs == 1 or len(perms) < 20:
        return np.array(_balanced_lodos(X, perms, donors, C, norm), dtype=np.float64)
    chunks = [c for c in np.array_split(np.arange(len(perms)), n_jobs) if len(c)]
    parts = Parallel(n_jobs=n_jobs)(delayed(_balanced_lodos)(X, [perms[i] for i in c], donors, C, norm) for c in chunks)
    return np.array([v for part in parts for v in part], dtype=np.float64)


# ---------------------------------------------------------------- per-donor scores


def donor_scores(wells: pd.DataFrame, features: list[str] | None = None, *, score_col: str | None = None,
                 n_boot: int = 2000, level: float = 0.95, seed: int = 0, C: float = 1.0,
                 control: str = CONTROL, in_fold: bool = False) -> pd.DataFrame:
    """Per-donor SSc-likeness score, one row per donor (columns :data:`DONOR_COLUMNS`).

    Well scores: ``score_col`` when given (an already out-of-fold per-well score, e.g. the
    cell CNN's median logit ``Metadata_Score`` from cross-validation), else the out-of-fold
    leave-one-donor-out linear SVM decision values (:func:`lodo_accuracy`; a donor's wells
    are never seen by the model that scores them). ``score`` = mean over the donor's wells
    (> 0: SSc-like); ``score_low``/``score_high``: percentile interval (``level``) of that mean
    over ``n_boot`` resamplings of the donor's wells with replacement (a single-well donor
    gets a zero-width interval); ``rank``: 1 = most SSc-like; ``predicted``: SSc if score >
    0 else HC; ``correct``: predicted == condition; ``well_accuracy``: fraction of the
    donor's wells on the right side of 0. Sorted by rank.
    """
    if score_col is not None:
        s = wells[score_col].to_numpy(np.float64)
    else:
        s = lodo_accuracy(wells, features, C=C, control=control, in_fold=in_fold)["decision"]
    return _donor_rows(wells, s, n_boot=n_boot, level=level, seed=seed, control=control)


def _donor_rows(wells: pd.DataFrame, s: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                control: str = CONTROL) -> pd.DataFrame:
    """:func:`donor_scores` from given per-well scores ``s`` (n,) aligned with ``wells``."""
    df = pd.DataFrame({
        "Metadata_Donor": wells[schema.DONOR].astype(str).to_numpy(),
        "Metadata_Condition": wells[schema.CONDITION].astype(str).to_numpy(),
        "Metadata_Group": wells[schema.GROUP].astype(str).to_numpy() if schema.GROUP in wells else "",
        "s": s,
    })
    rng = np.random.default_rng(seed)
    a = (1.0 - level) / 2.0
    rows = []
    for donor, part in df.groupby("Metadata_Donor", sort=True):
        v = part["s"].to_numpy()
        v = v[np.isfinite(v)]
        cond = part["Metadata_Condition"].iloc[0]
        if len(v) == 0:
            mean = lo = hi = float("nan")
        else:
            mean = float(v.mean())
            boots = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
            lo, hi = float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))
        pred = "SSc" if mean > 0 else control
        rows.append({"Metadata_Donor": donor, "Metadata_Condition": cond, "Metadata_Group": part["Metadata_Group"].iloc[0],
                     "n_wells": int(len(part)), "score": mean, "score_low": lo, "score_high": hi,
                     "predicted": pred, "correct": bool(pred == cond if np.isfinite(mean) else False),
                     "well_accuracy": float(np.mean((v > 0) == (cond != control))) if len(v) else float("nan")})
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=DONOR_COLUMNS)
    out["rank"] = out["score"].rank(ascending=False, method="min").astype("Int64")
    return out.sort_values(["rank", "Metadata_Donor"]).reset_index(drop=True)[DONOR_COLUMNS]


def severity_spearman(donors: pd.DataFrame, order: dict[str, float] | None = None, *,
                      score: str = "score", group: str = "Metadata_Group") -> dict:
    """Spearman rho (and two-sided p) between the donor scores and an ordinal severity.

    ``order``: group -> rank (default :data:`GROUP_ORDER`, HC 0 < SSC 1 < SSCHL 2); donors
    whose group is not in it, or without a finite score, are left out. Pass
    ``group="severity"`` with a numeric column and ``order={}`` to use true severities.
    Returns ``rho``, ``p_value``, ``n_donors``.
    """
    from scipy.stats import spearmanr

    order = GROUP_ORDER if order is None else order
    sev = donors[group].map(order) if order else donors[group].astype(float)
    s = donors[score].astype(float)
    ok = sev.notna() & np.isfinite(s)
    n = int(ok.sum())
    if n < 3 or sev[ok].nunique() < 2 or s[ok].nunique() < 2:
        return {"rho": float("nan"), "p_value": float("nan"), "n_donors": n}
    r = spearmanr(s[ok], sev[ok].astype(float))
    return {"rho": float(r.statistic), "p_value": float(r.pvalue), "n_donors": n}


# ---------------------------------------------------------------- all methods


#: Columns of the per-method table of :func:`donor_report`.
SUMMARY_COLUMNS = [schema.METHOD, "n_wells", "n_donors", "grouped_accuracy", "lodo_accuracy", "lodo_balanced_accuracy",
                   "lodo_donor_accuracy", "chance", "permutation_p", "n_permutations", "rho_group", "rho_group_p",
                   "vmeasure_plate", "vmeasure_acquisition", "vmeasure_condition"]


def out_of_fold_accuracy(wells: pd.DataFrame, score_col: str, control: str = CONTROL) -> dict:
    """Accuracies of an out-of-fold per-well score (> 0 = SSc) against the condition, in the
    layout of :func:`lodo_accuracy`: well accuracy, class-balanced accuracy, donor accuracy (mean
    score per donor), chance (majority share of the wells), counts. Wells without a finite
    score are left out."""
    s = wells[score_col].to_numpy(np.float64)
    ok = np.isfinite(s)
    y = (wells[schema.CONDITION].astype(str) != control).to_numpy()[ok]
    pred = s[ok] > 0
    donors = wells[schema.DONOR].astype(str).to_numpy()[ok]
    nan = float("nan")
    if not ok.any():
        return {"accuracy": nan, "balanced_accuracy": nan, "donor_accuracy": nan, "chance": nan, "n_wells": 0,
                "n_donors": 0}
    bal = float(np.mean([(pred[y == c] == c).mean() for c in (False, True) if (y == c).any()]))
    d = pd.DataFrame({"d": donors, "s": s[ok], "y": y}).groupby("d").agg(s=("s", "mean"), y=("y", "first"))
    return {"accuracy": float((pred == y).mean()), "balanced_accuracy": bal,
            "donor_accuracy": float(((d["s"] > 0) == d["y"]).mean()), "chance": float(max(y.mean(), 1 - y.mean())),
            "n_wells": int(ok.sum()), "n_donors": int(len(d))}


def recentre_scores(wells: pd.DataFrame, score_col: str, control: str = CONTROL) -> np.ndarray:
    """Out-of-fold well scores (n,) with a per-batch threshold that no donor sets for itself.

    A score from a model (e.g. the cell CNN's median logit) is not normalised like the
    embeddings: an objective or plate that shifts every score moves its wells across 0. Per plate
    x acquisition group (:class:`FoldNorm` batches) and per donor, the score minus the midpoint
    of the medians of the OTHER donors' control and non-control wells in that batch (both
    needed; else over all batches; else unchanged). NaN scores stay NaN.
    """
    s = wells[score_col].to_numpy(np.float64)
    batches = FoldNorm.of(wells).batches
    donors = wells[schema.DONOR].astype(str).to_numpy()
    ok = np.isfinite(s)
    ctrl = (wells[schema.CONDITION].astype(str) == control).to_numpy()
    out = s.copy()
    for d in np.unique(donors):
        mine, others = donors == d, (donors != d) & ok
        for b in np.unique(batches[mine]):
            rows = mine & (batches == b)
            for scope in (others & (batches == b), others):
                a, c = s[scope & ctrl], s[scope & ~ctrl]
                if len(a) and len(c):
                    out[rows] = s[rows] - (np.median(a) + np.median(c)) / 2.0
                    break
    return out


def donor_report(tables: dict[str, pd.DataFrame], *, normalize: bool = True, score_cols: dict[str, str] | None = None,
                 n_permutations: int = 200, n_boot: int = 2000, seed: int = 0, n_splits: int = 5,
                 C: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Donor scores and summary metrics for several methods.

    ``tables``: method -> well table (raw features). With ``normalize``, the LODO SVM, its
    permutations and the donor scores normalise per plate x acquisition group against HC
    inside every fold (:class:`FoldNorm`), and the grouped SVM and V-measures use the once
    normalised wells (:func:`normalize_wells`). ``score_cols``:
    method -> column of an out-of-fold per-well score to use instead of the LODO SVM decision
    (e.g. ``{"cells": "Metadata_OofScore"}``); for such a method the accuracies are those of the
    score itself (:func:`out_of_fold_accuracy`; ``grouped_accuracy`` = ``lodo_accuracy`` = its
    out-of-fold well accuracy) and the permutation p-value is NaN (the fold models were trained
    with the true labels; a label permutation would need retraining); with ``normalize`` its
    threshold is set per batch by the other donors (:func:`recentre_scores`). Returns ``(donors, summary)``:

    * ``donors``: ``Metadata_Method`` + :data:`DONOR_COLUMNS`, one row per donor x method;
    * ``summary``: :data:`SUMMARY_COLUMNS`, one row per method: ``grouped_accuracy``
      (donor-grouped k-fold RBF SVM, :func:`clustering.svm_cv_accuracy`), the LODO linear SVM
      accuracies and permutation p-value (conditions permuted between donors), chance,
      Spearman rho (p) of the donor scores vs HC < SSC < SSCHL, and V-measures of KMeans vs
      plate / acquisition group / condition (on the normalised features).
    """
    from ssc_assets.core.analysis.clustering import svm_cv_accuracy

    score_cols = score_cols or {}
    all_donors, summary = [], []
    for method, wells in tables.items():
        raw = wells.reset_index(drop=True)
        w = normalize_wells(wells) if normalize else raw
        feats = wells_features(w)
        X, y, donors = _xy(w, feats, CONTROL)
        if method in score_cols:  # an out-of-fold score: its accuracies, not an SVM on a label-trained embedding
            if normalize:  # its threshold per batch, set by the other donors (objective / plate shifts)
                w = w.copy()
                w[score_cols[method]] = recentre_scores(raw, score_cols[method])
            lodo = out_of_fold_accuracy(w, score_cols[method])
            grouped = {"accuracy": lodo["accuracy"]}
            perm = {"p_value": float("nan"), "n_permutations": 0}  # the folds' models used the true labels
        else:
            grouped = svm_cv_accuracy(X, y, groups=donors, n_splits=n_splits, seed=seed)
            # LODO, its permutations and the donor scores normalise inside each fold
            src = raw if normalize else w
            lodo = lodo_accuracy(src, feats, C=C, in_fold=normalize)
            perm = (permutation_pvalue(src, feats, n_permutations=n_permutations, seed=seed, C=C,
                                       observed=lodo["balanced_accuracy"], in_fold=normalize)
                    if n_permutations else {"p_value": float("nan"), "n_permutations": 0})
        if method in score_cols:
            d = donor_scores(w, feats, score_col=score_cols[method], n_boot=n_boot, seed=seed, C=C)
        else:
            d = _donor_rows(w, lodo["decision"], n_boot=n_boot, seed=seed)
        d.insert(0, schema.METHOD, method)
        all_donors.append(d)
        rho = severity_spearman(d)
        vm = batch_vmeasure(w, feats, seed=seed).set_index("factor")["v_measure"]
        acq = batch_column(w)
        summary.append({
            schema.METHOD: method, "n_wells": lodo["n_wells"], "n_donors": lodo["n_donors"],
            "grouped_accuracy": grouped["accuracy"], "lodo_accuracy": lodo["accuracy"],
            "lodo_balanced_accuracy": lodo["balanced_accuracy"], "lodo_donor_accuracy": lodo["donor_accuracy"],
            "chance": lodo["chance"], "permutation_p": perm["p_value"], "n_permutations": perm["n_permutations"],
            "rho_group": rho["rho"], "rho_group_p": rho["p_value"],
            "vmeasure_plate": float(vm.get(schema.PLATE, np.nan)),
            "vmeasure_acquisition": float(vm.get(acq, np.nan)) if acq else float("nan"),
            "vmeasure_condition": float(vm.get(schema.CONDITION, np.nan)),
        })
    donors_df = pd.concat(all_donors, ignore_index=True) if all_donors else pd.DataFrame(columns=[schema.METHOD] + DONOR_COLUMNS)
    return donors_df, pd.DataFrame(summary, columns=SUMMARY_COLUMNS)
