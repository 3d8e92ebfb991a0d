"""Running a coroutine from a test, whatever the test process's main thread is doing."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor


def run_async(coro):
    """``asyncio.run(coro)`` on a thread of its own, and its result. The browser tests' session
    keeps Playwright's event loop running in the main thread, where ``asyncio.run`` refuses
    to start a second one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
