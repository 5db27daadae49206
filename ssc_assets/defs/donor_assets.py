"""``donor_scores`` (group ``clusterings``): which donors look SSc-like, and how strongly.

Per method, across all plates: a leave-one-donor-out linear SVM on the well embeddings,
normalised per plate x acquisition group against that batch's HC wells inside every fold
(the held-out donor is never in the reference), whose out-of-fold decision values score every
well by a model that never saw its donor. A donor's score is the
mean over its wells, with a bootstrap interval over wells, and a rank. The ``cells`` method
is scored by its own out-of-fold cell-CNN scores instead (``cell_classifier_model``), since
its embeddings come from a model trained on these donors. Summary per method:
donor-grouped and leave-one-donor-out accuracy, chance, permutation p-value, Spearman rho of
the scores against HC < SSc < SSCHL, and V-measures of KMeans clusters against plate,
acquisition group and condition (do clusters follow the batch or the disease?).
"""


import dagster as dg
import numpy as np
import pandas as pd

from ssc_assets.core.io.storage import read_parquet, write_text
from ssc_assets.core.schema import DONOR_TRAINED, METHOD, WELL_KEY
from ssc_assets.defs.automation import CROSS_PLATE, IO_RETRY, fail_fast
from ssc_assets.defs.core_defaults import core_field
from ssc_assets.defs.metadata import log_png, md_table
from ssc_assets.defs.mlflow_tracking import MlflowTracking, champion_runs
from ssc_assets.defs.model_assets import ALL_PLATES
from ssc_assets.defs.model_families import CLUSTERING_EXPERIMENT
from ssc_assets.defs.resources import Storage

_DR = "ssc_assets.core.analysis.donor_scores:donor_report"
OOF_SCORE = "Metadata_OofScore"


class DonorScoresConfig(dg.Config):
    n_permutations: int = core_field(f"{_DR}.n_permutations", "Donor-level label permutations for the p-value.")
    n_boot: int = core_field(f"{_DR}.n_boot", "Bootstrap resamplings of each donor's wells for its interval.")
    seed: int = core_field(f"{_DR}.seed", "Seed (folds, permutations, bootstrap).")
    normalize: bool = core_field(f"{_DR}.normalize", "Normalise per plate x acquisition group against HC wells "
                                 "(refitted inside every LODO fold and permutation; once for the grouped SVM and V-measures).")


def _cells_with_oof(wells: pd.DataFrame, cell_model: dict | None, context) -> pd.DataFrame | None:
    """The ``cells`` wells with their out-of-fold score: the cross-validated score where the
    well was in the training data, the champion's score where the champion never saw the donor
    (``Metadata_DonorTrained`` False), NaN (left out, with a warning) otherwise."""
    cells = wells[wells[METHOD] == "cells"]
    if cells.empty:
        return None
    oof = None
    path = (cell_model or {}).get("oof_wells")
    if path:
        try:
            oof = read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - scored without it, and said so
            context.log.warning(f"out-of-fold scores not readable ({path}: {exc}); only untrained donors are scored")
    out = cells.drop(columns=[OOF_SCORE], errors="ignore")
    if oof is not None:
        out = out.merge(oof[[*WELL_KEY, OOF_SCORE]], on=WELL_KEY, how="left")
    else:
        out[OOF_SCORE] = np.nan
    seen = out[DONOR_TRAINED] if DONOR_TRAINED in out else pd.Series(pd.NA, index=out.index)
    fresh = out[OOF_SCORE].isna() & seen.eq(False).fillna(False).astype(bool)
    out.loc[fresh, OOF_SCORE] = out.loc[fresh, "Metadata_Score"]
    dropped = int(out[OOF_SCORE].isna().sum())
    if dropped:
        context.log.warning(f"cells: {dropped} well(s) of donors the champion was trained on have no out-of-fold score "
                            "(plates added after the last training): left out of the donor scores until retraining")
    return out


@dg.asset(ins={"well_embeddings": ALL_PLATES, "cell_classifier_model": dg.AssetIn()}, group_name="clusterings",
          io_manager_key="manifest_io_manager", kinds={"sklearn", "mlflow"}, automation_condition=CROSS_PLATE,
          retry_policy=IO_RETRY, code_version="3")
@fail_fast
def donor_scores(context: dg.AssetExecutionContext, config: DonorScoresConfig, well_embeddings: dict,
                 cell_classifier_model: dict, mlflow_tracking: MlflowTracking, storage: Storage) -> dict:
    """Per donor and method: SSc-likeness score with a bootstrap interval over wells, rank;
    per method: LODO accuracy, chance, permutation p, rho vs HC < SSc < SSCHL, batch V-measures.

    Output: ``{"donors": [...], "summary": [...], "csv": path}`` (records of the two tables).
    """
    import mlflow

    from ssc_assets.core.analysis.donor_scores import donor_report

    wells = pd.concat([df for df in well_embeddings.values() if len(df)], ignore_index=True)
    tables = {m: df.reset_index(drop=True) for m, df in wells.groupby(METHOD, sort=False) if m != "cells"}
    if "profiles" in tables:
        from ssc_assets.core.analysis.profiles import feature_set_mismatch

        problem = feature_set_mismatch(tables["profiles"])
        if problem:
            raise dg.Failure(problem, allow_retries=False)
    score_cols = {}
    cells = _cells_with_oof(wells, cell_classifier_model, context)
    if cells is not None:
        tables["cells"], score_cols["cells"] = cells, OOF_SCORE
    donors, summary = donor_report(tables, normalize=config.normalize, score_cols=score_cols,
                                   n_permutations=config.n_permutations, n_boot=config.n_boot, seed=config.seed)
    plates_used = sorted(wells["Metadata_Plate"].unique().tolist())
    csv_path = storage.path("donor_scores", "donor_scores.csv")
    write_text(csv_path, donors.to_csv(index=False))
    with mlflow_tracking.start_run(context, CLUSTERING_EXPERIMENT, "donor_scores", plates_used,
                                   {"ssc.method": "donor_scores"}) as run:
        mlflow.log_params({"n_permutations": config.n_permutations, "n_boot": config.n_boot, "seed": config.seed,
                           "normalize": config.normalize})
        for r in summary.to_dict("records"):
            mlflow.log_metrics({f"{r[METHOD]}_{k}": float(v) for k, v in r.items()
                                if k != METHOD and isinstance(v, (int, float)) and np.isfinite(v)})
        mlflow.log_text(donors.to_csv(index=False), "donor_scores.csv")
        mlflow.log_text(summary.to_csv(index=False), "donor_summary.csv")
        ranking = _ranking_png(donors, summary)
        if ranking is not None:  # the figure of the asset page, next to the numbers it shows
            log_png(ranking, "figures/donors_ranked")
        link = mlflow_tracking.run_link(run)
    from ssc_assets.core.analysis.comparison import preset_reasons
    from ssc_assets.core.analysis.report import donor_notes

    preset = preset_reasons(champion_runs(mlflow_tracking, summary[METHOD].astype(str).tolist(), context))
    synthetic = context.run.tags.get("ssc/source") == "ssc-assets demo"  # the demo's simulated plates
    notes = donor_notes(summary, preset, synthetic, config.n_permutations)
    context.add_output_metadata(_metadata(donors, summary, link, csv_path, notes, ranking))
    return {"donors": donors.to_dict("records"), "summary": summary.to_dict("records"), "csv": csv_path,
            "mlflow_run": link}


def _ranking_png(donors: pd.DataFrame, summary: pd.DataFrame) -> bytes | None:
    """The donors ranked by SSc-likeness with intervals (PNG), or None without a best method."""
    from ssc_assets.core.analysis.report import best_donor_method
    from ssc_assets.core.plots.donors import donor_ranking_png

    return donor_ranking_png(donors, summary=summary) if best_donor_method(summary) is not None else None


def _metadata(donors: pd.DataFrame, summary: pd.DataFrame, link: str, csv_path: str, notes: list[str],
              ranking: bytes | None) -> dict:
    """The answer first (how far to trust it, ranked donors, figure, per-method table), then
    links, then one number per method and metric (for plots across materializations)."""
    from ssc_assets.core.analysis.comparison import DEMO_NOTE
    from ssc_assets.core.analysis.report import best_donor_method, donor_summary_table
    from ssc_assets.core.plots import figures

    md: dict = {}
    if notes and notes[0].startswith(DEMO_NOTE):
        md["demo_preset"] = dg.MetadataValue.text(notes[0])
    best = best_donor_method(summary)
    if best is not None:
        from ssc_assets.core.plots.donors import donor_table

        d = donors[donors[METHOD] == best]
        md["ranked_donors"] = dg.MetadataValue.md(
            (f"**{notes[0]}**\n\n" if "demo_preset" in md else "")
            + f"Best method by rho vs HC < SSc < SSCHL (ties: higher LODO accuracy): **{best}** "
              "(95 % bootstrap interval over the donor's wells)\n\n"
            + md_table(donor_table(d, best)))
        md["ranking"] = dg.MetadataValue.md(figures.png_markdown(ranking, "donors ranked"))
    md["summary"] = dg.MetadataValue.md(md_table(donor_summary_table(summary)))  # the report's table
    md["how_to_read"] = dg.MetadataValue.md("\n\n".join(n for n in notes if "demo_preset" not in md or n != notes[0]))
    md["mlflow_run"] = dg.MetadataValue.url(link)
    md["donor_scores_csv"] = dg.MetadataValue.path(csv_path)
    for r in summary.to_dict("records"):
        for k in ("lodo_accuracy", "permutation_p", "rho_group", "vmeasure_plate", "vmeasure_acquisition"):
            v = r.get(k)
            if isinstance(v, (int, float)) and np.isfinite(v):
                md[f"{r[METHOD]}/{k}"] = float(f"{v:.3g}")  # 3 significant digits, still a number
    return md
