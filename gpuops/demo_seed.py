"""The runbook's service as emulator seed; with workloads, its container runs the sample app locally."""
from __future__ import annotations

import copy
import json
import sys
from importlib import resources


def runbook_service_seed(python: str | None = None) -> dict:
    """`gpuops/data/demo_seed.json`; given `python`, the container gets a command the emulator can run.

    The image is never pulled: `python -m gpuops.sample_app` plays the container's entrypoint,
    and answers `gpu-probe ...` args the way an image that ships the probe would.
    """
    seed = json.loads(resources.files("gpuops.data").joinpath("demo_seed.json").read_text())
    if python:
        seed = copy.deepcopy(seed)
        for service in seed["services"]:
            for container in service["template"]["containers"]:
                container["command"] = [python, "-m", "gpuops.sample_app"]
    return seed


def workload_seed() -> dict:
    return runbook_service_seed(sys.executable)
