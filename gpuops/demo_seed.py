"""The runbook's service as emulator seed; with workloads, its container runs the sample app locally."""
from __future__ import annotations

import copy
import json
import sys
from importlib import resources


def runbook_service_seed(python: str | None = None) -> dict:
    """`gpuops/data/demo_seed.json`; given `python`, the container gets a command the emulator can run.

    The image is never pulled: `python -m gpuops_cli.sample_app_cli` plays the container's entrypoint,
    and answers `gpu-probe ...` args the way an image that ships the probe would.
    """
    seed = json.loads(resources.files("gpuops.data").joinpath("demo_seed.json").read_text())
    if python:
        seed = copy.deepcopy(seed)
        for service in seed["services"]:
            for container in service["template"]["containers"]:
                container["command"] = [python, "-m", "gpuops_cli.sample_app_cli"]
    return seed


def workload_seed() -> dict:
    return runbook_service_seed(sys.executable)


def release(project: str, region: str, service: str, bad: bool, latency_ms: int = 0) -> None:
    """A new release of the seeded service: its template changes while stable keeps 100%.

    A bad release's `/generate` answers 500 (`SAMPLE_APP_FAIL=generate`) while its health check
    passes: what a canary must catch. `latency_ms` makes a slow one (`SAMPLE_APP_LATENCY_MS`): it
    answers correctly, only later, which only the comparison with stable catches.
    """
    from gpuops import cloudrun, job_plan
    from gpuops import cloud_run_traffic

    cr = cloudrun.connect()
    name = cloudrun.service_name(project, region, service)
    current = cloudrun.get_service(cr, name)
    state = cloud_run_traffic.state_of(current)
    stable = state.stable if state else cloudrun.short(current["latestReadyRevision"])
    template = job_plan.template_from_revision(cloudrun.get_revision(cr, f"{name}/revisions/{stable}"))
    knobs = ("SAMPLE_APP_FAIL", "SAMPLE_APP_LATENCY_MS")
    env = [e for e in template["containers"][0].get("env", []) if e["name"] not in knobs]
    if bad:
        env.append({"name": "SAMPLE_APP_FAIL", "value": "generate"})
    if latency_ms:
        env.append({"name": "SAMPLE_APP_LATENCY_MS", "value": str(latency_ms)})
    template["containers"][0]["env"] = env
    kind = "bad" if bad else f"slow-{latency_ms}ms" if latency_ms else "fixed"
    template["labels"] = {**template.get("labels", {}), "release": kind}
    split = [{"type": cloud_run_traffic.REVISION_TYPE, "revision": stable, "percent": 100}]
    cloudrun.update_traffic(cr, name, lambda _service: cloudrun.TrafficChange(split, template=template))
