"""Closing an event loop that runs in a background thread, as ``asyncio.run`` closes its own.

Synchronous tests (Playwright's sync API, Hypothesis) drive real servers in a
loop on a daemon thread. A server's cleanup does not always leave its loop
quiet: aiohttp's shutdown cancels a handler it has stopped waiting for (a
proxied event stream outlives the shutdown timeout) but does not await it,
so the cancelled task still needs a few turns of the loop. A loop stopped and
closed right then keeps that task pending for ever; it is destroyed at some
later garbage collection or at interpreter exit ("Task was destroyed but it
is pending!"). :func:`close_loop_thread` first cancels and awaits every task
still in the loop, then stops and closes it.
"""

from __future__ import annotations

import asyncio
import threading

__all__ = ["close_loop_thread"]


async def _finish_tasks() -> None:
    """Cancel every other task of the running loop and wait until each has ended."""
    me = asyncio.current_task()
    # A task ending may start another (a handler's cleanup): a few rounds, bounded.
    for _ in range(10):
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        if not tasks:
            break
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


def close_loop_thread(
    loop: asyncio.AbstractEventLoop, thread: threading.Thread, timeout: float = 10
) -> None:
    """End ``loop``'s tasks, stop it, join the ``thread`` running it and close it."""
    try:
        if thread.is_alive() and loop.is_running():
            asyncio.run_coroutine_threadsafe(_finish_tasks(), loop).result(timeout)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
