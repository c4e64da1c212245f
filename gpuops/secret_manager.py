"""Secret Manager v1 adapter: one function per remote call, REST JSON dicts out; payloads stay bytes in memory.

The client is Google's own (`secretmanager_v1.SecretManagerServiceClient`, REST transport), so the code
path is the same on Google and on the emulator. prefect-gcp's `GcpSecret` wraps the same client but
cannot name an endpoint, label a secret, or guard its non-idempotent writes; gpuops calls it directly
(credentials may still come from a prefect-gcp `GcpCredentials` block). No function here logs, returns
in a dict, or puts in an exception any payload.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials

from gpuops import retry
from gpuops.cloudrun import to_dict

if TYPE_CHECKING:
    from google.cloud import secretmanager_v1

ENDPOINT_ENV = "GPUOPS_SECRET_MANAGER_API"
GOOGLE_ENDPOINT = "secretmanager.googleapis.com"
CALL_TIMEOUT_S = 60.0
TRANSPORT_LOGGER = "google.cloud.secretmanager_v1"


def _guard_transport_logs() -> None:
    from gpuops import google_logs

    google_logs.guard(TRANSPORT_LOGGER, f"{TRANSPORT_LOGGER}.services.secret_manager_service.transports.rest")


@dataclass
class SecretManager:
    """The client of one endpoint and the backoff every call here keeps."""

    endpoint: str | None
    client: secretmanager_v1.SecretManagerServiceClient
    backoff: retry.Backoff = field(default_factory=retry.Backoff.from_env)

    @property
    def is_emulator(self) -> bool:
        return bool(self.endpoint and self.endpoint.startswith("http://"))

    def where(self) -> str:
        """How a report names this API: an emulator is always labelled as one."""
        if self.is_emulator:
            return f"gpuops Secret Manager emulation at {self.endpoint} (not Google)"
        return self.endpoint or f"Google Secret Manager API ({GOOGLE_ENDPOINT})"


def connect(endpoint: str | None = None, credentials: Credentials | None = None) -> SecretManager:
    """A client for `GPUOPS_SECRET_MANAGER_API` (wins), else `endpoint` (the Cloud Run emulator's URL serves
    both), else Google with ADC or `credentials`. An http:// endpoint gets anonymous credentials."""
    from google.cloud import secretmanager_v1

    endpoint = os.environ.get(ENDPOINT_ENV) or endpoint or None
    if endpoint and endpoint.startswith("http://"):
        credentials = AnonymousCredentials()
    _guard_transport_logs()
    opts = ClientOptions(api_endpoint=endpoint) if endpoint else None
    client = secretmanager_v1.SecretManagerServiceClient(transport="rest", client_options=opts,
                                                         credentials=credentials)
    return SecretManager(endpoint=endpoint, client=client)


# --- names ---------------------------------------------------------------------------------


def secret_name(project: str, secret_id: str) -> str:
    return f"projects/{project}/secrets/{secret_id}"


def version_id(name: str) -> str:
    """`projects/p/secrets/s/versions/3` -> `3`."""
    return name.rsplit("/", 1)[-1]


def _rpc_status(exc: gexc.GoogleAPICallError) -> str:
    """The error body's `status` (FAILED_PRECONDITION, ...): over REST the exception class says only the HTTP code."""
    try:
        return exc.response.json()["error"]["status"]
    except Exception:  # no response kept, or not Google's error shape
        return ""


def _call(sm: SecretManager, what: str, fn, read_back=None):
    return retry.call(what, fn, backoff=sm.backoff, read_back=read_back)


# --- secrets -------------------------------------------------------------------------------


def get_secret(sm: SecretManager, name: str) -> dict | None:
    """The secret's metadata (labels, replication), or None when it does not exist."""
    def read():
        try:
            return to_dict(sm.client.get_secret(name=name, retry=None, timeout=CALL_TIMEOUT_S))
        except gexc.NotFound:
            return None

    return _call(sm, f"get secret {name}", read)


def create_secret(sm: SecretManager, name: str, labels: dict[str, str]) -> dict:
    """Create with automatic replication and `labels`. Not idempotent (a resend after a lost answer is
    409): after a transient failure a read-back decides, and only a secret with these labels counts."""
    parent, _, secret_id = name.partition("/secrets/")

    def send():
        return to_dict(sm.client.create_secret(
            parent=parent, secret_id=secret_id, retry=None, timeout=CALL_TIMEOUT_S,
            secret={"replication": {"automatic": {}}, "labels": labels}))

    def guard():
        current = get_secret(sm, name)
        mine = current is not None and labels.items() <= (current.get("labels") or {}).items()
        return current if mine else None

    return _call(sm, f"create secret {name}", send, read_back=guard)


def delete_secret(sm: SecretManager, name: str) -> bool:
    """Delete with its versions; False when it was already gone."""
    def send():
        try:
            sm.client.delete_secret(name=name, retry=None, timeout=CALL_TIMEOUT_S)
            return True
        except gexc.NotFound:
            return False

    return _call(sm, f"delete secret {name}", send)


# --- versions ------------------------------------------------------------------------------


def access(sm: SecretManager, name: str) -> tuple[str, bytes] | None:
    """(the version's full name, its data) for a version name or `.../versions/latest` (the newest
    enabled one); None when there is none. The data is for comparing or handing on, never for showing."""
    def read():
        try:
            answer = sm.client.access_secret_version(name=name, retry=None, timeout=CALL_TIMEOUT_S)
        except (gexc.NotFound, gexc.FailedPrecondition):
            return None
        except gexc.BadRequest as exc:
            if _rpc_status(exc) == "FAILED_PRECONDITION":  # a disabled or destroyed version (a 400 over REST)
                return None
            raise
        return answer.name, bytes(answer.payload.data)

    return _call(sm, f"access {name}", read)


def latest_version_name(sm: SecretManager, secret: str) -> str | None:
    """The newest version's name, whatever its state (for the add-version guard)."""
    def read():
        try:
            pager = sm.client.list_secret_versions(request={"parent": secret, "page_size": 1}, retry=None,
                                                   timeout=CALL_TIMEOUT_S)
            first = next(iter(pager.pages), None)
        except gexc.NotFound:
            return None
        return first.versions[0].name if first is not None and first.versions else None

    return _call(sm, f"list versions of {secret}", read)


def add_version(sm: SecretManager, secret: str, data: bytes) -> dict:
    """Add `data` as a new version (with its CRC32C, so a corrupted payload is refused). Not idempotent:
    after a transient failure, a newer version than the one before holding the same data is this write."""
    import google_crc32c

    before = latest_version_name(sm, secret)
    checksum = int(google_crc32c.value(data))

    def send():
        return to_dict(sm.client.add_secret_version(parent=secret, payload={"data": data, "data_crc32c": checksum},
                                                    retry=None, timeout=CALL_TIMEOUT_S))

    def guard():
        newest = latest_version_name(sm, secret)
        if newest is None or newest == before:
            return None
        found = access(sm, newest)
        return {"name": newest, "state": "ENABLED"} if found is not None and found[1] == data else None

    return _call(sm, f"add a version to {secret}", send, read_back=guard)


def matching_version(sm: SecretManager, secret: str, data: bytes) -> str | None:
    """The newest enabled version's name when it holds exactly `data` (compared here, never shown)."""
    found = access(sm, f"{secret}/versions/latest")
    return found[0] if found is not None and found[1] == data else None
