"""``clusterings``: patients clustered per method across all plates, metrics, report, MLflow."""

import datetime as dt
import io
import os
import tempfile
import warnings

import dagster as dg
import numpy as np
import pandas as pd

from ssc_assets.core.io.storage import write_text
from ssc_assets.core.plots import figures
from ssc_assets.core.schema import METHOD, feature_columns, metadata_columns
from ssc_assets.defs.automation import CROSS_PLATE, IO_RETRY, fail_fast
from ssc_assets.defs.core_defaults import core_field
from ssc_assets.defs.metadata import log_png
from ssc_assets.defs.mlflow_tracking import MlflowTracking, champion_runs
from ssc_assets.defs.model_assets import ALL_PLATES
from ssc_assets.defs.model_families import CLUSTERING_EXPERIMENT
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
    seed: int = core_field("ssc_assets.core.analysis.clustering:cluster_method.seed",
                           "Seed for PCA/KMeans, CV folds and the mAP null.")
    methods: list[str] = core_field("ssc_assets.core.learn.embeddings:METHODS", "Methods to cluster (those with well embeddings).")
    null_size: int = core_field("ssc_assets.core.analysis.clustering:cluster_method.null_size",
                                "Permutations for the mAP p-values (copairs null_size).")


def _normalize_profiles(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per-plate standardization against HC wells + feature selection (pycytominer)."""
    from ssc_assets.core.analysis.profiles import feature_set_mismatch, select_and_normalize

    problem = feature_set_mismatch(df)
    if problem:
        raise dg.Failure(problem, allow_retries=False)
    feats = feature_columns(df, drop_all_nan=True)
    tmp = df[metadata_columns(df) + feats]
    with warnings.catch_warnings():  # all-NaN features of a plate warn in sklearn; they are dropped by selection
        warnings.simplefilter("ignore", RuntimeWarning)
        out, kept = select_and_normalize(tmp, feats)
    return out, {"n_features_raw": len(feats), "n_features_selected": len(kept)}


def _flat_numeric(res: dict) -> dict[str, float]:
    out = {}
    for k, v in res.items():
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v):
            out[k] = float(v)
    return out


def _site_qc_tables(storage: Storage, plates: list[str], context) -> dict[str, pd.DataFrame | None]:
    """Each plate's ``site_qc`` table, read where the parquet IO manager keeps it; None if unreadable."""
    from ssc_assets.core.io.storage import read_parquet

    out = {}
    for plate in plates:
        path = storage.path("site_qc", f"{plate}.parquet")
        try:
            out[plate] = read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - optional context for the report
            context.log.warning(f"site_qc of {plate} not readable at {path} ({type(exc).__name__}): "
                                "the report's QC table shows only embedded sites")
            out[plate] = None
    return out


def _example_images(storage: Storage, wells: pd.DataFrame, context, per_condition: int = 4) -> tuple[bytes | None, str]:
    """Montage of a few corrected sites per condition from the ``corrected_images`` stores
    (read where that asset writes them); (None, why) when none could be read."""
    from ssc_assets.core.ingest.channels import IMAGE_CHANNELS
    from ssc_assets.core.plots.report_figures import examples_png, pick_examples, read_thumbnail

    tiles, errors = [], []
    for ex in pick_examples(wells, per_condition):
        store = storage.path("corrected_images", f"{ex['plate']}.ome.zarr")
        try:
            img = read_thumbnail(store, ex["well"])
        except Exception as exc:  # noqa: BLE001 - a missing store must not fail the clustering
            errors.append(f"{ex['plate']} {ex['well']}: {type(exc).__name__}")
            continue
        group = f" ({ex['group']})" if ex["group"] and ex["group"] != ex["condition"] else ""
        tiles.append((img, f"{ex['donor']}{group}, {ex['plate']} {ex['well']}", ex["condition"]))
    if errors:
        context.log.warning(f"example images not read: {', '.join(errors[:10])}")
    if not tiles:
        return None, ("no corrected_images store readable under " + storage.path("corrected_images")
                      + (f" ({errors[0]})" if errors else ""))
    return examples_png(tiles, list(IMAGE_CHANNELS)), ""


def _artifact_link(mlflow_tracking: MlflowTracking, run, path: str) -> str:
    """MLflow UI address of one artifact of ``run`` (opens the run's artifact viewer on it)."""
    link = mlflow_tracking.run_link(run)  # .../#/experiments/<id>/runs/<id>[?query]
    base, sep, query = link.partition("?")
    return f"{base.rstrip('/')}/artifactPath/{path}{sep}{query}"


@dg.asset(ins={"well_embeddings": ALL_PLATES, "donor_scores": dg.AssetIn()}, group_name="clusterings",
          io_manager_key="manifest_io_manager",
          kinds={"sklearn", "mlflow"}, automation_condition=CROSS_PLATE, retry_policy=IO_RETRY, code_version="3")
@fail_fast
def clusterings(context: dg.AssetExecutionContext, config: ClusteringConfig, well_embeddings: dict, donor_scores: dict,
                mlflow_tracking: MlflowTracking, storage: Storage) -> dict:
    """Per method, across all plates, on well embeddings normalised per plate x acquisition
    group against HC: standardize -> PCA(2) -> KMeans(k=2); hierarchical clustering (cosine,
    average linkage); Table 6.1 metrics; SVM accuracy with ungrouped and donor-grouped folds;
    copairs mAP (donor replicates across plates, SSc vs HC); from ``donor_scores``: LODO
    accuracy, permutation p, rho of the donor scores vs HC < SSc < SSCHL, batch V-measures.

    Metadata: the headline per method as numbers (``<method>/svm_accuracy_donor_grouped`` ...,
    plotted across materializations), a compact comparison table, how far to trust it, and
    links to the HTML report (MLflow artifact and local file). One MLflow run per method in
    ``ssc-clustering`` plus a ``comparison`` run with the table and the report. The report
    also reads each plate's ``site_qc`` table and a few ``corrected_images`` sites from the
    storage (optional: missing ones are noted, never fatal).
    """

    from ssc_assets.core.analysis.comparison import comparison_table, headline_metadata, preset_reasons, trust_notes

    wells = pd.concat([df for df in well_embeddings.values() if len(df)], ignore_index=True)
    plates_used = sorted(wells["Metadata_Plate"].unique().tolist())
    summary = {r[METHOD]: {k: v for k, v in r.items() if k not in (METHOD, "n_wells", "n_donors")}
               for r in donor_scores.get("summary", [])}
    results, runs, md = {}, {}, {}
    for method in config.methods:
        df = wells[wells[METHOD] == method].reset_index(drop=True)
        if df.empty:
            context.log.warning(f"no well embeddings for method {method!r}: skipped")
            continue
        results[method], runs[method] = _cluster_and_log(context, config, method, df, plates_used, mlflow_tracking)
        results[method].update(summary.get(method, {}))
        figs = results[method].get("report_figures") or results[method]["figures"]
        md[f"{method}_figures"] = dg.MetadataValue.md(
            "\n\n".join(figures.png_markdown(png, f"{method} {name}") for name, png in figs.items()))
        md[f"{method}_mlflow_run"] = dg.MetadataValue.url(runs[method]["link"])
    if not results:
        raise dg.Failure("no well embeddings for any method", allow_retries=False)

    comp = comparison_table(results).reset_index()
    preset = preset_reasons(champion_runs(mlflow_tracking, list(results), context))
    if preset:
        context.log.warning("demo preset / few epochs: " + "; ".join(preset))
    synthetic = context.run.tags.get("ssc/source") == "ssc-assets demo"  # the demo's simulated plates
    notes = trust_notes(results, preset, synthetic=synthetic)
    report_path, runs["comparison"] = _report_run(context, mlflow_tracking, storage, results, wells, comp, preset, runs,
                                                  donor_scores, synthetic)

    headline, text = _comparison_markdown(results, notes)
    context.add_output_metadata({
        "comparison": dg.MetadataValue.md(text),
        **({"demo_preset": dg.MetadataValue.text(f"demo preset: not meaningful ({len(preset)} model"
                                                  f"{'s' if len(preset) > 1 else ''}: demo tag or < 10 epochs)")}
           if preset else {}),
        **({"synthetic_plates": dg.MetadataValue.text("ssc-assets demo: simulated plates, every column")}
           if synthetic else {}),
        "report_mlflow": dg.MetadataValue.url(runs["comparison"]["report"]),
        "report": dg.MetadataValue.path(report_path),
        "mlflow_comparison_run": dg.MetadataValue.url(runs["comparison"]["link"]),
        "plates": dg.MetadataValue.json(plates_used),
        **md,  # figures and MLflow run per method: before the numbers, which run past the UI's first 100 entries
        **headline_metadata(results),
    })
    buf = io.StringIO()
    comp.to_csv(buf, index=False)
    return {"plates": plates_used, "report": report_path, "report_mlflow": runs["comparison"]["report"], "runs": runs,
            "comparison_csv": buf.getvalue(), "headline_md": headline, "demo_preset": preset,
            "metrics": {m: _flat_numeric(r) for m, r in results.items()}}


def _cluster_and_log(context: dg.AssetExecutionContext, config: ClusteringConfig, method: str, df: pd.DataFrame,
                     plates_used: list[str], mlflow_tracking: MlflowTracking) -> tuple[dict, dict]:
    """Cluster one method's well embeddings and log them as one MLflow run: ``(results, run)``."""
    import mlflow

    from ssc_assets.core.analysis.clustering import cluster_method
    from ssc_assets.core.analysis.donor_scores import normalize_wells

    if method == "profiles":  # pycytominer: per-plate HC standardisation + feature selection
        df, extra = _normalize_profiles(df)
    else:  # every other method: per plate x acquisition group against its HC wells
        df, extra = normalize_wells(df), {"normalized": "plate x acquisition group vs HC"}
    res = cluster_method(df, seed=config.seed, null_size=config.null_size,
                         cache_dir=os.path.join(tempfile.gettempdir(), "ssc-copairs-cache"))
    res.update(extra)
    with mlflow_tracking.start_run(context, CLUSTERING_EXPERIMENT, method, plates_used, {"ssc.method": method}) as run:
        mlflow.log_params({"method": method, "seed": config.seed, "null_size": config.null_size,
                           "n_wells": len(df), "n_plates": len(plates_used), **extra})
        mlflow.log_metrics(_flat_numeric(res))
        for name, png in {**res["figures"], **res.get("report_figures", {})}.items():
            log_png(png, f"figures/{name}")
        mlflow.log_text(res["assignments"].to_csv(index=False), "assignments.csv")
        return res, {"run_id": run.info.run_id, "link": mlflow_tracking.run_link(run)}


def _report_run(context: dg.AssetExecutionContext, mlflow_tracking: MlflowTracking, storage: Storage, results: dict,
                wells: pd.DataFrame, comp: pd.DataFrame, preset: list[str], runs: dict,
                donor_scores: dict, synthetic: bool = False) -> tuple[str, dict]:
    """Write the HTML report (timestamped and ``-latest``) and log it with the comparison table
    as the ``comparison`` MLflow run: ``(report path, run)``."""
    import mlflow

    from ssc_assets.core.analysis.report import clustering_report_html

    plates_used = sorted(wells["Metadata_Plate"].unique().tolist())
    qc_by_plate = _site_qc_tables(storage, plates_used, context)
    examples, examples_note = _example_images(storage, wells, context)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with mlflow_tracking.start_run(context, CLUSTERING_EXPERIMENT, "comparison", plates_used,
                                   {"ssc.method": "comparison", "ssc.preset_detected": "demo" if preset else "none"}) as run:
        report_html = clustering_report_html(
            results, wells, qc_by_plate=qc_by_plate, examples=examples, examples_note=examples_note, preset=preset,
            synthetic=synthetic, comparison=_by_metric(comp.drop(columns=["thesis_source"], errors="ignore")), guide=READING_GUIDE,
            context=[f"Dagster run {context.run.run_id}; MLflow comparison run {run.info.run_id}."],
            run_links={m: r["link"] for m, r in runs.items()},
            footer=f"Generated {stamp} by ssc-assets; MLflow experiment ssc-clustering.",
            donors=pd.DataFrame(donor_scores.get("donors", [])) if donor_scores.get("donors") else None,
            donor_summary=pd.DataFrame(donor_scores.get("summary", [])) if donor_scores.get("summary") else None)
        report_path = storage.path("reports", f"clusterings-{stamp}.html")
        write_text(report_path, report_html)
        write_text(storage.path("reports", "clusterings-latest.html"), report_html)
        mlflow.log_text(comp.to_csv(index=False), "comparison.csv")
        mlflow.log_text(report_html, "report.html")
        return report_path, {"run_id": run.info.run_id, "link": mlflow_tracking.run_link(run),
                             "report": _artifact_link(mlflow_tracking, run, "report.html")}


def _comparison_markdown(results: dict, notes: list[str]) -> tuple[str, str]:
    """``(headline, metadata text)``: the demo banner first, then the headline and the trust notes."""
    from ssc_assets.core.analysis.comparison import DEMO_NOTE, THESIS_SOURCE, headline_markdown

    headline = headline_markdown(results)
    banner = [n for n in notes if n.startswith(DEMO_NOTE)]
    text = "".join(f"**{DEMO_NOTE}**{n.removeprefix(DEMO_NOTE)}\n\n" for n in banner)
    text += headline + "\n\n" + "\n".join(f"- {n}" for n in notes if not n.startswith(DEMO_NOTE))
    text += f"\n\nRows 'thesis ...' (`thesis_*` in comparison.csv): {THESIS_SOURCE}. Every metric, QC and example images: the report."
    return headline, text


def _by_metric(comp: pd.DataFrame) -> pd.DataFrame:
    """Comparison table transposed for reading: one row per metric, one column per method."""
    t = comp.set_index("method").T
    t.index.name = "metric"
    return t.reset_index()
