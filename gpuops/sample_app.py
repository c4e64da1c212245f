"""A sample GPU-style workload (stdlib only: it plays the container) with switches to make it fail.

Its commands and container entrypoint are in `gpuops_cli.sample_app_cli`."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_STEPS = 1000
MAX_STEPS = 1_000_000
DEFAULT_PROMPT = "a lighthouse on a cliff at dawn"


def generate(prompt: str, steps: int) -> dict:
    """The "real work": a sha256 chain over the prompt, deterministic so tests can check it."""
    started = time.perf_counter()
    seed = prompt.encode("utf-8")
    digest = hashlib.sha256(seed).digest()
    for _ in range(steps):
        digest = hashlib.sha256(digest + seed).digest()
    elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
    return {"output": digest.hex(), "steps": steps, "elapsed_ms": elapsed_ms}


def parse_request(raw: bytes) -> tuple[str, int]:
    """Validate a /generate body; ValueError carries the message a 400 answers with."""
    try:
        body = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    prompt, steps = body.get("prompt"), body.get("steps", DEFAULT_STEPS)
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("'prompt' must be a non-empty string")
    # bool is an int in Python; a JSON true is not a step count.
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"'steps' must be an integer from 1 to {MAX_STEPS}")
    return prompt, steps


def failure_mode() -> str:
    """SAMPLE_APP_FAIL: "" (healthy), "generate" (health passes, real work fails), "gpu-probe" (the probe
    endpoint answers 500: a host whose card cannot be read) or "all"."""
    return os.environ.get("SAMPLE_APP_FAIL", "").strip().lower()


def revision() -> str:
    return os.environ.get("K_REVISION", "local")


class Handler(BaseHTTPRequestHandler):
    server_version = "gpuops-sample-app/1"

    def do_GET(self) -> None:
        if self._delayed_failure():
            return
        path, _, query = self.path.partition("?")
        if path == "/healthz":
            self._answer(200, {"status": "ok", "revision": revision()})
        elif path == "/gpu-probe" and failure_mode() == "gpu-probe":
            self._answer(500, {"error": "the probe failed (SAMPLE_APP_FAIL=gpu-probe)", "revision": revision()})
        elif path == "/gpu-probe":
            self._probe(query)
        else:
            self._answer(404, {"error": f"no route GET {self.path}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self._delayed_failure():
            return
        if self.path.split("?", 1)[0] != "/generate":
            self._answer(404, {"error": f"no route POST {self.path}"})
            return
        if failure_mode() == "generate":
            error = "generation failed (SAMPLE_APP_FAIL=generate)"
            self._answer(500, {"error": error, "revision": revision()})
            return
        try:
            prompt, steps = parse_request(raw)
        except ValueError as exc:
            self._answer(400, {"error": str(exc)})
            return
        self._answer(200, {**generate(prompt, steps), "revision": revision()})

    def _probe(self, query: str) -> None:
        """The project's GPU probe on this host, as an image shipping gpuops answers it: how a flow checks
        the card a host really has without SSH (`?need_gib=12&min_compute_cap=7.0`)."""
        from urllib.parse import parse_qs

        from gpuops.gpu_probe import probe

        asked = {k: v[-1] for k, v in parse_qs(query).items()}
        try:
            need = float(asked["need_gib"]) if asked.get("need_gib") else None
            report, code = probe(need, asked.get("min_compute_cap") or "7.0")
        except ValueError as exc:
            self._answer(400, {"error": f"need_gib / min_compute_cap: {exc}"})
            return
        self._answer(200, {**report, "exit_code": code, "revision": revision()})

    def _delayed_failure(self) -> bool:
        """Apply SAMPLE_APP_LATENCY_MS, then answer 500 when every path is meant to fail."""
        latency_ms = int(os.environ.get("SAMPLE_APP_LATENCY_MS") or 0)
        if latency_ms > 0:
            time.sleep(latency_ms / 1000)
        if failure_mode() == "all":
            self._answer(500, {"error": "the app is failing (SAMPLE_APP_FAIL=all)", "revision": revision()})
            return True
        return False

    def _answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        # One short line per request on stderr: it is the revision's log in the emulator.
        sys.stderr.write(f"sample-app {revision()}: {format % args}\n")
        sys.stderr.flush()


def serve(port: int) -> None:
    """Serve on 127.0.0.1 until interrupted."""
    server = ThreadingHTTPServer((LOOPBACK, port), Handler)
    server.daemon_threads = True
    print(f"sample-app {revision()} listening on http://{LOOPBACK}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def run_job(prompt: str, steps: int) -> int:
    """One generation as a batch job: prints the result, exits 1 when SAMPLE_APP_FAIL is set."""
    if failure_mode():
        message = f"sample-app job: failing on purpose (SAMPLE_APP_FAIL={failure_mode()})"
        print(message, file=sys.stderr, flush=True)
        return 1
    result = generate(prompt, steps)
    print(json.dumps({"prompt": prompt, **result}), flush=True)
    return 0
