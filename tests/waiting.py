"""`wait_until`: what a test awaits, polled, instead of a fixed sleep or a hand-written deadline loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str = "the condition", timeout_s: float = 120.0,
               poll_s: float = 0.05) -> T:
    """Poll `condition()` until it returns something truthy and return that; fail the test after
    `timeout_s` naming `what` it waited for. The timeout only bounds a failure (generous, since the
    machine may be loaded); a pass takes as long as the condition takes."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)
    return result
