"""Cloud Logging v2 entries:list on the emulator, over real HTTP, and the adapter that reads it."""

from __future__ import annotations

import json
import sys

import httpx
import pytest
from google.api_core import exceptions as gexc

from gpuops import cloudrun
from gpuops.execution_logs import entry_text, log_filter, read_execution_output, read_log_tail

P, R = "demo", "us-central1"
JOB = cloudrun.job_name(P, R, "printer")
# Six lines of its own per task: three texts, a JSON object, a JSON array (text), a line without newline.
SCRIPT = ("import json, os; i = os.environ['CLOUD_RUN_TASK_INDEX']; "
          "[print(f'line {n} of task {i}', flush=True) for n in range(3)]; "
          "print(json.dumps({'task': int(i), 'ok': True}), flush=True); print('[1, 2]', flush=True); "
          "print('no newline', end='', flush=True)")


@pytest.fixture
def emu(fresh_workload_emulator):
    return fresh_workload_emulator


@pytest.fixture
def cr(emu):
    return cloudrun.connect(emu.url)


@pytest.fixture
def http(emu):
    with httpx.Client(base_url=emu.url, timeout=20) as client:
        yield client


def run_printer(cr, tasks: int = 1) -> dict:
    """Create (once) and run the printing job; wait for the execution to end."""
    if cloudrun.get_job(cr, JOB) is None:
        container = {"image": "img:1", "command": [sys.executable, "-c", SCRIPT]}
        cloudrun.create_job(cr, JOB, {"template": {"taskCount": tasks, "template": {"containers": [container]}}})
    started = cloudrun.run_job(cr, JOB)
    return cloudrun.wait_execution(cr, started["name"], timeout_s=30, poll_s=0.05)


def list_entries(http, **body) -> httpx.Response:
    return http.post("/v2/entries:list", json={"resourceNames": [f"projects/{P}"], **body})


def entries(http, execution: dict, **body) -> list[dict]:
    answer = list_entries(http, filter=log_filter(execution), pageSize=1000, **body)
    assert answer.status_code == 200, answer.text
    return answer.json().get("entries", [])


def test_entries_are_shaped_like_cloud_run_job_logs(cr, http):
    execution = run_printer(cr)
    found = entries(http, execution)
    own = [e for e in found if not entry_text(e).startswith("[gpuops emulator]")]
    assert [entry_text(e) for e in own] == ["line 0 of task 0", "line 1 of task 0", "line 2 of task 0",
                                             '{"ok": true, "task": 0}', "[1, 2]", "no newline"]
    first = own[0]
    assert first["resource"] == {"type": "cloud_run_job",
                                 "labels": {"job_name": "printer", "location": R, "project_id": P}}
    assert first["labels"]["run.googleapis.com/execution_name"] == cloudrun.short(execution["name"])
    assert first["labels"]["run.googleapis.com/task_index"] == "0"
    assert first["logName"] == f"projects/{P}/logs/run.googleapis.com%2Fstdout"
    assert first["timestamp"].endswith("Z") and first["textPayload"] == "line 0 of task 0"
    assert own[3]["jsonPayload"] == {"task": 0, "ok": True} and "textPayload" not in own[3]
    assert own[4]["textPayload"] == "[1, 2]"  # only a JSON object becomes jsonPayload
    system = [e for e in found if e not in own]
    assert system and all(e["logName"].endswith("run.googleapis.com%2Fvarlog%2Fsystem") for e in system)
    assert len({e["insertId"] for e in found}) == len(found)


def test_the_filter_selects_one_execution_and_bounds_time(cr, http):
    first, second = run_printer(cr), run_printer(cr)
    mine = entries(http, second)
    names = {e["labels"]["run.googleapis.com/execution_name"] for e in mine}
    assert names == {cloudrun.short(second["name"])}
    assert all(e["timestamp"] >= second["createTime"] for e in mine)
    both = 'resource.type="cloud_run_job" AND resource.labels.job_name="printer"'
    assert len(list_entries(http, filter=both, pageSize=1000).json()["entries"]) == len(mine) + len(entries(http, first))
    later = {"name": second["name"], "createTime": "2999-01-01T00:00:00Z"}
    assert entries(http, later) == []
    assert list_entries(http, filter='resource.type="cloud_run_revision"').json() == {}
    other_project = http.post("/v2/entries:list", json={"resourceNames": ["projects/other"]})
    assert other_project.status_code == 200 and other_project.json() == {}


def test_order_desc_is_asc_reversed_and_tasks_interleave_by_time(cr, http):
    execution = run_printer(cr, tasks=2)
    asc = entries(http, execution, orderBy="timestamp asc")
    desc = entries(http, execution, orderBy="timestamp desc")
    assert desc == list(reversed(asc))
    stamps = [e["timestamp"] for e in asc]
    assert stamps == sorted(stamps)
    assert {e["labels"]["run.googleapis.com/task_index"] for e in asc} == {"0", "1"}


@pytest.mark.parametrize("order", ["timestamp asc", "timestamp desc"])
def test_paging_really_pages(cr, http, order):
    execution = run_printer(cr, tasks=2)
    whole = entries(http, execution, orderBy=order)
    pages, token = [], None
    while True:
        body = {"filter": log_filter(execution), "orderBy": order, "pageSize": 3,
                **({"pageToken": token} if token else {})}
        page = list_entries(http, **body).json()
        pages.append(page.get("entries", []))
        token = page.get("nextPageToken")
        if not token:
            break
    assert all(len(p) == 3 for p in pages[:-1]) and 1 <= len(pages[-1]) <= 3
    assert [e for p in pages for e in p] == whole
    assert len(pages) == -(-len(whole) // 3)
    first = list_entries(http, filter=log_filter(execution), orderBy=order, pageSize=3).json()
    changed = list_entries(http, filter='resource.type="cloud_run_job"', orderBy=order,
                           pageToken=first["nextPageToken"])
    assert changed.status_code == 400 and "page token" in changed.json()["error"]["message"]


@pytest.mark.parametrize("bad", ['resource.type=', 'a="b" OR c="d"', '(resource.type="cloud_run_job")',
                                 'timestamp>="yesterday"', 'resource.type:"cloud_run_job"', 'x="y" AND'])
def test_a_filter_it_cannot_parse_is_400_invalid_argument(http, bad):
    answer = list_entries(http, filter=bad)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert "Unparseable filter" in error["message"]


@pytest.mark.parametrize("body, words", [
    ({"orderBy": "severity"}, "orderBy"), ({"pageSize": -1}, "pageSize"), ({"pageToken": "nope"}, "page token"),
    ({"resourceNames": []}, "resourceNames"), ({"resourceNames": ["folders/1"]}, "projects/P"),
    ({"limit": 5}, "Unknown name"),
])
def test_other_bad_requests_are_400_too(http, body, words):
    answer = http.post("/v2/entries:list", json={"resourceNames": [f"projects/{P}"], **body})
    assert answer.status_code == 400 and words in answer.json()["error"]["message"]


def test_the_adapter_reads_the_whole_output_and_the_tail(emu, cr, monkeypatch):
    monkeypatch.setattr("gpuops.execution_logs.PAGE_SIZE", 4)  # several pages for a dozen lines
    execution = run_printer(cr, tasks=2)
    text = read_execution_output(cr, execution)
    assert sorted(text.splitlines()) == sorted(
        json.dumps(json.loads(line), sort_keys=True) if line.startswith("{\"") else line
        for line in emu.logs(execution["name"]).splitlines())
    tail = read_log_tail(cr, execution, lines=5)
    assert tail == text.splitlines()[-5:]
    assert read_log_tail(cr, execution, lines=0) == []


def test_the_adapter_retries_a_transient_error_and_fails_on_a_bad_request(emu, cr):
    execution = run_printer(cr)
    emu.add_fault("POST", "/v2/entries:list", status=503, times=2)
    assert "line 0 of task 0" in read_execution_output(cr, execution)
    assert len(emu.requests("POST", "entries:list")) == 3
    with pytest.raises(gexc.BadRequest, match="Unparseable filter"):
        read_log_tail(cr, {**execution, "createTime": "soon"})


def test_gpuops_logging_api_points_the_adapter_elsewhere(emu, cr, monkeypatch):
    execution = run_printer(cr)
    monkeypatch.setenv("GPUOPS_LOGGING_API", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("GPUOPS_RETRY_ATTEMPTS", "1")
    with pytest.raises(Exception, match="127.0.0.1"):
        read_execution_output(cloudrun.connect(emu.url), execution)
