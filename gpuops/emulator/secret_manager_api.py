"""Emulation of Secret Manager API v1 (REST subset) on the Cloud Run emulator's base URL.

Routes (under /v1/, as `secretmanager_v1.SecretManagerServiceClient(transport="rest")` sends them):
  POST   projects/{p}/secrets?secretId=ID           create (409 ALREADY_EXISTS when it exists)
  GET    projects/{p}/secrets                        list (pageSize, pageToken)
  GET    projects/{p}/secrets/{s}                    get
  DELETE projects/{p}/secrets/{s}                    delete (with its versions)
  POST   projects/{p}/secrets/{s}:addVersion         a new version from payload.data (+ dataCrc32c check)
  GET    projects/{p}/secrets/{s}/versions           list, newest first
  GET    projects/{p}/secrets/{s}/versions/{v}       get ({v} a number or `latest`)
  GET    projects/{p}/secrets/{s}/versions/{v}:access  the payload
  POST   projects/{p}/secrets/{s}/versions/{v}:disable | :enable | :destroy

Bodies and queries are parsed with the secretmanager_v1 proto types, so a field Google does not
know fails here too; errors have Google's shape. Names keep the project as given (Google answers
with the project number). A payload is held in memory only; no message, log line or request
record of this module ever holds one. Workloads of the emulator read secrets through `resolve`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

from google.cloud.secretmanager_v1.types import resources, service
from google.protobuf.message import Message

from .cloudrun_common import ApiError, clone, invalid, now, paginate, parse_body, parse_query, to_json_dict

SECRET_MANAGER_LABEL = "gpuops local Secret Manager API v1 emulation (REST subset) \u2014 not Google"
MAX_PAYLOAD_BYTES = 64 * 1024  # Google: "the secret data must be no larger than 64 KiB"
SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
LABEL_KEY = re.compile(r"^[\w-]{1,63}$")  # Google: lowercase letters (any script), digits, _ and -
LABEL_VALUE = re.compile(r"^[\w-]{0,63}$")
ID = r"[^/:]+"
SECRETS = rf"projects/(?P<project>{ID})/secrets"
SECRET = rf"{SECRETS}/(?P<secret>{ID})"
VERSION = rf"{SECRET}/versions/(?P<version>{ID})"

State = resources.SecretVersion.State
ENABLED, DISABLED, DESTROYED = State.ENABLED, State.DISABLED, State.DESTROYED


@dataclass
class _Version:
    meta: Message  # resources.SecretVersion (raw protobuf)
    data: bytes = field(repr=False)


@dataclass
class _Secret:
    meta: Message  # resources.Secret (raw protobuf)
    versions: list[_Version] = field(default_factory=list)  # oldest first; numbers are never reused
    counter: int = 0


def crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


class SecretStore:
    """Secrets and their versions, behind one lock (requests arrive on a thread pool)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._secrets: dict[str, _Secret] = {}

    def reset(self) -> None:
        with self._lock:
            self._secrets.clear()

    # ------------------------------------------------------------ lookups

    def _secret(self, name: str) -> _Secret:
        found = self._secrets.get(name)
        if found is None:
            raise ApiError(404, f"Secret [{name}] not found.", "NOT_FOUND")
        return found

    def _version(self, secret_name: str, version: str) -> _Version:
        """A version by number, or `latest`: the newest enabled one."""
        secret = self._secrets.get(secret_name)
        if version == "latest":
            enabled = [v for v in (secret.versions if secret else []) if v.meta.state == ENABLED]
            if not enabled:
                raise ApiError(404, f"Secret [{secret_name}] not found or has no versions.", "NOT_FOUND")
            return enabled[-1]
        wanted = f"{secret_name}/versions/{version}"
        found = next((v for v in (secret.versions if secret else []) if v.meta.name == wanted), None)
        if found is None:
            raise ApiError(404, f"Secret Version [{wanted}] not found.", "NOT_FOUND")
        return found

    # ------------------------------------------------------------ secrets

    def create(self, project: str, secret_id: str, body: Message) -> Message:
        if not SECRET_ID.match(secret_id or ""):
            raise invalid("secret_id must be 1 to 255 letters, digits, underscores or hyphens")
        check_labels(body.labels)
        name = f"projects/{project}/secrets/{secret_id}"
        with self._lock:
            if name in self._secrets:
                raise ApiError(409, f"Secret [{name}] already exists.", "ALREADY_EXISTS")
            meta = clone(body)
            for output in ("create_time", "etag"):
                meta.ClearField(output)
            meta.name = name
            if not meta.HasField("replication"):
                meta.replication.automatic.SetInParent()
            meta.create_time.CopyFrom(now())
            meta.etag = _etag(name, 0)
            self._secrets[name] = _Secret(meta)
            return clone(meta)

    def get(self, name: str) -> Message:
        with self._lock:
            return clone(self._secret(name).meta)

    def list(self, parent: str, page_size: int, page_token: str) -> tuple[list[Message], str, int]:
        with self._lock:
            items = [clone(s.meta) for n, s in sorted(self._secrets.items()) if n.startswith(parent + "/secrets/")]
        page, token = paginate(items, page_size, page_token)
        return page, token, len(items)

    def delete(self, name: str, etag: str = "") -> None:
        with self._lock:
            secret = self._secret(name)
            if etag and etag != secret.meta.etag:
                raise ApiError(409, f"The etag provided for Secret [{name}] does not match.", "ABORTED")
            del self._secrets[name]

    # ------------------------------------------------------------ versions

    def add_version(self, secret_name: str, payload: Message) -> Message:
        data = bytes(payload.data)
        if len(data) > MAX_PAYLOAD_BYTES:
            raise invalid(f"Secret Version payload data must be no larger than {MAX_PAYLOAD_BYTES} bytes.")
        checked = payload.HasField("data_crc32c")
        if checked and payload.data_crc32c != crc32c(data):
            # Google names the mismatch, never the data.
            raise invalid("Checksum mismatch: data_crc32c does not match the CRC32C of the payload data.")
        with self._lock:
            secret = self._secret(secret_name)
            secret.counter += 1
            meta = resources.SecretVersion.pb()(name=f"{secret_name}/versions/{secret.counter}", state=ENABLED,
                                                client_specified_payload_checksum=checked,
                                                etag=_etag(secret_name, secret.counter))
            meta.create_time.CopyFrom(now())
            meta.replication_status.automatic.SetInParent()
            secret.versions.append(_Version(meta, data))
            return clone(meta)

    def list_versions(self, secret_name: str, page_size: int, page_token: str) -> tuple[list[Message], str, int]:
        with self._lock:
            items = [clone(v.meta) for v in reversed(self._secret(secret_name).versions)]
        page, token = paginate(items, page_size, page_token)
        return page, token, len(items)

    def get_version(self, secret_name: str, version: str) -> Message:
        with self._lock:
            self._secret(secret_name)
            return clone(self._version(secret_name, version).meta)

    def access(self, secret_name: str, version: str) -> tuple[Message, bytes]:
        with self._lock:
            self._secret(secret_name)
            found = self._version(secret_name, version)
            if found.meta.state != ENABLED:
                state = State(found.meta.state).name
                raise ApiError(400, f"Secret Version [{found.meta.name}] is in {state} state.", "FAILED_PRECONDITION")
            return clone(found.meta), found.data

    def set_state(self, secret_name: str, version: str, state: int) -> Message:
        with self._lock:
            self._secret(secret_name)
            found = self._version(secret_name, version)
            if found.meta.state == DESTROYED and state != DESTROYED:
                raise ApiError(400, f"Secret Version [{found.meta.name}] is in DESTROYED state.", "FAILED_PRECONDITION")
            found.meta.state = state
            if state == DESTROYED:
                found.data = b""
                found.meta.destroy_time.CopyFrom(now())
            return clone(found.meta)

    # ------------------------------------------------------------ what workloads read

    def resolve(self, project: str, secret: str, version: str) -> str | None:
        """A secretKeyRef's value for a workload (`secret` a short name or projects/P/secrets/S), or None
        when the version does not exist or is not enabled (the workload then sees a placeholder)."""
        name = secret if secret.startswith("projects/") else f"projects/{project}/secrets/{secret}"
        try:
            _, data = self.access(name, version or "latest")
        except ApiError:
            return None
        return data.decode("utf-8", errors="replace")


def check_labels(labels) -> None:
    if len(labels) > 64:
        raise invalid("A secret can have at most 64 labels.")
    for key, value in labels.items():
        if not LABEL_KEY.match(key) or key[0].isdigit() or key[0] in "_-" or key != key.lower():
            raise invalid(f"Invalid label key '{key}': start with a lowercase letter; lowercase letters, "
                          "digits, underscores and hyphens, at most 63 characters.")
        if not LABEL_VALUE.match(value) or value != value.lower():
            raise invalid(f"Invalid value for label '{key}': lowercase letters, digits, underscores and "
                          "hyphens, at most 63 characters.")


def _etag(name: str, generation: int) -> str:
    import hashlib

    return '"' + hashlib.sha1(f"{name}:{generation}".encode()).hexdigest()[:13] + '"'


# ---------------------------------------------------------------- HTTP


def _create(store: SecretStore, m: re.Match, query: list, body: str) -> Message:
    req = parse_query(query, service.CreateSecretRequest)
    return store.create(m["project"], req.secret_id, parse_body(body, resources.Secret))


def _list(store: SecretStore, m: re.Match, query: list, body: str) -> Message:
    req = parse_query(query, service.ListSecretsRequest)
    if req.filter:
        raise invalid("the emulation does not filter secrets: leave filter empty")
    items, token, total = store.list(f"projects/{m['project']}", req.page_size, req.page_token)
    return service.ListSecretsResponse.pb()(secrets=items, next_page_token=token, total_size=total)


def _get(store: SecretStore, m: re.Match, query: list, body: str) -> Message:
    parse_query(query, service.GetSecretRequest)
    return store.get(_name(m))


def _delete(store: SecretStore, m: re.Match, query: list, body: str) -> dict:
    req = parse_query(query, service.DeleteSecretRequest)
    store.delete(_name(m), req.etag)
    return {}


def _add_version(store: SecretStore, m: re.Match, query: list, body: str) -> Message:
    parse_query(query, service.AddSecretVersionRequest)
    req = parse_body(body, service.AddSecretVersionRequest)
    if req.parent and req.parent != _name(m):
        raise invalid("parent in the body does not match the URL")
    return store.add_version(_name(m), req.payload)


def _list_versions(store: SecretStore, m: re.Match, query: list, body: str) -> Message:
    req = parse_query(query, service.ListSecretVersionsRequest)
    if req.filter:
        raise invalid("the emulation does not filter versions: leave filter empty")
    items, token, total = store.list_versions(_name(m), req.page_size, req.page_token)
    return service.ListSecretVersionsResponse.pb()(versions=items, next_page_token=token, total_size=total)


def _get_version(store: SecretStore, m: re.Match, query: list, body: str) -> Message:
    parse_query(query, service.GetSecretVersionRequest)
    return store.get_version(_name(m), m["version"])


def _access(store: SecretStore, m: re.Match, query: list, body: str) -> Message:
    parse_query(query, service.AccessSecretVersionRequest)
    meta, data = store.access(_name(m), m["version"])
    payload = resources.SecretPayload.pb()(data=data, data_crc32c=crc32c(data))
    return service.AccessSecretVersionResponse.pb()(name=meta.name, payload=payload)


def _state_change(state: int):
    def handler(store: SecretStore, m: re.Match, query: list, body: str) -> Message:
        parse_query(query, service.DisableSecretVersionRequest)
        parse_body(body, service.DisableSecretVersionRequest, allow_empty=True)
        return store.set_state(_name(m), m["version"], state)

    return handler


def _name(m: re.Match) -> str:
    return f"projects/{m['project']}/secrets/{m['secret']}"


ROUTES = [(method, re.compile(pattern), handler) for method, pattern, handler in (
    ("POST", SECRETS, _create), ("GET", SECRETS, _list),
    ("GET", SECRET, _get), ("DELETE", SECRET, _delete),
    ("POST", rf"{SECRET}:addVersion", _add_version),
    ("GET", rf"{SECRET}/versions", _list_versions),
    ("GET", VERSION, _get_version), ("GET", rf"{VERSION}:access", _access),
    ("POST", rf"{VERSION}:disable", _state_change(DISABLED)),
    ("POST", rf"{VERSION}:enable", _state_change(ENABLED)),
    ("POST", rf"{VERSION}:destroy", _state_change(DESTROYED)),
)]


def handle(store: SecretStore, method: str, path: str, query: list, body: str,
           content_type: str = "application/json") -> tuple[int, dict]:
    """One /v1/ request: (HTTP status, JSON body), errors in Google's shape."""
    alt = dict(query).get("$alt", "")
    tail = path[len("/v1/"):]
    try:
        if method in ("POST", "PATCH") and body.strip() and \
                content_type.split(";", 1)[0].strip().lower() != "application/json":
            raise invalid(f"Unsupported content with type: {content_type or '(none)'}")
        for route_method, pattern, handler in ROUTES:
            match = pattern.fullmatch(tail)
            if match and route_method == method:
                result = handler(store, match, query, body)
                return 200, result if isinstance(result, dict) else to_json_dict(result, "enum-encoding=int" in alt)
        raise ApiError(404, f"Method not found: {method} {path} ({SECRET_MANAGER_LABEL})", "NOT_FOUND")
    except ApiError as exc:
        return exc.code, exc.body()
