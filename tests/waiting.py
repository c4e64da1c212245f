"""Polling for a condition in tests, with a deadline and a message that says what never happened."""

from __future__ import annotations

import time


def wait_until(condition, what: str, timeout_s: float = 30, interval_s: float = 0.05, tolerate=(Exception,)):
    """Call `condition` until it returns something truthy and return that; errors listed in `tolerate`
    count as "not yet" (a page still changing, a server still starting)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = condition()
        except tolerate:
            found = None
        if found:
            return found
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
