"""Per-item parallel map with per-item failure capture: serial, local process pool or Dask.

One failing item never kills the others: its exception is returned as a :class:`SiteResult`
with the message and traceback. Results keep the input order; ``on_result`` is called as
items finish so the caller can log progress. At most ``2 x workers`` items are in flight,
so a 384-site plate never holds all its inputs or outputs at once beyond what the caller keeps.

Killed parents leave no orphans. Pool workers die with the process that started them (Linux
``PR_SET_PDEATHSIG``, elsewhere a thread polling the parent PID), so a SIGKILLed run or step
frees their memory at once. And when ``map_sites`` itself runs in a process started by
``multiprocessing`` (a Dagster step process of the multiprocess executor, or a run worker
launched by a code server) whose parent dies, the caller is an orphan whose results nobody
collects: ``map_sites`` kills its workers, raises :class:`ParentDiedError` and, if the process
has not exited ``ORPHAN_GRACE_SECONDS`` later, ends it (``SSC_EXIT_WITH_PARENT=0`` or
``exit_with_parent=False`` turns this off).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

BACKENDS = ("serial", "process", "dask")
PARENT_POLL_SECONDS = 0.5
ORPHAN_GRACE_SECONDS = 20.0
_PR_SET_PDEATHSIG = 1


class ParentDiedError(RuntimeError):
    """The process that started the caller of :func:`map_sites` died while it was running."""


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


def _die_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` (its parent) dies, however the parent dies."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="ssc-parent-watch", daemon=True).start()


def _worker_init(parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        _die_with_parent(parent_pid)
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
    exit_with_parent: bool | None = None,
) -> list[SiteResult]:
    """Apply a top-level picklable ``fn`` to every item; returns one SiteResult per item, in order.

    ``backend``: ``"serial"`` (in-process), ``"process"`` (spawned process pool, so no
    threads of the parent are forked; workers die with this process) or ``"dask"``
    (``distributed.Client(dask_address)``). ``exit_with_parent``: stop (see the module
    docstring) if this process is orphaned while mapping; default: when this process was
    started by ``multiprocessing`` and ``SSC_EXIT_WITH_PARENT`` is not ``0``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if exit_with_parent is None:
        exit_with_parent = mp.parent_process() is not None and os.environ.get("SSC_EXIT_WITH_PARENT", "1") != "0"
    with _orphan_guard(exit_with_parent) as guard:
        try:
            return _map(fn, items, backend, max_workers, dask_address, on_result, guard)
        except BrokenProcessPool as exc:
            if guard.fired:
                raise ParentDiedError(guard.message) from exc
            raise


def _map(fn, items, backend, max_workers, dask_address, on_result, guard: "_Guard") -> list[SiteResult]:
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
        with ProcessPoolExecutor(max_workers=min(workers, len(indexed)), mp_context=ctx, initializer=_worker_init,
                                 initargs=(os.getpid(),)) as pool:
            guard.pool = pool
            try:
                _bounded(lambda it: pool.submit(guarded, it), indexed, 2 * workers, lambda f: done(f.result()))
            finally:
                guard.pool = None
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


class _Guard:
    def __init__(self) -> None:
        self.pool: ProcessPoolExecutor | None = None
        self.fired = False
        self.message = ""


@contextlib.contextmanager
def _orphan_guard(enabled: bool) -> Iterator[_Guard]:
    """While the block runs, watch this process's parent; if it dies, kill the pool's workers
    (the caller then gets BrokenProcessPool -> ParentDiedError) and end the process after a grace period."""
    guard = _Guard()
    if not enabled:
        yield guard
        return
    parent = os.getppid()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(PARENT_POLL_SECONDS):
            if os.getppid() != parent:
                guard.fired = True
                guard.message = (f"parent process {parent} of process {os.getpid()} died: nobody collects these "
                                 "results (orphaned run or step); stopping the per-site work")
                print(f"ssc_assets.parallel: {guard.message}", file=sys.stderr, flush=True)
                pool = guard.pool
                for pid in list(getattr(pool, "_processes", None) or {}):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                if not stop.wait(ORPHAN_GRACE_SECONDS):
                    os._exit(70)
                return

    t = threading.Thread(target=watch, name="ssc-orphan-guard", daemon=True)
    t.start()
    try:
        yield guard
    finally:
        if not guard.fired:
            stop.set()


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
