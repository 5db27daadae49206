"""Seconds per step of a finished Dagster run, from its event log (STEP_START -> STEP_SUCCESS
or STEP_FAILURE). Used by ``ssc-assets demo`` (per-plate timing table) and
``benchmarks/plate_run.py``."""

from __future__ import annotations

import dagster as dg


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> list[dict]:
    """One dict per step in start order: ``step`` (step key), ``start`` / ``end`` (Unix
    seconds; ``end`` absent if the step never finished), ``seconds`` (float or None) and
    ``status`` ("STEP_SUCCESS", "STEP_FAILURE" or None)."""
    steps: dict[str, dict] = {}
    order: list[str] = []
    for record in instance.all_logs(run_id):
        ev = record.dagster_event
        if ev is None or not record.step_key:
            continue
        s = steps.setdefault(record.step_key, {"status": None})
        if ev.event_type_value == "STEP_START":
            s["start"] = record.timestamp
            order.append(record.step_key)
        elif ev.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            s["end"], s["status"] = record.timestamp, ev.event_type_value
    out = []
    for key in order:
        s = steps[key]
        seconds = s["end"] - s["start"] if "end" in s else None
        out.append({"step": key, **s, "seconds": seconds})
    return out


def timing_rows(plate: str, n_sites: int | None, runs: dict[str, tuple[float, list[dict]]]) -> list[dict]:
    """Rows of the demo's per-plate timing table.

    ``runs`` maps a job name ("process_plate", "embed_plate") to (run wall seconds, its
    :func:`step_seconds`). One row per job: wall seconds, seconds per site (None without
    sites) and the slowest step with its seconds.
    """
    rows = []
    for job, (wall, steps) in runs.items():
        done = [s for s in steps if s.get("seconds") is not None]
        slow = max(done, key=lambda s: s["seconds"], default=None)
        rows.append({
            "plate": plate, "job": job, "sites": n_sites, "seconds": round(wall, 1),
            "s_per_site": round(wall / n_sites, 2) if n_sites else None,
            "slowest_step": f"{slow['step']} ({slow['seconds']:.0f} s)" if slow else "-",
        })
    return rows
