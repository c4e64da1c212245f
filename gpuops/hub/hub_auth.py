"""Who may call the hub: the X-API-Key, GitHub's webhook signature, and Pub/Sub push authentication.

Secrets come from environment variables or Prefect Secret blocks (an environment variable wins)
and stay out of every repr, message and log line: a refusal says which credential failed and
how to fix it, never what was expected or what was sent.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Optional
from urllib.parse import urlsplit

from gpuops.errors import BadInput

OIDC, TOKEN = "oidc", "token"
MODES = (OIDC, TOKEN)
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"  # google-auth's default: {kid: PEM}
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")  # the `iss` of Google's ID tokens
CERTS_TTL_S = 300.0  # Google publishes a new key well before signing with it; verify_token would fetch per call
CERTS_TIMEOUT_S = 5.0  # google-auth's requests transport waits 120 s by default
CLOCK_SKEW_S = 10  # tolerated drift between Google's clock and the hub's, for iat and exp
MIN_PUSH_TOKEN_CHARS = 16
_PUSH_TOKEN = re.compile(r"^[A-Za-z0-9._~-]+$")  # URL-unreserved: the token sits unencoded in the push URL
_SIGNATURE = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

# Setting -> environment variable; `blocks` in settings_from_env may name a Secret block for the secrets.
ENV = {
    "api_key": "GPUOPS_HUB_API_KEY",
    "github_secret": "GITHUB_WEBHOOK_SECRET",
    "pubsub_audience": "GPUOPS_PUBSUB_AUDIENCE",
    "pubsub_token": "GPUOPS_PUBSUB_PUSH_TOKEN",
    "pubsub_certs_url": "GPUOPS_PUBSUB_CERTS_URL",
    "pubsub_service_account": "GPUOPS_PUBSUB_SERVICE_ACCOUNT",
}
SECRET_SETTINGS = ("api_key", "github_secret", "pubsub_token")

# google-auth's message (which may quote the token) -> what the hub says instead.
_TOKEN_FAILURES = (
    ("Token expired", "the ID token has expired"),
    ("Token used too early", "the ID token is not valid yet: check this host's clock"),
    ("Token has wrong audience", f"the ID token's audience is not {ENV['pubsub_audience']}: set the push "
                                 "subscription's --push-auth-token-audience to it"),
    ("Could not verify token signature", "the ID token's signature does not verify against the certs"),
    ("Certificate for key id", "the ID token is signed by a key the certs do not hold"),
)


class Unauthorized(Exception):
    """A refused credential. `status`: 401 missing or invalid, 403 valid but from an account not allowed."""

    def __init__(self, reason: str, status: int = 401):
        super().__init__(reason)
        self.reason, self.status = reason, status


class AuthUnavailable(RuntimeError):
    """The credential could not be checked (the certs did not load): answer 503 so the sender retries."""


# --- X-API-Key and GitHub ---------------------------------------------------------------------


def api_key_ok(given: Any, expected: Any) -> bool:
    """True when both are non-empty and equal, compared in constant time; False for anything odd."""
    given_bytes, expected_bytes = _as_bytes(given), _as_bytes(expected)
    if not given_bytes or not expected_bytes:
        return False
    return hmac.compare_digest(given_bytes, expected_bytes)


def github_signature_ok(secret: Any, raw_body: Any, header: Any) -> bool:
    """`X-Hub-Signature-256: sha256=<hex>` is the HMAC-SHA256 of the raw body under the webhook secret.

    An empty secret never matches: anyone can compute an HMAC under an empty key.
    """
    key = _as_bytes(secret)
    match = _SIGNATURE.match(header.strip()) if isinstance(header, str) else None
    if not key or match is None or not isinstance(raw_body, (bytes, bytearray)):
        return False
    expected = hmac.new(key, bytes(raw_body), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, match.group(1).lower())


def _as_bytes(value: Any) -> Optional[bytes]:
    # compare_digest refuses non-ASCII str; surrogatepass keeps odd input (lone surrogates) from raising.
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return None


# --- Pub/Sub push -----------------------------------------------------------------------------


class PubSubAuth:
    """How Pub/Sub push deliveries authenticate: mode "oidc" or "token"; `check` raises Unauthorized.

    oidc: `Authorization: Bearer <Google ID token>`, verified with google-auth against `certs_url`
        (Google's by default), with `audience` required and checked, the issuer Google's, and, when
        `service_account` is set, the token's verified email that account.
    token: `?token=<token>` in the push URL, compared in constant time; for push endpoints where
        OIDC is not available (Google's Pub/Sub emulator pushes without a token).
    `request` is a google-auth transport (default: requests, bounded by CERTS_TIMEOUT_S); the certs
    it fetches are kept CERTS_TTL_S.
    """

    def __init__(self, mode: str, audience: Optional[str] = None, token: Optional[str] = None,
                 certs_url: Optional[str] = None, service_account: Optional[str] = None,
                 request: Optional[Callable] = None):
        if mode not in MODES:
            raise BadInput(f"Pub/Sub auth mode {str(mode)[:32]!r} is not one of {', '.join(MODES)}: set "
                           f"{ENV['pubsub_audience']} (oidc) or {ENV['pubsub_token']} (token).")
        self.mode = mode
        self.audience = _audience(audience) if mode == OIDC else None
        self.certs_url = _certs_url(certs_url or GOOGLE_CERTS_URL) if mode == OIDC else None
        self.service_account = _service_account(service_account) if mode == OIDC else None
        self._token = _push_token(token) if mode == TOKEN else None
        self._request = _CachedCerts(request) if mode == OIDC else None

    def check(self, authorization: Optional[str] = None, query_token: Optional[str] = None) -> None:
        """None when the delivery is authenticated; Unauthorized (or AuthUnavailable) otherwise."""
        if self.mode == TOKEN:
            self._check_token(query_token)
        else:
            self._check_id_token(authorization)

    def __repr__(self) -> str:
        if self.mode == TOKEN:
            return "PubSubAuth(mode='token', token=<set>)"
        return (f"PubSubAuth(mode='oidc', audience={self.audience!r}, certs_url={self.certs_url!r}, "
                f"service_account={self.service_account!r})")

    def _check_token(self, query_token: Optional[str]) -> None:
        if not query_token:
            raise Unauthorized("the push URL carries no ?token=: add ?token=<GPUOPS_PUBSUB_PUSH_TOKEN> to the "
                               "subscription's push endpoint")
        if not api_key_ok(query_token, self._token):
            raise Unauthorized(f"the push URL's ?token= is not {ENV['pubsub_token']}: update the subscription's "
                               "push endpoint")

    def _check_id_token(self, authorization: Optional[str]) -> None:
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("no Authorization: Bearer <ID token>: turn on authentication on the push "
                               "subscription (--push-auth-service-account, --push-auth-token-audience)")
        claims = self._verified(token.strip())
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise Unauthorized("the ID token was not issued by Google (its iss is not accounts.google.com)")
        if self.service_account and (claims.get("email") != self.service_account
                                     or claims.get("email_verified") is not True):
            raise Unauthorized(f"the ID token's account {str(claims.get('email'))[:254]} is not "
                               f"{ENV['pubsub_service_account']}: push with that service account", status=403)

    def _verified(self, token: str) -> Mapping[str, Any]:
        import google.oauth2.id_token
        from google.auth import exceptions

        try:
            return google.oauth2.id_token.verify_token(token, self._request, audience=self.audience,
                                                       certs_url=self.certs_url,
                                                       clock_skew_in_seconds=CLOCK_SKEW_S)
        except exceptions.TransportError:
            raise AuthUnavailable(f"the ID token could not be checked: the certs at {self.certs_url} did not "
                                  "load; the delivery will be retried") from None
        except (ValueError, exceptions.GoogleAuthError) as exc:
            said = str(exc)
            reason = next((why for start, why in _TOKEN_FAILURES if said.startswith(start)),
                          "the bearer value is not a Google ID token")
            raise Unauthorized(reason) from None


def _audience(audience: Any) -> str:
    if not isinstance(audience, str) or not audience.strip() or any(c.isspace() for c in audience):
        raise BadInput(f"{ENV['pubsub_audience']} is not set or not an audience: set it to the audience of the "
                       "push subscription's OIDC token (by default the push endpoint's URL).")
    return audience


def _certs_url(url: Any) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    # Plain http only on loopback (tests, a local stand-in): anyone on the path could swap the keys.
    if parts is None or not parts.netloc or not (parts.scheme == "https" or (
            parts.scheme == "http" and parts.hostname in _LOOPBACK)):
        raise BadInput(f"{ENV['pubsub_certs_url']} is not an https URL (http only on loopback): leave it unset "
                       f"for Google's {GOOGLE_CERTS_URL}.")
    return url


def _service_account(email: Any) -> Optional[str]:
    if email in (None, ""):
        return None
    if not isinstance(email, str) or email.count("@") != 1 or any(c.isspace() for c in email):
        raise BadInput(f"{ENV['pubsub_service_account']} is not a service account email: set it to e.g. "
                       "pubsub-push@PROJECT.iam.gserviceaccount.com, or leave it unset.")
    return email


def _push_token(token: Any) -> str:
    # The value is never shown: only what it lacks.
    if not isinstance(token, str) or len(token) < MIN_PUSH_TOKEN_CHARS or not _PUSH_TOKEN.match(token):
        raise BadInput(f"{ENV['pubsub_token']} is not a usable push token (not shown): set it to "
                       f"{MIN_PUSH_TOKEN_CHARS}+ characters of letters, digits, '.', '_', '~' or '-', e.g. "
                       "python -c 'import secrets; print(secrets.token_urlsafe(32))'.")
    return token


class _Answer(NamedTuple):
    """A google-auth transport response (status, headers, data)."""

    status: int
    headers: dict
    data: bytes


class _CachedCerts:
    """A google-auth transport that keeps each certs document CERTS_TTL_S and bounds the fetch.

    A document that is not a JSON object is answered as 502, so verify_token raises TransportError
    (the hub answers 503) rather than calling the token invalid.
    """

    def __init__(self, request: Optional[Callable] = None, clock: Callable[[], float] = time.monotonic):
        self._inner, self._clock = request, clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, _Answer]] = {}

    def __call__(self, url: str, method: str = "GET", body=None, headers=None, timeout=None, **kwargs):
        with self._lock:
            hit = self._cache.get(url)
        if method == "GET" and hit and self._clock() < hit[0]:
            return hit[1]
        answer = self._transport()(url, method=method, body=body, headers=headers,
                                   timeout=timeout or CERTS_TIMEOUT_S, **kwargs)
        if method != "GET":
            return answer
        if answer.status != 200 or not _json_object(answer.data):
            return _Answer(502, {}, b"")
        fetched = _Answer(200, dict(answer.headers or {}), answer.data)
        with self._lock:
            self._cache[url] = (self._clock() + CERTS_TTL_S, fetched)
        return fetched

    def _transport(self) -> Callable:
        if self._inner is None:
            import google.auth.transport.requests

            self._inner = google.auth.transport.requests.Request()
        return self._inner


def _json_object(data: Any) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except (TypeError, ValueError):
        return False


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSettings:
    """The hub's credentials and Pub/Sub settings; the secrets are left out of the repr."""

    api_key: Optional[str] = field(default=None, repr=False)
    github_secret: Optional[str] = field(default=None, repr=False)
    pubsub_audience: Optional[str] = None
    pubsub_token: Optional[str] = field(default=None, repr=False)
    pubsub_certs_url: Optional[str] = None
    pubsub_service_account: Optional[str] = None

    def pubsub_auth(self, request: Optional[Callable] = None) -> PubSubAuth:
        """OIDC when an audience is set (the push token is then not accepted), else the push token; else refused."""
        if self.pubsub_audience:
            return PubSubAuth(OIDC, audience=self.pubsub_audience, certs_url=self.pubsub_certs_url,
                              service_account=self.pubsub_service_account, request=request)
        if self.pubsub_token:
            return PubSubAuth(TOKEN, token=self.pubsub_token)
        raise BadInput(f"Pub/Sub push has no authentication: set {ENV['pubsub_audience']} to the push "
                       f"subscription's OIDC audience, or {ENV['pubsub_token']} to a random token and add "
                       "?token=<it> to the push endpoint.")


def settings_from_env(environ: Optional[Mapping[str, str]] = None,
                      blocks: Optional[Mapping[str, str]] = None) -> HubSettings:
    """The settings from ENV's variables; a secret whose variable is unset is read from the Secret block
    `blocks` names for it (setting -> block name). Load before an event loop runs: Prefect's
    `Secret.load` returns a coroutine inside one.
    """
    environ = os.environ if environ is None else environ
    unknown = sorted(set(blocks or {}) - set(SECRET_SETTINGS))
    if unknown:
        raise BadInput(f"Secret blocks named for {', '.join(unknown)}: only {', '.join(SECRET_SETTINGS)} come "
                       "from Secret blocks.")
    values = {}
    for setting, variable in ENV.items():
        value = (environ.get(variable) or "").strip() or None
        if value is None and (blocks or {}).get(setting):
            value = _secret_block(blocks[setting], variable)
        values[setting] = value
    return HubSettings(**values)


def _secret_block(name: str, variable: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except ValueError:
        raise BadInput(f"Prefect Secret block '{name}' (for {variable}) was not found: save it (Prefect UI: "
                       f"Blocks > Secret), or set {variable}.") from None
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"Prefect Secret block '{name}' (for {variable}) does not hold a non-empty string: "
                       f"save the value as text, or set {variable}.")
    return value.strip()
