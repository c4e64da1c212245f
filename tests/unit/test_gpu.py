"""GPU guardrails judged on recorded nvidia-smi readings: parsing, compute capability, real VRAM."""
from pathlib import Path

import gpuops.data
import pytest

from gpuops.gpu import COMPUTE_CAPABILITIES, PYTORCH2_MIN_COMPUTE_CAP, SmiParseError, cap_tuple, judge, \
    parse_smi_csv, vram_need_gib

READINGS = Path(gpuops.data.__file__).parent / "nvidia_smi"
CARDS = {
    "t4": ("Tesla T4", 15360, "7.5"),
    "l4": ("NVIDIA L4", 23034, "8.9"),
    "a100_80gb": ("NVIDIA A100 80GB PCIe", 81920, "8.0"),
    "h100": ("NVIDIA H100 80GB HBM3", 81559, "9.0"),
    "rtx3060_8gb": ("NVIDIA GeForce RTX 3060", 8192, "8.6"),
    "rtx3060_12gb": ("NVIDIA GeForce RTX 3060", 12288, "8.6"),
    "gtx1080": ("NVIDIA GeForce GTX 1080", 8192, "6.1"),
}
FORMS = ("", "_noheader")  # --format=csv (header, units) and --format=csv,noheader,nounits


def reading(card: str, form: str = "") -> list[dict]:
    return parse_smi_csv((READINGS / f"{card}{form}.csv").read_text())


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("card", sorted(CARDS))
def test_every_recorded_card_parses_the_same_in_both_forms(card, form):
    name, mib, cap = CARDS[card]
    assert reading(card, form) == [{"name": name, "memory_total_mib": mib, "compute_cap": cap}]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("card, min_vram_gib, verdict", [
    ("t4", 15, "pass"), ("t4", 20, "fail"),
    # The "24 GB" L4 reads 23034 MiB = 22.49 GiB.
    ("l4", None, "pass"), ("l4", 22, "pass"), ("l4", 22.49, "pass"), ("l4", 22.5, "fail"),
    ("a100_80gb", 80, "pass"), ("h100", 80, "fail"), ("h100", 79, "pass"),
    ("gtx1080", None, "fail"),
    ("rtx3060_8gb", 10, "fail"), ("rtx3060_12gb", 10, "pass"),
])
def test_verdicts_follow_the_reading_not_the_marketed_size(card, form, min_vram_gib, verdict):
    assert judge(reading(card, form), min_vram_gib)["verdict"] == verdict


def test_t4_short_of_vram_names_the_gpu_the_reading_the_need_and_the_fix():
    result = judge(reading("t4"), min_vram_gib=20)
    [reason] = result["reasons"]
    for part in ("GPU 0", "Tesla T4", "15360 MiB", "20 GiB", "20480 MiB", "Fix:", "smaller model"):
        assert part in reason
    assert result["gpus"] == [{"name": "Tesla T4", "memory_total_mib": 15360, "compute_cap": "7.5"}]
    assert result["failed_gpus"] == [0]


def test_gtx_1080_fails_on_compute_capability_whatever_its_vram():
    result = judge(reading("gtx1080"), min_vram_gib=4)
    [reason] = result["reasons"]
    for part in ("NVIDIA GeForce GTX 1080", "6.1", "sm_61", "PyTorch 2.x", "7.0", "Fix:"):
        assert part in reason


def test_the_runbooks_dit_plus_llm_needs_more_than_an_8_gb_rtx_3060():
    need = vram_need_gib(7.5, 1.5)  # runbook 004 case 9: DiT 7.5 GB + LLM 1.5 GB, plus 20%
    assert need == pytest.approx(10.8)
    [reason] = judge(reading("rtx3060_8gb"), need)["reasons"]
    assert "8192 MiB" in reason and "8 GB and 12 GB" in reason  # same name, two sizes
    assert judge(reading("rtx3060_12gb"), need)["verdict"] == "pass"


def test_an_8_gb_card_reading_below_8192_mib_fails_an_8_gib_need():
    gpus = parse_smi_csv("NVIDIA GeForce RTX 4060 Laptop GPU, 8188, 8.9\n")  # a real reading (FACTS.md)
    assert judge(gpus, 8)["verdict"] == "fail"
    assert judge(gpus, 7.99)["verdict"] == "pass"


def test_capabilities_compare_as_versions():
    assert cap_tuple("10.0") > cap_tuple("9.0") > cap_tuple("8.9") > cap_tuple("7.5") > cap_tuple("7.0")
    assert judge(reading("t4"), min_compute_cap="8.0")["verdict"] == "fail"
    assert judge(reading("a100_80gb"), min_compute_cap="8.0")["verdict"] == "pass"
    blackwell = parse_smi_csv("NVIDIA B200, 183359, 10.0\n")
    assert judge(blackwell, min_compute_cap="9.0")["verdict"] == "pass"


def test_a_raised_minimum_does_not_blame_pytorch_for_a_supported_card():
    [reason] = judge(reading("t4"), min_compute_cap="8.0")["reasons"]
    assert "below the required 8.0" in reason and "PyTorch" not in reason


def test_the_capability_table_agrees_with_the_pytorch_minimum():
    for cap, facts in COMPUTE_CAPABILITIES.items():
        assert facts["pytorch2"] == (cap_tuple(cap) >= cap_tuple(PYTORCH2_MIN_COMPUTE_CAP))


def test_multi_gpu_host_names_the_failing_index():
    result = judge(reading("multi_gpu"), min_vram_gib=10)
    assert result["verdict"] == "fail" and result["failed_gpus"] == [1]
    assert all(r.startswith("GPU 1 (NVIDIA GeForce GTX 1080)") for r in result["reasons"])
    four = reading("multi_gpu", "_noheader")
    assert len(four) == 4 and judge(four, 80)["verdict"] == "pass"


@pytest.mark.parametrize("form", FORMS)
def test_extra_columns_are_parsed(form):
    [gpu] = reading("l4_extra_columns", form)
    assert gpu == {"name": "NVIDIA L4", "memory_total_mib": 23034, "compute_cap": "8.9",
                   "memory_used_mib": 0, "driver_version": "535.104.05"}
    assert judge([gpu])["gpus"] == [{"name": "NVIDIA L4", "memory_total_mib": 23034, "compute_cap": "8.9"}]


def test_unknown_columns_are_kept_not_dropped():
    header = "name, memory.total [MiB], compute_cap, pci.bus_id\nNVIDIA L4, 23034 MiB, 8.9, 00000000:00:04.0\n"
    assert parse_smi_csv(header)[0]["pci_bus_id"] == "00000000:00:04.0"
    assert parse_smi_csv("NVIDIA L4, 23034, 8.9, 0, 535.104.05, P0\n")[0]["column_6"] == "P0"


def test_fields_a_driver_cannot_report_are_none_when_judging_does_not_need_them():
    text = "name, memory.total [MiB], compute_cap, memory.used [MiB]\nNVIDIA L4, 23034 MiB, 8.9, [N/A]\n"
    assert parse_smi_csv(text)[0]["memory_used_mib"] is None


def test_no_gpu_fails_with_a_fix():
    assert parse_smi_csv("No devices were found\n") == []
    assert parse_smi_csv("name, memory.total [MiB], compute_cap\n") == []
    result = judge([])
    assert result["verdict"] == "fail" and "no GPU" in result["reasons"][0] and "Fix:" in result["reasons"][0]


@pytest.mark.parametrize("text, parts", [
    ("", ["line 1", "empty file"]),
    ("\n  \n", ["line 1", "empty file"]),
    ("name, memory.total [MiB], compute_cap\nNVIDIA L4, 23034 MiB\n", ["line 2", "2 fields", "header names 3"]),
    ("name, memory.total [MiB], compute_cap\nNVIDIA L4, lots MiB, 8.9\n", ["line 2", "memory.total", "'lots MiB'"]),
    ("name, memory.total [MiB], compute_cap\nTesla K80, 11441 MiB, [N/A]\n", ["line 2", "'[N/A]'", "driver"]),
    ("name, memory.total [MiB], compute_cap\nNVIDIA L4, 23034 MiB, sm_89\n", ["line 2", "'sm_89'"]),
    ("NVIDIA L4, 23034\n", ["line 1", "2 field(s)", "at least 3"]),
    ("\n\nNVIDIA L4, 23034, 8.9\nNVIDIA L4, [N/A], 8.9\n", ["line 4", "memory.total", "'[N/A]'"]),
    (", 23034, 8.9\n", ["line 1", "name is empty"]),
    ("name, memory.total [MiB]\nNVIDIA L4, 23034 MiB\n", ["line 1", "lacks compute_cap"]),
    ("name, memory.total [GiB], compute_cap\nNVIDIA L4, 22, 8.9\n", ["line 1", "MiB"]),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
     ["line 1", "error instead of a reading"]),
])
def test_malformed_readings_name_the_line_and_the_fault(text, parts):
    with pytest.raises(SmiParseError) as raised:
        parse_smi_csv(text)
    for part in parts:
        assert part in str(raised.value)


def test_vram_need_adds_the_headroom_to_both_models():
    assert vram_need_gib(10) == pytest.approx(12.0)
    assert vram_need_gib(10, 2, headroom=0) == pytest.approx(12.0)
    with pytest.raises(ValueError, match="model_gib"):
        vram_need_gib(-1)


def test_a_bad_minimum_is_refused_before_any_verdict():
    with pytest.raises(ValueError, match="seven"):
        judge(reading("l4"), min_compute_cap="seven")
