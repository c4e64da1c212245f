"""What the rollout engine needs from whatever routes the traffic: five methods and one capability."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from gpuops.traffic import CanaryState


def now() -> str:
    """When a state is recorded (`CanaryState.updated`): UTC, to the second."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Live:
    """The routed resource as read now: the canary state it records, and who serves what."""

    state: CanaryState | None
    serving: dict[str, int] = field(default_factory=dict)  # version -> percent, only those above 0


@dataclass(frozen=True)
class Urls:
    """Where to observe each side directly, whatever the split (a tag URL, an instance's address)."""

    candidate: str
    stable: str | None = None


class TrafficBackend(Protocol):
    """A router of traffic between a stable version and a candidate.

    Every write records the canary state on the resource in the same write, so a crashed run can
    resume or roll back from the resource alone, and sends the version it read (an etag): a change
    that landed in between is never overwritten.

    Optional attributes `resume_command` and `rollback_command` name the commands the engine's messages
    give an operator (default `gpuops canary` and `gpuops rollback`).
    """

    kind: str  # registry key, e.g. "cloud-run"
    target: str  # what is rolled out, for messages (a service, an instance)
    switch_only: bool  # True: traffic moves 0 -> 100 in one switch (an Elastic IP); steps collapse

    def read(self) -> Live:
        """The state recorded on the resource and the split it serves now."""

    def deploy_candidate(self, steps: tuple[int, ...], flow_run_id: str) -> CanaryState:
        """Start the candidate with no traffic, both sides reachable; record the new state."""

    def set_split(self, state: CanaryState) -> None:
        """Route `state.percent` to the candidate and record `state`. Raises CheckFailed, writing
        nothing, when the resource changed since this canary's last write."""

    def restore_stable(self, reasons: tuple[str, ...] = (), to: str | None = None) -> list[str]:
        """All traffic to the stable version (or `to`), state marked rolled back; what changed.
        Refuses (CheckFailed) when the records are stale and `to` does not say where to go."""

    def urls(self, state: CanaryState) -> Urls:
        """Where the candidate (and stable) answer directly, to observe them."""
