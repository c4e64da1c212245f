"""Cloud Run GPU rules, judged on plain data."""
from gpuops.gpu_rules import GpuSpec, check

L4 = dict(gpu_type="nvidia-l4", gpu_count=1, cpu="8", memory="32Gi", max_instances=3)


def rules(spec: GpuSpec, region="us-central1") -> set[str]:
    return {v.rule for v in check(spec, region).violations}


def test_the_runbook_shape_passes_in_us_central1():
    result = check(GpuSpec(**L4), "us-central1")
    assert result.ok and result.warnings == []


def test_two_cpu_with_an_l4_names_the_rule_the_field_and_the_fix():
    result = check(GpuSpec(**{**L4, "cpu": "2"}), "us-central1")
    [violation] = result.violations
    assert violation.rule == "gpu-min-cpu" and violation.field == "cpu"
    assert "at least 4" in violation.fix


def test_millicores_and_mebibytes_are_understood():
    assert rules(GpuSpec(**{**L4, "cpu": "4000m", "memory": "16384Mi"})) == set()
    assert rules(GpuSpec(**{**L4, "cpu": "3999m", "memory": "16383Mi"})) == {"gpu-min-cpu", "gpu-min-memory"}


def test_region_without_l4_is_refused_with_the_list():
    [violation] = check(GpuSpec(**L4), "asia-northeast1").violations
    assert violation.rule == "gpu-region" and "us-central1" in violation.fix


def test_invitation_only_region_passes_with_a_warning():
    result = check(GpuSpec(**L4), "asia-south1")
    assert result.ok and "invitation" in result.warnings[0]


def test_gen1_throttled_cpu_and_two_gpus_are_each_named():
    spec = GpuSpec(**{**L4, "gpu_count": 2}, execution_environment="gen1", cpu_always_allocated=False)
    assert rules(spec) == {"one-gpu-per-instance", "gpu-needs-gen2", "gpu-cpu-always-allocated"}


def test_max_instances_one_warns_about_maintenance_downtime():
    result = check(GpuSpec(**{**L4, "max_instances": 1}), "us-central1")
    assert result.ok and "maintenance" in result.warnings[0]


def test_unknown_gpu_type_lists_the_known_ones():
    [violation] = check(GpuSpec(**{**L4, "gpu_type": "nvidia-tesla-t4"}), "us-central1").violations
    assert violation.rule == "gpu-type" and "nvidia-l4" in violation.fix


def test_garbage_quantities_are_violations_not_crashes():
    assert rules(GpuSpec(**{**L4, "cpu": "lots", "memory": "big"})) == {"cpu-quantity", "memory-quantity"}
