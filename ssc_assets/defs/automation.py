"""Automation: what runs by itself when a plate arrives, and every night.

- ``plate_sensor`` (sensors.py): a new complete plate -> partition + ``process_plate`` run
  (raw_sites ... masks).
- ``ssc_automation`` (declarative automation, running by default): per-plate embeddings are
  ``eager()``: they run when their plate's images/masks are new, and again for every plate
  when a model gets a new version; ``clusterings`` runs once after each ``SSC_CLUSTER_CRON``
  tick (default hourly) if any plate's well embeddings changed since its last run. ``eager()``
  on an all-plates asset would wait forever for a plate that failed QC; this does not.
- ``nightly_retrain`` (schedule, running by default): ``train_models`` at ``SSC_RETRAIN_CRON``
  (default 02:00 UTC). The ``champion`` alias moves only when the validation loss improves;
  the embeddings then pick up the new champion through ``eager()``.
"""

import functools
import inspect

import dagster as dg

from ssc_assets import settings
from ssc_assets.defs.jobs import train_models

#: Transient I/O (network file systems, object stores) gets two retries with backoff. Failures
#: that retrying cannot fix raise ``dg.Failure(allow_retries=False)``.
IO_RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)

#: Exceptions that say the INPUT is wrong (bad file, bad table, bad value): retrying cannot help.
#: Everything else (OSError: network file systems, object stores, a busy database) stays retryable.
DETERMINISTIC_ERRORS = (ValueError, KeyError, TypeError, IndexError, AssertionError, NotImplementedError)


def fail_fast(fn):
    """Asset-body decorator (under ``@dg.asset``): a deterministic error becomes
    ``dg.Failure(allow_retries=False)`` naming the error, so ``IO_RETRY`` retries only
    transient failures. Works for asset functions that return or yield."""

    def failure(exc: BaseException) -> dg.Failure:
        return dg.Failure(description=f"{type(exc).__name__}: {exc} (not retried: the input or settings must change)",
                          allow_retries=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except dg.Failure:
                raise
            except DETERMINISTIC_ERRORS as exc:
                raise failure(exc) from exc

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except dg.Failure:
            raise
        except DETERMINISTIC_ERRORS as exc:
            raise failure(exc) from exc

    return wrapper


PER_PLATE_DOWNSTREAM = dg.AutomationCondition.eager()
# After each cron tick, once, if any plate's well embeddings changed since the last run.
# Not eager() (it waits for every plate, and a failed plate never arrives) and not on_cron()
# (it needs every dependency to update AFTER the tick, so a plate that arrived before the tick
# would wait for the next plate).
CROSS_PLATE = (
    dg.AutomationCondition.cron_tick_passed(settings.cluster_cron()).since_last_handled()
    & dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label(f"after {settings.cluster_cron()} tick, if new well embeddings")

automation_sensor = dg.AutomationConditionSensorDefinition(
    "ssc_automation",
    target=dg.AssetSelection.groups("embeddings", "clusterings"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Embeddings of new plates and new champions (eager); clusterings after each cron tick with new data.",
)


def _retrain_run_config() -> dict:
    """Thesis settings unless SSC_TRAIN_PRESET=demo (``make dev`` on the demo instance)."""
    if settings.train_preset() == "demo":
        from ssc_assets.demo_config import demo_run_config

        return demo_run_config("train_models")
    return {}


@dg.schedule(job=train_models, cron_schedule=settings.retrain_cron(), execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Retrain every model on all plates; champion moves only on a better validation loss.")
def nightly_retrain(context: dg.ScheduleEvaluationContext):
    return dg.RunRequest(run_key=None, run_config=_retrain_run_config(), tags={"ssc/trigger": "nightly_retrain"})
