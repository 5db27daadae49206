"""Shared image thread pool: at most ``SSC_IMAGE_THREADS`` threads (default ``min(2, cpu_count)``)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

_POOL: ThreadPoolExecutor | None = None
_POOL_PID: int | None = None


def _n_threads() -> int:
    env = os.environ.get("SSC_IMAGE_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(2, os.cpu_count() or 1))


def _pool() -> ThreadPoolExecutor:
    """Shared thread pool, re-created in a forked child (its threads do not survive fork)."""
    global _POOL, _POOL_PID
    if _POOL is None or _POOL_PID != os.getpid():
        _POOL = ThreadPoolExecutor(max_workers=max(2, _n_threads()), thread_name_prefix="ssc-img")
        _POOL_PID = os.getpid()
    return _POOL


def _run_parallel(fn: Callable[[object], None], items: Sequence[object]) -> None:
    """Run ``fn`` over ``items`` on the shared pool (inline when one thread is allowed)."""
    if _n_threads() <= 1 or len(items) <= 1:
        for it in items:
            fn(it)
        return
    for fut in [_pool().submit(fn, it) for it in items]:
        fut.result()
