"""The canary as an explicit state machine, whatever routes the traffic: its state, gate verdicts, transitions.

Backend-agnostic: a backend (gpuops.rollout) stores the state on its resource as `CanaryState.to_json()`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

# Phases. A run that stops in a live phase can be resumed or rolled back from the service alone.
DEPLOYED, PROGRESSING, HOLDING, AWAITING_APPROVAL = "deployed", "progressing", "holding", "awaiting-approval"
PROMOTED, ROLLED_BACK = "promoted", "rolled-back"
LIVE_PHASES = (DEPLOYED, PROGRESSING, HOLDING, AWAITING_APPROVAL)


@dataclass(frozen=True)
class CanaryState:
    """What a crashed run needs to resume or roll back; stored as JSON on the routed resource."""

    stable: str
    candidate: str
    steps: tuple[int, ...]
    step: int = -1  # index into steps of the split now set; -1: candidate deployed with 0%
    phase: str = DEPLOYED
    holds: int = 0
    failed_checks: tuple[str, ...] = ()
    updated: str = ""
    flow_run_id: str = ""

    @property
    def percent(self) -> int:
        return self.steps[self.step] if self.step >= 0 else 0

    @property
    def live(self) -> bool:
        return self.phase in LIVE_PHASES

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | None) -> "CanaryState | None":
        if not raw:
            return None
        data = json.loads(raw)
        data["steps"] = tuple(data["steps"])
        data["failed_checks"] = tuple(data.get("failed_checks", ()))
        return cls(**data)


def parse_steps(text: str | list[int]) -> tuple[int, ...]:
    """'20,80,100' -> (20, 80, 100): rising percentages that end at 100."""
    try:
        steps = tuple(int(s) for s in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise ValueError("must be whole percentages like 20,80,100") from None
    if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
        raise ValueError("must rise strictly from above 0 and end at 100 (e.g. 20,80,100)")
    return steps


# --- gates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gates:
    """Limits a canary window must meet; too few requests is no verdict at all."""

    max_error_rate: float = 0.01
    max_p95_ms: float = 5000.0
    min_requests: int = 20


@dataclass(frozen=True)
class Window:
    """What one observation window saw for the candidate."""

    requests: int
    errors: int
    latencies_ms: tuple[float, ...] = field(default=())
    source: str = ""
    first_error_at: float | None = None  # epoch seconds: when the first failing answer came back
    ended_at: float | None = None  # epoch seconds: when the window closed
    reported_p95_ms: float | None = None  # a p95 the source measured itself (Cloud Monitoring): no latencies_ms
    refused: str | None = None  # the service refused the probes' credentials: which one it asked for

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p95_ms(self) -> float | None:
        return percentile(self.latencies_ms, 95) if self.latencies_ms else self.reported_p95_ms


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "pass" | "fail" | "inconclusive"
    reasons: tuple[str, ...]


def percentile(values, pct: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a p95 is a latency some request really had)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def judge(window: Window, gates: Gates) -> Verdict:
    """Fail on any broken limit; inconclusive below the request minimum; pass otherwise.

    Probes the service refused for credentials prove nothing about the release, but no window can
    pass without them: that fails at once, naming the credential, instead of holding."""
    if window.refused:
        return Verdict("fail", (f"probe requests refused: {window.refused}",))
    failed = []
    if window.requests and window.error_rate > gates.max_error_rate:
        failed.append(f"error rate {window.error_rate:.1%} over {gates.max_error_rate:.1%} "
                      f"({window.errors}/{window.requests} requests)")
    p95 = window.p95_ms
    if p95 is not None and p95 > gates.max_p95_ms:
        failed.append(f"p95 latency {p95:.0f} ms over {gates.max_p95_ms:.0f} ms")
    if failed:
        return Verdict("fail", tuple(failed))
    # A window that saw nothing proves nothing, whatever minimum was asked for.
    if window.requests < max(gates.min_requests, 1):
        return Verdict("inconclusive", (f"{window.requests} requests, fewer than the {max(gates.min_requests, 1)} "
                                        "a verdict needs: holding, not promoting",))
    p95_text = "p95 not measured" if p95 is None else f"p95 {p95:.0f} ms"
    return Verdict("pass", (f"{window.requests} requests, error rate {window.error_rate:.1%}, {p95_text}",))


# --- the state machine ---------------------------------------------------------------------


def after_verdict(state: CanaryState, verdict: Verdict, max_holds: int) -> tuple[CanaryState, str]:
    """The next state and what to do: 'advance', 'observe' (hold), 'rollback' or 'done'."""
    if verdict.outcome == "fail":
        return replace(state, phase=ROLLED_BACK, failed_checks=verdict.reasons), "rollback"
    if verdict.outcome == "inconclusive":
        if state.holds + 1 > max_holds:
            reasons = (*verdict.reasons, f"still inconclusive after {max_holds} held windows")
            return replace(state, phase=ROLLED_BACK, failed_checks=reasons), "rollback"
        return replace(state, phase=HOLDING, holds=state.holds + 1), "observe"
    if state.step == len(state.steps) - 1:
        return replace(state, phase=PROMOTED, holds=0), "done"
    return replace(state, phase=PROGRESSING, holds=0), "advance"


def advanced(state: CanaryState) -> CanaryState:
    return replace(state, step=state.step + 1, phase=PROGRESSING, holds=0)


def needs_approval(state: CanaryState, approve_final: bool) -> bool:
    """The approval gate stands before the step that moves the last traffic off stable."""
    return approve_final and state.step + 1 == len(state.steps) - 1
