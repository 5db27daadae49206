"""Fault injection, retries: deterministic failures are not retried, transient ones are."""

import dagster as dg
import pytest

from ssc_assets.defs.automation import fail_fast

FAST_RETRY = dg.RetryPolicy(max_retries=2, delay=0)


def _run(error: Exception, generator: bool):
    calls = {"n": 0}

    if generator:
        @dg.asset(retry_policy=FAST_RETRY)
        @fail_fast
        def flaky(context: dg.AssetExecutionContext):
            calls["n"] += 1
            raise error
            yield dg.Output(1)  # unreachable: makes this a generator
    else:
        @dg.asset(retry_policy=FAST_RETRY)
        @fail_fast
        def flaky(context: dg.AssetExecutionContext) -> int:
            calls["n"] += 1
            raise error

    result = dg.materialize([flaky], raise_on_error=False)
    return result, calls["n"]


@pytest.mark.parametrize("generator", [False, True])
def test_bad_input_fails_once_with_a_clear_message(generator):
    result, n = _run(ValueError("x.tif: expected 16-bit (uint16) pixels, got uint8"), generator)
    assert not result.success and n == 1
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "x.tif: expected 16-bit" in str(failure.step_failure_data.error) and "not retried" in str(failure.step_failure_data.error)


@pytest.mark.parametrize("generator", [False, True])
def test_transient_io_error_is_retried(generator):
    result, n = _run(OSError("Stale file handle"), generator)
    assert not result.success and n == 3  # first attempt + max_retries


def test_assets_with_retries_fail_fast():
    """Every asset that retries transient errors also fails fast on deterministic ones."""
    from ssc_assets.definitions import defs

    checked = 0
    for key in defs.resolve_all_asset_keys():
        node = defs.resolve_assets_def(key).node_def
        if getattr(node, "retry_policy", None) is not None:
            assert getattr(node.compute_fn.decorated_fn, "__wrapped__", None) is not None, key
            checked += 1
    assert checked >= 10  # image (3), embedding (6) and clustering assets
