"""What every gpuops emulator shares: an ASGI app served by uvicorn in a thread, on 127.0.0.1 only."""
from __future__ import annotations

import http.client
import socket
import threading
import time
from typing import Callable

LOOPBACK = "127.0.0.1"


class LoopbackServer:
    """Start, wait until it answers `GET /emulator/v1/info`, stop; `with Server() as s:` does both.

    Subclasses give `_app()` and a `name`; `_before_start`/`_before_stop` hook their own state.
    """

    name = "emulator"
    # Idle keep-alive connections stay open this long (uvicorn's default is 5 s, Google's far longer):
    # prefect-gcp's worker polls an execution every 5 s over one httplib2 connection, and a close
    # racing a poll resets it (ConnectionResetError, which neither httplib2 nor the worker retries).
    keep_alive_s = 120

    def __init__(self, port: int = 0, host: str = LOOPBACK):
        if host != LOOPBACK:
            raise ValueError("gpuops emulators listen on 127.0.0.1 only")
        self.host, self._wanted_port = host, port
        self.port: int | None = None
        self._server = self._thread = self._sock = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"the {self.name} is not started")
        return f"http://{self.host}:{self.port}"

    def _app(self):
        raise NotImplementedError

    def _before_start(self) -> None:
        """Hook: runs once the port is known, before the app is built."""

    def _before_stop(self) -> None:
        """Hook: runs before the server shuts down."""

    def start(self, timeout: float = 15.0):
        import uvicorn

        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only then (else ~40 ms
        # per keep-alive request, Nagle against delayed ACK).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, self._wanted_port))
        self.port = self._sock.getsockname()[1]
        self._before_start()
        config = uvicorn.Config(self._app(), log_level="warning", access_log=False, lifespan="off",
                                timeout_keep_alive=self.keep_alive_s)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=f"{self.name.replace(' ', '-')}-{self.port}", daemon=True)
        self._thread.start()
        self._wait_ready(timeout)
        return self

    def stop(self) -> None:
        self._before_stop()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def serve_forever(self, banner: Callable[[], str]) -> None:
        """Start, say `banner()` (it may name the URL) on stderr, serve until interrupted (the
        `gpuops emulate ...` commands)."""
        import sys

        self.start()
        print(banner(), file=sys.stderr, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server.started and self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"the {self.name} did not start on port {self.port}")

    def _answers(self) -> bool:
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=1)
            conn.request("GET", "/emulator/v1/info")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False
