"""The Cloud Run backend: a candidate revision of the same service, split by percent, tagged URLs.

The state lives in the service's annotation `gpuops.dev/canary`, written in the same update as
the split; every write goes through `cloudrun.update_traffic` (read, decide, write with the etag,
on a conflict read and decide again).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from gpuops import cloudrun, job_plan, state as records
from gpuops.errors import BadInput, CheckFailed
from gpuops import cloud_run_traffic as fmt
from gpuops.rollout.backend import Live, Urls, now
from gpuops.traffic import ROLLED_BACK, CanaryState


def candidate_name(service: str, template: dict) -> str:
    """Named by its content, so a re-run or a retry finds the revision it already made."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:6]
    return f"{service}-gpu-{digest}"


def single_serving_revision(service: dict) -> str:
    shares = fmt.serving(service)
    if list(shares.values()) != [100]:
        split_text = ", ".join(f"{rev} {pct}%" for rev, pct in shares.items())
        raise BadInput(f"traffic is already split ({split_text}): finish that change or run `gpuops rollback` first.")
    return next(iter(shares))


def tag_url(service: dict, tag: str) -> str | None:
    for status in service.get("trafficStatuses", []):
        if status.get("tag") == tag and status.get("uri"):
            return status["uri"]
    return None


class CloudRunBackend:
    """Traffic between two revisions of one Cloud Run service."""

    kind = "cloud-run"
    switch_only = False

    def __init__(self, cr: cloudrun.CloudRun, project: str, region: str, service: str,
                 gpu_profile: dict | None = None):
        self.cr, self.project, self.region, self.target = cr, project, region, service
        self.name = cloudrun.service_name(project, region, service)
        self.gpu_profile = gpu_profile or {}

    # --- reading -------------------------------------------------------------------------

    def _service(self) -> dict:
        service = cloudrun.get_service(self.cr, self.name)
        if service is None:
            raise self._missing()
        return service

    def _missing(self) -> BadInput:
        return BadInput(f"service {self.target!r} not found: check --project, --region and --service.")

    def _write(self, decide) -> dict:
        from google.api_core import exceptions as gexc

        try:
            return cloudrun.update_traffic(self.cr, self.name, decide)
        except gexc.NotFound:
            raise self._missing() from None

    def read(self) -> Live:
        service = self._service()
        return Live(fmt.state_of(service), fmt.serving(service))

    def urls(self, state: CanaryState) -> Urls:
        service = self._service()
        candidate = tag_url(service, fmt.CANARY_TAG)
        if candidate is None:
            raise CheckFailed(f"the service reports no URL for tag {fmt.CANARY_TAG!r}: cannot observe the candidate.")
        return Urls(candidate, tag_url(service, fmt.STABLE_TAG))

    # --- writing -------------------------------------------------------------------------

    def deploy_candidate(self, steps: tuple[int, ...], flow_run_id: str) -> CanaryState:
        """The GPU template as a new revision with 0% and a tag, the state in the same update."""
        planned: list[CanaryState] = []

        def decide(service: dict) -> cloudrun.TrafficChange:
            stable = single_serving_revision(service)
            template = job_plan.gpu_template(service["template"], self.gpu_profile)
            candidate = candidate_name(self.target, template)
            planned[:] = [CanaryState(stable=stable, candidate=candidate, steps=steps, updated=now(),
                                      flow_run_id=flow_run_id)]
            return cloudrun.TrafficChange(fmt.split(stable, candidate, 0),
                                          {fmt.STATE_ANNOTATION: planned[0].to_json()},
                                          template={**template, "revision": candidate})

        self._write(decide)
        return planned[0]

    def set_split(self, state: CanaryState) -> None:
        """The state's split and the state itself, written only over what this canary wrote last."""
        state = replace(state, updated=now())

        def decide(service: dict) -> cloudrun.TrafficChange:
            changed = fmt.interference(service, state)
            if changed:
                raise CheckFailed(
                    f"{self.target} changed during its canary ({changed}): the canary stopped without writing "
                    f"over it, at {state.percent}% on {state.candidate}. Decide with `gpuops rollback` (it "
                    f"refuses stale state) or `gpuops rollback --to REVISION`.")
            return cloudrun.TrafficChange(fmt.split(state.stable, state.candidate, state.percent),
                                          {fmt.STATE_ANNOTATION: state.to_json()})

        self._write(decide)

    def restore_stable(self, reasons: tuple[str, ...] = (), to: str | None = None) -> list[str]:
        """100% to stable and the state marked rolled back; nothing is written when that already holds."""
        changes: list[str] = []

        def decide(service: dict) -> cloudrun.TrafficChange | None:
            changes.clear()
            stable, recorded = self.stable_revision(service, to)
            before = fmt.serving_percent(service, stable)
            template = self._stable_template(service, stable, recorded)
            state_done = recorded is None or recorded.phase == ROLLED_BACK
            if before == 100 and state_done and template is None:
                return None
            annotations = {}
            if before != 100:
                changes.append(f"traffic: {stable} {before}% -> 100%")
            if template is not None:
                changes.append(f"template: back to the configuration of {stable} "
                               f"(the GPU one stays on {recorded.candidate})")
            if not state_done:
                rolled = replace(recorded, phase=ROLLED_BACK, updated=now(),
                                 failed_checks=reasons or recorded.failed_checks)
                annotations[fmt.STATE_ANNOTATION] = rolled.to_json()
                changes.append(f"canary state marked {ROLLED_BACK}")
            return cloudrun.TrafficChange(fmt.all_to(stable, service.get("traffic", [])), annotations, template)

        self._write(decide)
        return list(changes)

    # --- which revision is stable ----------------------------------------------------------

    def _choose(self) -> str:
        return (f"to send all traffic to a revision you choose: gpuops rollback --project {self.project} "
                f"--region {self.region} --service {self.target} --to REVISION")

    def stable_revision(self, service: dict, to: str | None = None) -> tuple[str, CanaryState | None]:
        """The known-good revision: the operator's choice, else the canary state, else the describe
        snapshot; never a stale one. Refuses when the service changed since the state was recorded."""
        recorded = fmt.state_of(service)
        if to:
            return to, recorded
        if recorded:
            stale = fmt.stale_since_canary(service, recorded)
            if stale:
                raise CheckFailed(f"{self.target} changed since its canary ({stale}): not moving that traffic "
                                  f"back to {recorded.stable}. Nothing was changed; {self._choose()}.")
            return recorded.stable, recorded
        snapshot = records.load_snapshot(self.project, self.region, self.target)
        if snapshot:
            drift = fmt.drift_since_snapshot(service, snapshot)
            if drift:
                raise CheckFailed(
                    f"no canary state on {self.target}, and it changed since the describe snapshot of "
                    f"{snapshot.get('captured_at', 'an unknown time')} ({'; '.join(drift)}): not reverting to "
                    f"{snapshot['revision']}. Nothing was changed; {self._choose()}.")
            return snapshot["revision"], None
        raise BadInput(f"no canary state on {self.target} and no describe snapshot: nothing says which revision "
                       f"is stable; {self._choose()}.")

    def _stable_template(self, service: dict, stable: str, recorded: CanaryState | None) -> dict | None:
        """The stable revision's configuration, when the service's template is still the canary's.

        Left as the GPU template, the next ordinary deploy would build on it and start GPU instances
        nobody asked for. Restoring it makes a new revision like stable, with no traffic.
        """
        if recorded is None or (service.get("template") or {}).get("revision") != recorded.candidate:
            return None
        revision = cloudrun.get_revision(self.cr, f"{self.name}/revisions/{stable}")
        return job_plan.template_from_revision(revision) if revision else None
