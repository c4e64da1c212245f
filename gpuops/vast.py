"""vast.ai through the official `vastai` SDK: one function per remote call; transient errors retried, 4xx never.

Where and with which key:
- `GPUOPS_VAST_API`: the API's base URL, e.g. `http://127.0.0.1:8795` (gpuops' stand-in,
  gpuops.emulator.vast_api). Unset: vast.ai's own (`https://console.vast.ai`, or the SDK's `VAST_URL`).
- The API key: from the Prefect Secret block the caller names (`api_key_secret`), else from `VAST_API_KEY`.
  It is read when connecting and held only by the SDK's client: never logged, returned, put in an
  exception, a flow parameter or an artifact.

Creating an instance is not idempotent: each create carries a label derived from the flow run and the
offer, and a retried create first reads back whether an instance with that label exists.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from gpuops import retry
from gpuops.errors import BadInput, CouldNotRun

API_ENV = "GPUOPS_VAST_API"
KEY_ENV = "VAST_API_KEY"
VAST_API = "https://console.vast.ai"
LABEL_PREFIX = "gpuops"
LOG_TAIL_LINES = 200


class VastRefused(Exception):
    """A 4xx answer other than authentication (an offer no longer available, a bad request): not retried."""

    def __init__(self, what: str, status: int, error: str, msg: str):
        super().__init__(f"{what}: vast.ai answered HTTP {status} {error}: {msg}")
        self.status, self.error, self.msg = status, error, msg


@dataclass(frozen=True)
class Vast:
    """A connected SDK client and where it points; its repr never shows the key."""

    endpoint: str
    key_source: str  # "environment variable VAST_API_KEY" / "Prefect Secret block 'x'": a name, never the value
    sdk: Any = field(repr=False, compare=False)

    def where(self) -> str:
        # Named from the URL only (nothing asked): any other address is the operator's, not known to be the stand-in.
        if self.endpoint.rstrip("/") == VAST_API:
            return f"vast.ai API at {self.endpoint}"
        return f"vast.ai API at {self.endpoint} (from {API_ENV} or VAST_URL: not vast.ai's own)"


def endpoint() -> str:
    return os.environ.get(API_ENV) or os.environ.get("VAST_URL") or VAST_API


def connect(api_key_secret: str | None = None) -> Vast:
    """The SDK pointed at GPUOPS_VAST_API with the key from the named Secret block or VAST_API_KEY.

    The SDK's own retries are off (retry=1): gpuops.retry retries transient errors, once, in one place."""
    from gpuops.probe_auth import HeaderSecret

    secret = HeaderSecret(header="Authorization", secret_block=api_key_secret or None, env_var=KEY_ENV)
    try:
        key = secret.load()
    except BadInput as exc:
        if api_key_secret and "was not found" in str(exc):
            raise  # names the block and how to save it
        # HeaderSecret's own wording names probe-auth's flags (--api-key-env); these commands have others.
        raise BadInput(f"{secret.where()} holds no usable vast.ai API key (unset, empty, or not one line of "
                       f"printable ASCII): set {KEY_ENV} or pass --api-key-secret BLOCK (a Prefect Secret block "
                       "holding the key).") from None
    from vastai import VastAI

    url = endpoint()
    return Vast(url.rstrip("/"), secret.where(), VastAI(api_key=key, server_url=url.rstrip("/"), retry=1))


# ---------------------------------------------------------------- one function per remote call


def search_offers(vast: Vast, query: dict, order: str = "score-", limit: int | None = None) -> list[dict]:
    """Raw offers (`vastai search offers --raw`) for a query dict (gpuops.offers.vast_query). vast.ai's default
    filters are sent explicitly: rentable, not rented, not external (verified is the filter's to decide)."""
    full = {"rentable": {"eq": True}, "rented": {"eq": False}, "external": {"eq": False}, **query}
    return _call(vast, "search offers", lambda: vast.sdk.search_offers(query=full, order=order, limit=limit,
                                                                      no_default=True))


def instance_label(flow_run_id: str, offer_id: Any) -> str:
    """The label a create carries: the same flow run and offer give the same label, so a retry finds it."""
    return f"{LABEL_PREFIX}-{flow_run_id}-offer-{offer_id}"


def create_instance(vast: Vast, offer_id: int, *, label: str, image: str, env: dict[str, str], onstart: str,
                    disk_gb: float) -> tuple[int, bool]:
    """Rent `offer_id`: (instance id, created now). An instance already carrying `label` (a retried flow run, or a
    create whose answer was lost) is returned instead of renting a second one."""
    existing = find_labelled(vast, label)
    if existing is not None:
        return existing, False

    def create() -> int:
        answer = vast.sdk.create_instance(offer_id, image=image, disk=disk_gb, env=env, label=label,
                                          onstart_cmd=onstart, ssh=True, direct=True)
        if not answer.get("success") or not answer.get("new_contract"):
            raise VastRefused("create instance", 200, str(answer.get("error")), str(answer.get("msg")))
        return int(answer["new_contract"])

    return _call(vast, f"create instance on offer {offer_id}", create, read_back=lambda: find_labelled(vast, label)), True


def find_labelled(vast: Vast, label: str) -> int | None:
    """The id of the user's instance carrying `label`, if any (the lowest, should there be several)."""
    params = {"select_filters": {"label": {"eq": label}}, "order_by": [{"col": "id", "dir": "asc"}], "limit": 25}
    rows = _call(vast, "list instances by label", lambda: vast.sdk.show_instances_v1(params)).get("instances") or []
    return int(rows[0]["id"]) if rows else None


def show_instance(vast: Vast, instance_id: int) -> dict | None:
    """`vastai show instance --raw`; None when there is no such instance of the user's (destroyed, or never)."""
    try:
        return _call(vast, f"show instance {instance_id}", lambda: vast.sdk.show_instance(instance_id))
    except VastRefused as exc:
        if exc.status == 404:
            return None
        raise


def stop_instance(vast: Vast, instance_id: int) -> None:
    """Stop (the disk stays, and is still billed; `start` brings it back). Idempotent."""
    _call(vast, f"stop instance {instance_id}", lambda: vast.sdk.stop_instance(instance_id))


def destroy_instance(vast: Vast, instance_id: int) -> bool:
    """Destroy (everything on it is lost): True when destroyed now, False when it was already gone."""
    try:
        _call(vast, f"destroy instance {instance_id}", lambda: vast.sdk.destroy_instance(instance_id))
    except VastRefused as exc:
        if exc.status == 404:
            return False
        raise
    return True


def instance_logs(vast: Vast, instance_id: int, tail: int = LOG_TAIL_LINES) -> str:
    """The instance's last `tail` log lines (the on-start script's output among them)."""
    text = _call(vast, f"logs of instance {instance_id}", lambda: vast.sdk.logs(instance_id, tail=str(tail)))
    return text if isinstance(text, str) else str(text.get("msg") or "")


# ---------------------------------------------------------------- errors


def _call(vast: Vast, what: str, fn, read_back=None):
    """`fn` through gpuops.retry with the SDK's errors classified; out of retries is CouldNotRun."""
    try:
        return retry.call(what, lambda: _classified(vast, what, fn), read_back=read_back)
    except Exception as exc:
        if not retry.is_transient(exc):
            raise
        raise CouldNotRun(f"{what}: the {vast.where()} did not answer after retries ({_brief(exc)}). Nothing more "
                          "was sent; run again once it answers.") from None


def _classified(vast: Vast, what: str, fn):
    import requests

    try:
        return fn()
    except requests.HTTPError as exc:
        raise _translated(vast, what, exc.response) from None
    except TimeoutError as exc:  # the SDK polls a log's result URL and gives up with this
        raise retry.TransientHTTPError(f"{what}: {exc}") from None


def _translated(vast: Vast, what: str, response) -> Exception:
    """An HTTP error as gpuops tells them apart, holding no request (whose headers carry the key)."""
    status = response.status_code if response is not None else 0
    body = _json(response)
    error, msg = str(body.get("error") or ""), clipped(str(body.get("msg") or body.get("message") or ""), 600)
    if status == 429 or status >= 500:
        from gpuops.hub_publish import retry_after_s

        return retry.TransientHTTPError(f"{what}: HTTP {status} {error}".strip(), status,
                                        retry_after_s(response.headers.get("Retry-After")))
    if status in (401, 403):
        return BadInput(f"the {vast.where()} refused the API key from {vast.key_source} (HTTP {status}: {msg or error}):"
                        f" set {KEY_ENV} (or the Secret block named with --api-key-secret) to a valid vast.ai API key.")
    return VastRefused(what, status, error, msg)


def _json(response) -> dict:
    try:
        body = response.json()
    except (ValueError, AttributeError):
        return {}
    return body if isinstance(body, dict) else {}


def clipped(text: str, limit: int) -> str:
    """At most `limit` characters, cut between words and marked, never mid-word."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:") + " [...]"


def _brief(exc: BaseException) -> str:
    first = clipped((str(exc).splitlines() or [""])[0], 200)
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
