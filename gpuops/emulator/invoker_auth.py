"""Per-service invoker authentication on the emulator's service URLs, as Cloud Run's front end does it.

A service can require a Google ID token (Authorization: Bearer, audience = one of its URLs) and/or
a header value (the runbook's app checks an `X-API-Key`). Missing or wrong credentials are refused
before the request reaches a revision: no token 403, a bad token 401 with `WWW-Authenticate`
(Google's front end), a missing or wrong header 401 (the app's own check).

Control routes (never logged, never faulted):
  POST   /emulator/v1/auth/token                    OAuth2 token endpoint (see id_tokens)
  POST   /emulator/v1/auth/service-account-keys     a new service-account key file, token_uri here
  POST   /emulator/v1/auth/services                 {"service", "id_token", "header", "value", "audiences"}
  GET    /emulator/v1/auth/services                 the requirements, header values never shown
  DELETE /emulator/v1/auth/services                 no service requires anything (so does /reset)
"""

from __future__ import annotations

import hmac
import re
import threading
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .cloudrun_common import ApiError, check_json_type, invalid
from .cloudrun_control import parse_control_body
from .id_tokens import TokenIssuer, TokenRefused

AUTH_PREFIX = "/emulator/v1/auth"
TOKEN_PATH = f"{AUTH_PREFIX}/token"
SERVICE_NAME = re.compile(r"^projects/[^/]+/locations/[^/]+/services/[^/]+$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
EMULATOR_HEADER = {"X-Gpuops-Emulator": "cloud-run"}
# Google's front end says this when a private service gets no (or no usable) identity.
FORBIDDEN_TEXT = "Error: Forbidden\nYour client does not have permission to get URL {path} from this server.\n"
UNAUTHORIZED_TEXT = "Error: Unauthorized\nYour client does not have permission to the requested URL {path}.\n"
INVALID_TOKEN = 'Bearer error="invalid_token" error_description="The access token could not be verified"'


@dataclass(frozen=True)
class ServiceAuth:
    """What one service requires of its callers."""

    id_token: bool = False
    header: str | None = None
    value: str = field(default="", repr=False)  # a test's secret: never shown, never logged
    audiences: tuple[str, ...] = ()  # custom audiences, besides the service's own URLs

    def public(self) -> dict:
        return {"id_token": self.id_token, "header": self.header, "value_set": bool(self.value),
                "audiences": list(self.audiences)}


class AuthPolicies:
    """Service full name -> ServiceAuth, behind a lock (requests are checked from many threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_service: dict[str, ServiceAuth] = {}

    def require(self, service: str, auth: ServiceAuth) -> None:
        with self._lock:
            if auth.id_token or auth.header:
                self._by_service[service] = auth
            else:
                self._by_service.pop(service, None)  # requiring nothing makes the service public again

    def get(self, service: str) -> ServiceAuth | None:
        with self._lock:
            return self._by_service.get(service)

    def clear(self) -> None:
        with self._lock:
            self._by_service.clear()

    def listing(self) -> dict:
        with self._lock:
            return {name: auth.public() for name, auth in sorted(self._by_service.items())}


def service_auth_from_json(data: dict) -> tuple[str, ServiceAuth]:
    """A control body's requirement, checked like every control request (400 when malformed)."""
    unknown = set(data) - {"service", "id_token", "header", "value", "audiences"}
    if unknown:
        raise invalid(f"auth: unknown keys {sorted(unknown)}")
    service = data.get("service")
    if not isinstance(service, str) or not SERVICE_NAME.match(service):
        raise invalid("auth.service must be a full name projects/P/locations/L/services/S")
    id_token, header, value = data.get("id_token", False), data.get("header"), data.get("value", "")
    audiences = data.get("audiences", [])
    check_json_type("auth.id_token", id_token, bool)
    check_json_type("auth.value", value, str)
    check_json_type("auth.audiences", audiences, list)
    if header is not None and (not isinstance(header, str) or not HEADER_NAME.match(header)):
        raise invalid("auth.header must be an HTTP header name, e.g. X-API-Key")
    if header and not value:
        raise invalid("auth.value is required with auth.header")
    if not all(isinstance(a, str) and a for a in audiences):
        raise invalid("auth.audiences must be non-empty strings")
    return service, ServiceAuth(id_token, header, value, tuple(audiences))


# ---------------------------------------------------------------- the check on service URLs


def parse_service_path(path: str) -> tuple[str, str, str, str] | None:
    """/emulated/P/L/[tag---]S/... -> (P, L, tag, S); None for anything else."""
    parts = path.split("/", 5)
    if len(parts) < 5 or parts[1] != "emulated" or not all(parts[2:5]):
        return None
    # As the router reads it: the first "---" ends the tag.
    tag, _, service = parts[4].partition("---") if "---" in parts[4] else ("", "", parts[4])
    return parts[2], parts[3], tag, service


def own_audiences(base_url: str, project: str, location: str, tag: str, service: str) -> set[str]:
    """The URLs an ID token may name for this request: the service's URL and the tag URL used."""
    root = f"{base_url}/emulated/{project}/{location}"
    urls = {f"{root}/{service}"} | ({f"{root}/{tag}---{service}"} if tag else set())
    return urls | {u + "/" for u in urls}


def refusal(auth: ServiceAuth, headers, audiences: set[str], issuer: TokenIssuer, path: str) -> Response | None:
    """The front end's answer to a caller without the credentials `auth` asks for; None lets it through."""
    if auth.id_token:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return PlainTextResponse(FORBIDDEN_TEXT.format(path=path), 403, headers=EMULATOR_HEADER)
        if issuer.check(token.strip(), audiences | set(auth.audiences)) is not None:
            headers_out = {**EMULATOR_HEADER, "WWW-Authenticate": INVALID_TOKEN}
            return PlainTextResponse(UNAUTHORIZED_TEXT.format(path=path), 401, headers=headers_out)
    if auth.header:
        sent = headers.get(auth.header.lower(), "")
        if not hmac.compare_digest(sent.encode(), auth.value.encode()):
            error = {"error": f"unauthorized: header {auth.header} is missing or wrong"}
            return JSONResponse(error, 401, headers=EMULATOR_HEADER)
    return None


# ---------------------------------------------------------------- the ASGI front end


class InvokerAuth:
    """ASGI middleware in front of the emulator's app: checks service URLs, serves the auth control routes."""

    def __init__(self, app, policies: AuthPolicies, issuer: TokenIssuer, base_url: Callable[[], str]):
        self.app, self.policies, self.issuer, self.base_url = app, policies, issuer, base_url

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == AUTH_PREFIX or path.startswith(AUTH_PREFIX + "/"):
            response = await self._control(Request(scope, receive), path.rstrip("/"), method)
            await response(scope, receive, send)
            return
        if method == "POST" and path.rstrip("/") == "/emulator/v1/reset":
            self.policies.clear()  # a reset empties the emulator: no requirement survives it
        refused = self._check(scope, path)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope, path: str) -> Response | None:
        where = parse_service_path(path)
        if where is None:
            return None
        project, location, tag, service = where
        auth = self.policies.get(f"projects/{project}/locations/{location}/services/{service}")
        if auth is None:
            return None
        audiences = own_audiences(self.base_url(), project, location, tag, service)
        parts = path.split("/", 5)
        remainder = "/" + (parts[5] if len(parts) > 5 else "")
        return refusal(auth, Request(scope).headers, audiences, self.issuer, remainder)

    async def _control(self, request: Request, path: str, method: str) -> Response:
        body = (await request.body()).decode("utf-8", errors="replace")
        try:
            if (method, path) == ("POST", TOKEN_PATH):
                return self._token(body)
            return JSONResponse(self._control_json(method, path, parse_control_body(body)), headers=EMULATOR_HEADER)
        except ApiError as exc:
            return JSONResponse(exc.body(), exc.code, headers=EMULATOR_HEADER)

    def _token(self, body: str) -> Response:
        try:
            answer = self.issuer.exchange(dict(parse_qsl(body)))
        except TokenRefused as exc:
            return JSONResponse({"error": exc.error, "error_description": exc.description}, 400,
                                headers=EMULATOR_HEADER)
        return JSONResponse(answer, headers={**EMULATOR_HEADER, "Cache-Control": "no-store"})

    def _control_json(self, method: str, path: str, data: dict) -> dict:
        route = path.removeprefix(AUTH_PREFIX)
        if (method, route) == ("POST", "/service-account-keys"):
            email = data.get("client_email")
            kwargs = {"email": email} if isinstance(email, str) and "@" in email else {}
            return self.issuer.service_account_key(self.base_url() + TOKEN_PATH, **kwargs)
        if (method, route) == ("POST", "/services"):
            service, auth = service_auth_from_json(data)
            self.policies.require(service, auth)
            return {"service": service, **auth.public()}
        if (method, route) == ("GET", "/services"):
            return {"services": self.policies.listing()}
        if (method, route) == ("DELETE", "/services"):
            self.policies.clear()
            return {"services": {}}
        raise ApiError(404, f"No emulator control route {method} {path}", "NOT_FOUND")
