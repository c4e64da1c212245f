"""Lines of a running process into a bucket log while it runs, in batches.

S3 has no append: each append rewrites the object (StatusStore.append_log), so shipping line by line
would cost one PUT per line. Lines are buffered and sent every `interval_s` (and when `max_lines` pile
up), which bounds both the delay a reader sees and the number of writes. A bucket that is down after
retries does not stop the app: the lines stay buffered and go with the next flush.
"""
from __future__ import annotations

import threading
from typing import Callable

DEFAULT_INTERVAL_S = 1.0
MAX_LINES = 500
MAX_BUFFERED_LINES = 100_000  # past this (bucket down for long) the oldest lines go; the count says how many


class LogShipper:
    """`shipper(line)` buffers a line; a background thread sends batches through `append(text)`.

    Use as a context manager: leaving it sends what is left. `failures` counts flushes that failed
    (their lines were kept and sent later), `dropped` lines lost to the buffer bound.
    """

    def __init__(self, append: Callable[[str], None], interval_s: float = DEFAULT_INTERVAL_S,
                 max_lines: int = MAX_LINES):
        self._append, self.interval_s, self.max_lines = append, interval_s, max_lines
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # one batch in flight: batches land in order
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = self.dropped = self.sent_lines = 0
        self.last_error: str | None = None

    def __call__(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            if len(self._lines) > MAX_BUFFERED_LINES:
                del self._lines[0]
                self.dropped += 1
            full = len(self._lines) >= self.max_lines
        if full:
            self._wake.set()

    def __enter__(self) -> "LogShipper":
        self._thread = threading.Thread(target=self._loop, name="gpuops-log-shipper", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def unsent(self) -> int:
        """Lines still buffered: after close(), those the bucket never took."""
        with self._lock:
            return len(self._lines)

    def close(self) -> None:
        """Stop the thread and send what is buffered (one last attempt; a failure is counted, not raised)."""
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def flush(self) -> bool:
        """Send the buffered lines now; False when the bucket refused (the lines are kept)."""
        with self._send_lock:
            with self._lock:
                batch, self._lines = self._lines, []
            if not batch:
                return True
            try:
                self._append("".join(line + "\n" for line in batch))
            except Exception as exc:  # noqa: BLE001  the app goes on; the lines go with the next flush
                with self._lock:
                    self._lines = batch + self._lines
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                return False
            self.sent_lines += len(batch)
            return True

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self.flush()
