"""Injected faults and the request log, as every gpuops emulator keeps them (behind one lock).

A fault matches a method and a path regex, lets `skip` matching requests through, then fires
`times` times. Each emulator brings its own fault type (what a fault may do differs); the book
only stores, matches and counts.
"""
from __future__ import annotations

import itertools
import re
import threading
from typing import Any, Callable, Generic, Protocol, TypeVar


class Matching(Protocol):
    id: int
    fired: int
    skipped: int
    times: int
    skip: int

    def matches(self, method: str, path: str) -> bool: ...


F = TypeVar("F", bound=Matching)


class FaultBook(Generic[F]):
    def __init__(self, make_fault: Callable[..., F]):
        self._make = make_fault
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.faults: list[F] = []
        self.log: list[Any] = []

    def add(self, **spec: Any) -> F:
        fault = self._make(**spec)
        with self._lock:
            fault.id = next(self._ids)
            self.faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> F | None:
        """The first live fault matching the request, consumed by one firing."""
        with self._lock:
            for fault in self.faults:
                if fault.fired < fault.times and fault.matches(method, path):
                    if fault.skipped < fault.skip:
                        fault.skipped += 1
                        return None
                    fault.fired += 1
                    return fault
        return None

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def record(self, entry: Any) -> None:
        with self._lock:
            self.log.append(entry)

    def requests(self, method: str | None = None, path: str | None = None) -> list[Any]:
        """Logged requests (entries with .method and .path), filtered by method and a path regex."""
        with self._lock:
            entries = list(self.log)
        return [e for e in entries
                if (method is None or e.method == method.upper()) and (path is None or re.search(path, e.path))]

    def clear_requests(self) -> None:
        with self._lock:
            self.log.clear()
