"""``clusterings``: patients clustered per method across all plates, metrics, report, MLflow."""

import datetime as dt
import os
import tempfile
import warnings
import io

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from ssc_assets.core import figures
from ssc_assets.core.embeddings import METHODS
from ssc_assets.core.report import Section, render_html
from ssc_assets.core.storage import write_text
from ssc_assets.defs.automation import CROSS_PLATE, IO_RETRY, fail_fast
from ssc_assets.defs.ingest_assets import md_table
from ssc_assets.defs.mlflow_tracking import MlflowTracking
from ssc_assets.defs.model_assets import ALL_PLATES, log_png
from ssc_assets.defs.resources import Storage

READING_GUIDE = [
    "Homogeneity: each cluster holds one condition (1 = pure). Completeness: each condition sits in one cluster. "
    "V-measure: their harmonic mean. All three compare KMeans (k = 2) clusters with SSc/HC; 0 means the clusters "
    "ignore the disease.",
    "Silhouette (-1..1, higher = tighter, better separated clusters) and Davies-Bouldin (>= 0, lower = better) judge "
    "the clusters' shape only, not whether they match the disease.",
    "SVM accuracy: can SSc and HC be told apart from the embeddings (5-fold CV)? The thesis used ungrouped folds, "
    "where wells of the same donor land in training and test, so the classifier can recognise the donor rather than "
    "the disease. The donor-grouped figure keeps every donor on one side and is the one to trust.",
    "mAP (copairs): retrieval of replicate wells of the same donor across plates (is the embedding reproducible?) and "
    "of wells of the same condition (does it carry the disease?). Chance level is the fraction of positives; the "
    "p-value comes from a permutation null.",
]


class ClusteringConfig(dg.Config):
    seed: int = Field(0, description="Seed for PCA/KMeans, CV folds and the mAP null.")
    methods: list[str] = Field(list(METHODS), description="Methods to cluster (those with well embeddings).")
    null_size: int = Field(10000, description="Permutations for the mAP p-values (copairs null_size).")


def _features(df: pd.DataFrame) -> list[str]:
    cols = [c for c in df.columns if not c.startswith("Metadata_") and c not in ("method", "n_sites")]
    return [c for c in cols if df[c].notna().any()]


def _normalize_profiles(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per-plate standardization against HC wells + feature selection (pycytominer)."""
    from ssc_assets.core.profiles import select_and_normalize

    feats = _features(df)
    renamed = df.rename(columns={"method": "Metadata_method", "n_sites": "Metadata_n_sites"})
    tmp = renamed[[c for c in renamed.columns if c.startswith("Metadata_")] + feats]
    with warnings.catch_warnings():  # all-NaN features of a plate warn in sklearn; they are dropped by selection
        warnings.simplefilter("ignore", RuntimeWarning)
        out, kept = select_and_normalize(tmp, feats)
    out = out.rename(columns={"Metadata_method": "method", "Metadata_n_sites": "n_sites"})
    return out, {"n_features_raw": len(feats), "n_features_selected": len(kept)}


def _flat_numeric(res: dict) -> dict[str, float]:
    out = {}
    for k, v in res.items():
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v):
            out[k] = float(v)
    return out


@dg.asset(ins={"well_embeddings": ALL_PLATES}, group_name="clusterings", io_manager_key="manifest_io_manager",
          kinds={"sklearn", "mlflow"}, code_version="1", automation_condition=CROSS_PLATE, retry_policy=IO_RETRY)
@fail_fast
def clusterings(context: dg.AssetExecutionContext, config: ClusteringConfig, well_embeddings: dict,
                mlflow_tracking: MlflowTracking, storage: Storage) -> dict:
    """Per method, across all plates: standardize -> PCA(2) -> KMeans(k=2); hierarchical
    clustering (cosine, average linkage); Table 6.1 metrics; SVM accuracy with ungrouped and
    donor-grouped folds; copairs mAP (donor replicates across plates, SSc vs HC).

    One MLflow run per method in ``ssc-clustering`` plus a ``comparison`` run with the
    cross-method table and the HTML report (``$SSC_STORAGE_DIR/reports/``).
    """
    import mlflow

    from ssc_assets.core.clustering import THESIS_SOURCE, cluster_method, comparison_table

    wells = pd.concat([df for df in well_embeddings.values() if len(df)], ignore_index=True)
    plates_used = sorted(wells["Metadata_Plate"].unique().tolist())
    results, runs, sections, md = {}, {}, [], {}
    for method in config.methods:
        df = wells[wells["method"] == method].reset_index(drop=True)
        if df.empty:
            context.log.warning(f"no well embeddings for method {method!r}: skipped")
            continue
        extra = {}
        if method == "profiles":
            df, extra = _normalize_profiles(df)
        res = cluster_method(df, seed=config.seed, null_size=config.null_size,
                             cache_dir=os.path.join(tempfile.gettempdir(), "ssc-copairs-cache"))
        res.update(extra)
        with mlflow_tracking.start_run(context, "ssc-clustering", method, plates_used, {"ssc.method": method}) as run:
            mlflow.log_params({"method": method, "seed": config.seed, "null_size": config.null_size,
                               "n_wells": len(df), "n_plates": len(plates_used), **extra})
            mlflow.log_metrics(_flat_numeric(res))
            for name, png in res["figures"].items():
                log_png(png, f"figures/{name}")
            mlflow.log_text(res["assignments"].to_csv(index=False), "assignments.csv")
            runs[method] = {"run_id": run.info.run_id, "link": mlflow_tracking.run_link(run)}
        results[method] = res
        md[f"{method}_figures"] = dg.MetadataValue.md(
            "\n\n".join(figures.png_markdown(png, f"{method} {name}") for name, png in res["figures"].items()))
        md[f"{method}_mlflow_run"] = dg.MetadataValue.url(runs[method]["link"])
        sections.append(Section(f"Method: {method}",
                                [f"{len(df)} wells, {res.get('n_features', '?')} features. MLflow run {run.info.run_id}."],
                                [("KMeans / hierarchical metrics", _method_table(res))],
                                [(f"{method}: {name}", png) for name, png in res["figures"].items()]))
    if not results:
        raise dg.Failure("no well embeddings for any method", allow_retries=False)
    comp = comparison_table({m: r for m, r in results.items()}).reset_index()
    shown = comp.drop(columns=["thesis_source"], errors="ignore")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report_html = render_html(
        "SSc vs HC: patient clusterings per embedding method",
        [f"Plates: {', '.join(plates_used)}. "
         f"{int(wells.groupby('method')[['Metadata_Plate', 'Metadata_Well']].apply(lambda d: len(d.drop_duplicates())).max())} "
         f"wells per method. "
         f"Dagster run {context.run.run_id}.", *READING_GUIDE],
        [Section("Cross-method comparison (headline)",
                 ["Columns starting with 'thesis' are the seed thesis' numbers for reference "
                  f"({THESIS_SOURCE}); they were computed on other data with ungrouped folds."],
                 [("comparison (one column per method; shaded rows: the thesis)", _by_metric(shown))])] + sections,
        footer=f"Generated {stamp} by ssc-assets; MLflow experiment ssc-clustering.")
    report_path = storage.path("reports", f"clusterings-{stamp}.html")
    write_text(report_path, report_html)
    write_text(storage.path("reports", "clusterings-latest.html"), report_html)
    with mlflow_tracking.start_run(context, "ssc-clustering", "comparison", plates_used, {"ssc.method": "comparison"}) as run:
        mlflow.log_text(comp.to_csv(index=False), "comparison.csv")
        mlflow.log_text(report_html, "report.html")
        runs["comparison"] = {"run_id": run.info.run_id, "link": mlflow_tracking.run_link(run)}
    context.add_output_metadata({
        "comparison": dg.MetadataValue.md(md_table(shown.round(4)) + f"\n\nthesis_* columns: {THESIS_SOURCE}"),
        "report": dg.MetadataValue.path(report_path),
        "mlflow_comparison_run": dg.MetadataValue.url(runs["comparison"]["link"]),
        "plates": dg.MetadataValue.json(plates_used),
        **md,
    })
    buf = io.StringIO()
    comp.to_csv(buf, index=False)
    return {"plates": plates_used, "report": report_path, "runs": runs, "comparison_csv": buf.getvalue(),
            "metrics": {m: _flat_numeric(r) for m, r in results.items()}}


def _by_metric(comp: pd.DataFrame) -> pd.DataFrame:
    """Comparison table transposed for reading: one row per metric, one column per method."""
    t = comp.set_index("method").T
    t.index.name = "metric"
    return t.reset_index()


def _method_table(res: dict) -> pd.DataFrame:
    keys = [k for k in res if isinstance(res[k], (int, float, np.integer, np.floating, str, list, tuple)) and k not in ("figures",)]
    return pd.DataFrame({"metric": keys, "value": [str(res[k]) if isinstance(res[k], (list, tuple)) else res[k] for k in keys]})
