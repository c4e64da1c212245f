"""LogShipper: lines reach the log in order, in batches, and survive a bucket that fails for a while."""
import threading
import time

from gpuops.log_shipper import LogShipper


class Sink:
    """Stands for StatusStore.append_log: records each batch; `fail` makes the next appends raise."""

    def __init__(self):
        self.batches, self.fail, self.lock = [], 0, threading.Lock()

    def __call__(self, text: str) -> None:
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise ConnectionError("bucket unreachable (injected)")
            self.batches.append(text)

    @property
    def text(self) -> str:
        return "".join(self.batches)


def test_every_line_arrives_once_in_order_and_leaving_sends_the_rest():
    sink = Sink()
    with LogShipper(sink, interval_s=0.05) as ship:
        for i in range(200):
            ship(f"line {i}")
            if i % 50 == 0:
                time.sleep(0.08)  # let a timed flush happen mid-stream
    assert sink.text == "".join(f"line {i}\n" for i in range(200))
    assert 1 < len(sink.batches) < 200  # batched, not one write per line
    assert ship.sent_lines == 200 and ship.failures == 0


def test_a_full_batch_goes_before_the_interval():
    sink = Sink()
    with LogShipper(sink, interval_s=60, max_lines=10) as ship:
        for i in range(10):
            ship(f"l{i}")
        deadline = time.monotonic() + 5
        while not sink.batches and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.batches == ["".join(f"l{i}\n" for i in range(10))]


def test_lines_are_kept_while_the_bucket_fails_and_sent_when_it_is_back():
    sink = Sink()
    sink.fail = 2
    ship = LogShipper(sink, interval_s=60)
    ship("a")
    assert ship.flush() is False
    ship("b")
    assert ship.flush() is False and ship.failures == 2 and "ConnectionError" in ship.last_error
    ship("c")
    assert ship.flush() is True
    assert sink.text == "a\nb\nc\n"


def test_closing_with_the_bucket_down_counts_the_failure_instead_of_raising():
    sink = Sink()
    sink.fail = 10
    with LogShipper(sink, interval_s=60) as ship:
        ship("last words")
    assert ship.failures >= 1 and sink.text == "" and ship.unsent == 1
