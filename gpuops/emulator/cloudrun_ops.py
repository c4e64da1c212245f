"""Long-running operations of the Cloud Run emulator (google.longrunning.Operation)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from google.longrunning import operations_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from .cloudrun_common import Name, invalid, new_uid, not_found, paginate, parent_matches

# What an operation reports when asked: the resource, whether its work is over, and an error.
Probe = Callable[[], "tuple[Message, bool, status_pb2.Status | None]"]


def frozen(resource: Message) -> Probe:
    """A probe for writes that are complete the moment they are applied."""
    return lambda: (resource, True, None)


@dataclass
class _Operation:
    name: str
    probe: Probe
    polls_left: int


class OperationStore:
    """Operations by name; each answers done only after its configured number of polls."""

    def __init__(self, lock: threading.RLock, polls_before_done: int = 0):
        self._lock = lock
        self._ops: dict[str, _Operation] = {}
        self.polls_before_done = polls_before_done

    def reset(self) -> None:
        with self._lock:
            self._ops.clear()

    def start(self, location_parent: str, probe: Probe) -> operations_pb2.Operation:
        """Register an operation and render its first answer (the create/update response)."""
        with self._lock:
            name = f"{location_parent}/operations/{new_uid()}"
            op = _Operation(name, probe, max(0, int(self.polls_before_done)))
            self._ops[name] = op
            return self._render(op)

    def get(self, name: str) -> operations_pb2.Operation:
        with self._lock:
            op = self._find(name)
            # A poll consumes one "not yet" answer, so N configured polls answer done on poll N+1.
            if op.polls_left > 0:
                rendered = self._render(op)
                op.polls_left -= 1
                return rendered
            return self._render(op)

    def wait(self, name: str, timeout_s: float) -> operations_pb2.Operation:
        """WaitOperation: skip the remaining polls and wait (bounded) for the work to finish."""
        with self._lock:
            self._find(name).polls_left = 0
        deadline = time.monotonic() + min(max(timeout_s, 0.0), 30.0)
        while True:
            rendered = self.get(name)
            if rendered.done or time.monotonic() >= deadline:
                return rendered
            time.sleep(0.05)

    def delete(self, name: str) -> None:
        with self._lock:
            self._find(name)
            del self._ops[name]

    def list(self, parent: str, page_size: int, page_token: str) -> tuple[list, str]:
        with self._lock:
            names = sorted(n for n in self._ops if parent_matches(parent, Name.parse(n).parent))
            page, token = paginate(names, page_size, page_token)
            return [self._render(self._ops[n]) for n in page], token

    def _find(self, name: str) -> _Operation:
        if "/operations/" not in name:
            raise invalid(f"Invalid operation name '{name}'")
        op = self._ops.get(name)
        if op is None:
            raise not_found(name)
        return op

    @staticmethod
    def _render(op: _Operation) -> operations_pb2.Operation:
        resource, finished, error = op.probe()
        out = operations_pb2.Operation(name=op.name)
        # Google puts the resource in metadata too (metadata_type == response type for Cloud Run).
        out.metadata.Pack(resource)
        if op.polls_left > 0 or not finished:
            return out
        out.done = True
        if error is not None:
            out.error.CopyFrom(error)
        else:
            out.response.Pack(resource)
        return out
