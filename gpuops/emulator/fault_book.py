"""Injected faults and the request log, as every gpuops emulator keeps them (behind one lock).

A fault matches a method and a path regex, lets `skip` matching requests through, then fires
`times` times. Every emulator's fault type is a FaultSpec keeping only what it adds (what a fault
may do differs: its modes, headers, a race); the book only stores, matches and counts.
"""
from __future__ import annotations

import itertools
import re
import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Generic, Protocol, TypeVar


class _FirstMode:
    # The default of FaultSpec.mode: no caller nor JSON body can pass it, so an explicit null or ""
    # is still refused as a bad mode rather than taken for the default.
    def __repr__(self) -> str:
        return "MODES[0]"


FIRST_MODE: Any = _FirstMode()


@dataclass
class FaultSpec:
    """Answer `status` (with `message`, or the emulator's own text) to requests matching `method` ("*": any)
    and the path regex (re.search), `times` times once `skip` matching requests went through. What `mode`
    does is the emulator's: one of its MODES, the first by default. id, fired and skipped are the book's.

    A subclass adds its own fields (after these) and may refuse bad input first in `check`, naming the
    field; the checks here only say the fault is bad.
    """

    MODES: ClassVar[tuple[str, ...]] = ("before", "after")

    method: str = "*"
    path: str = ".*"
    status: int = 503
    times: int = 1
    mode: str = FIRST_MODE
    skip: int = 0
    message: str = ""
    id: int = 0
    fired: int = 0
    skipped: int = 0

    def __post_init__(self) -> None:
        if self.mode is FIRST_MODE:
            self.mode = self.MODES[0]
        self.check()
        self.method = self.method.upper()
        self._regex = re.compile(self.path)
        if self.mode not in self.MODES or not 400 <= self.status <= 599 or self.times < 1:
            raise ValueError(f"bad fault: mode {self.mode!r}, status {self.status}, times {self.times}")

    def check(self) -> None:
        """Refuse bad input before it is used; nothing more here."""

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method.upper()) and self._regex.search(path) is not None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


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
