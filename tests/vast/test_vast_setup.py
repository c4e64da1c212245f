"""deployments/vast_setup.sh run for real on emulated hosts (the fake nvidia-smi), and how the flow reads its log."""
import time

import pytest

from flows.provision_vast import load_setup_script
from gpuops import vast_plan
from gpuops.emulator.gpu_hosts import GpuHostFleet
from tests.vast.conftest import APP, FETCH

SCRIPT = load_setup_script(None)
GOOD = {"MODEL_DIR": "models/demo", "MODEL_MIN_MB": "1", "MODEL_FETCH": FETCH, "APP_CMD": APP}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with GpuHostFleet(tmp_path_factory.mktemp("setup-hosts")) as hosts:
        yield hosts


def ended(host, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while host.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not host.running, host.log()
    return host.log()


def test_the_template_checks_the_model_before_the_app_starts_and_says_complete_only_once_it_answers(fleet):
    host = fleet.start("good", "l4", command=SCRIPT, env=GOOD)
    assert fleet.wait_answering("good", 15)
    deadline = time.monotonic() + 10
    while vast_plan.SETUP_COMPLETE not in host.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = host.log()
    result = vast_plan.setup_result(log)
    assert result.complete and not result.failed and result.gpu_line == "NVIDIA L4, 23034, 8.9"
    assert log.index("GPUOPS_SETUP model: models/demo, 1 files") < log.index("listening on")
    assert vast_plan.gpus_from_setup_log(result)[0]["memory_total_mib"] == 23034


@pytest.mark.parametrize("name, card, env, fatal", [
    ("no-gpu", None, GOOD, "nvidia-smi failed"),
    ("fetch", "t4", {**GOOD, "MODEL_FETCH": "echo no route to huggingface.co >&2; exit 7"},
     "the model fetch failed (exit 7)"),
    ("no-dir", "t4", {**GOOD, "MODEL_FETCH": "mkdir -p elsewhere"}, "model directory models/demo is missing after"),
    ("empty", "t4", {**GOOD, "MODEL_FETCH": "mkdir -p models/demo"}, "model directory models/demo is empty"),
    ("small", "t4", {**GOOD, "MODEL_MIN_MB": "9"}, "is 2 MB, below 9 MB: the download is incomplete"),
    ("app-exits", "t4", {**GOOD, "APP_CMD": "exit 3"}, "the app exited (status 3) before answering /healthz"),
    ("no-app", "t4", {**GOOD, "APP_CMD": ""}, "APP_CMD is not set"),
])
def test_each_failure_stops_the_set_up_with_one_clear_line(fleet, name, card, env, fatal):
    log = ended(fleet.start(f"fails-{name}", card, command=SCRIPT, env=env))
    result = vast_plan.setup_result(log)
    assert not result.complete and len(result.fatal) == 1 and fatal in result.fatal[0]
    assert "listening on" not in log  # the app never started


def test_a_script_that_does_not_fail_fast_is_refused_and_the_template_sent_without_comments():
    with pytest.raises(Exception, match="set -euo pipefail"):
        vast_plan.check_setup_script("#!/bin/bash\npip install torch || true\necho SETUP_COMPLETE\n", "'x.sh'")
    for fine in ("set -euo pipefail", "  set -Eeuo pipefail", "set -eu -o pipefail"):
        assert vast_plan.check_setup_script(f"#!/bin/bash\n{fine}\n", "'x.sh'")
    assert SCRIPT.startswith("#!/usr/bin/env bash\nset -euo pipefail\n") and "\n#" not in SCRIPT


def test_where_an_instance_answers_comes_from_its_record_once_running():
    record = {"actual_status": "running", "public_ipaddr": "203.0.113.7",
              "ports": {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41023"}]}}
    assert vast_plan.instance_url(record, 8000) == "http://203.0.113.7:41023"
    assert vast_plan.instance_url({**record, "actual_status": "loading"}, 8000) is None
    assert vast_plan.instance_url(record, 7860) is None and vast_plan.instance_url(None, 8000) is None
