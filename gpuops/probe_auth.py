"""Credentials the probes send: a Google ID token for the URL they call and/or a header from a Secret block or env var.

Parameters name where a secret is (a Prefect Secret block, an environment variable), never its
value. Values are read when a probe first needs them, kept in memory only, and left out of every
repr, pickle, log line and message; text that may echo them goes through `redact`.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Optional

from gpuops.errors import BadInput, CouldNotRun

DEFAULT_API_KEY_HEADER = "X-API-Key"
REDACTED = "[redacted]"
_MESSAGE_CHARS = 200  # of an error from google-auth: enough to name it


@dataclass(frozen=True)
class HeaderSecret:
    """A header whose value lives in a Prefect Secret block or an environment variable (named, never held)."""

    header: str = DEFAULT_API_KEY_HEADER
    secret_block: Optional[str] = None
    env_var: Optional[str] = None

    def where(self) -> str:
        if self.secret_block:
            return f"Prefect Secret block '{self.secret_block}'"
        return f"environment variable {self.env_var}"

    def flag(self) -> str:
        return "--api-key-secret" if self.secret_block else "--api-key-env"

    def load(self) -> str:
        """The value, checked to be sendable; BadInput naming the place (never the value) when it is not."""
        value = self._from_block() if self.secret_block else os.environ.get(self.env_var or "")
        if value is None or not str(value).strip():
            raise BadInput(f"{self.where()} ({self.flag()}) is not set or empty: set it to the value of "
                           f"header {self.header}, or name another with {self.flag()}.")
        if not isinstance(value, str) or not _sendable(value.strip()):
            # httpx and h11 put a refused value in their exception's message: refuse it here, unnamed.
            raise BadInput(f"the value in {self.where()} ({self.flag()}) cannot be sent as header {self.header}: "
                           "it must be one line of printable ASCII.")
        return value.strip()

    def _from_block(self):
        from prefect.blocks.system import Secret

        try:
            block = Secret.load(self.secret_block)
        except ValueError:
            raise BadInput(f"{self.where()} (--api-key-secret) was not found: save the key as a Secret block "
                           f"named '{self.secret_block}' (Prefect UI: Blocks > Secret), or name another.") from None
        return block.get()


def untagged(url: str) -> str:
    """The service's own URL for a tag URL (`https://TAG---svc-hash.a.run.app` -> `https://svc-hash.a.run.app`).

    Cloud Run always accepts its Google-generated service URL as an ID token's audience, so a probe
    of a tag URL asks for a token for the service URL. The emulator's tag URLs carry the tag in
    the path's last segment; the same rule applies there.
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url.rstrip("/"))
    host, path = parts.netloc, parts.path
    if "---" in host.split(".", 1)[0]:
        host = host.split("---", 1)[1]
    elif "---" in path.rsplit("/", 1)[-1]:
        head, _, last = path.rpartition("/")
        path = f"{head}/{last.split('---', 1)[1]}"
    return urlunsplit((parts.scheme, host, path, "", ""))


def _sendable(value: str) -> bool:
    return bool(value) and all(0x20 <= ord(c) <= 0x7E or c == "\t" for c in value)


class ProbeAuth:
    """What a probe adds to each request: `headers_for(service_url)`; cached ID tokens are refreshed near expiry.

    id_token: send `Authorization: Bearer <Google ID token>` with audience = the service URL called,
        its untagged form for a tag URL (or `id_token_audience`, for a custom audience). Credentials come from google-auth:
        GOOGLE_APPLICATION_CREDENTIALS (a service account key file) or the metadata server on Google.
    api_key: a header whose value is read from a Secret block or an env var.
    """

    def __init__(self, id_token: bool = False, id_token_audience: Optional[str] = None,
                 api_key: Optional[HeaderSecret] = None):
        self.id_token = bool(id_token or id_token_audience)
        self.id_token_audience = id_token_audience
        self.api_key = api_key
        self._lock = threading.Lock()
        self._key_value: Optional[str] = None
        self._credentials: dict[str, object] = {}  # audience -> google-auth ID-token credentials

    # ---------------------------------------------------------------- what is sent

    def headers_for(self, service_url: str) -> dict[str, str]:
        """The headers for a request to `service_url` (the service's or tag's URL, without a path)."""
        headers: dict[str, str] = {}
        if self.id_token:
            headers["Authorization"] = f"Bearer {self._id_token(self.audience_for(service_url))}"
        if self.api_key is not None:
            headers[self.api_key.header] = self._api_key()
        return headers

    def prepare(self, service_url: Optional[str] = None) -> None:
        """Fetch every credential once now, so a missing one fails before anything runs."""
        if self.api_key is not None:
            self._api_key()
        if self.id_token and service_url:
            self._id_token(self.audience_for(service_url))

    def audience_for(self, service_url: str) -> str:
        return self.id_token_audience or untagged(service_url)

    def describe(self) -> str:
        """What is sent, for logs and reports: kinds and places, never values."""
        sent = []
        if self.id_token:
            audience = f"'{self.id_token_audience}'" if self.id_token_audience else "the URL called"
            sent.append(f"a Google ID token (audience {audience})")
        if self.api_key is not None:
            sent.append(f"header {self.api_key.header} from {self.api_key.where()}")
        return " and ".join(sent) or "no credentials"

    def redact(self, text: Optional[str]) -> Optional[str]:
        """`text` with any value this provider holds (key, ID tokens) replaced by [redacted]."""
        if not text:
            return text
        for value in self._held_values():
            text = text.replace(value, REDACTED)
        return text

    def __repr__(self) -> str:
        return f"ProbeAuth({self.describe()})"

    def __getstate__(self) -> dict:
        # Pickled (a Prefect result, a subprocess): the places travel, the values and tokens do not.
        return {"id_token": self.id_token, "id_token_audience": self.id_token_audience, "api_key": self.api_key}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    # ---------------------------------------------------------------- reading the values

    def _held_values(self) -> list[str]:
        with self._lock:
            tokens = [getattr(c, "token", None) for c in self._credentials.values()]
            return [v for v in [self._key_value, *tokens] if isinstance(v, str) and v]

    def _api_key(self) -> str:
        with self._lock:
            if self._key_value is None:
                self._key_value = self.api_key.load()
            return self._key_value

    def _id_token(self, audience: str) -> str:
        import google.auth.transport.requests
        from google.auth import exceptions

        request = google.auth.transport.requests.Request()
        with self._lock:
            try:
                credentials = self._credentials.get(audience) or _id_token_credentials(audience, request)
                self._credentials[audience] = credentials
                if not credentials.valid:  # google-auth counts a token near its expiry as not valid
                    credentials.refresh(request)
            except exceptions.GoogleAuthError as exc:
                said = str(exc)[:_MESSAGE_CHARS]
                raise CouldNotRun(f"could not get a Google ID token for audience {audience}: "
                                  f"{type(exc).__name__}: {said}") from None
            return credentials.token


def _id_token_credentials(audience: str, request):
    """google-auth's ID-token credentials from the environment (a key file, or the metadata server)."""
    import google.oauth2.id_token
    from google.auth import exceptions

    try:
        return google.oauth2.id_token.fetch_id_token_credentials(audience, request=request)
    except exceptions.DefaultCredentialsError as exc:
        raise BadInput(f"--id-token: no Google credentials to sign an ID token for {audience} "
                       f"({str(exc)[:_MESSAGE_CHARS]}): set GOOGLE_APPLICATION_CREDENTIALS to a service "
                       "account key file, or run where the metadata server answers (on Google).") from None


def from_parameters(id_token: bool = False, id_token_audience: Optional[str] = None,
                    api_key_header: str = DEFAULT_API_KEY_HEADER, api_key_secret: Optional[str] = None,
                    api_key_env: Optional[str] = None) -> Optional[ProbeAuth]:
    """A provider from a flow's parameters (checked by params.probe_auth first); None when nothing is asked."""
    api_key = None
    if api_key_secret or api_key_env:
        api_key = HeaderSecret(api_key_header, api_key_secret or None, api_key_env or None)
    if not (id_token or id_token_audience or api_key):
        return None
    return ProbeAuth(id_token, id_token_audience, api_key)


# ---------------------------------------------------------------- reading a refusal


def explain_refusal(auth: Optional[ProbeAuth], service_url: str, status: Optional[int],
                    www_authenticate: str = "", body: str = "") -> Optional[str]:
    """Which credential a 401/403 answer asks for, and the flag that sends it; None for other answers.

    Cloud Run's front end refuses a missing ID token with 403 "Your client does not have permission",
    a bad one with 401 and `WWW-Authenticate: Bearer`; anything else refusing is the app (its key).
    """
    if status not in (401, 403):
        return None
    sent_token = bool(auth and auth.id_token)
    key = auth.api_key if auth else None
    if "bearer" in (www_authenticate or "").lower() or "does not have permission" in (body or ""):
        if not sent_token:
            return (f"the service answered {status}: it requires a Google ID token and none was sent: pass "
                    "--id-token (flow parameter id_token; audience = the service URL, or --id-token-audience)")
        return (f"the service answered {status} to the ID token sent (audience {auth.audience_for(service_url)}): "
                "check the audience (--id-token-audience) and that the account has roles/run.invoker")
    if key is None:
        return (f"the service answered {status}: it requires an API key header (e.g. {DEFAULT_API_KEY_HEADER}) "
                "and none was sent: name a Secret block with --api-key-secret (or an env var with "
                "--api-key-env; --api-key-header for another header name)")
    return (f"the service answered {status} to header {key.header} from {key.where()}: the value there "
            "is wrong, or the service expects another header (--api-key-header)")
