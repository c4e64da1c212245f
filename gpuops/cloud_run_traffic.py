"""Cloud Run's traffic format, for the canary: splits, who serves what, and the state annotation.

Pure functions on service dicts as the adapter returns them (`gpuops.cloudrun`); the Cloud Run
backend (`gpuops.rollout.cloud_run`) writes what they compute.
"""
from __future__ import annotations

from gpuops.traffic import CanaryState

STATE_ANNOTATION = "gpuops.dev/canary"
STABLE_TAG = "stable"
CANARY_TAG = "gpu-canary"
REVISION_TYPE = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"


def state_of(service: dict) -> CanaryState | None:
    """The canary state recorded on the service (annotation gpuops.dev/canary), if any."""
    return CanaryState.from_json((service.get("annotations") or {}).get(STATE_ANNOTATION))


def split(stable: str, candidate: str, candidate_percent: int) -> list[dict]:
    """Traffic targets: both revisions pinned by name and tagged, so each stays reachable at its tag URL."""
    return [
        {"type": REVISION_TYPE, "revision": stable, "percent": 100 - candidate_percent, "tag": STABLE_TAG},
        {"type": REVISION_TYPE, "revision": candidate, "percent": candidate_percent, "tag": CANARY_TAG},
    ]


def all_to(revision: str, others: list[dict]) -> list[dict]:
    """100% to `revision`, keeping other tagged revisions reachable at 0%."""
    keep = [{**t, "percent": 0} for t in others if t.get("tag") and t.get("revision") != revision]
    tag = next((t["tag"] for t in others if t.get("revision") == revision and t.get("tag")), STABLE_TAG)
    return [{"type": REVISION_TYPE, "revision": revision, "percent": 100, "tag": tag}, *keep]


def serving(service: dict) -> dict[str, int]:
    """Revision -> the share it serves now (only those above 0%), as the service reports it."""
    from gpuops.revision import traffic as served_traffic

    shares: dict[str, int] = {}
    for row in served_traffic(service):
        if row["percent"] > 0:
            shares[row["revision"]] = shares.get(row["revision"], 0) + row["percent"]
    return shares


def serving_percent(service: dict, revision: str) -> int:
    """The share `revision` gets now, from what the service reports it serves."""
    return serving(service).get(revision, 0)


def _strangers(service: dict, known: tuple[str, ...]) -> list[str]:
    return [f"{rev} serves {pct}%" for rev, pct in sorted(serving(service).items()) if rev not in known]


def interference(service: dict, state: CanaryState) -> str | None:
    """What another writer changed since this canary's last write, or None.

    The canary then stops without writing: a deploy that landed in between is never overwritten.
    """
    recorded = state_of(service)
    if recorded is None or (recorded.stable, recorded.candidate) != (state.stable, state.candidate):
        return "the canary state on the service is gone or names other revisions"
    template_revision = (service.get("template") or {}).get("revision")
    if template_revision != state.candidate:
        return f"the service template was changed (now {template_revision or 'an unnamed new revision'})"
    return stale_since_canary(service, state)


def stale_since_canary(service: dict, state: CanaryState) -> str | None:
    """For a rollback: traffic on revisions the canary never set means someone deployed since."""
    strangers = _strangers(service, (state.stable, state.candidate))
    return "; ".join(strangers) if strangers else None


def drift_since_snapshot(service: dict, snapshot: dict) -> list[str]:
    """How the live service differs from the describe snapshot: generation, latest revision, traffic."""
    from gpuops.revision import short

    changed = []
    if snapshot.get("generation") is not None and str(service.get("generation")) != str(snapshot["generation"]):
        changed.append(f"generation {snapshot['generation']} -> {service.get('generation')}")
    latest = short(service.get("latestReadyRevision", ""))
    if latest != snapshot["revision"]:
        changed.append(f"latest ready revision {snapshot['revision']} -> {latest}")
    then = {t["revision"]: t["percent"] for t in snapshot.get("traffic", []) if t["percent"] > 0}
    if serving(service) != then:
        now_text = ", ".join(f"{r} {p}%" for r, p in sorted(serving(service).items()))
        then_text = ", ".join(f"{r} {p}%" for r, p in sorted(then.items()))
        changed.append(f"traffic {then_text} -> {now_text}")
    return changed
