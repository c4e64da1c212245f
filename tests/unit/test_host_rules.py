"""Host guardrails as pure verdicts: compute capability by exact name, VRAM, region, reliability, images, trust."""
import json
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import gpuops.data
import pytest

from gpuops import host_rules
from gpuops.gpu import COMPUTE_CAPABILITIES, PYTORCH2_MIN_COMPUTE_CAP, cap_tuple, judge, parse_smi_csv, vram_need_gib
from gpuops.host_rules import GB, Popularity, Verdict

READINGS = Path(gpuops.data.__file__).parent / "nvidia_smi"
NOW = datetime(2026, 11, 22, tzinfo=timezone.utc)


def reading(card: str) -> list[dict]:
    return parse_smi_csv((READINGS / f"{card}.csv").read_text())


def verdicts_on(card: str, need_gib: float) -> list[Verdict]:
    """The host rules on a recorded reading, each GPU judged by its own name and numbers."""
    return [v for gpu in reading(card) for v in (
        host_rules.compute_capability_verdict(gpu["name"], gpu["compute_cap"]),
        host_rules.vram_verdict(gpu["name"], gpu["memory_total_mib"], need_gib))]


def failed_rules(verdicts: list[Verdict]) -> list[str]:
    return [v.rule for v in verdicts if not v.ok]


# ---------------------------------------------------------------- the "done when", on recorded readings


@pytest.mark.parametrize("card, need_gib, failed", [
    ("gtx1080", 4, ["compute-capability"]),         # sm_61: refused whatever its VRAM
    ("rtx3060_8gb", 12, ["vram"]),                    # the 8 GB "RTX 3060" for a 12 GB need
    ("rtx3060_12gb", 12, []),
    ("t4", 12, []),                                   # T4 accepted for a 12 GB need
    ("t4", 16, ["vram"]),
    ("l4", 22.49, []),
    ("multi_gpu", 12, ["compute-capability", "vram"]),  # the GTX 1080 beside an RTX 3060 fails both
])
def test_recorded_readings_get_the_right_verdicts_from_both_checks(card, need_gib, failed):
    assert failed_rules(verdicts_on(card, need_gib)) == failed
    # gpu.judge, behind `gpuops gpu-check`, agrees on the same reading.
    assert judge(reading(card), need_gib)["verdict"] == ("fail" if failed else "pass")


def test_the_runbook_need_refuses_the_8gb_3060_and_takes_the_12gb_one():
    need = vram_need_gib(7.5, 1.5)  # DiT + LLM of runbook 004 case 9, plus 20%
    assert need == pytest.approx(10.8)
    [vram] = [v for v in verdicts_on("rtx3060_8gb", need) if not v.ok]
    assert vram.value == 8192
    assert "8 GB and 12 GB" in vram.message and "11059 MiB" in vram.fix
    assert failed_rules(verdicts_on("rtx3060_12gb", need)) == []


# ---------------------------------------------------------------- the name table


def test_every_recorded_nvidia_smi_name_is_in_the_table_with_its_reading():
    for path in sorted(READINGS.glob("*.csv")):
        for gpu in parse_smi_csv(path.read_text()):
            assert host_rules.capability_by_name(gpu["name"]) == gpu["compute_cap"], path.name


def test_the_table_agrees_with_the_runbook_table_in_gpu_py():
    checked = 0
    for cap, row in COMPUTE_CAPABILITIES.items():
        for example in row["examples"].replace("/", ", ").split(", "):
            found = host_rules.capability_by_name(example)
            if found is not None:
                assert found == cap, example
                checked += 1
    assert checked >= 6


def test_every_listed_capability_parses_and_no_name_is_listed_twice():
    data = json.loads(resources.files("gpuops.data").joinpath("gpu_capabilities.json").read_text())
    names = [host_rules.normalize_gpu_name(n) for group in data["capabilities"].values() for n in group]
    assert len(names) == len(set(names)) == len(host_rules.capability_table())
    assert all(cap_tuple(cap) for cap in data["capabilities"])


@pytest.mark.parametrize("name, cap", [
    ("RTX 3060", "8.6"), ("NVIDIA GeForce RTX 3060", "8.6"), ("Tesla T4", "7.5"), ("GTX 1080", "6.1"),
    ("A100 SXM4", "8.0"), ("H100 SXM", "9.0"), ("RTX 4090", "8.9"), ("RTX 5090", "12.0"), ("RTX PRO 6000", "12.0"),
    ("rtx_3060", "8.6"), ("  RTX   3060 ", "8.6"),  # vast.ai's query spelling, stray spaces
    ("RTX 306", None), ("GeForce RTX 3060", None), ("RTX 3060 12GB", None), ("RTX", None),  # never a partial match
])
def test_names_match_exactly_case_and_spacing_aside(name, cap):
    assert host_rules.capability_by_name(name) == cap


@pytest.mark.parametrize("value, cap", [(860, "8.6"), (1200, "12.0"), (750.0, "7.5"), ("8.9", "8.9"), (None, None),
                                        (1000, "10.0")])
def test_vast_compute_cap_is_read_as_a_capability(value, cap):
    assert host_rules.cap_from_vast(value) == cap


@pytest.mark.parametrize("value", [True, 86, "eighty", "8"])
def test_a_compute_cap_that_is_no_capability_is_refused(value):
    with pytest.raises(ValueError):
        host_rules.cap_from_vast(value)


@pytest.mark.parametrize("name, reported, cap", [
    ("GTX 1080 Ti", 860, "6.1"),   # a host reporting more than the card has: the table wins
    ("RTX 3060", 750, "7.5"),      # the host reporting less: the lower is kept
    ("RTX 3060", None, "8.6"),     # nothing reported: the table
    ("Some New GPU", 890, "8.9"),  # not in the table: the host's report
    ("Some New GPU", None, None),
])
def test_the_lower_of_the_table_and_the_report_is_the_capability(name, reported, cap):
    assert host_rules.effective_capability(name, reported)[0] == cap


def test_unknown_card_is_refused_with_the_table_as_the_fix():
    verdict = host_rules.compute_capability_verdict("Some New GPU")
    assert not verdict.ok and verdict.value is None and "gpu_capabilities.json" in verdict.fix


def test_sm70_minimum_comes_from_gpu_py():
    assert PYTORCH2_MIN_COMPUTE_CAP == "7.0"
    assert host_rules.compute_capability_verdict("Tesla V100").ok
    refused = host_rules.compute_capability_verdict("Tesla P100")
    assert not refused.ok and refused.value == "6.0" and "sm_60" in refused.message and "PyTorch 2.x" in refused.message
    assert not host_rules.compute_capability_verdict("Tesla T4", min_cap="8.0").ok


# ---------------------------------------------------------------- VRAM against an offer, region, reliability


@pytest.mark.parametrize("offer_mib, card, ok", [
    (12288, "rtx3060_8gb", False), (12288, "rtx3060_12gb", True), (15360, "t4", True),
    (24576, "l4", True),  # 23034 MiB is within 7% of a listed 24 GiB
    (81920, "multi_gpu", False),  # the lowest GPU decides
])
def test_the_reading_is_compared_with_the_offer(offer_mib, card, ok):
    verdict = host_rules.vram_matches_offer(offer_mib, reading(card))
    assert verdict.ok is ok
    if not ok:
        assert "destroy this fresh instance" in verdict.fix


def test_no_gpu_in_the_reading_does_not_match_any_offer():
    assert not host_rules.vram_matches_offer(12288, []).ok


def test_vram_band_has_an_optional_top():
    assert host_rules.vram_verdict("RTX 4090", 24564, 12, max_gib=48).ok
    too_big = host_rules.vram_verdict("A100 SXM4", 81920, 12, max_gib=48)
    assert not too_big.ok and "48 GiB" in too_big.message


@pytest.mark.parametrize("geolocation, blocked, allowed, ok, value", [
    ("Guangdong, CN", ("CN",), None, False, "Guangdong, CN"),
    ("Texas, US", ("CN",), None, True, "US"),
    ("US", ("CN",), None, True, "US"),
    ("Hong Kong, HK", ("CN", "HK"), None, False, "Hong Kong, HK"),
    ("Bavaria, DE", ("CN",), ("US", "CA"), False, "Bavaria, DE"),
    ("Ontario, CA", ("CN",), ("US", "CA"), True, "CA"),
    (None, ("CN",), None, False, None),
    ("Sweden", ("CN",), None, False, "Sweden"),
])
def test_region(geolocation, blocked, allowed, ok, value):
    verdict = host_rules.region_verdict(geolocation, blocked, allowed)
    assert (verdict.ok, verdict.value) == (ok, value)


def test_a_cn_host_is_refused_naming_the_firewall():
    verdict = host_rules.region_verdict("Guangdong, CN")
    assert "Great Firewall" in verdict.message and "outside the blocked countries" in verdict.fix


@pytest.mark.parametrize("value, ok", [(0.98, False), (0.99, False), (0.9901, True), (1.0, True), (None, False)])
def test_reliability_must_be_above_0_99(value, ok):
    assert host_rules.reliability_verdict(value).ok is ok


def test_offer_reliability_is_the_lower_of_the_two_vast_figures():
    assert host_rules.offer_reliability({"reliability": 0.995, "reliability2": 0.97}) == 0.97
    assert host_rules.offer_reliability({"reliability2": 0.995}) == 0.995
    assert host_rules.offer_reliability({}) is None
    with pytest.raises(ValueError):
        host_rules.offer_reliability({"reliability": "high"})


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("size_gb, ok, warn", [(4.2, True, False), (20, True, False), (25, True, True),
                                               (100, True, True), (173, False, False)])
def test_image_size_bands(size_gb, ok, warn):
    verdict = host_rules.image_size_verdict("valyriantech/ace-step-1.5:latest", int(size_gb * GB))
    assert (verdict.ok, verdict.warn) == (ok, warn)
    assert verdict.value == int(size_gb * GB)
    if not ok or warn:
        assert "runtime" in verdict.fix and f"{size_gb:.1f} GB" in verdict.message


@pytest.mark.parametrize("tag, runtime", [
    ("12.4.1-cudnn-devel-ubuntu22.04", "12.4.1-cudnn-runtime-ubuntu22.04"),
    ("2.4.0-cuda12.4-cudnn9-devel", "2.4.0-cuda12.4-cudnn9-runtime"),
    ("devel", "runtime"),
])
def test_devel_tags_are_flagged_for_inference_with_the_runtime_tag_as_the_fix(tag, runtime):
    verdict = host_rules.devel_tag_verdict("nvidia/cuda", tag)
    assert verdict.ok and verdict.warn and repr(runtime) in verdict.fix
    assert not host_rules.devel_tag_verdict("nvidia/cuda", tag, inference=False).warn


@pytest.mark.parametrize("tag", ["12.4.1-runtime-ubuntu22.04", "developer-1.0", "latest"])
def test_other_tags_are_not_flagged(tag):
    assert not host_rules.devel_tag_verdict("nvidia/cuda", tag).warn


# ---------------------------------------------------------------- trust


def test_the_runbook_image_is_refused_and_its_score_is_explained():
    source = Popularity("docker-hub", "valyriantech/ace-step-1.5", pulls=404, stars=0,
                        last_updated=NOW - timedelta(days=30))
    verdict = host_rules.trust_verdict(source, NOW)
    assert not verdict.ok
    assert verdict.value == host_rules.trust_score(source, NOW) == 47  # 40*log10(405)/6=17.4 + 0 + 30 fresh
    assert "pulls 404 (needs more than 1,000)" in verdict.message and "stars 0" in verdict.message
    assert "official README" in verdict.fix


def test_an_official_source_wins_whatever_its_figures():
    source = Popularity("docker-hub", "library/ubuntu", pulls=10, stars=0, official=True)
    verdict = host_rules.trust_verdict(source, NOW)
    assert verdict.ok and not verdict.warn and verdict.value == 100


@pytest.mark.parametrize("source, ok, warn, score", [
    (Popularity("docker-hub", "pytorch/pytorch", pulls=12_000_000, stars=1400, last_updated=NOW - timedelta(days=3)),
     True, False, 100),
    (Popularity("docker-hub", "some/old", pulls=50_000, stars=12, last_updated=NOW - timedelta(days=800)),
     True, True, 42),  # 31.3 + 11.1 + 0
    (Popularity("docker-hub", "some/undated", pulls=50_000, stars=12), True, True, 42),
    (Popularity("github", "someone/fork", stars=50, last_updated=NOW - timedelta(days=10)), False, False, 47),
    (Popularity("github", "ace-step/ACE-Step-1.5", stars=4000, last_updated=NOW - timedelta(days=10)), True, False, 60),
])
def test_trust_verdicts(source, ok, warn, score):
    verdict = host_rules.trust_verdict(source, NOW)
    assert (verdict.ok, verdict.warn, verdict.value) == (ok, warn, score)


# ---------------------------------------------------------------- every verdict names its rule, value and fix


def test_every_failed_or_warned_verdict_names_the_rule_the_value_and_the_fix():
    verdicts = [
        host_rules.compute_capability_verdict("GTX 1080"), host_rules.vram_verdict("RTX 3060", 8192, 12),
        host_rules.region_verdict("Guangdong, CN"), host_rules.reliability_verdict(0.98),
        host_rules.image_size_verdict("x", 173 * GB), host_rules.image_size_verdict("x", 25 * GB),
        host_rules.devel_tag_verdict("nvidia/cuda", "12.4.1-devel"),
        host_rules.trust_verdict(Popularity("docker-hub", "a/b", pulls=1, stars=0), NOW),
        host_rules.vram_matches_offer(12288, reading("rtx3060_8gb")),
    ]
    for verdict in verdicts:
        assert verdict.rule and verdict.message and verdict.fix and verdict.value is not None, verdict
        assert str(verdict).startswith(f"[{verdict.rule}] ") and " Fix: " in str(verdict)
        assert set(verdict.as_dict()) == {"rule", "ok", "warn", "value", "message", "fix"}


# --- after renting: which reading destroys, which only abandons (gpuops.vast_plan) ------------------------


def test_only_a_card_reading_less_than_its_listing_is_a_mismatch_to_destroy():
    from gpuops import vast_plan

    listed_12gb = {"gpu_name": "RTX 3060", "gpu_ram": 12288}
    assert "8192 MiB" in str(vast_plan.listing_mismatch(listed_12gb, reading("rtx3060_8gb")))
    assert vast_plan.listing_mismatch(listed_12gb, reading("rtx3060_12gb")) is None
    assert vast_plan.listing_mismatch(listed_12gb, []) is None  # nothing read proves no lie


def test_a_card_as_listed_but_short_of_the_need_is_a_shortfall_not_a_mismatch():
    from gpuops import vast_plan

    listed_t4 = {"gpu_name": "Tesla T4", "gpu_ram": 15360}
    t4 = reading("t4")
    assert vast_plan.listing_mismatch(listed_t4, t4) is None
    assert vast_plan.need_shortfall(listed_t4, t4, need_gib=12) is None
    short = vast_plan.need_shortfall(listed_t4, t4, need_gib=20)
    assert short is not None and not short.ok and short.rule
    assert vast_plan.need_shortfall(listed_t4, [], need_gib=20) is None


def test_an_unread_card_says_why_and_that_the_instance_is_kept():
    from gpuops import vast_plan

    [why] = vast_plan.card_unread("gpuops probe at http://h/gpu-probe", "the probe answered HTTP 500", [])
    assert "HTTP 500" in why and "kept until an approver releases it" in why
    [empty] = vast_plan.card_unread("probe", None, ["nvidia-smi failed: exit 9"])
    assert "no GPU in the reading" in empty and "nvidia-smi failed: exit 9" in empty
