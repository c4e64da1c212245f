"""Transient-only retries and the read-back guard, on plain callables."""
import pytest
from google.api_core import exceptions as gexc

from gpuops import retry

FAST = retry.Backoff(attempts=4, initial_s=0.001)


def flaky(errors):
    calls = []

    def fn():
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "ok"

    return fn, calls


def test_503_then_success_is_retried():
    fn, calls = flaky([gexc.ServiceUnavailable("busy")])
    assert retry.call("read", fn, backoff=FAST) == "ok" and len(calls) == 2


def test_400_is_never_retried():
    fn, calls = flaky([gexc.BadRequest("bad body")])
    with pytest.raises(gexc.BadRequest):
        retry.call("read", fn, backoff=FAST)
    assert len(calls) == 1


def test_gives_up_after_the_bound():
    fn, calls = flaky([gexc.TooManyRequests("slow down")] * 10)
    with pytest.raises(gexc.TooManyRequests):
        retry.call("read", fn, backoff=FAST)
    assert len(calls) == 4


def test_read_back_that_finds_the_write_stops_a_second_send():
    fn, calls = flaky([gexc.ServiceUnavailable("lost answer")])
    assert retry.call("write", fn, backoff=FAST, read_back=lambda: "already done") == "already done"
    assert len(calls) == 1


def test_read_back_that_finds_nothing_lets_the_write_go_again():
    fn, calls = flaky([gexc.ServiceUnavailable("lost before")])
    assert retry.call("write", fn, backoff=FAST, read_back=lambda: None) == "ok"
    assert len(calls) == 2
