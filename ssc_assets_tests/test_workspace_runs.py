"""Demo runs go through the code location, so the UI lists them (Overview, job page, checks)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ssc_assets.core.simulate import PlateSpec, default_wells, simulate_plate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter, like `ssc-assets demo`: settings are read when definitions load.
SCRIPT = textwrap.dedent("""
    import contextlib, json, os, sys
    import dagster as dg
    from ssc_assets.definitions import defs
    from ssc_assets.defs.run_timing import step_seconds, timing_rows
    from ssc_assets.defs.workspace_runs import module_workspace_file, run_job, workspace_location

    def main():
        import time
        instance = dg.DagsterInstance.get()
        instance.add_dynamic_partitions("plates", ["P1"])
        with contextlib.ExitStack() as stack:  # as the demo: ./workspace.yaml, else the module's
            ws = "workspace.yaml" if os.path.isfile("workspace.yaml") else stack.enter_context(module_workspace_file())
            location, repo = stack.enter_context(workspace_location(instance, ws))
            t0 = time.time()
            result = run_job(instance, location, repo, defs.resolve_job_def("process_plate"), "P1",
                             run_config={"execution": {"config": {"in_process": {}}}}, tags={"ssc/source": "test"})
            window = (t0, time.time())
        run = instance.get_run_by_id(result.run_id)
        steps = step_seconds(instance, result.run_id)
        rows = timing_rows("P1", 4, {"process_plate": (window[1] - window[0], steps)})
        listed = [r.run_id for r in instance.get_runs(dg.RunsFilter(job_name="process_plate"))]
        print("RESULT " + json.dumps({"success": result.success, "run_id": result.run_id, "listed": listed,
            "location": run.remote_job_origin.location_name if run.remote_job_origin else None,
            "tags": dict(run.tags), "steps": steps, "window": window, "rows": rows}))

    if __name__ == "__main__":
        main()
""")


@pytest.mark.parametrize("where", ["repo", "elsewhere"])
def test_run_carries_the_code_location_origin_and_plate(tmp_path, where):
    """From the repository (its workspace.yaml) and from any other directory (a generated
    workspace loading the module), like ``ssc-assets demo``."""
    simulate_plate(tmp_path / "plates", tmp_path / "truth", "P1",
                   PlateSpec(wells=default_wells(2), n_sites=2, image_size=96, n_failed_sites=0), seed=1)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "DAGSTER_HOME": str(home), "SSC_PLATES_DIR": str(tmp_path / "plates"),
           "SSC_STORAGE_DIR": str(tmp_path / "storage"), "SSC_COMPUTE_BACKEND": "serial", "SSC_SETTLE_SECONDS": "0"}
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO if where == "repo" else tmp_path, env=env, capture_output=True, text=True, timeout=900)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["success"], proc.stderr[-3000:]
    assert out["location"] == "ssc_assets"  # listed under the code location (Overview, job page)
    assert out["tags"]["dagster/partition"] == "P1" and out["tags"]["ssc/source"] == "test"
    assert out["listed"] == [out["run_id"]]


    # The demo's timing table: every step of the job, in order, timed inside the run's window.
    steps = out["steps"]
    assert [s["step"] for s in steps] == ["raw_sites", "site_qc", "illumination_profiles", "corrected_images", "masks"]
    t0, t1 = out["window"]
    for s in steps:
        assert s["status"] == "STEP_SUCCESS" and t0 <= s["start"] <= s["end"] <= t1
        assert abs(s["seconds"] - (s["end"] - s["start"])) < 1e-9
    (row,) = out["rows"]
    slowest = max(steps, key=lambda s: s["seconds"])
    assert row["slowest_step"] == f"{slowest['step']} ({slowest['seconds']:.0f} s)"
    assert row["s_per_site"] == round((t1 - t0) / 4, 2) and row["job"] == "process_plate"


RUNNER_SCRIPT = textwrap.dedent("""
    import contextlib, os
    import dagster as dg
    from ssc_assets.cli import _Runner
    from ssc_assets.definitions import defs

    with contextlib.ExitStack() as stack:
        runner = _Runner(dg.DagsterInstance.get(), defs, stack)
        print("LOCATION", runner.location.name if runner.location is not None else None,
              os.path.isfile("workspace.yaml"))
""")


def test_demo_runner_loads_the_code_location_outside_the_repository(tmp_path):
    """Outside the repository the demo's runner still gets the code location (so train_models
    runs with its own multiprocess executor), not the in-process fallback."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    script = tmp_path / "runner.py"
    script.write_text(RUNNER_SCRIPT)
    env = {**os.environ, "DAGSTER_HOME": str(home), "SSC_STORAGE_DIR": str(tmp_path / "storage")}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("LOCATION ")), None)
    assert line == "LOCATION ssc_assets False", proc.stdout[-2000:] + proc.stderr[-2000:]
