"""What a canary reports: one history row per window, and the markdown artifact of a run."""
from __future__ import annotations

from gpuops.markdown import cell
from gpuops.traffic import CanaryState, Verdict, Window


def history_row(state: CanaryState, window: Window, verdict: Verdict, versus_stable: dict | None = None) -> dict:
    """One window as reported; `versus_stable`: stable's figures from the same window and the p-values."""
    return {**(versus_stable or {}), "step": state.step + 1, "percent": state.percent, "requests": window.requests,
            "errors": window.errors, "p95_ms": None if window.p95_ms is None else round(window.p95_ms, 1),
            "verdict": verdict.outcome, "reasons": list(verdict.reasons), "source": window.source,
            "first_error_at": window.first_error_at, "ended_at": window.ended_at}


def figures_line(history: list[dict]) -> str:
    if any(h["source"].startswith("Cloud Monitoring") for h in history):
        return ("Figures are Cloud Monitoring's request_count and request_latencies of the candidate revision; "
                "the flow sent probe requests to its tag URL so that it had traffic.")
    return "Figures are measured from probe requests the flow sent to the candidate's URL."


def history_markdown(target: str, api: str, state: CanaryState, history: list[dict], outcome: str) -> str:
    side_by_side = any("stable_requests" in h for h in history)
    head = "| step | candidate share | requests | errors | p95 ms |"
    rule = "|---|---|---|---|---|"
    if side_by_side:
        head += " stable requests | stable errors | stable p95 ms | latency p-value |"
        rule += "---|---|---|---|"
    rows = []
    for h in history:
        row = f"| {h['step']} | {h['percent']}% | {h['requests']} | {h['errors']} | {cell(h['p95_ms'])} |"
        if side_by_side:
            row += (f" {cell(h.get('stable_requests'))} | {cell(h.get('stable_errors'))} | "
                    f"{cell(h.get('stable_p95_ms'))} | {cell(h.get('p_value'))} |")
        rows.append(row + f" {h['verdict']} | {'; '.join(h['reasons'])} |")
    lines = [f"# Canary of `{target}`: {outcome}",
             f"API: {api}. Stable `{state.stable}`, candidate `{state.candidate}`, steps {list(state.steps)}.",
             figures_line(history)]
    if side_by_side:
        lines.append("Each window sent the same requests to the candidate and to stable, interleaved; the p-value "
                     "is a one-sided Mann-Whitney U test of candidate latencies against stable's times the tolerance.")
    return "\n".join([*lines, "", head + " verdict | why |", rule + "---|---|", *rows])
