"""provision-vast and release-vast on a real Prefect server, the vast.ai stand-in (the SDK over HTTP) and emulated
hosts running the real set-up template: what is rented, abandoned, destroyed, stopped, and only with approval."""
import json
import threading

import pytest

from flows.provision_vast import provision_vast, release_vast
from gpuops import monthly_cost, vast
from gpuops.emulator.gpu_hosts import SILENT
from gpuops.emulator.vast_api import NO_DEVICES, Machine, sample_offers
from gpuops.errors import BadInput, CheckFailed, CouldNotRun
from gpuops.vast_plan import ABANDONED, READY, SKIPPED, VRAM_MISMATCH
from tests.artifacts import latest_artifact
from tests.flows.approvals import answer
from tests.vast.conftest import APP, provision_args

DE_RTX_3060, OHIO_RTX_3060 = 20981743, 21034117  # ranked 1st and 2nd for an RTX 3060 with 12 GiB
DE_MACHINE, OHIO_MACHINE = 22106, 22000
TRAPS = {21099871: "region", 21150433: "region", 21150890: "region", 20877310: "reliability", 21308870: "gpu-name"}
RTX_3060 = {"gpu_name": "RTX 3060"}


@pytest.fixture
def hub(prefect_api, registry, stand_in):
    """Prefect, the registry stand-in (the image's size and trust) and the vast.ai stand-in, all on 127.0.0.1."""
    return stand_in


def writes(stand_in) -> list[tuple]:
    """(action, offer or instance id) of every create, stop, start and destroy the stand-in answered."""
    return [(w.action, w.offer_id if w.action == "create" else w.instance_id) for w in stand_in.writes()]


def in_thread(fn, **kwargs):
    box: dict = {}

    def target():
        try:
            box["result"] = fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def finished(thread, box) -> dict:
    thread.join(120)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_a_working_host_is_rented_checked_with_a_real_generation_and_recorded(hub):
    hub.machines[DE_MACHINE] = Machine("rtx3060_12gb")
    result = provision_vast(**provision_args(offer_filter=RTX_3060))
    instance = result["instance"]
    assert result["outcome"] == READY and writes(hub) == [("create", DE_RTX_3060)]
    assert instance["gpu_name"] == "RTX 3060" and instance["label"].startswith("gpuops-") and "extra_env" not in instance
    measured = result["measured"]
    assert measured["vram"]["memory_total_mib"] == 12288 and "probe" in measured["vram"]["how"]
    assert measured["generation"]["ok"] and measured["generation"]["output_chars"] == 64
    assert len(measured["health"]["samples_ms"]) == 5 and measured["boot_s"] > 0
    assert "estimate" in result["estimates"]["monthly_cost"]["label"]
    # The cost report reads the hourly price from the instance artifact's data.
    data = latest_artifact(f"vast-instance-{instance['id']}")
    assert monthly_cost.instance_price({"records": [data]}) == (instance["dph_total"], "artifact vast-instance*")
    assert "VAST_API_KEY" not in json.dumps(result) and hub.api_key not in json.dumps(result)
    assert str(DE_RTX_3060) in latest_artifact("vast-offer-ranking")


def test_traps_are_never_rented_even_when_the_server_lets_them_through(hub):
    """The stand-in answers every offer (a loose search): a CN host, a 0.98 host and "RTX 5090 D" for an RTX 5090
    come back, are rejected by the ranking with their rule, and no create ever names them, however many
    of the chosen offers fail."""
    hub.loose_search = True
    chosen = (DE_RTX_3060, OHIO_RTX_3060, 21302355, 20877444, 21302291, 21200017)
    for offer in sample_offers():
        if offer["id"] in chosen:
            hub.machines[offer["machine_id"]] = Machine("rtx3060_12gb", SILENT)
    with pytest.raises(CheckFailed, match="no offer gave a working host") as failed:
        provision_vast(**provision_args(offer_filter={"gpu_name": ["RTX 3060", "RTX 4090", "RTX 5090"]}, wait_s=0.5,
                                        max_offers=10))
    assert writes(hub) == [("create", offer) for offer in chosen]  # rank order; nothing stopped or destroyed
    result = failed.value.details[0]
    rejected = {r["id"]: " ".join(r["reasons"]) for r in result["ranking"]["rejected"]}
    for offer, rule in TRAPS.items():
        assert f"[{rule}]" in rejected[offer]
    assert {a["outcome"] for a in result["attempts"]} == {ABANDONED}
    assert result["release"]["approval"]["timed_out"] and sorted(result["kept"]) == sorted(
        a["instance_id"] for a in result["attempts"])


def test_a_host_that_does_not_answer_is_abandoned_kept_and_the_next_offer_tried(hub):
    hub.machines[DE_MACHINE] = Machine("rtx3060_12gb", SILENT)
    hub.machines[OHIO_MACHINE] = Machine("rtx3060_12gb")
    result = provision_vast(**provision_args(offer_filter=RTX_3060, wait_s=2.5))
    first, second = result["attempts"]
    assert (first["outcome"], second["outcome"]) == (ABANDONED, READY) and result["instance"]["id"] == second["instance_id"]
    assert "did not answer within 2.5 s" in first["reasons"][0] and "logged nothing" in first["reasons"][0]
    # Nobody answered the approval: the abandoned instance is kept, and the result says how to release it.
    assert writes(hub) == [("create", DE_RTX_3060), ("create", OHIO_RTX_3060)]
    assert result["release"]["approval"]["timed_out"] and first["instance_id"] in result["kept"]
    assert f"release-vast --instance {first['instance_id']}" in result["how_to_release"]


def test_after_the_silent_t4_the_t4_listing_no_compute_cap_is_tried(hub):
    """The sample's Virginia T4 (machine 23060) never answers; the other T4 (20766277) lists no compute_cap, which
    rank() takes from the name table: the search must return it too, so the run goes on to it."""
    result = provision_vast(**provision_args(wait_s=1.5))
    assert [(a["offer_id"], a["outcome"]) for a in result["attempts"]] == [(20766101, ABANDONED), (20766277, READY)]
    assert writes(hub) == [("create", 20766101), ("create", 20766277)]


def test_with_approval_the_abandoned_instance_is_stopped_and_nothing_else(hub, prefect_api):
    hub.machines[DE_MACHINE] = Machine("rtx3060_12gb", SILENT)
    hub.machines[OHIO_MACHINE] = Machine("rtx3060_12gb")
    thread, box = in_thread(provision_vast, **provision_args(offer_filter=RTX_3060, wait_s=2.5,
                                                              approval_timeout_s=60))
    answer(prefect_api, "provision-vast", {"approve": True, "action": "stop", "instance_ids": [9100001]})
    result = finished(thread, box)
    assert result["release"]["released"] == [{"id": 9100001, "action": "stop", "result": "stopped (actual_status "
                                                                                         "exited)"}]
    assert writes(hub) == [("create", DE_RTX_3060), ("create", OHIO_RTX_3060), ("stop", 9100001)]
    assert result["kept"] == [9100002] and result["outcome"] == READY


def test_a_vram_mismatch_destroys_only_that_fresh_instance(hub):
    hub.machines[DE_MACHINE] = Machine("rtx3060_8gb")  # listed as 12 GB; reads 8 GB (runbook 004 case 7)
    hub.machines[OHIO_MACHINE] = Machine("rtx3060_12gb")
    result = provision_vast(**provision_args(offer_filter=RTX_3060))
    first, second = result["attempts"]
    assert first["outcome"] == VRAM_MISMATCH and "reads 8192 MiB, the offer listed 12288 MiB" in first["reasons"][0]
    assert first["measured"]["vram"]["memory_total_mib"] == 8192 and second["outcome"] == READY
    assert writes(hub) == [("create", DE_RTX_3060), ("destroy", first["instance_id"]), ("create", OHIO_RTX_3060)]
    assert result["kept"] == [second["instance_id"]] and result["release"] is None


def test_a_host_whose_card_cannot_be_read_is_abandoned_and_kept_never_destroyed(hub):
    """No GPU in the reading proves no lie about the listing: the instance is kept for an approved release.
    (The set-up template checks nvidia-smi first, so the run learns it from the set-up's FATAL line.)"""
    hub.machines[DE_MACHINE] = Machine("rtx3060_12gb", NO_DEVICES)  # nvidia-smi: "No devices were found"
    hub.machines[OHIO_MACHINE] = Machine("rtx3060_12gb")
    result = provision_vast(**provision_args(offer_filter=RTX_3060))
    first, second = result["attempts"]
    assert (first["outcome"], second["outcome"]) == (ABANDONED, READY)
    assert "set-up failed: nvidia-smi failed: the driver is not usable" in first["reasons"][0]
    assert writes(hub) == [("create", DE_RTX_3060), ("create", OHIO_RTX_3060)]
    assert first["instance_id"] in result["kept"] and result["release"]["approval"]["timed_out"]


def test_a_probe_that_fails_is_an_unread_card_not_a_crashed_run(hub):
    hub.machines[DE_MACHINE] = Machine("rtx3060_12gb")
    with pytest.raises(CheckFailed, match="no offer gave a working host") as failed:
        provision_vast(**provision_args(offer_filter=RTX_3060, max_offers=1,
                                        app_command=f"SAMPLE_APP_FAIL=gpu-probe {APP}"))
    attempt = failed.value.details[0]["attempts"][0]
    assert attempt["outcome"] == ABANDONED and "the probe answered HTTP 500" in attempt["reasons"][0]
    assert writes(hub) == [("create", DE_RTX_3060)]  # kept: only an approver releases it


def test_a_host_failing_three_times_is_skipped_for_the_run(hub):
    base = next(o for o in sample_offers() if o["id"] == DE_RTX_3060)
    bad_host = [{**base, "id": 7000 + n, "machine_id": 8000 + n, "host_id": 777, "dph_total": 0.05 + n / 1000}
                for n in range(4)]
    hub.use_offers(bad_host + [o for o in sample_offers() if o["id"] == OHIO_RTX_3060])
    hub.machines.update({8000 + n: Machine("rtx3060_12gb", SILENT) for n in range(4)})
    hub.machines[OHIO_MACHINE] = Machine("rtx3060_12gb")
    result = provision_vast(**provision_args(offer_filter=RTX_3060, wait_s=2.5))
    outcomes = [(a["offer_id"], a["outcome"]) for a in result["attempts"]]
    assert outcomes == [(7000, ABANDONED), (7001, ABANDONED), (7002, ABANDONED), (7003, SKIPPED),
                        (OHIO_RTX_3060, READY)]
    assert "failed 3 times" in result["attempts"][3]["reasons"][0]
    assert writes(hub) == [("create", 7000), ("create", 7001), ("create", 7002), ("create", OHIO_RTX_3060)]


def test_a_failure_after_set_up_keeps_the_instance_and_says_how_to_release_it(hub):
    hub.machines[DE_MACHINE] = Machine("rtx3060_12gb")
    with pytest.raises(CheckFailed, match=r"finished set-up, then failed: .*test generation failed") as failed:
        provision_vast(**provision_args(offer_filter=RTX_3060, app_command=f"SAMPLE_APP_FAIL=generate {APP}"))
    assert "gpuops release-vast --instance 9100001" in str(failed.value)
    assert writes(hub) == [("create", DE_RTX_3060)]  # health passed, generation failed: kept, never destroyed


def test_a_set_up_that_fails_is_reported_from_its_log(hub):
    hub.machines[DE_MACHINE] = Machine("rtx3060_12gb")
    with pytest.raises(CheckFailed, match="no offer gave a working host") as failed:
        provision_vast(**provision_args(offer_filter=RTX_3060, model_min_mb=50, max_offers=1, wait_s=3.0))
    attempt = failed.value.details[0]["attempts"][0]
    assert attempt["outcome"] == ABANDONED
    assert "set-up failed: model in models/demo is 2 MB, below 50 MB" in attempt["reasons"][0]
    assert writes(hub) == [("create", DE_RTX_3060)]


def test_bad_input_is_refused_whole_before_any_request(hub):
    with pytest.raises(BadInput) as refused:
        provision_vast(**provision_args(model_gib=None, wait_s=0, offer_filter={"gpu_name": "RTX 3060 12GB"},
                                        app_port=70000))
    message = str(refused.value)
    for named in ("'RTX 3060 12GB' is not a GPU name", "wait_s (--wait-s)", "app_port (--app-port)"):
        assert named in message
    with pytest.raises(BadInput, match="model_gib"):
        provision_vast(**provision_args(model_gib=None))
    with pytest.raises(BadInput, match="set -euo pipefail"):
        provision_vast(**provision_args(setup_script=__file__))
    assert hub.requests() == []


def test_a_173_gb_image_is_refused_before_anything_is_searched(hub):
    with pytest.raises(CheckFailed, match="refused before anything was rented: .*173.0 GB"):
        provision_vast(**provision_args(image="valyriantech/ace-step-1.5:latest"))
    assert hub.requests() == []


def test_an_unreachable_api_is_could_not_run(hub, monkeypatch):
    monkeypatch.setenv("GPUOPS_VAST_API", "http://127.0.0.1:9")
    monkeypatch.setenv("GPUOPS_RETRY_ATTEMPTS", "2")
    with pytest.raises(CouldNotRun, match="search offers: the vast.ai API at http://127.0.0.1:9 .* did not answer"):
        provision_vast(**provision_args())


def test_release_stops_or_destroys_only_what_an_approver_names(hub, prefect_api):
    api = vast.connect()
    ids = [vast.create_instance(api, offer, label=f"gpuops-manual-{offer}", image="x", env={}, onstart="",
                                disk_gb=10)[0] for offer in (DE_RTX_3060, OHIO_RTX_3060)]
    kept = release_vast(ids, approval_timeout_s=1)
    assert kept["kept"] == ids and kept["approval"]["timed_out"] and writes(hub) == [("create", DE_RTX_3060),
                                                                                    ("create", OHIO_RTX_3060)]
    thread, box = in_thread(release_vast, instance_ids=ids, approval_timeout_s=60)
    answer(prefect_api, "release-vast", {"approve": True, "action": "destroy", "instance_ids": [ids[1]]})
    result = finished(thread, box)
    assert result["kept"] == [ids[0]]
    assert writes(hub)[2:] == [("destroy", ids[1])]
