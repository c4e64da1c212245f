"""publish_folder against the Hugging Face Hub emulator with the real HfApi: one commit, a model card,
429 Retry-After honoured, a lost answer not committed twice, and the token nowhere."""

from __future__ import annotations

import logging
import time
import traceback

import pytest

from gpuops.errors import CouldNotRun
from gpuops.hub_publish import HubPublishError, publish_folder

REPO = "gpuops-tests/outputs"
SHA = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"


@pytest.fixture
def output(tmp_path):
    folder = tmp_path / "out"
    (folder / "images").mkdir(parents=True)
    (folder / "result.json").write_text('{"score": 0.93}')
    (folder / "images" / "sample.txt").write_text("pixels")
    return folder


def publish(hub, folder, **kwargs):
    args = dict(repo_id=REPO, revision="results", job_id="a1b2c3d4", source_commit=SHA,
                metadata={"gpu": "NVIDIA L4", "runtime": "source"}, token=hub.write_token)
    return publish_folder(folder, **{**args, **kwargs})


def test_publishes_the_folder_and_a_model_card_in_one_commit(fresh_hf_hub, output):
    result = publish(fresh_hf_hub, output)  # endpoint from HF_ENDPOINT

    assert result["files"] == ["README.md", "images/sample.txt", "result.json"]
    assert result["commit_url"] == f"{fresh_hf_hub.url}/{REPO}/commit/{result['commit_oid']}"
    history = fresh_hf_hub.commits(REPO, "results")
    assert len(history) == 2 and history[0]["oid"] == result["commit_oid"]  # the repo's initial commit + ours
    assert history[0]["title"] == f"gpuops job a1b2c3d4: output of source commit {SHA}"
    assert history[0]["added"] == result["files"]
    tree = fresh_hf_hub.commit_dir(REPO, result["commit_oid"]) / "tree"
    assert (tree / "result.json").read_text() == '{"score": 0.93}'
    card = (tree / "README.md").read_text()
    assert card.startswith("---\ntags:\n- gpuops\n---") and "a1b2c3d4" in card and SHA in card
    assert "| gpu | NVIDIA L4 |" in card
    assert "result.json" not in fresh_hf_hub.files(REPO, "main")  # only the branch moved


def test_a_429_with_retry_after_is_retried_after_the_wait_and_lands_once(fresh_hf_hub, output):
    fresh_hf_hub.add_fault("POST", r"/commit/", 429, headers={"Retry-After": "1"})
    started = time.monotonic()
    result = publish(fresh_hf_hub, output, endpoint=fresh_hf_hub.url)
    elapsed = time.monotonic() - started

    assert elapsed >= 1.0  # GPUOPS_RETRY_INITIAL_S is 0.01 here: the wait is the server's
    attempts = fresh_hf_hub.requests("POST", "/commit/")
    assert [r.status for r in attempts] == [429, 200]
    assert [c["oid"] for c in fresh_hf_hub.commits(REPO, "results")][:1] == [result["commit_oid"]]
    assert len(fresh_hf_hub.commits(REPO, "results")) == 2


def test_a_lost_answer_is_found_by_the_read_back_not_committed_twice(fresh_hf_hub, output):
    fresh_hf_hub.add_fault("POST", r"/commit/", 503, mode="after")
    result = publish(fresh_hf_hub, output)
    assert [r.status for r in fresh_hf_hub.requests("POST", "/commit/")] == [503]
    history = fresh_hf_hub.commits(REPO, "results")
    assert len(history) == 2 and history[0]["oid"] == result["commit_oid"]


def test_persistent_5xx_fails_after_retries_with_nothing_committed(fresh_hf_hub, output, monkeypatch):
    monkeypatch.setenv("GPUOPS_RETRY_ATTEMPTS", "2")
    fresh_hf_hub.add_fault("POST", r"/commit/", 503, times=5)
    with pytest.raises(HubPublishError) as failed:
        publish(fresh_hf_hub, output)
    assert isinstance(failed.value, CouldNotRun) and failed.value.status == 503
    assert "nothing was committed" in str(failed.value)
    assert len(fresh_hf_hub.commits(REPO, "results")) == 1


def test_the_token_is_in_no_log_line_result_or_exception(fresh_hf_hub, output, caplog):
    token = fresh_hf_hub.write_token
    caplog.set_level(logging.DEBUG)
    for name in ("huggingface_hub", "httpx2", "httpx", "gpuops"):
        caplog.set_level(logging.DEBUG, logger=name)
    fresh_hf_hub.add_fault("POST", r"/commit/", 429, headers={"Retry-After": "1"})
    result = publish(fresh_hf_hub, output)
    assert any("retrying" in r.getMessage() for r in caplog.records)  # the retry was logged...

    with pytest.raises(HubPublishError) as refused:  # ...and a refusal names no token either
        publish(fresh_hf_hub, output, token=token[:-1] + "X")
    assert refused.value.status == 401

    texts = [r.getMessage() for r in caplog.records] + [caplog.text, repr(result), str(refused.value),
                                                       "".join(traceback.format_exception(refused.value))]
    assert not [t for t in texts if token in t or token[:-1] in t]
    assert refused.value.__cause__ is None and refused.value.__context__ is None
    assert token not in repr(fresh_hf_hub.requests())
