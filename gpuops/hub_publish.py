"""Publish a job's output folder to a Hugging Face repo in one commit, with a model card (huggingface_hub)."""

from __future__ import annotations

import email.utils
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from gpuops import retry
from gpuops.errors import BadInput, CouldNotRun
from gpuops.markdown import cell

T = TypeVar("T")
TRANSIENT_STATUS = (429, 500, 502, 503, 504)
CARD = "README.md"


class HubPublishError(CouldNotRun):
    """The Hub refused (4xx) or kept failing (429/5xx after retries); no partial commit was left."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def publish_folder(folder: str | Path, repo_id: str, revision: str = "main", job_id: str = "",
                   source_commit: str = "", metadata: dict[str, Any] | None = None,
                   endpoint: str | None = None, token: str | None = None, repo_type: str = "model") -> dict:
    """Upload every file of `folder` plus a model card as ONE commit on branch `revision` of `repo_id`.

    The repository and the branch are created when missing. The commit names the job and the source
    commit. Transient errors (429 honouring Retry-After, 5xx, lost connections) are retried; a commit
    whose answer was lost is found again by its message instead of being sent twice (and `parent_commit`
    makes the Hub refuse a second one). Returns {"commit_url", "commit_oid", "files"}; the token appears
    in no result, log line or exception.
    """
    folder = Path(folder)
    if not job_id or not source_commit:
        raise BadInput("publish_folder: job_id and source_commit are required (they name the commit)")
    files, folder_readme = _folder_files(folder)
    api = _api(endpoint, token)
    secrets = [s for s in (token, os.environ.get("HF_TOKEN")) if s]
    message = commit_message(job_id, source_commit)
    card = model_card(repo_id, job_id, source_commit, metadata or {}, folder_readme)
    _hub("create repo", lambda: _create_repo(api, repo_id, repo_type), secrets)
    if revision != "main":
        _hub("create branch", lambda: api.create_branch(repo_id, branch=revision, repo_type=repo_type,
                                                          exist_ok=True), secrets)
    parent = _hub("read revision", lambda: api.repo_info(repo_id, revision=revision, repo_type=repo_type).sha,
                  secrets)

    def send() -> dict:
        info = api.create_commit(repo_id, _operations(folder, files, card), commit_message=message,
                                 commit_description=commit_description(job_id, source_commit, metadata or {}),
                                 revision=revision, repo_type=repo_type, parent_commit=parent)
        return {"commit_url": info.commit_url, "commit_oid": info.oid}

    landed = _hub("commit", send, secrets,
                  read_back=lambda: _landed(api, repo_id, revision, repo_type, parent, message))
    return {**landed, "files": sorted([*files, CARD])}


# ---------------------------------------------------------------- what is committed


def commit_message(job_id: str, source_commit: str) -> str:
    return f"gpuops job {job_id}: output of source commit {source_commit}"


def commit_description(job_id: str, source_commit: str, metadata: dict[str, Any]) -> str:
    return json.dumps({"job_id": job_id, "source_commit": source_commit, **metadata}, sort_keys=True, default=str)


def model_card(repo_id: str, job_id: str, source_commit: str, metadata: dict[str, Any],
               folder_readme: str | None) -> str:
    """README.md: front matter (tags only, which the Hub validates), then the job's metadata as a table."""
    rows = {"job id": job_id, "source commit": source_commit, **metadata}
    table = "\n".join(f"| {cell(k)} | {cell(v)} |" for k, v in rows.items())
    card = (f"---\ntags:\n- gpuops\n---\n\n# {repo_id}\n\nPublished by gpuops job `{job_id}` "
            f"from source commit `{source_commit}`.\n\n| field | value |\n|---|---|\n{table}\n")
    if folder_readme:
        card += f"\n## The output's own README\n\n{folder_readme}"
    return card


def _folder_files(folder: Path) -> tuple[list[str], str | None]:
    """The folder's regular files as repo paths (the card replaces its README.md, quoting it)."""
    if not folder.is_dir():
        raise BadInput(f"publish_folder: {folder} is not a directory")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and ".git" not in p.relative_to(folder).parts)
    readme = (folder / CARD).read_text(errors="replace") if CARD in files else None
    return [f for f in files if f != CARD], readme


def _operations(folder: Path, files: list[str], card: str) -> list:
    # Fresh objects per attempt: huggingface_hub mutates them and refuses to reuse committed ones.
    from huggingface_hub import CommitOperationAdd

    ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files]
    return ops + [CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=card.encode())]


# ---------------------------------------------------------------- calls, retries, errors


def _api(endpoint: str | None, token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)


def _create_repo(api, repo_id: str, repo_type: str) -> None:
    """Create the repo; 409 means it exists. (HfApi's exist_ok turns a 401/403 into a repo_info
    fallback whose URL parsing fails for an endpoint not set through HF_ENDPOINT before import.)"""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_repo(repo_id, repo_type=repo_type)
    except HfHubHTTPError as exc:
        if getattr(exc.response, "status_code", None) != 409:
            raise


def _landed(api, repo_id: str, revision: str, repo_type: str, parent: str, message: str) -> dict | None:
    """The read-back: our commit, if it landed after `parent` although its answer was lost."""
    for commit in api.list_repo_commits(repo_id, revision=revision, repo_type=repo_type):
        if commit.commit_id == parent:
            return None
        if commit.title == message:
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            return {"commit_url": f"{api.endpoint}/{prefix}{repo_id}/commit/{commit.commit_id}",
                    "commit_oid": commit.commit_id}
    return None


def _hub(what: str, fn: Callable[[], T], secrets: list[str],
         read_back: Callable[[], T | None] | None = None) -> T:
    """One Hub call through the project's retry helper, its errors classified and free of the token."""
    guarded_read_back = (lambda: _classified(f"{what} (read-back)", read_back, secrets)) if read_back else None
    try:
        return retry.call(f"Hugging Face Hub: {what}", lambda: _classified(what, fn, secrets),
                          read_back=guarded_read_back)
    except retry.TransientHTTPError as exc:
        err = HubPublishError(f"{exc} (still failing after retries; nothing was committed)", exc.status)
    raise err


def _classified(what: str, fn: Callable[[], T], secrets: list[str]) -> T:
    """Run fn; a Hub error leaves as TransientHTTPError (429/5xx/connection) or HubPublishError (4xx),
    raised outside the except block so it holds no chain to the request (its Authorization header)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return fn()
    except HfHubHTTPError as exc:
        err = _hub_error(what, exc, secrets)
    except _transport_errors() as exc:
        err = retry.TransientHTTPError(_redact(f"Hugging Face Hub {what}: {type(exc).__name__}: {exc}", secrets))
    raise err


def _hub_error(what: str, exc: Any, secrets: list[str]) -> Exception:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    detail = exc.server_message or str(exc).splitlines()[0]
    message = _redact(f"Hugging Face Hub {what}: HTTP {status}: {detail}", secrets)
    if status in TRANSIENT_STATUS:
        return retry.TransientHTTPError(message, status, retry_after_s(response.headers.get("Retry-After")))
    return HubPublishError(message, status)


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
