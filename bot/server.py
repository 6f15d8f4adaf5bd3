"""Serving the app until SIGTERM or SIGINT, and stopping within a bound.

`aiohttp.web.run_app` waits without limit at two places: for in-flight
requests (60 s by default) and, at the very end, for every task left on the
loop to finish after one cancellation. A task that outlives its cancellation
(SQLAlchemy's shielded close of an aiosqlite connection that was torn down by
a cancelled query can wait forever on a worker thread that has already
exited) would keep the process alive until someone sends SIGKILL. Here each
phase has its bound:

1. stop accepting; in-flight requests get `REQUEST_GRACE_S`, then are cancelled;
2. the app's cleanup (workers finish their current event or delivery pass,
   channels close, the database is disposed) gets `CLEANUP_BOUND_S`;
3. tasks still on the loop get `LEFTOVER_BOUND_S` after one cancellation.

Nothing acknowledged is lost by cutting any phase short: accepted events and
queued messages are rows, and a lease that a stopped process held runs out.

`run_until_signal` is the same without HTTP, for the worker process
(`python run_bot.py worker`): its stop gets `CLEANUP_BOUND_S`, then phase 3.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

from typing import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

REQUEST_GRACE_S = 2.0
CLEANUP_BOUND_S = 6.0
LEFTOVER_BOUND_S = 1.0


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _within_bound(cleanup: Awaitable[None]) -> None:
    """Await `cleanup` for at most CLEANUP_BOUND_S; past that, cancel it and go on."""
    task = asyncio.ensure_future(cleanup)
    done, _ = await asyncio.wait({task}, timeout=CLEANUP_BOUND_S)
    if not done:
        log.error("shutdown: cleanup did not finish within %.0f s; stopping anyway", CLEANUP_BOUND_S)
        task.cancel()
    elif task.exception() is not None:
        raise task.exception()


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=REQUEST_GRACE_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await _stop_on_signals().wait()
        log.info("stopping: no new requests; finishing the work in hand")
    finally:
        await _within_bound(runner.cleanup())


async def _until_signal(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
    stopping = _stop_on_signals()
    await start()
    try:
        await stopping.wait()
        log.info("stopping: finishing the work in hand")
    finally:
        await _within_bound(stop())


def serve_forever(app: web.Application, host: str, port: int) -> None:
    """Run `app` on host:port until SIGTERM/SIGINT; return once stopped, within
    about REQUEST_GRACE_S + CLEANUP_BOUND_S + LEFTOVER_BOUND_S seconds."""
    _run(_serve(app, host, port))


def run_until_signal(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
    """Await `start()`, then wait for SIGTERM/SIGINT, then `stop()`; return within about
    CLEANUP_BOUND_S + LEFTOVER_BOUND_S seconds of the signal. A failing `start` raises
    without calling `stop`."""
    _run(_until_signal(start, stop))


def _run(main: Awaitable[None]) -> None:
    """Run `main` on a new loop; then the leftover tasks get LEFTOVER_BOUND_S and lingering
    driver threads do not keep the process alive."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        _cancel_leftovers(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
    _exit_if_threads_linger()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.wait(tasks, timeout=LEFTOVER_BOUND_S))
    for task in tasks:
        if not task.done():
            log.error("shutdown: %r ignored its cancellation; leaving it behind", task)
        elif not task.cancelled() and task.exception() is not None:
            log.error("shutdown: %s failed", task.get_name(), exc_info=task.exception())


def _exit_if_threads_linger() -> None:
    """A driver thread whose connection was torn down by a cancelled task (see the
    module docstring) never ends, and Python waits for non-daemon threads before
    exiting. Give them a moment, then exit without waiting."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for t in others:
        t.join(timeout=0.5)
    stuck = [t.name for t in others if t.is_alive()]
    if stuck:
        log.warning("shutdown: exiting without waiting for threads %s", ", ".join(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
