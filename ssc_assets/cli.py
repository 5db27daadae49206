"""``ssc-assets`` command line: simulate demo plates, run the pipeline on them, inspect plates."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ssc_assets import settings


def _cmd_simulate(args: argparse.Namespace) -> int:
    from ssc_assets.core.simulate import simulate_demo

    t0 = time.perf_counter()
    paths = simulate_demo(args.plates_dir, args.truth_dir, n_plates=args.plates, seed=args.seed,
                          image_size=args.size, n_wells=args.wells)
    for p in paths:
        print(f"wrote {p}")
    print(f"ground truth in {args.truth_dir} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _cmd_scan(args: argparse.Namespace) -> int:
    from ssc_assets.core.ingest.site_tables import plate_readiness
    from ssc_assets.defs.resources import PlateSource

    source = PlateSource()  # the same channel map and strictness as the sensor
    state = plate_readiness(args.plate_dir, source.channels(), args.settle, time_point=source.time_point,
                            strict_channels=source.strict_channels())
    print(json.dumps({**state.__dict__, "ready": state.ready}, indent=2))
    return 0 if state.ready else 1


class _Runner:
    """Runs jobs of the ``ssc_assets`` code location so that they show in the UI's Overview
    timeline and job pages with their plate, each with its job's own executor (``train_models``:
    one process per model, two at a time). The location is ``./workspace.yaml`` when present,
    else a generated workspace loading the ``ssc_assets.definitions`` module (so the demo runs
    the same from any directory). Only if that cannot load, jobs run with
    ``execute_in_process`` (every step in this process, one after the other: trainings then
    get all the cores' threads)."""

    def __init__(self, instance, defs, stack):
        from ssc_assets.defs.workspace_runs import module_workspace_file, workspace_location

        self.instance, self.defs, self.location = instance, defs, None
        path = "workspace.yaml" if os.path.isfile("workspace.yaml") else stack.enter_context(module_workspace_file())
        try:
            self.location, self.repo = stack.enter_context(workspace_location(instance, path))
        except Exception as exc:  # noqa: BLE001 - the demo still runs, in this process
            print(f"code location not loadable ({exc}); running every job in this process")
            os.environ.setdefault("SSC_TRAIN_THREADS", str(os.cpu_count() or 1))

    def __call__(self, job_name: str, partition_key: str | None = None, run_config: dict | None = None, tags: dict | None = None):
        job = self.defs.resolve_job_def(job_name)
        if self.location is None:
            return job.execute_in_process(instance=self.instance, partition_key=partition_key, run_config=run_config,
                                          raise_on_error=False, tags=tags)
        from ssc_assets.defs.workspace_runs import run_job

        return run_job(self.instance, self.location, self.repo, job, partition_key, run_config, tags)


def _cmd_demo(args: argparse.Namespace) -> int:
    """Generate demo plates if absent, add them as partitions like the sensor, run every plate."""
    import contextlib

    import dagster as dg

    from ssc_assets.definitions import defs
    from ssc_assets.defs.partitions import plates
    from ssc_assets.defs.resources import PlateSource
    from ssc_assets.defs.run_timing import step_seconds
    from ssc_assets.defs.sensors import evaluate_plates

    plates_dir = settings.plates_dir()
    if not os.path.isdir(plates_dir) or not any(os.scandir(plates_dir)):
        from ssc_assets.core.simulate import simulate_demo

        print(f"generating demo plates in {plates_dir}")
        simulate_demo(plates_dir, args.truth_dir, n_plates=args.plates, seed=args.seed)
    instance = dg.DagsterInstance.get()
    source = PlateSource(settle_seconds=0.0)
    existing = set(instance.get_dynamic_partitions(plates.name))
    new_keys, requests, _ = evaluate_plates(source, {}, existing)
    if new_keys:
        instance.add_dynamic_partitions(plates.name, new_keys)
    keys = sorted({r.partition_key for r in requests})
    stack = contextlib.ExitStack()
    run = _Runner(instance, defs, stack)
    summary = []
    ok = True
    for key in keys:
        t0 = time.perf_counter()
        result = run("process_plate", key, run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
                     tags={"ssc/plate": key, "ssc/source": "ssc-assets demo"})
        ok &= result.success
        wall = time.perf_counter() - t0
        row = {"plate": key, "success": result.success, "seconds": round(wall, 1),
               "runs": {"process_plate": (wall, step_seconds(instance, result.run_id))}}
        if not result.success:
            row["error"] = _run_error(result)
        for ev in result.get_asset_materialization_events():
            mat = ev.step_materialization_data.materialization
            md = {k: v.value for k, v in mat.metadata.items() if isinstance(v.value, (int, float, str))}
            if mat.asset_key.to_user_string() == "site_qc":
                row["sites"] = md.get("n_sites")
                row["failed_qc"] = md.get("n_sites_failed")
            if mat.asset_key.to_user_string() == "raw_sites":
                row["images"] = md.get("n_images")
        summary.append(row)
    print()
    print(f"{'plate':<20} {'ok':<5} {'images':>7} {'sites':>6} {'failed QC':>9} {'time s':>7}")
    for r in summary:
        print(f"{r['plate']:<20} {str(r['success']):<5} {r.get('images', '-')!s:>7} {r.get('sites', '-')!s:>6} "
              f"{r.get('failed_qc', '-')!s:>9} {r['seconds']:>7}")
    processed = [r for r in summary if r["success"]]
    for r in summary:
        if not r["success"]:
            print(f"\nprocess_plate FAILED for {r['plate']}: {r.get('error') or 'see the run in the Dagster UI'}")
    if processed and len(processed) < len(summary):
        print(f"continuing with the {len(processed)} plate(s) that were processed; the failed plate(s) are left out of "
              "the models, embeddings and clusterings (a warning in those runs names them); the exit code will be 1")
    if processed and not args.skip_models:
        models_ok = _demo_models(run)
        ok &= models_ok
        if models_ok:
            ok &= _demo_clusterings(run, processed, instance)
    _print_timing(summary)
    stack.close()
    print(f"\nDagster instance: {settings.dagster_home() or '(ephemeral)'}; outputs: {settings.storage_dir()}")
    print("Open the UI with `make dev` to browse assets, metadata and checks (Dagster :3000, MLflow :5000).")
    return 0 if ok and summary else 1


def _run_error(result) -> str:
    """First line of the first failed step's error in a run result (what the UI shows first)."""
    for ev in result.all_events:
        if ev.is_step_failure and ev.step_failure_data and ev.step_failure_data.error:
            msg = (ev.step_failure_data.error.message or "").strip().splitlines()
            return f"step {ev.step_key}: {msg[0] if msg else 'failed'}"
    return ""


def _manifest(asset: str) -> dict:
    """An unpartitioned asset's JSON manifest, read where the manifest IO manager wrote it."""
    import fsspec

    from ssc_assets.core.io.storage import join

    with fsspec.open(join(settings.storage_dir(), f"{asset}.json"), "r") as fh:
        return json.load(fh)


def _print_timing(summary: list[dict]) -> None:
    """Per plate: seconds of process_plate and embed_plate, per site, and each run's slowest step."""
    import pandas as pd

    from ssc_assets.defs.run_timing import timing_rows

    rows = [row for r in summary for row in timing_rows(r["plate"], r.get("sites"), r.get("runs", {}))]
    if rows:
        print("\ntime per plate (wall seconds of each run; s/site over all sites of the plate):")
        print(pd.DataFrame(rows).to_markdown(index=False))


def _demo_clusterings(run, summary: list[dict], instance) -> bool:
    """Embed every plate with the champion models, cluster all plates, print the headline table."""
    import io

    import pandas as pd

    from ssc_assets.defs.run_timing import step_seconds
    from ssc_assets.demo_config import demo_run_config

    t0 = time.perf_counter()
    for r in summary:
        key = r["plate"]
        te = time.perf_counter()
        res = run("embed_plate", key, run_config=demo_run_config("embed_plate"), tags={"ssc/plate": key, "ssc/source": "ssc-assets demo"})
        wall = time.perf_counter() - te
        r.setdefault("runs", {})["embed_plate"] = (wall, step_seconds(instance, res.run_id))
        if not res.success:
            print(f"embed_plate FAILED for {key}: see the run in the Dagster UI")
            return False
        print(f"embed_plate {key}: {wall:.0f} s")
    res = run("cluster_plates", run_config=demo_run_config("cluster_plates"), tags={"ssc/source": "ssc-assets demo"})
    if not res.success:
        print("cluster_plates FAILED: see the run in the Dagster UI")
        return False
    out = _manifest("clusterings")
    print(f"\nembeddings + clusterings ({time.perf_counter() - t0:.0f} s): cross-method comparison "
          "(thesis = the seed thesis' numbers on its own data, for reference)")
    if out.get("headline_md"):
        print(out["headline_md"])
    else:
        comp = pd.read_csv(io.StringIO(out["comparison_csv"]))
        print(comp.round(3).to_markdown(index=False))
    _print_donor_summary()
    print(f"\nreport: {out['report']}")
    return True


def _print_donor_summary() -> None:
    """Per method: leave-one-donor-out accuracy vs chance, permutation p, rho vs HC<SSc<SSCHL;
    then the donors of the best method, most SSc-like first, with their intervals."""
    import pandas as pd

    from ssc_assets.core.analysis.report import best_donor_method
    from ssc_assets.core.plots.donors import donor_table

    try:
        out = _manifest("donor_scores")
    except Exception:  # noqa: BLE001 - the headline above stands without it
        return
    summary, donors = pd.DataFrame(out["summary"]), pd.DataFrame(out["donors"])
    if summary.empty:
        return
    cols = ["Metadata_Method", "n_donors", "lodo_accuracy", "chance", "permutation_p", "rho_group", "rho_group_p"]
    print("\ndonor level (leave-one-donor-out linear SVM; cells: its out-of-fold score; rho: donor scores vs HC < SSc < SSCHL):")
    print(summary[cols].rename(columns={"Metadata_Method": "method"}).round(3).to_markdown(index=False))
    best = best_donor_method(summary)  # the report's choice: highest rho, ties by LODO accuracy
    if best is not None:
        print(f"\ndonors ranked by SSc-likeness ({best}; 95 % interval over wells):")
        print(donor_table(donors[donors["Metadata_Method"] == best], best).to_markdown(index=False))


def _demo_models(run) -> bool:
    """Train every model on all plates with the demo settings (ssc_assets/demo_config.py)."""
    from ssc_assets.demo_config import demo_run_config

    t0 = time.perf_counter()
    result = run("train_models", run_config=demo_run_config(), tags={"ssc/source": "ssc-assets demo"})
    print(f"\nmodels ({time.perf_counter() - t0:.0f} s; whole-site models: demo settings from ssc_assets/demo_config.py, "
          "cell models: the cpu preset):")
    print(f"{'asset':<28} {'registered model':<24} {'version':>7} {'champion':>8}  test metrics")
    for ev in result.get_asset_materialization_events():
        key = ev.asset_key.to_user_string()
        try:
            man = _manifest(key)
        except Exception:  # noqa: BLE001 - the summary must not hide the run's own error
            continue
        for name, m in (man["models"].items() if "models" in man else [(None, man)]):
            test = m.get("test") or {}
            shown = ", ".join(f"{k} {v:.3f}" for k, v in test.items() if isinstance(v, float))
            if not shown and "oof" in m:
                shown = "out-of-fold: well AUC {:.3f}, well acc {:.3f}, donor acc {:.3f}".format(
                    m["oof"].get("well_auc", float("nan")), m["oof"].get("well_accuracy", float("nan")),
                    m["oof"].get("donor_accuracy", float("nan")))
            if not shown and m.get("model") == "ssc-cell_autoencoder":
                shown = f"held-out donors' reconstruction MSE {m.get('best_val_loss', float('nan')):.3f} (standardised units)"
            if not shown and "svm" in m:
                shown = "SVM CV acc (donor-grouped) {:.3f}, (ungrouped) {:.3f}".format(
                    m["svm"]["cv_grouped"]["accuracy"], m["svm"]["cv_ungrouped"]["accuracy"])
            print(f"{key + (f'[{name}]' if name else ''):<28} {str(m.get('model')):<24} {str(m.get('version')):>7} "
                  f"{str(m.get('champion')):>8}  {shown}")
    if not result.success:
        print("train_models FAILED: see the run in the Dagster UI")
    return result.success


def _cmd_mlflow_ui(args: argparse.Namespace) -> int:
    """``mlflow ui`` on the store the pipeline uses (MLFLOW_TRACKING_URI or the local default)."""
    from ssc_assets.defs.mlflow_tracking import MlflowTracking

    res = MlflowTracking()
    res.client()  # creates the SQLite folder and schema if needed
    cmd = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "ui", "--backend-store-uri", res.tracking_uri,
           "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    if res.tracking_uri.startswith("sqlite"):
        cmd += ["--default-artifact-root", res.artifact_root]
    print(" ".join(cmd), flush=True)
    print(f"open http://{args.host}:{args.port}/#/experiments?workflowType=machine_learning "
          "(model-training view; MLflow 3 opens GenAI views by default)", flush=True)
    os.execv(cmd[0], cmd)  # become the server, so that `kill` from make dev stops it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ssc-assets", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("simulate", help="write synthetic MetaXpress demo plates")
    p.add_argument("--plates-dir", default=settings.plates_dir())
    p.add_argument("--truth-dir", default=os.path.abspath("data/truth"))
    p.add_argument("--plates", type=int, default=2)
    p.add_argument("--wells", type=int, default=16)
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_cmd_simulate)

    p = sub.add_parser("scan", help="check whether a plate folder is complete and settled")
    p.add_argument("plate_dir")
    p.add_argument("--settle", type=float, default=settings.settle_seconds())
    p.set_defaults(fn=_cmd_scan)

    p = sub.add_parser("demo", help="simulate demo plates (if needed) and materialize every plate through Dagster")
    p.add_argument("--truth-dir", default=os.path.abspath("data/truth"))
    p.add_argument("--plates", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-models", action="store_true", help="only the per-plate assets")
    p.set_defaults(fn=_cmd_demo)

    p = sub.add_parser("mlflow-ui", help="start the MLflow UI on the pipeline's tracking store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1, help="web workers (mlflow's default of 4 costs ~1 GB each)")
    p.set_defaults(fn=_cmd_mlflow_ui)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
