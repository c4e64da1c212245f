"""The Hugging Face Hub emulator, over real HTTP with the real HfApi: repos, one-commit uploads kept on disk,
the Hub's error shape, atomic commits, faults, and `gpuops emulate hf-hub`."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

REPO = "gpuops-tests/model"


@pytest.fixture
def api(fresh_hf_hub):
    return HfApi(endpoint=fresh_hf_hub.url, token=fresh_hf_hub.write_token)


@pytest.fixture
def http(fresh_hf_hub):
    headers = {"Authorization": f"Bearer {fresh_hf_hub.write_token}"}
    with httpx.Client(base_url=fresh_hf_hub.url, headers=headers, timeout=30, trust_env=False) as client:
        yield client


def ndjson(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def file_line(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}


def test_create_then_one_commit_of_two_files_and_a_card_is_one_folder_on_disk(fresh_hf_hub, api):
    repo_url = api.create_repo(REPO)
    assert repo_url == f"{fresh_hf_hub.url}/{REPO}"
    assert api.create_repo(REPO, exist_ok=True) == repo_url  # 409 answered as the Hub does

    card = b"---\ntags:\n- gpuops\n---\n# model\n"
    info = api.create_commit(REPO, [CommitOperationAdd("out/result.json", b'{"ok": true}'),
                                    CommitOperationAdd("weights.txt", b"w" * 1000),
                                    CommitOperationAdd("README.md", card)], commit_message="job 1 from abc123")

    assert re.fullmatch(r"[0-9a-f]{40}", info.oid)
    assert info.commit_url == f"{fresh_hf_hub.url}/{REPO}/commit/{info.oid}"
    history = fresh_hf_hub.commits(REPO)
    assert [c["title"] for c in history] == ["job 1 from abc123", "initial commit"]
    assert history[0]["oid"] == info.oid and history[0]["added"] == ["README.md", "out/result.json", "weights.txt"]
    tree = fresh_hf_hub.commit_dir(REPO, info.oid) / "tree"
    assert (tree / "out" / "result.json").read_bytes() == b'{"ok": true}'
    assert (tree / "weights.txt").read_bytes() == b"w" * 1000
    assert (tree / "README.md").read_bytes() == card
    assert api.repo_info(REPO).sha == info.oid
    commits = fresh_hf_hub.requests("POST", "/commit/")
    assert len(commits) == 1 and commits[0].status == 200 and commits[0].authorized


def test_branch_create_and_commit_on_it_leave_main_alone(fresh_hf_hub, api):
    api.create_repo(REPO)
    main_head = api.repo_info(REPO).sha
    api.create_branch(REPO, branch="results")
    api.create_branch(REPO, branch="results", exist_ok=True)
    info = api.create_commit(REPO, [CommitOperationAdd("a.txt", b"a")], commit_message="on a branch",
                             revision="results")
    assert api.repo_info(REPO, revision="results").sha == info.oid
    assert api.repo_info(REPO).sha == main_head
    assert fresh_hf_hub.files(REPO, "results")["a.txt"] == b"a"
    assert "a.txt" not in fresh_hf_hub.files(REPO)


def test_bad_request_answers_the_hubs_error_shape_and_changes_nothing(fresh_hf_hub, api, http):
    api.create_repo(REPO)
    head = api.repo_info(REPO).sha
    body = ndjson({"key": "header", "value": {"summary": "half", "description": ""}},
                  file_line("good.txt", b"good"),
                  {"key": "deletedFile", "value": {"path": "missing.txt"}})
    resp = http.post(f"/api/models/{REPO}/commit/main", content=body,
                     headers={"Content-Type": "application/x-ndjson"})
    assert resp.status_code == 404
    assert "doesn't exist" in resp.json()["error"]
    assert resp.headers["X-Error-Code"] == "EntryNotFound" and resp.headers["X-Gpuops-Emulator"] == "hf-hub"
    assert api.repo_info(REPO).sha == head  # atomic: good.txt did not land either
    assert "good.txt" not in fresh_hf_hub.files(REPO)

    bad_b64 = ndjson({"key": "header", "value": {"summary": "x"}},
                     {"key": "file", "value": {"path": "f", "content": "!!!", "encoding": "base64"}})
    resp = http.post(f"/api/models/{REPO}/commit/main", content=bad_b64,
                     headers={"Content-Type": "application/x-ndjson"})
    assert resp.status_code == 400 and "base64" in resp.json()["error"]
    resp = http.post(f"/api/models/{REPO}/commit/main", content=b"{}", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "x-ndjson" in resp.json()["error"]
    assert len(fresh_hf_hub.commits(REPO)) == 1


def test_client_errors_surface_as_huggingface_hub_exceptions(fresh_hf_hub, api):
    with pytest.raises(RepositoryNotFoundError):
        api.create_commit("gpuops-tests/absent", [CommitOperationAdd("a", b"a")], commit_message="m")
    api.create_repo(REPO)
    with pytest.raises(HfHubHTTPError) as refused:
        HfApi(endpoint=fresh_hf_hub.url, token="hf_wrong").create_commit(
            REPO, [CommitOperationAdd("a", b"a")], commit_message="m")
    assert refused.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as too_big:  # regular uploads only: LFS-sized files are refused
        api.create_commit(REPO, [CommitOperationAdd("big.bin", b"0" * (10 * 1024 * 1024 + 1))], commit_message="m")
    assert too_big.value.response.status_code == 400 and "LFS" in str(too_big.value)
    assert len(fresh_hf_hub.commits(REPO)) == 1


def test_parent_commit_guards_against_a_commit_in_between(fresh_hf_hub, api):
    api.create_repo(REPO)
    parent = api.repo_info(REPO).sha
    api.create_commit(REPO, [CommitOperationAdd("a", b"1")], commit_message="someone else")
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(REPO, [CommitOperationAdd("a", b"2")], commit_message="mine", parent_commit=parent)
    assert stale.value.response.status_code == 412
    assert fresh_hf_hub.files(REPO)["a"] == b"1"


def test_fault_answers_429_with_retry_after_and_is_logged(fresh_hf_hub, http):
    fault = fresh_hf_hub.add_fault("POST", r"/api/repos/create$", 429, headers={"Retry-After": "1"})
    resp = http.post("/api/repos/create", json={"name": "model", "organization": "gpuops-tests"})
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "1" and "error" in resp.json()
    assert http.post("/api/repos/create", json={"name": "model", "organization": "gpuops-tests"}).status_code == 200
    logged = fresh_hf_hub.requests("POST", "/repos/create")
    assert [(r.status, r.fault) for r in logged] == [(429, fault.id), (200, None)]
    assert fresh_hf_hub.write_token not in repr(fresh_hf_hub.requests())


def test_gpuops_emulate_hf_hub_serves_on_the_port_it_prints(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from gpuops_cli.cli import main; "
                             "sys.exit(main(['emulate', 'hf-hub', '--port', '0', '--data', sys.argv[1]]))",
                             str(tmp_path)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = _printed_url(proc)
        info = httpx.get(f"{url}/emulator/v1/info", timeout=10, trust_env=False)
        assert info.json()["emulator"] == "hf-hub" and "not huggingface.co" in info.json()["name"]
        assert info.json()["data_dir"] == str(tmp_path)
        HfApi(endpoint=url, token="hf_any").create_repo(REPO)
        assert (tmp_path / "models" / REPO / "repo.json").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _printed_url(proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if found:
            return found.group(1)
        assert line or proc.poll() is None, "gpuops emulate hf-hub exited before listening"
    raise AssertionError("gpuops emulate hf-hub did not print its URL")
