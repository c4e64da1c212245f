"""What a canary reports: one history row per window, and the markdown artifact of a run."""
from __future__ import annotations

from gpuops.traffic import CanaryState, Verdict, Window


def history_row(state: CanaryState, window: Window, verdict: Verdict) -> dict:
    return {"step": state.step + 1, "percent": state.percent, "requests": window.requests,
            "errors": window.errors, "p95_ms": None if window.p95_ms is None else round(window.p95_ms, 1),
            "verdict": verdict.outcome, "reasons": list(verdict.reasons), "source": window.source,
            "first_error_at": window.first_error_at, "ended_at": window.ended_at}


def figures_line(history: list[dict]) -> str:
    if any(h["source"].startswith("Cloud Monitoring") for h in history):
        return ("Figures are Cloud Monitoring's request_count and request_latencies of the candidate revision; "
                "the flow sent probe requests to its tag URL so that it had traffic.")
    return "Figures are measured from probe requests the flow sent to the candidate's URL."


def history_markdown(target: str, api: str, state: CanaryState, history: list[dict], outcome: str) -> str:
    rows = [f"| {h['step']} | {h['percent']}% | {h['requests']} | {h['errors']} | "
            f"{h['p95_ms'] if h['p95_ms'] is not None else '-'} | {h['verdict']} | {'; '.join(h['reasons'])} |"
            for h in history]
    return "\n".join([
        f"# Canary of `{target}`: {outcome}",
        f"API: {api}. Stable `{state.stable}`, candidate `{state.candidate}`, steps {list(state.steps)}.",
        figures_line(history), "",
        "| step | candidate share | requests | errors | p95 ms | verdict | why |", "|---|---|---|---|---|---|---|",
        *rows,
    ])
