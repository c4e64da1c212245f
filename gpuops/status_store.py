"""Jobs' status.json and logs in an S3-compatible bucket (R2, S3, moto), written with conditional puts.

Every write of an existing object sends the ETag it read (`If-Match`), every first write
`If-None-Match: *`; a 412 (or S3's 409 ConditionalRequestConflict) means another writer got there
first, so `update` reads again and applies its change again. No update is lost, with any number of
writers. Transient errors go through gpuops.retry (botocore's own retries are off, so they do not
multiply). Credentials are handed to boto3 and kept nowhere else: not in a repr, an error or a log.
"""
from __future__ import annotations

import json
import os
import random
import time
from datetime import datetime
from typing import Callable

from gpuops import job_status, retry

STATUS_NAME = "status.json"
INDEX_KEY = "index.html"
CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
MAX_CONFLICTS = 100  # two writers per job is the usual case; this only ends a pathological fight


class MissingJob(LookupError):
    """No status.json for that job id in the bucket."""


class WriteConflict(RuntimeError):
    """Other writers kept changing the object for MAX_CONFLICTS attempts in a row."""


class StatusStore:
    """One bucket of jobs: `{jobId}/status.json`, `{jobId}/build.log`, `{jobId}/app.log`, and `index.html`."""

    def __init__(self, bucket: str, *, endpoint_url: str | None = None, region_name: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 backoff: retry.Backoff | None = None):
        if not bucket:
            raise ValueError("a status bucket name is needed (GPUOPS_STATUS_BUCKET)")
        self.bucket, self.endpoint_url = bucket, endpoint_url
        self.backoff = backoff
        # The keys go to the client and nowhere else on this object.
        self._client = _client(endpoint_url, region_name or default_region(endpoint_url),
                               access_key_id, secret_access_key)

    @classmethod
    def from_env(cls, **overrides) -> "StatusStore":
        """GPUOPS_STATUS_BUCKET and GPUOPS_S3_ENDPOINT (CONTRACTS §2); keys from boto3's own chain
        (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile) unless given. An argument wins."""
        settings = {"bucket": os.environ.get("GPUOPS_STATUS_BUCKET", ""),
                    "endpoint_url": os.environ.get("GPUOPS_S3_ENDPOINT") or None}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**settings)

    def __repr__(self) -> str:
        return f"StatusStore(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    # --- status.json --------------------------------------------------------------------------------

    def read(self, job_id: str) -> dict:
        """The job's status.json; MissingJob when there is none."""
        found = self._get(status_key(job_id))
        if found is None:
            raise MissingJob(job_id)
        return json.loads(found[0])

    def create(self, doc: dict) -> bool:
        """Write a new job's status.json unless one exists: True if written, False if it was already there."""
        return self._put_new(status_key(doc["jobId"]), _dump(doc), "application/json")

    def update(self, job_id: str, change: Callable[[dict], dict]) -> dict:
        """Apply `change` to the job's current status.json and write it back only over what was read.

        On a conflict `change` runs again on the newer document, so it must be a function of the
        document alone (a transition, not "set this whole object"). Returns the document written
        (or read, when `change` left it as it was). MissingJob when the job has no status yet.
        """
        key = status_key(job_id)
        for _ in range(MAX_CONFLICTS):
            found = self._get(key)
            if found is None:
                raise MissingJob(job_id)
            body, etag = found
            current = json.loads(body)
            new = change(json.loads(body))  # a fresh copy: `change` may mutate what it gets
            if new == current:
                return current
            if self._put_over(key, _dump(new), etag, "application/json"):
                return new
            _pause()
        raise WriteConflict(f"{key}: changed by other writers {MAX_CONFLICTS} times in a row")

    def list_jobs(self) -> list[dict]:
        """Every job's status.json, in bucket order; a document that does not parse as §7 is listed as
        `{"jobId": ..., "unreadable": "<why>"}` rather than hiding the others."""
        jobs = []
        for job_id in self.job_ids():
            found = self._get(status_key(job_id))
            if found is not None:
                jobs.append(_parsed(job_id, found[0]))
        return jobs

    # --- logs and the page --------------------------------------------------------------------------

    def append_log(self, job_id: str, stage: str, text: str) -> None:
        """Add `text` to the stage's log (`build` -> build.log, `run` -> app.log), losing no other append.

        S3 has no append: the whole object is rewritten over the ETag read, so this suits logs of a
        few MiB written in chunks of lines, not byte by byte.
        """
        key = job_status.log_key(job_status.check_job_id(job_id), stage)
        data = text.encode("utf-8")
        for _ in range(MAX_CONFLICTS):
            found = self._get(key)
            if found is None and self._put_new(key, data, "text/plain; charset=utf-8"):
                return
            if found is not None and self._put_over(key, found[0] + data, found[1], "text/plain; charset=utf-8"):
                return
            _pause()
        raise WriteConflict(f"{key}: changed by other writers {MAX_CONFLICTS} times in a row")

    def read_log(self, job_id: str, stage: str) -> str:
        found = self._get(job_status.log_key(job_status.check_job_id(job_id), stage))
        return "" if found is None else found[0].decode("utf-8", errors="replace")

    def upload_page(self, html: str, key: str = INDEX_KEY) -> str:
        """Put the dashboard page (replacing the last one) and return its `s3://` address."""
        body = html.encode("utf-8")
        retry.call(f"put {key}", lambda: self._client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType="text/html; charset=utf-8"), backoff=self.backoff)
        return f"s3://{self.bucket}/{key}"

    # --- other JSON documents (dead letters) --------------------------------------------------------

    def put_new_json(self, key: str, doc: dict) -> bool:
        """Write a JSON document at `key` unless one is there: True if written, False if it already was
        (the first writer wins; a repeat never overwrites)."""
        return self._put_new(key, _dump(doc), "application/json")

    def read_json(self, key: str) -> dict | None:
        """The JSON document at `key`, or None when there is none."""
        found = self._get(key)
        return None if found is None else json.loads(found[0])

    # --- one function per remote call ---------------------------------------------------------------

    def _get(self, key: str) -> tuple[bytes, str] | None:
        """(body, ETag) of an object, or None when there is none."""
        def get():
            try:
                answer = self._client.get_object(Bucket=self.bucket, Key=key)
            except self._client.exceptions.NoSuchKey:
                return None
            return answer["Body"].read(), answer["ETag"]

        return retry.call(f"get {key}", get, backoff=self.backoff)

    def _put_new(self, key: str, body: bytes, content_type: str) -> bool:
        """Create the object if absent; False when it exists (someone else created it first)."""
        return self._put_conditional(key, body, content_type, IfNoneMatch="*")

    def _put_over(self, key: str, body: bytes, etag: str, content_type: str) -> bool:
        """Replace the object if it is still the one read (its ETag); False when another writer changed it."""
        return self._put_conditional(key, body, content_type, IfMatch=etag)

    def _put_conditional(self, key: str, body: bytes, content_type: str, **condition) -> bool:
        def put():
            try:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type,
                                        **condition)
            except self._client.exceptions.ClientError as exc:
                if _is_conflict(exc):
                    return False
                raise
            return True

        # A put whose answer was lost may have landed: if the object now holds exactly our bytes it
        # did, and sending it again would only meet a 412 and apply the change twice.
        return retry.call(f"put {key}", put, backoff=self.backoff, read_back=lambda: self._holds(key, body))

    def _holds(self, key: str, body: bytes) -> bool | None:
        found = self._get(key)
        return True if found is not None and found[0] == body else None

    def keys(self, prefix: str) -> list[tuple[str, datetime]]:
        """(key, last modified) of every object under `prefix`, in key order (the dead letters under dlq/)."""
        def page_through():
            found = []
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                found += [(o["Key"], o["LastModified"]) for o in page.get("Contents", [])]
            return found

        return retry.call(f"list {self.bucket}/{prefix}", page_through, backoff=self.backoff)

    def job_ids(self, prefix: str = "") -> list[str]:
        """The ids of the jobs (top-level folders) starting with `prefix`, in bucket order."""
        def page_through():
            ids = []
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                           Delimiter="/")
            for page in pages:
                ids += [p["Prefix"].rstrip("/") for p in page.get("CommonPrefixes", [])]
            return ids

        return retry.call(f"list {self.bucket}", page_through, backoff=self.backoff)


def configured(**overrides) -> StatusStore:
    """The bucket the environment names (CONTRACTS §2); bad input naming the variables when it names none."""
    from gpuops.errors import BadInput

    if not os.environ.get("GPUOPS_STATUS_BUCKET"):
        raise BadInput("GPUOPS_STATUS_BUCKET is not set (Fix: export GPUOPS_STATUS_BUCKET=<bucket holding "
                       "{jobId}/status.json>, and GPUOPS_S3_ENDPOINT=<endpoint URL> for R2 or a local stand-in; "
                       "or name a gpuops-status-bucket block)")
    return StatusStore.from_env(**overrides)


def status_key(job_id: str) -> str:
    return f"{job_status.check_job_id(job_id)}/{STATUS_NAME}"


def default_region(endpoint_url: str | None) -> str:
    """R2 wants "auto"; elsewhere the usual AWS variables, else us-east-1."""
    if endpoint_url and ".r2.cloudflarestorage.com" in endpoint_url:
        return "auto"
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _client(endpoint_url, region_name, access_key_id, secret_access_key):
    import boto3  # only where a bucket is used: the CLI and the library stay light to import
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": 1},  # gpuops.retry is the one retry loop
        connect_timeout=10, read_timeout=60,
        # R2 rejects the newer default checksum trailers; send checksums only where S3 requires them.
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region_name, config=config,
        aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key)


def _is_conflict(exc) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in CONFLICT_CODES or status in (409, 412)


def _parsed(job_id: str, body: bytes) -> dict:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        return {"jobId": job_id, "unreadable": f"not JSON ({exc})"}
    problems = job_status.check_document(doc)
    return {"jobId": job_id, "unreadable": "; ".join(problems)} if problems else doc


def _dump(doc: dict) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=False).encode("utf-8")


def _pause() -> None:
    # A short jittered wait so two writers that just collided do not collide again in lockstep.
    time.sleep(random.uniform(0, 0.02))
