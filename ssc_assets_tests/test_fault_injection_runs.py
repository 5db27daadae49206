"""Fault injection for issue 13: plates processed at once, crashes during a store swap, killed runs.

* Two plates in one folder: a plate's clean-up never deletes another plate's (or a live
  process's) temp store; only entries whose owner is gone.
* A writer process that dies (``os._exit`` at a named step of the commit, no clean-up code
  runs) at every point of the local swap and of the fsspec upload: a reader still finds the
  old or the new store, and the next writer or clean-up repairs what is left.
* A SIGKILLed parent leaves no pool workers; an orphaned step stops its work.
* Dagster: a run whose run worker is SIGKILLed ends FAILURE, its step and pool die, and the
  next run of the same plate and pool succeeds (run monitoring frees the dead run's pool slot).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from fsspec.implementations.local import LocalFileSystem

from ssc_assets.core.io import ome_zarr_store as S
from ssc_assets.core.io import storage
from ssc_assets.core.io.ome_zarr_store import commit as oz_commit
from ssc_assets.core.io.ome_zarr_store import reader as oz_reader

REPO = Path(__file__).resolve().parents[1]
SITES = [("B02", 1), ("B03", 2)]
OLD, NEW, NEXT = 1.0, 2.0, 3.0
CRASH_EXIT = 86


# --- helpers ----------------------------------------------------------------------------------


def _wait_for(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _alive(procs: list[psutil.Process]) -> list[int]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _pool_workers(pid: int) -> list[psutil.Process]:
    out = []
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return out
    for c in children:
        try:
            if "spawn_main" in " ".join(c.cmdline()):
                out.append(c)
        except psutil.Error:
            pass
    return out


def _workers_up(pid: int, n: int = 2):
    """A condition for :func:`_wait_for`: the ``n`` pool workers of ``pid`` once they all exist."""
    return lambda: (lambda w: w if len(w) >= n else None)(_pool_workers(pid))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write(store, value: float) -> None:
    with S.HcsPlateWriter(store, "P1", ["nuclei"]) as w:
        for well, site in SITES:
            w.write_site(well, site, np.full((1, 32, 32), value, np.float32))


def _values(store) -> list[float]:
    assert sorted(S.list_sites(store)) == SITES
    return [float(S.read_site_image(store, well, site).mean()) for well, site in SITES]


def _zarr_opens(store) -> bool:
    import zarr

    root = zarr.open_group(oz_reader._readable_store(store), mode="r")
    return bool(root.attrs["ome"]["plate"]["wells"])


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


class _DiskAsRemote(LocalFileSystem):
    """A local directory behind a non-``file`` URL scheme: drives the fsspec (object store)
    commit protocol of :mod:`ome_zarr_store` with state that a crashed process leaves behind."""

    protocol = "sscdisk"

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("sscdisk://"):
            path = path[len("sscdisk://"):]
        return super()._strip_protocol(path)


def _register_disk_as_remote() -> None:
    import fsspec

    fsspec.register_implementation("sscdisk", _DiskAsRemote, clobber=True)


def _write_and_crash(store: str, crash_at: str, use_exchange: bool, value: float) -> None:
    """Child process: write a store and die (no clean-up, like SIGKILL) at step ``crash_at``."""
    from ssc_assets.core.io import ome_zarr_store as oz
    from ssc_assets.core.io.ome_zarr_store import commit

    _register_disk_as_remote()
    if not use_exchange:
        commit._exchange = lambda a, b: False  # a filesystem without RENAME_EXCHANGE (NFS, macOS)

    def step(name: str) -> None:
        if name == crash_at:
            os._exit(CRASH_EXIT)

    commit._step = step
    with oz.HcsPlateWriter(store, "P1", ["nuclei"]) as w:
        for well, site in SITES:
            w.write_site(well, site, np.full((1, 32, 32), value, np.float32))
    os._exit(0)


_FORKSERVER = None


def _crash_writer(store, crash_at: str, use_exchange: bool = True) -> int:
    """Run :func:`_write_and_crash` in a child forked from a preloaded server; returns its PID."""
    global _FORKSERVER
    if _FORKSERVER is None:
        _FORKSERVER = mp.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(["numpy", "zarr", "ssc_assets.core.io.ome_zarr_store", __name__])
    p = _FORKSERVER.Process(target=_write_and_crash, args=(str(store), crash_at, use_exchange, NEW))
    p.start()
    p.join(120)
    assert p.exitcode == CRASH_EXIT, f"writer did not reach step {crash_at!r} (exit code {p.exitcode})"
    return p.pid


# --- 1. two plates at once ----------------------------------------------------------------


PLATE_B_RUN = """
import sys
import numpy as np
from ssc_assets.core.io.ome_zarr_store import HcsPlateWriter, cleanup_stale_tmp
folder = sys.argv[1]
cleanup_stale_tmp(folder)  # what the image assets do before writing: every plate's stale entries
with HcsPlateWriter(folder + "/PB.ome.zarr", "PB", ["nuclei"]) as w:
    w.write_site("B02", 1, np.full((1, 32, 32), 7, np.float32))
"""


def test_plate_b_cleanup_keeps_plate_a_live_temp_store_and_a_commits(tmp_path):
    """Before: plate B's clean-up deleted every ``*.tmp-*`` in the folder, plate A's half-written
    store included, and A failed (``KeyError: '2'``). Now only entries of dead owners go."""
    folder = tmp_path / "corrected_images"
    folder.mkdir()
    host, dead = storage.host_id(), _dead_pid()
    stale_a = folder / f"PA.ome.zarr.tmp-{host}-{dead}-{'a' * 32}"
    stale_b = folder / f"PB.ome.zarr.tmp-{host}-{dead}-{'b' * 32}"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    live_b = folder / f"PB.ome.zarr.tmp-{host}-{sleeper.pid}-{'c' * 32}"  # another live process's store
    try:
        with S.HcsPlateWriter(folder / "PA.ome.zarr", "PA", ["nuclei"]) as a:
            a.write_site("B02", 1, np.full((1, 32, 32), 1, np.float32))
            assert a.tmp.is_dir()
            for p in (stale_a, stale_b, live_b):  # (A's writer removed dead PA entries on entry)
                p.mkdir()

            assert S.cleanup_stale_tmp(folder, plate="PB") == [stale_b]  # only plate B's, only dead owners'
            assert stale_a.exists() and live_b.exists() and a.tmp.is_dir()

            # plate B's run in its own process while A is half written (default: every plate)
            subprocess.run([sys.executable, "-c", PLATE_B_RUN, str(folder)], check=True, timeout=180)
            assert not stale_a.exists()  # dead owner: removed
            assert a.tmp.is_dir() and live_b.exists()  # live owners (this process, the sleeper): kept

            a.write_site("B03", 2, np.full((1, 32, 32), 2, np.float32))
        assert sorted(S.list_sites(folder / "PA.ome.zarr")) == [("B02", 1), ("B03", 2)]
        assert float(S.read_site_image(folder / "PA.ome.zarr", "B03", 2).mean()) == 2.0
        assert float(S.read_site_image(folder / "PB.ome.zarr", "B02", 1).mean()) == 7.0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert S.cleanup_stale_tmp(folder) == [live_b]  # its owner is gone now
    assert sorted(p.name for p in folder.iterdir()) == ["PA.ome.zarr", "PB.ome.zarr"]


def test_owner_rules_pid_reuse_and_other_hosts(tmp_path):
    host = storage.host_id()
    foreign = "0badf00d" if host != "0badf00d" else "0badf00e"
    now = time.time()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        entries = {
            # a live PID that started after the entry was last written is not its owner (PID reused)
            "reused": (f"P1.ome.zarr.tmp-{host}-{sleeper.pid}-{'d' * 32}", now - 3600, True),
            "live": (f"P1.ome.zarr.tmp-{host}-{sleeper.pid}-{'e' * 32}", now, False),
            # another host or boot: judged by the age of its last write
            "foreign_fresh": (f"P1.ome.zarr.tmp-{foreign}-1-{'f' * 32}", now - 60, False),
            "foreign_old": (f"P1.ome.zarr.tmp-{foreign}-2-{'0' * 32}", now - 7 * 3600, True),
            "atomic_file": (f"P1.parquet.tmp-{host}-{_dead_pid()}-{'1' * 32}", now, True),  # storage.atomic_write_bytes
        }
        for name, mtime, _ in entries.values():
            p = tmp_path / name
            p.write_bytes(b"x") if "parquet" in name else p.mkdir()
            os.utime(p, (mtime, mtime))
        removed = {p.name for p in S.cleanup_stale_tmp(tmp_path)}
        assert removed == {name for name, _, stale in entries.values() if stale}
    finally:
        sleeper.kill()
        sleeper.wait()


# --- 2. crashes during a store swap ---------------------------------------------------------

LOCAL_CRASHES = [
    ("commit:start", True, OLD),  # new store complete, nothing swapped yet
    ("swap:exchanged", True, NEW),  # RENAME_EXCHANGE done: the old store sits under the temp name
    ("swap:old-moved", False, OLD),  # two-rename fallback, between the renames: the path is empty
    ("swap:new-in-place", False, NEW),  # fallback: new store in place, backup not yet deleted
]


@pytest.mark.parametrize("crash_at,use_exchange,survivor", LOCAL_CRASHES, ids=[c[0] for c in LOCAL_CRASHES])
def test_killed_local_swap_leaves_a_readable_store_and_next_writer_recovers(tmp_path, crash_at, use_exchange, survivor):
    """Before: a crash between the two renames left no store, and the next clean-up deleted
    both copies. Now the path holds the old or the new store at every point (or, with the
    fallback, readers use the complete backup) and the next writer repairs and replaces it."""
    store = tmp_path / "P1.ome.zarr"
    _write(store, OLD)
    _crash_writer(store, crash_at, use_exchange)
    assert _debris(tmp_path), "the crash should leave a temp store or a backup behind"
    assert _values(store) == [survivor, survivor]  # a reader, before any recovery
    assert _zarr_opens(store)
    _write(store, NEXT)  # the next writer: recovers, then commits
    assert _values(store) == [NEXT, NEXT]
    assert _debris(tmp_path) == []


def test_cleanup_restores_a_store_whose_swap_died_between_the_renames(tmp_path):
    store = tmp_path / "P1.ome.zarr"
    _write(store, OLD)
    _crash_writer(store, "swap:old-moved", use_exchange=False)
    assert not store.exists()  # the path is empty...
    assert _values(store) == [OLD, OLD]  # ...but readers fall back to the complete backup
    S.cleanup_stale_tmp(tmp_path)  # what the image assets run before writing
    assert store.is_dir() and _values(store) == [OLD, OLD]
    assert _debris(tmp_path) == []


REMOTE_CRASHES = [
    ("copy:partial", OLD),  # while backing up the old store: the store itself is untouched
    ("upload:invalidated", None),  # old root metadata deleted: no store at the URL until recovery
    ("upload:partial", None),  # half the new files uploaded
    ("upload:committed", NEW),  # new root metadata in place, backup not yet deleted
]


@pytest.mark.parametrize("crash_at,survivor", REMOTE_CRASHES, ids=[c[0] for c in REMOTE_CRASHES])
def test_killed_fsspec_commit_keeps_a_complete_store_and_cleanup_restores_it(tmp_path, crash_at, survivor):
    """Before: the upload deleted the old store first, so a crash midway left no store at all.
    Now a complete backup exists until the new root metadata is in place; clean-up puts it back."""
    _register_disk_as_remote()
    folder_path = tmp_path / "masks"
    folder = f"sscdisk://{folder_path}"
    url = f"{folder}/P1.ome.zarr"
    _write(url, OLD)
    pid = _crash_writer(url, crash_at)
    if survivor is not None:
        assert _values(url) == [survivor, survivor]
    else:
        with pytest.raises(Exception):  # noqa: B017 - whichever error the reader raises
            S.list_sites(url)  # never a half store: no root metadata, no reader opens it
        backups = [p for p in folder_path.iterdir() if ".old-" in p.name]
        assert len(backups) == 1 and _values(f"sscdisk://{backups[0]}") == [OLD, OLD]
    S.cleanup_stale_tmp(folder)
    expected = OLD if survivor is None else survivor
    assert _values(url) == [expected, expected]
    assert _debris(folder_path) == []
    builds = list(Path(tempfile.gettempdir()).glob(f"{S.LOCAL_BUILD_PREFIX}{storage.host_id()}-{pid}-*"))
    assert builds == []  # the dead writer's local build directory is gone too
    _write(url, NEXT)
    assert _values(url) == [NEXT, NEXT]


def test_failed_fsspec_upload_is_restored_by_the_next_writer(tmp_path, monkeypatch):
    """In-process failure (no crash): the backup is left for the next writer, which restores
    it before writing, so the old store comes back even if that writer fails too."""
    _register_disk_as_remote()
    url = f"sscdisk://{tmp_path}/P1.ome.zarr"
    _write(url, OLD)

    def fail(name):
        if name == "upload:partial":
            raise OSError("network gone")

    monkeypatch.setattr(oz_commit, "_step", fail)
    with pytest.raises(OSError):
        _write(url, NEW)
    monkeypatch.setattr(oz_commit, "_step", lambda name: None)
    with pytest.raises(RuntimeError):
        with S.HcsPlateWriter(url, "P1", ["nuclei"]):
            assert _values(url) == [OLD, OLD]  # restored on entry
            raise RuntimeError("this run fails too")
    assert _values(url) == [OLD, OLD] and _debris(tmp_path) == []


# --- 3. killed runs: processes ---------------------------------------------------------------

POOL_PARENT = "import time; from ssc_assets.core.parallel import map_sites; map_sites(time.sleep, [300] * 4, backend='process', max_workers=2)"

ORPHANED_STEP = """
import multiprocessing as mp, time
from ssc_assets.core.parallel import map_sites

def step():
    map_sites(time.sleep, [300] * 4, backend="process", max_workers=2)

if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=step)
    p.start()
    print(p.pid, flush=True)
    p.join()
"""


def test_pool_workers_die_with_a_sigkilled_parent():
    """Before: the workers (~350 MB each in a plate run) stayed alive after the parent's SIGKILL."""
    parent = subprocess.Popen([sys.executable, "-c", POOL_PARENT])
    workers: list[psutil.Process] = []
    try:
        workers = _wait_for(_workers_up(parent.pid), 90, "2 pool workers")
        parent.kill()
        parent.wait(30)
        _wait_for(lambda: not _alive(workers), 20, f"workers {[w.pid for w in workers]} to die")
    finally:
        parent.kill()
        _kill(workers)


def test_orphaned_step_stops_its_work(tmp_path):
    """A step process (started by multiprocessing, like Dagster's multiprocess executor) whose
    parent, the run worker, is SIGKILLed: it kills its pool and exits instead of computing on."""
    script = tmp_path / "run_worker.py"
    script.write_text(ORPHANED_STEP)
    run_worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs: list[psutil.Process] = []
    try:
        step = psutil.Process(int(run_worker.stdout.readline()))
        workers = _wait_for(_workers_up(step.pid), 90, "2 pool workers")
        procs = [step, *workers]
        run_worker.kill()
        run_worker.wait(30)
        _wait_for(lambda: not _alive(procs), 30, f"step and workers {[p.pid for p in procs]} to stop")
        assert "ParentDiedError" in run_worker.stderr.read()
    finally:
        run_worker.kill()
        _kill(procs)


# --- 3. killed runs: the Dagster instance ------------------------------------------------------

TINY_DEFS = """
import os, pathlib, time
import dagster as dg
from ssc_assets.core.parallel import map_sites

@dg.op(pool="training")
def work(context):
    pathlib.Path(os.environ["SSC_TEST_DIR"], f"step-{context.run_id}.pid").write_text(str(os.getpid()))
    if context.run.tags.get("mode") == "hang":
        map_sites(time.sleep, [300] * 2, backend="process", max_workers=2)
    return 1

@dg.job(tags={"ssc/plate": "P1"})
def plate_job():
    work()

defs = dg.Definitions(jobs=[plate_job])
"""

TINY_WORKSPACE = """
load_from:
  - python_file:
      relative_path: tiny_defs.py
      working_directory: .
      location_name: tiny
"""


def test_instance_configs_enable_run_monitoring(tmp_path):
    import dagster as dg

    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_monitoring_enabled
        assert "MONITORING" in instance.get_required_daemon_types()
        assert instance.run_monitoring_max_resume_run_attempts == 0  # the DefaultRunLauncher cannot resume
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
    local = yaml.safe_load((REPO / "dagster.yaml").read_text())["run_monitoring"]
    assert yaml.safe_load((REPO / "deploy" / "dagster.postgres.yaml").read_text())["run_monitoring"] == local
    helm = yaml.safe_load((REPO / "deploy" / "helm-values.yaml").read_text())["dagsterDaemon"]["runMonitoring"]
    assert helm["enabled"] is True and helm["freeSlotsAfterRunEndSeconds"] > 0
    assert set(helm) <= {"enabled", "startTimeoutSeconds", "cancelTimeoutSeconds", "maxResumeRunAttempts",
                         "pollIntervalSeconds", "freeSlotsAfterRunEndSeconds"}  # keys the chart renders


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_run_fails_its_processes_die_and_the_next_run_of_the_plate_succeeds(tmp_path):
    """A real ``dagster-daemon run`` on the shipped ``dagster.yaml`` (faster polling), the
    DefaultRunLauncher and the multiprocess executor. Run A (plate P1, op in pool "training")
    hangs in ``map_sites``; its run worker is SIGKILLed. Expected: A is FAILURE, its step and
    pool workers die, and run B of the same plate and pool succeeds. Before: the step and its
    workers computed on as orphans, and B stayed QUEUED for ever, blocked by A's pool slot
    (nothing frees it without run monitoring's ``free_slots_after_run_end_seconds``)."""
    import dagster as dg
    from dagster._core.definitions.selector import JobSubsetSelector
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "tiny_defs.py").write_text(TINY_DEFS)
    (tmp_path / "workspace.yaml").write_text(TINY_WORKSPACE)
    cfg = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert cfg["run_monitoring"]["enabled"]
    cfg["run_monitoring"].update(poll_interval_seconds=1, free_slots_after_run_end_seconds=1)  # speed only
    cfg["run_coordinator"]["config"] = {"dequeue_interval_seconds": 1}
    (home / "dagster.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "DAGSTER_HOME": str(home), "SSC_TEST_DIR": str(tmp_path)}
    os.environ["SSC_TEST_DIR"] = str(tmp_path)  # for the test's own code server

    dg.DagsterInstance.from_config(str(home)).dispose()  # create the SQLite storage before the daemon opens it
    daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                              cwd=tmp_path, env=env, stdout=open(tmp_path / "daemon.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    orphans: list[psutil.Process] = []
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance, \
                WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(tmp_path / "workspace.yaml")])) as wpc:
            ctx = wpc.create_request_context()
            loc = ctx.get_code_location("tiny")
            repo_name = next(iter(loc.get_repositories()))
            job = loc.get_job(JobSubsetSelector(location_name="tiny", repository_name=repo_name, job_name="plate_job",
                                                op_selection=None))
            plan = loc.get_execution_plan(job, {}, step_keys_to_execute=None, known_state=None, instance=instance)

            def submit(tags: dict) -> str:
                run = instance.create_run(
                    job_name="plate_job", run_id=None, run_config={}, resolved_op_selection=None, step_keys_to_execute=None,
                    status=DagsterRunStatus.NOT_STARTED, op_selection=None, root_run_id=None, parent_run_id=None,
                    tags={**job.run_tags, **tags}, job_snapshot=job.job_snapshot,
                    execution_plan_snapshot=plan.execution_plan_snapshot, parent_job_snapshot=job.parent_job_snapshot,
                    remote_job_origin=job.get_remote_origin(), job_code_origin=job.get_python_origin(),
                    asset_selection=None, asset_check_selection=None, asset_graph=loc.get_repository(repo_name).asset_graph)
                instance.submit_run(run.run_id, ctx)  # QUEUED: the daemon's run queue launches it
                return run.run_id

            def status(run_id: str):
                return instance.get_run_by_id(run_id).status

            a = submit({"mode": "hang"})
            pid_file = tmp_path / f"step-{a}.pid"
            _wait_for(pid_file.exists, 120, "run A's step to start")
            step = psutil.Process(int(pid_file.read_text()))
            run_worker = step.parent()
            workers = _wait_for(_workers_up(step.pid), 90, "A's pool workers")
            orphans = [step, *workers]
            assert a in instance.event_log_storage.get_concurrency_info("training").active_run_ids

            run_worker.kill()  # SIGKILL: no clean-up code runs in the run worker
            _wait_for(lambda: status(a) == DagsterRunStatus.FAILURE, 60, "run A to be marked FAILURE")
            _wait_for(lambda: not _alive(orphans), 60, f"A's step and pool workers {[p.pid for p in orphans]} to die")

            b = submit({})
            _wait_for(lambda: status(b) in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE), 150,
                      "run B (same plate tag, same pool) to finish")
            assert status(b) == DagsterRunStatus.SUCCESS
            assert status(a) == DagsterRunStatus.FAILURE
            assert not instance.event_log_storage.get_concurrency_info("training").active_run_ids
    finally:
        _kill(orphans)
        try:
            os.killpg(daemon.pid, signal.SIGTERM)  # the daemon, its code server and any run it launched
            daemon.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(daemon.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            daemon.wait(30)
