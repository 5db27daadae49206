"""Run a job of the ``ssc_assets`` code location the way the UI launches it, but in this process.

``job.execute_in_process`` records runs under an ephemeral in-process origin: the Overview
timeline, the job pages and the asset checks' partition column do not list them. Here the run
is created from the workspace's code location (``workspace.yaml``), so it carries the
location's origin, its partition tags and the job's own tags, then executed in this process
and waited for. Used by ``ssc-assets demo``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import dagster as dg


@contextmanager
def module_workspace_file(module: str = "ssc_assets.definitions", location_name: str = "ssc_assets") -> Iterator[str]:
    """Path of a temporary workspace file loading ``module`` (what ``workspace.yaml`` holds,
    without its working directory), removed on exit."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ssc-workspace-") as tmp:
        path = os.path.join(tmp, "workspace.yaml")
        with open(path, "w") as fh:
            fh.write(f"load_from:\n  - python_module:\n      module_name: {module}\n"
                     f"      location_name: {location_name}\n")
        yield path


@contextmanager
def workspace_location(instance: dg.DagsterInstance, workspace_file: str = "workspace.yaml") -> Iterator[tuple]:
    """(code location, remote repository) of the workspace's single location (loads its code server)."""
    from dagster._cli.workspace.cli_target import (
        WorkspaceOpts,
        get_code_location_from_workspace,
        get_remote_repository_from_code_location,
        get_workspace_from_cli_opts,
    )
    from dagster.version import __version__

    opts = WorkspaceOpts(workspace=[os.path.abspath(workspace_file)])
    with get_workspace_from_cli_opts(instance, version=__version__, workspace_opts=opts) as workspace:
        location = get_code_location_from_workspace(workspace, None)
        yield location, get_remote_repository_from_code_location(location, None)


def run_job(
    instance: dg.DagsterInstance,
    location,
    repo,
    job_def: dg.JobDefinition,
    partition_key: str | None = None,
    run_config: Mapping | None = None,
    tags: Mapping[str, str] | None = None,
):
    """Create a run of ``job_def`` with the code location's origin, execute it here and
    return its ``JobExecutionResult`` (never raises for a failed run)."""
    from dagster._cli.job import _create_run
    from dagster._cli.workspace.cli_target import get_remote_job_from_remote_repo
    from dagster._core.execution.api import execute_run
    from dagster._utils.hosted_user_process import recon_job_from_origin

    remote_job = get_remote_job_from_remote_repo(repo, job_def.name)
    all_tags = dict(tags or {})
    if partition_key is not None:
        all_tags.update(job_def.get_tags_for_partition_key(partition_key, selected_asset_keys=None))
    run = _create_run(instance=instance, code_location=location, remote_repo=repo, remote_job=remote_job,
                      run_config=dict(run_config or {}), tags=all_tags, op_selection=None, run_id=None)
    return execute_run(recon_job_from_origin(run.job_code_origin), run, instance, raise_on_error=False)
