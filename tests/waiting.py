"""Polling for tests: wait until something the cluster does has happened (a ceiling, not a
performance assertion)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0, *, every: float = 0.2,
             transient: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll `probe()` until it returns something truthy and return that. Exceptions of the
    `transient` types count as "not yet" (for example API errors while a server restarts)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except transient as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last probe gave {last!r}")
