"""Evaluation: the whole product (``ssc-assets demo`` on a plates folder) on a held-out study.

    python benchmarks/study_eval.py [--seed 9101] [--hc 5] [--ssc 7] [--sschl 3] [--wells 39]
        [--plates 2] [--size 512] [--gain 0.0] [--scale 1.0] [--split 0.0] [--failed-plate KIND]
        [--work DIR] [--score-only]

Protocol (what a user does, scored the way issue 11 scores unseen plates):

1. Simulates a study with a seed the tests and the demo never use: ``--plates`` plates of
   ``--wells`` wells x 4 sites (default 2 x 39 = 78 wells, 512 px), the same donors on every
   plate (``--hc`` HC, ``--ssc`` SSc, ``--sschl`` severe SSc), each donor's true severity drawn
   from the seed (HC 0-0.1, SSc 0.2-0.6, SSCHL 0.85-1.0, times ``--scale``), plates alternating between the two
   demo objectives (a batch effect); ``--split`` images that fraction of each plate's wells with
   the dim objective; ``--gain`` lets severity also change actin/border brightness (0 =
   morphology only). Default artifacts (3 failed sites per plate, debris). ``--failed-plate``
   (blank, saturated or blurred) adds one more plate of 8 wells that failed as a whole: the
   demo must name it, go on with the others (exit code 1) and score as without it.
2. Runs ``ssc-assets demo`` in a subprocess on that folder with its own Dagster instance,
   storage and MLflow store under ``--work`` (the product's defaults: ``cpu`` preset for
   the cell models on a machine without CUDA, demo settings for the whole-site ones).
3. Scores every method's well embeddings (``well_embeddings/<plate>.parquet``) against the
   TRUE severity, with the product's own functions (``core.analysis.donor_scores``):
   per-plate x acquisition-group normalisation against HC wells (refitted inside each LODO
   fold for the LODO columns), the donor-grouped k-fold RBF
   SVM accuracy, the leave-one-donor-out (LODO) linear SVM accuracy and its out-of-fold
   decision per well (the cells method: its own out-of-fold score), Spearman rho of that
   decision vs the true severity per well and per donor, permutation p, KMeans V-measure vs
   condition.

Prints one table (markdown) and writes it to ``<work>/study_eval.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def study_donors(seed: int, n_hc: int, n_ssc: int, n_sschl: int, scale: float = 1.0):
    """Donors with severities drawn from ``seed`` (HC 0-0.1, SSc 0.2-0.6, SSCHL 0.85-1.0),
    times ``scale`` (< 1: a weaker phenotype, a harder study)."""
    from ssc_assets.core.simulate.specs import DonorSpec

    rng = np.random.default_rng([seed, 77])
    def sev(lo, hi):
        return round(float(rng.uniform(lo, hi)) * scale, 3)

    out = [DonorSpec(f"HC{i + 1:02d}", "HC", "HC", sev(0.0, 0.1)) for i in range(n_hc)]
    out += [DonorSpec(f"SSC{i + 1:02d}", "SSc", "SSC", sev(0.2, 0.6)) for i in range(n_ssc)]
    out += [DonorSpec(f"SSCHL{i + 1:02d}", "SSc", "SSCHL", sev(0.85, 1.0)) for i in range(n_sschl)]
    return tuple(out)


def simulate_study(plates_dir: Path, truth_dir: Path, args) -> dict[str, float]:
    """Writes the plates; returns donor -> true severity."""
    from ssc_assets.core.simulate import simulate_plate
    from ssc_assets.core.simulate.specs import DEMO_OBJECTIVES, PlateSpec, default_wells

    donors = study_donors(args.seed, args.hc, args.ssc, args.sschl, args.scale)
    for p in range(args.plates):
        spec = PlateSpec(wells=default_wells(args.wells), donors=donors, image_size=args.size,
                         objective=DEMO_OBJECTIVES[p % len(DEMO_OBJECTIVES)], objective_split=args.split,
                         phenotype_gain=args.gain)
        simulate_plate(plates_dir, truth_dir, f"SSC-STUDY-{args.seed}-{p + 1:02d}", spec, seed=args.seed * 1000 + p)
    if args.failed_plate:
        spec = PlateSpec(wells=default_wells(8), donors=donors, image_size=args.size, n_failed_sites=0,
                         plate_failure=args.failed_plate)
        simulate_plate(plates_dir, truth_dir, f"SSC-STUDY-{args.seed}-FAILED", spec, seed=args.seed * 1000 + 99)
    return {d.donor_id: d.severity for d in donors}


def run_demo(work: Path, plates_dir: Path, truth_dir: Path, expect_rc: int = 0) -> float:
    """``ssc-assets demo`` on ``plates_dir`` with its own instance and stores; returns wall s.
    ``expect_rc``: 1 when a failed plate was planted (the demo goes on and exits with 1)."""
    home = work / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "SSC_PLATES_DIR": str(plates_dir),
           "SSC_STORAGE_DIR": str(work / "storage")}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    with open(work / "demo.log", "w") as log:
        rc = subprocess.call([sys.executable, "-c", "import sys; from ssc_assets.cli import main; sys.exit(main())",
                              "demo", "--truth-dir", str(truth_dir)], env=env, stdout=log, stderr=subprocess.STDOUT,
                             cwd=work)
    wall = time.perf_counter() - t0
    if rc != expect_rc:
        raise SystemExit(f"ssc-assets demo exited with {rc}, expected {expect_rc}; see {work / 'demo.log'}")
    return wall


def score(storage: Path, severity: dict[str, float], n_permutations: int = 200) -> pd.DataFrame:
    """One row per method: the metrics of the module docstring."""
    from scipy.stats import spearmanr

    from ssc_assets.core import schema
    from ssc_assets.core.analysis.donor_scores import (
        donor_report,
        lodo_accuracy,
        recentre_scores,
        wells_features,
    )

    wells = pd.concat([pd.read_parquet(p) for p in sorted((storage / "well_embeddings").glob("*.parquet"))],
                      ignore_index=True)
    tables = {m: t.dropna(axis=1, how="all").reset_index(drop=True) for m, t in wells.groupby(schema.METHOD, sort=True)}
    oof = "Metadata_OofScore"
    score_cols = {}
    cell_model = storage / "cell_classifier_model.json"
    if "cells" in tables and cell_model.exists():  # the cell CNN's out-of-fold well score, as donor_scores uses it
        scores = pd.read_parquet(json.loads(cell_model.read_text())["oof_wells"])
        key = ["Metadata_Plate", "Metadata_Well"]
        tables["cells (out-of-fold score)"] = tables["cells"].merge(scores[key + [oof]], on=key, how="left")
        score_cols["cells (out-of-fold score)"] = oof
    donors, summary = donor_report(tables, score_cols=score_cols, n_permutations=n_permutations)
    rows = []
    for m, t in tables.items():
        w = t.reset_index(drop=True)
        sev_w = w[schema.DONOR].astype(str).map(severity).to_numpy(float)
        dec = (recentre_scores(w, score_cols[m]) if m in score_cols  # else normalised inside each fold, as donor_report
               else lodo_accuracy(w, wells_features(w), in_fold=True)["decision"])
        ok = np.isfinite(dec) & np.isfinite(sev_w)
        d = donors[donors[schema.METHOD] == m]
        sev_d = d["Metadata_Donor"].map(severity).to_numpy(float)
        s = summary.set_index(schema.METHOD).loc[m]
        rows.append({
            "method": m, "wells": int(ok.sum()), "donor-grouped acc": s["grouped_accuracy"],
            "LODO acc": s["lodo_accuracy"], "chance": s["chance"], "perm p": s["permutation_p"],
            "rho well vs severity": float(spearmanr(dec[ok], sev_w[ok]).statistic),
            "rho donor vs severity": float(spearmanr(d["score"].to_numpy(float), sev_d).statistic),
            "V-measure vs condition": s["vmeasure_condition"], "V-measure vs plate": s["vmeasure_plate"],
        })
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=9101)
    ap.add_argument("--hc", type=int, default=5)
    ap.add_argument("--ssc", type=int, default=7)
    ap.add_argument("--sschl", type=int, default=3)
    ap.add_argument("--wells", type=int, default=39)
    ap.add_argument("--plates", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--gain", type=float, default=0.0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every severity (0.5: a weaker phenotype)")
    ap.add_argument("--split", type=float, default=0.0)
    ap.add_argument("--failed-plate", default=None, choices=["blank", "saturated", "blurred"],
                    help="add a plate that failed as a whole")
    ap.add_argument("--permutations", type=int, default=200)
    ap.add_argument("--work", default=None, help="working folder (default: a new one under /tmp)")
    ap.add_argument("--score-only", action="store_true", help="score an earlier run in --work")
    args = ap.parse_args()
    work = Path(args.work or f"/tmp/ssc-study-{args.seed}").resolve()
    plates_dir, truth_dir = work / "plates", work / "truth"
    if args.score_only:
        severity = json.loads((work / "severity.json").read_text())
        wall = float("nan")
    else:
        if work.exists() and any(work.iterdir()):
            if not (work / "severity.json").exists():  # only ever delete this script's own folders
                raise SystemExit(f"{work} is not empty and not a study_eval folder: choose another --work")
            shutil.rmtree(work)
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        severity = simulate_study(plates_dir, truth_dir, args)
        (work / "severity.json").write_text(json.dumps(severity, indent=1))
        print(f"simulated {args.plates} plates x {args.wells} wells in {time.perf_counter() - t0:.0f} s: {work}")
        wall = run_demo(work, plates_dir, truth_dir, expect_rc=1 if args.failed_plate else 0)
        print(f"ssc-assets demo: {wall / 60:.1f} min (log: {work / 'demo.log'})")
    table = score(work / "storage", severity, args.permutations)
    table.to_csv(work / "study_eval.csv", index=False)
    print(f"\n{work.name}: {len(severity)} donors, demo wall {wall / 60:.1f} min")
    print(table.round(3).to_markdown(index=False))


if __name__ == "__main__":
    main()
