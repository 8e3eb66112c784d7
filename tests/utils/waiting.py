"""Waiting on what a real process does (a server, a worker, a browser page): poll an observable condition
with a bound far above any realistic time, so a loaded machine makes a test slower, never red.

A test that needs something to happen says what it waits for; it never sleeps a fixed time and never
asserts how long a thing took.
"""

import time
from collections.abc import Callable
from typing import TypeVar

PATIENCE_S = 600.0  # far above any realistic time: a run of a few steps takes seconds even on a busy machine
PATIENCE_MS = int(PATIENCE_S * 1000)  # the same bound for Playwright's waits

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = PATIENCE_S, what: str | Callable[[], str] = "the condition",
               *, interval: float = 0.05, ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    ``what`` names what is awaited in the failure (a callable is asked at the end, so it can show the last
    state). An exception of a type in ``ignore`` (a server not listening yet) counts as not yet; any other,
    an AssertionError too, ends the wait at once: a condition fails fast by raising (a process that died).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except ignore:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what() if callable(what) else what}, in vain")
        time.sleep(interval)
