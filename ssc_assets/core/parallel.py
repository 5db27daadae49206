"""Per-item parallel map with per-item failure capture: serial, local process pool or Dask.

One failing item never kills the others: its exception is returned as a :class:`SiteResult`
with the message and traceback. Results keep the input order; ``on_result`` is called as
items finish so the caller can log progress. At most ``2 x workers`` items are in flight,
so a 384-site plate never holds all its inputs or outputs at once beyond what the caller keeps.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

BACKENDS = ("serial", "process", "dask")


@dataclass
class SiteResult:
    """Outcome of ``fn(item)``: ``value`` or ``error`` (message) + ``traceback``; wall ``seconds``."""

    key: Any
    value: Any | None
    error: str | None
    traceback: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


class _Guarded:
    """Picklable wrapper that turns an exception into a SiteResult inside the worker."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, indexed: tuple[int, Any]) -> SiteResult:
        i, item = indexed
        t0 = time.perf_counter()
        try:
            return SiteResult(i, self.fn(item), None, None, time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - every per-item failure is reported, not raised
            return SiteResult(i, None, f"{type(exc).__name__}: {exc}", traceback.format_exc(), time.perf_counter() - t0)


def _worker_init() -> None:
    # One process per core: keep BLAS/OpenMP/torch and our own thread pools to one thread.
    os.environ["SSC_IMAGE_THREADS"] = "1"
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def map_sites(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    backend: str = "process",
    max_workers: int | None = None,
    dask_address: str | None = None,
    on_result: Callable[[SiteResult], None] | None = None,
) -> list[SiteResult]:
    """Apply a top-level picklable ``fn`` to every item; returns one SiteResult per item, in order.

    ``backend``: ``"serial"`` (in-process), ``"process"`` (spawned process pool, so no
    threads of the parent are forked) or ``"dask"`` (``distributed.Client(dask_address)``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    guarded = _Guarded(fn)
    indexed = list(enumerate(items))
    results: list[SiteResult | None] = [None] * len(indexed)

    def done(r: SiteResult) -> None:
        results[r.key] = r
        if on_result is not None:
            on_result(r)

    workers = max(1, max_workers or os.cpu_count() or 1)
    if backend == "serial" or (backend == "process" and (workers == 1 or len(indexed) <= 1)):
        for it in indexed:
            done(guarded(it))
    elif backend == "process":
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(indexed)), mp_context=ctx, initializer=_worker_init) as pool:
            _bounded(lambda it: pool.submit(guarded, it), indexed, 2 * workers, lambda f: done(f.result()))
    else:
        from distributed import Client, as_completed

        if not dask_address:
            raise ValueError("backend 'dask' needs a scheduler address (SSC_DASK_ADDRESS)")
        with Client(dask_address, set_as_default=False) as client:
            n_workers = max(1, len(client.scheduler_info().get("workers", {})))
            pending = iter(indexed)
            ac = as_completed([client.submit(guarded, it, pure=False) for it in _take(pending, 2 * n_workers)], loop=client.loop)
            for fut in ac:
                done(fut.result())
                for it in _take(pending, 1):
                    ac.add(client.submit(guarded, it, pure=False))
    return [r for r in results if r is not None]


def _take(it, n: int) -> list:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def _bounded(submit: Callable, items: list, limit: int, on_done: Callable) -> None:
    pending = iter(items)
    inflight = {submit(it) for it in _take(pending, limit)}
    while inflight:
        finished, inflight = wait(inflight, return_when=FIRST_COMPLETED)
        for f in finished:
            on_done(f)
            inflight |= {submit(it) for it in _take(pending, 1)}
