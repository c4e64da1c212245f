"""A stand-in for the runbook's monitoring webhook (n8n): it keeps every request it is sent, on 127.0.0.1.

Point a Prefect `CustomWebhookNotificationBlock` at `sink.url + "/webhook/alerts"`; a notification from a
flow (flows.common.notify) or from an automation's send-notification action lands in `sink.received`.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .loopback_server import LoopbackServer

WEBHOOK_EMULATOR_LABEL = "gpuops webhook stand-in (n8n)"


@dataclass(frozen=True)
class Delivery:
    method: str
    path: str
    body: Any  # the JSON body, or the text when it is not JSON


class WebhookSink(LoopbackServer):
    """`with WebhookSink() as sink:`; `sink.wait_for(lambda d: ..., timeout_s)` returns the first matching delivery."""

    name = "webhook stand-in"

    def __init__(self, port: int = 0):
        super().__init__(port)
        self._lock = threading.Condition()
        self._received: list[Delivery] = []

    @property
    def received(self) -> list[Delivery]:
        with self._lock:
            return list(self._received)

    def save_block(self, name: str, path: str = "/webhook/alerts") -> str:
        """Save a Prefect custom-webhook block posting `{"subject", "body"}` to `path` here; returns its
        `custom-webhook/<name>` (what a flow's notification_block or an automation takes)."""
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        block = CustomWebhookNotificationBlock(name=name, url=f"{self.url}{path}",
                                               json_data={"subject": "{{subject}}", "body": "{{body}}"})
        block.save(name, overwrite=True)
        return f"custom-webhook/{name}"

    def reset(self) -> None:
        with self._lock:
            self._received.clear()

    def wait_for(self, match: Callable[[Delivery], bool], timeout_s: float) -> Delivery | None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                found = next((d for d in self._received if match(d)), None)
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    return found
                self._lock.wait(left)

    def _keep(self, delivery: Delivery) -> None:
        with self._lock:
            self._received.append(delivery)
            self._lock.notify_all()

    def _app(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def info(request):
            return JSONResponse({"name": WEBHOOK_EMULATOR_LABEL, "emulator": "webhook",
                                 "received": len(self.received)})

        async def receive(request):
            raw = (await request.body()).decode("utf-8", errors="replace")
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
            self._keep(Delivery(request.method, request.url.path, body))
            return Response(status_code=200)

        return Starlette(routes=[Route("/emulator/v1/info", info),
                                 Route("/{path:path}", receive, methods=["POST", "PUT", "PATCH"])])
