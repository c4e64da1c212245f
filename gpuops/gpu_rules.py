"""Cloud Run's GPU rules, judged on a plan before any API call (the capability table is data)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from gpuops.units import cpu_cores, memory_gib


@lru_cache(maxsize=1)
def gpu_table() -> dict:
    return json.loads(resources.files("gpuops.data").joinpath("cloud_run_gpus.json").read_text())


@dataclass(frozen=True)
class Violation:
    rule: str
    field: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.field}: {self.message} Fix: {self.fix}"


@dataclass
class PlanCheck:
    violations: list[Violation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "violations": [v.__dict__ for v in self.violations],
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class GpuSpec:
    """What the rules look at, whether it comes from a profile or from a planned body."""

    gpu_type: str
    gpu_count: int
    cpu: str
    memory: str
    execution_environment: str = "gen2"
    cpu_always_allocated: bool = True
    max_instances: int | None = None
    min_instances: int = 0


def check(spec: GpuSpec, region: str, table: dict | None = None) -> PlanCheck:
    """Every rule a Cloud Run GPU deployment must meet, each named with its fix."""
    table = table or gpu_table()
    result = PlanCheck()
    gpu = table["gpu_types"].get(spec.gpu_type)
    if gpu is None:
        known = ", ".join(sorted(table["gpu_types"]))
        result.violations.append(Violation(
            "gpu-type", "gpu_type", f"{spec.gpu_type!r} is not a Cloud Run GPU type.", f"use one of: {known}."))
        return result
    _check_count(spec, table, result)
    _check_size(spec, gpu, result)
    _check_runtime(spec, result)
    _check_region(spec, gpu, region, table, result)
    _check_scaling(spec, table, result)
    return result


def _check_count(spec: GpuSpec, table: dict, result: PlanCheck) -> None:
    if spec.gpu_count != table["rules"]["gpus_per_instance"]:
        result.violations.append(Violation(
            "one-gpu-per-instance", "gpu_count",
            f"{spec.gpu_count} GPUs requested; Cloud Run attaches exactly one GPU per instance.",
            "set gpu_count to 1 and scale out with max_instances."))


def _check_size(spec: GpuSpec, gpu: dict, result: PlanCheck) -> None:
    name = gpu["display_name"]
    try:
        cores = cpu_cores(spec.cpu)
    except ValueError as exc:
        result.violations.append(Violation("cpu-quantity", "cpu", str(exc), "write it like '8' or '4000m'."))
    else:
        if cores < gpu["min_cpu"]:
            result.violations.append(Violation(
                "gpu-min-cpu", "cpu", f"{spec.cpu} CPU is below the {gpu['min_cpu']} CPU an {name} needs.",
                f"set cpu to at least {gpu['min_cpu']}."))
    try:
        gib = memory_gib(spec.memory)
    except ValueError as exc:
        result.violations.append(Violation("memory-quantity", "memory", str(exc), "write it like '32Gi'."))
    else:
        if gib < gpu["min_memory_gib"]:
            result.violations.append(Violation(
                "gpu-min-memory", "memory",
                f"{spec.memory} is below the {gpu['min_memory_gib']} GiB an {name} needs.",
                f"set memory to at least {gpu['min_memory_gib']}Gi."))


def _check_runtime(spec: GpuSpec, result: PlanCheck) -> None:
    if spec.execution_environment != "gen2":
        result.violations.append(Violation(
            "gpu-needs-gen2", "execution_environment",
            f"execution environment {spec.execution_environment!r}; GPUs run only on the second generation.",
            "set the execution environment to gen2."))
    if not spec.cpu_always_allocated:
        result.violations.append(Violation(
            "gpu-cpu-always-allocated", "cpu_idle",
            "CPU is throttled between requests; GPU instances need instance-based billing.",
            "set resources.cpuIdle to false (CPU always allocated, `--no-cpu-throttling`)."))


def _check_region(spec: GpuSpec, gpu: dict, region: str, table: dict, result: PlanCheck) -> None:
    regions = gpu.get("regions")
    if regions is None:
        result.warnings.append(f"region {region} not checked: {gpu.get('regions_note', 'no region list')}.")
        return
    if region not in regions:
        result.violations.append(Violation(
            "gpu-region", "region",
            f"{region} does not offer {gpu['display_name']} GPUs on Cloud Run "
            f"(list as of {table['as_of']}).",
            f"deploy to one of: {', '.join(regions)}."))
    elif region in gpu.get("regions_by_invitation", []):
        result.warnings.append(f"{region} offers {gpu['display_name']} by invitation only: check the project is allowed.")


def _check_scaling(spec: GpuSpec, table: dict, result: PlanCheck) -> None:
    recommended = table["rules"]["recommended_min_max_instances"]
    if spec.max_instances is not None and spec.max_instances < 1:
        result.violations.append(Violation(
            "max-instances", "max_instances", f"max_instances {spec.max_instances} can serve nothing.",
            f"set max_instances to at least 1 ({recommended} recommended)."))
    elif spec.max_instances == 1:
        result.warnings.append(
            f"max_instances is 1: a GPU maintenance event means downtime ({recommended} recommended).")
    if spec.min_instances > 0:
        result.warnings.append(
            f"min_instances {spec.min_instances}: idle GPU instances are billed at the full rate.")
