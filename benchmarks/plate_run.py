"""Benchmark: one plate from raw TIFFs to well embeddings, per stage, with peak memory.

    python benchmarks/plate_run.py [--wells 4] [--sites 4] [--size 2048] [--workers 2]
                                   [--profiles-level 0] [--profiles-fast] [--no-embed] [--no-count-reads]

Simulates a plate of ``wells x sites`` sites at ``size``² (16-bit, 4 channels) and runs,
each in its own child process on one persistent temporary Dagster instance (SQLite under a
temporary ``DAGSTER_HOME``; ``SSC_STORAGE_DIR`` and the MLflow store, SQLite under it, in the
same temporary folder), with ``SSC_MAX_WORKERS`` worker processes:

1. untimed setup: a small training plate (8 wells x 4 sites at 256², the test suite's plate)
   through ``process_plate``, then ``train_models`` with tiny settings (:data:`TRAIN_CONFIG`),
   so that every embedding method has a champion model. Its wall time is reported apart;
   the benchmark plate is not in the training set (its partition is added afterwards);
2. timed: ``process_plate`` (raw_sites -> site_qc -> illumination_profiles ->
   corrected_images -> masks) on the benchmark plate;
3. timed: ``embed_plate`` (site embeddings of every method + well embeddings) on it, profiles
   at the asset's default level unless ``--profiles-level`` / ``--profiles-fast`` say otherwise.

Per-stage seconds come from the run's Dagster event log (STEP_START -> STEP_SUCCESS/FAILURE
timestamps per step). The parent samples the summed RSS of each child's process tree (job
process + site workers) every 0.2 s. Raw TIFF reads are counted by a ``sitecustomize`` put on
the children's ``PYTHONPATH`` (so spawned site workers load it too) that wraps
``tifffile.imread`` (what ``ssc_assets.core.io.tiff.read_image`` calls) and logs every read of a
file under the plates folder with its time; a read is attributed to the step running at that
time (``execute_in_process`` runs steps one after the other). Header-only reads
(``read_header_description``) are not pixel reads and are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import psutil

PLATE = "BENCH-01"
TINY = {"epochs": 1, "augmentation_factor": 1, "batch_size": 4, "lr": 1e-3}
#: Smaller than demo_run_config("train_models"): 1 epoch, tiny inputs (the fields of
#: ssc_assets_tests/test_model_pipeline.py TINY_CONFIG); DenseNet without ImageNet weights
#: (no download during a benchmark).
TRAIN_CONFIG = {
    "classifier_model": {**TINY, "crop_size": 64, "n_blocks": 3, "first_width": 16},
    "densenet_model": {**TINY, "crop_size": 32, "weights": "none"},
    "autoencoder_models": {**TINY, "patch_size": 32, "embedding_size": 16, "widths": [16, 8, 8, 4]},
    "segmentation_model": {**TINY, "tile_size": 64, "base_channels": 4, "depth": 2},
    "pca_model": {"n_components": 8, "size": 16},
    "cell_classifier_model": {"epochs": 2, "batch_size": 16, "crop_size": 32, "max_crops_per_site": 8,
                              "oof_folds": 2, "budget_seconds": 60.0, "width": 8},
    "cell_autoencoder_model": {"epochs": 2, "batch_size": 16, "crop_size": 32, "max_crops_per_site": 8, "max_seconds": 30.0},
}

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from dagster import DagsterInstance
    from ssc_assets.definitions import build_definitions
    from ssc_assets.defs.partitions import plates
    from ssc_assets.defs.run_timing import step_seconds
    job_name, key, run_config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    instance = DagsterInstance.get()  # persistent: DAGSTER_HOME is the benchmark's temp folder
    defs = build_definitions()
    kw = {}
    if key != "-":
        if not instance.has_dynamic_partition(plates.name, key):
            instance.add_dynamic_partitions(plates.name, [key])
        kw["partition_key"] = key
    t = time.perf_counter()
    res = defs.resolve_job_def(job_name).execute_in_process(instance=instance, run_config=run_config or None,
                                                            raise_on_error=False, **kw)
    wall = time.perf_counter() - t
    steps = step_seconds(instance, res.run_id)
    print("RESULT " + json.dumps({"run_id": res.run_id, "success": res.success, "wall": wall, "steps": steps}))
    """
)

SITECUSTOMIZE = textwrap.dedent(
    """
    # Written by benchmarks/plate_run.py: logs every pixel read of a raw TIFF (time, path).
    import os, time
    _dir, _root = os.environ.get("SSC_BENCH_READS_DIR"), os.environ.get("SSC_PLATES_DIR")
    if _dir and _root:
        import tifffile
        _orig, _log = tifffile.imread, []

        def _imread(files=None, *a, **k):
            p = os.path.abspath(os.fspath(files)) if isinstance(files, (str, os.PathLike)) else ""
            if p.startswith(os.path.abspath(_root)):
                if not _log:
                    _log.append(open(os.path.join(_dir, f"reads-{os.getpid()}.tsv"), "a", buffering=1))
                _log[0].write(f"{time.time()}\\t{p}\\n")
            return _orig(files, *a, **k)

        tifffile.imread = _imread
    """
)


def tree_rss(p: psutil.Process) -> int:
    total = 0
    for q in [p, *p.children(recursive=True)]:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_child(job: str, key: str, run_config: dict, env: dict) -> dict:
    """Run ``job`` in a child process; its result (steps from the event log) + peak tree RSS."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, job, key, json.dumps(run_config)], env=env,
                            stdout=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.2)
    out = proc.stdout.read()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{job} failed (exit {proc.returncode}):\n{out[-3000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    res.update(peak=peak, process_wall=time.perf_counter() - t)
    if not res["success"]:
        print(f"WARNING: {job} run {res['run_id']} did not succeed: "
              f"{[s['step'] for s in res['steps'] if s.get('status') != 'STEP_SUCCESS']}")
    return res


def read_log(reads_dir: Path) -> list[tuple[float, str]]:
    reads = []
    for f in reads_dir.glob("reads-*.tsv"):
        for line in f.read_text().splitlines():
            ts, path = line.split("\t", 1)
            reads.append((float(ts), path))
    return reads


def reads_by_stage(reads: list[tuple[float, str]], steps: list[dict], tiffs: list[str]) -> dict[str, Counter]:
    """Reads per raw TIFF per step (by time); reads outside every step go to '(between steps)'."""
    out: dict[str, Counter] = {}
    for ts, path in reads:
        stage = next((s["step"] for s in steps if s.get("start", 0) <= ts <= s.get("end", float("inf"))),
                     "(between steps)")
        out.setdefault(stage, Counter())[path] += 1
    return out


def print_stage_table(title: str, runs: list[dict], n_sites: int) -> float:
    rows = [(s["step"], s["end"] - s["start"]) for r in runs for s in r["steps"] if "end" in s]
    total = sum(sec for _, sec in rows)
    print(f"\n{title}")
    print("| stage | seconds | s per site | share |")
    print("|---|---|---|---|")
    for step, sec in rows:
        print(f"| {step} | {sec:.1f} | {sec / n_sites:.2f} | {100 * sec / total:.0f} % |")
    print(f"| **total (sum of steps)** | **{total:.1f}** | **{total / n_sites:.2f}** | 100 % |")
    return total


def main() -> None:  # noqa: C901, PLR0915 - one linear benchmark script
    ap = argparse.ArgumentParser()
    ap.add_argument("--wells", type=int, default=4)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--profiles-level", type=int, default=None, help="site_embeddings_profiles level (default: the asset's)")
    ap.add_argument("--profiles-fast", action="store_true", help="site_embeddings_profiles fast=True")
    ap.add_argument("--no-embed", action="store_true", help="process_plate only (no training, no embed_plate)")
    ap.add_argument("--no-count-reads", action="store_true", help="do not count raw TIFF reads")
    ap.add_argument("--keep", help="keep the working folder here instead of a temporary one")
    args = ap.parse_args()
    from ssc_assets.core.simulate import PlateSpec, default_wells, simulate_demo, simulate_plate

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(args.keep or tmpdir)
        (tmp / "home").mkdir(parents=True, exist_ok=True)
        (tmp / "site").mkdir(exist_ok=True)
        (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        plates_dir = tmp / "plates"
        env = dict(os.environ, SSC_PLATES_DIR=str(plates_dir), SSC_STORAGE_DIR=str(tmp / "storage"),
                   SSC_MAX_WORKERS=str(args.workers), SSC_SETTLE_SECONDS="0", DAGSTER_HOME=str(tmp / "home"),
                   TORCH_HOME=str(tmp / "torch"))
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("SSC_DASK_ADDRESS", None)
        n = args.wells * args.sites
        peaks = {}

        if not args.no_embed:
            t = time.perf_counter()
            train_plate = simulate_demo(plates_dir, tmp / "truth", n_plates=1, seed=5, image_size=256, n_wells=8)[0].name
            prep = run_child("process_plate", train_plate, {}, env)
            train = run_child("train_models", "-", {"ops": {k: {"config": v} for k, v in TRAIN_CONFIG.items()}}, env)
            print(f"setup (not timed in the chain): training plate {train_plate} (8 wells x 4 sites, 256²) "
                  f"process_plate {prep['wall']:.0f} s, train_models {train['wall']:.0f} s "
                  f"(peak RSS {train['peak'] / 2**30:.2f} GiB); setup total {time.perf_counter() - t:.0f} s")
            for s in train["steps"]:
                print(f"  {s['step']}: {s.get('end', s['start']) - s['start']:.0f} s {s.get('status', '')}")

        spec = PlateSpec(wells=default_wells(args.wells), n_sites=args.sites, image_size=args.size, n_failed_sites=0)
        t = time.perf_counter()
        simulate_plate(plates_dir, tmp / "truth", PLATE, spec, seed=1)
        print(f"simulated {n} sites of {args.size}² in {time.perf_counter() - t:.0f} s")

        def phase_env(name: str) -> dict:
            if args.no_count_reads:
                return env
            d = tmp / f"reads-{name}"
            d.mkdir(exist_ok=True)
            return dict(env, SSC_BENCH_READS_DIR=str(d),
                        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp / "site"), env.get("PYTHONPATH")])))

        runs = {"process_plate": run_child("process_plate", PLATE, {}, phase_env("process_plate"))}
        peaks["process_plate"] = runs["process_plate"]["peak"]
        if not args.no_embed:
            prof = {k: v for k, v in (("level", args.profiles_level), ("fast", args.profiles_fast or None)) if v is not None}
            cfg = {"ops": {"site_embeddings_profiles": {"config": prof}}} if prof else {}
            runs["embed_plate"] = run_child("embed_plate", PLATE, cfg, phase_env("embed_plate"))
            peaks["embed_plate"] = runs["embed_plate"]["peak"]

        import pandas as pd

        print(f"\n{n} sites ({args.wells} wells x {args.sites}) of {args.size}² 16-bit, 4 channels; "
              f"{args.workers} workers; {os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}")
        total = print_stage_table("Per stage (Dagster event log, STEP_START -> STEP_SUCCESS):", list(runs.values()), n)
        print("\n| run | run wall (execute_in_process) | s per site | 384-site plate | peak RSS (tree) |")
        print("|---|---|---|---|---|")
        for job, r in runs.items():
            print(f"| {job} | {r['wall']:.1f} s | {r['wall'] / n:.2f} | {384 * r['wall'] / n / 60:.1f} min | "
                  f"{r['peak'] / 2**30:.2f} GiB |")
        chain = sum(r["wall"] for r in runs.values())
        print(f"| **whole chain** | **{chain:.1f} s** | **{chain / n:.2f}** | **{384 * chain / n / 60:.1f} min** | "
              f"**{max(peaks.values()) / 2**30:.2f} GiB** |")
        print(f"steps sum {total:.1f} s = {total / n:.2f} s/site; 384-site plate {384 * total / n / 60:.1f} min; "
              f"issue 12 target 10 min per 384 sites = 1.56 s/site, i.e. {chain / n / 1.5625:.1f}x too slow")

        if not args.no_count_reads:
            tiffs = sorted(pd.read_parquet(tmp / "storage" / "raw_sites" / f"{PLATE}.parquet")["path"].map(
                lambda p: os.path.abspath(p)).unique())
            by_job = {job: reads_by_stage(read_log(tmp / f"reads-{job}"), r["steps"], tiffs) for job, r in runs.items()}
            read_once = {p for by in by_job.values() for c in by.values() for p in c}
            unread = [p for p in tiffs if p not in read_once]
            tiffs = [p for p in tiffs if p in read_once]
            print(f"\nRaw TIFF pixel reads per file, by stage, over the {len(tiffs)} raw TIFFs read at least once "
                  f"({len(unread)} of the plate's indexed TIFFs never read, e.g. {Path(unread[0]).name if unread else '-'}):")
            print("| stage | reads | per TIFF min | median | max |")
            print("|---|---|---|---|---|")
            all_reads = Counter()
            for by in by_job.values():
                for stage, c in by.items():
                    per = [c.get(p, 0) for p in tiffs]
                    all_reads.update(c)
                    print(f"| {stage} | {sum(c.values())} | {min(per)} | {statistics.median(per):g} | {max(per)} |")
            per = [all_reads.get(p, 0) for p in tiffs]
            print(f"| **whole chain** | **{sum(all_reads.values())}** | **{min(per)}** | "
                  f"**{statistics.median(per):g}** | **{max(per)}** |")


if __name__ == "__main__":
    main()
