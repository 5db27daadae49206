"""The training jobs' executor: one process per step, forked from a server that preloaded the code."""

import os
import sys
import textwrap

import dagster as dg

from ssc_assets.defs.jobs import forkserver_executor

MODULE = textwrap.dedent("""
    import os
    import dagster as dg
    from ssc_assets.defs.jobs import forkserver_executor

    @dg.op
    def parent_pid():
        return os.getppid()

    @dg.op
    def other_parent_pid():
        return os.getppid()

    @dg.job(executor_def=forkserver_executor)
    def forked():
        parent_pid()
        other_parent_pid()
""")


def test_training_jobs_use_the_forkserver_executor():
    from ssc_assets.definitions import defs

    for job in ("train_models", "run_augmentation_sweep"):
        assert defs.resolve_job_def(job).executor_def is forkserver_executor
    for job in ("process_plate", "embed_plate", "cluster_plates"):
        assert defs.resolve_job_def(job).executor_def is not forkserver_executor


def test_steps_are_forked_by_one_server_not_spawned_by_the_run(tmp_path, monkeypatch):
    """With ``spawn`` each step's parent is the run's process (here: this one); with the
    forkserver it is the server, the same for every step."""
    (tmp_path / "forked_job_module.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the reconstructable job's working directory: the step processes import from it
    import forked_job_module

    try:
        with dg.instance_for_test() as instance:
            with dg.execute_job(dg.reconstructable(forked_job_module.forked), instance=instance) as result:
                assert result.success
                parents = {result.output_for_node("parent_pid"), result.output_for_node("other_parent_pid")}
    finally:
        sys.modules.pop("forked_job_module", None)
    assert len(parents) == 1 and os.getpid() not in parents


def test_a_step_waiting_for_a_pool_slot_checks_again_within_two_seconds():
    """Dagster's backoff grows to 15 s; the code location caps it (jobs.POOL_CLAIM_POLL_SECONDS)."""
    import ssc_assets.defs.jobs as jobs
    from dagster._core.execution.plan.instance_concurrency_context import _calculate_timeout_interval

    assert jobs.POOL_CLAIM_POLL_SECONDS == 2.0
    waits = [_calculate_timeout_interval(None, n) for n in range(0, 40)]
    assert max(waits) == jobs.POOL_CLAIM_POLL_SECONDS and waits[0] == 1.0
