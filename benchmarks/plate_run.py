"""Benchmark: one plate through the per-plate Dagster job, wall time and peak memory.

    python benchmarks/plate_run.py [--wells 4] [--sites 4] [--size 2048] [--workers 2]

Simulates a plate of ``wells x sites`` sites at ``size``² (16-bit, 4 channels), runs
``process_plate`` (raw_sites -> site_qc -> illumination_profiles -> corrected_images ->
masks) in a child process with ``SSC_MAX_WORKERS`` worker processes, and samples the summed
RSS of the whole process tree (job process + site workers) every 0.2 s. Prints per-site wall
time, the extrapolation to 384 sites, and the peak memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

CHILD = textwrap.dedent(
    """
    import sys, time
    from dagster import DagsterInstance
    from ssc_assets.definitions import build_definitions
    from ssc_assets.defs.partitions import plates
    instance = DagsterInstance.ephemeral()
    defs = build_definitions()
    instance.add_dynamic_partitions(plates.name, [sys.argv[1]])
    job = defs.get_job_def("process_plate")
    t = time.perf_counter()
    res = job.execute_in_process(instance=instance, partition_key=sys.argv[1])
    print("JOB_SECONDS", time.perf_counter() - t, res.success)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wells", type=int, default=4)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from ssc_assets.core.simulate import PlateSpec, default_wells, simulate_plate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = PlateSpec(wells=default_wells(args.wells), n_sites=args.sites, image_size=args.size, n_failed_sites=0)
        t = time.perf_counter()
        simulate_plate(tmp / "plates", tmp / "truth", "BENCH-01", spec, seed=1)
        print(f"simulated {args.wells * args.sites} sites of {args.size}² in {time.perf_counter() - t:.0f} s")
        env = dict(os.environ, SSC_PLATES_DIR=str(tmp / "plates"), SSC_STORAGE_DIR=str(tmp / "storage"),
                   SSC_MAX_WORKERS=str(args.workers), SSC_SETTLE_SECONDS="0", DAGSTER_HOME=str(tmp))
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, "BENCH-01"], env=env, stdout=subprocess.PIPE, text=True)
        ps, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(ps))
            time.sleep(0.2)
        wall = time.perf_counter() - t
        out = proc.stdout.read()
        job_s = float(next(line.split()[1] for line in out.splitlines() if line.startswith("JOB_SECONDS")))
        n = args.wells * args.sites
        print("| sites | size | workers | job wall | per site | 384-site plate (extrapolated) | peak RSS (tree) |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {n} | {args.size}² | {args.workers} | {job_s:.0f} s | {job_s / n:.2f} s | "
              f"{384 * job_s / n / 60:.1f} min | {peak / 2**30:.2f} GiB |")
        print(f"(process wall incl. imports {wall:.0f} s; exit {proc.returncode})")


if __name__ == "__main__":
    main()
