"""Transient-only retries and the read-back guard, on plain callables; and what an exception
leaving the adapter still carries (no request body), on real errors from the emulator."""
import copy
import uuid

import cloudpickle
import pytest
import requests
from google.api_core import exceptions as gexc

from gpuops import cloudrun, retry

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


# --- what an exception from the adapter carries: no request body ---------------------------------
# A failed Prefect run pickles its exception (cloudpickle) into PREFECT_HOME/storage; google's REST
# errors keep the requests.Response, whose .request.body is the request's JSON with every env value.

SERVICE = "projects/nca-toolkit-438301/locations/us-central1/services/no-code-architects-toolkit"


def _reachable(exc: BaseException) -> bytes:
    """The pickle Prefect would store, plus the chain Python keeps beside it (pickle leaves it out)."""
    return cloudpickle.dumps((exc, exc.__cause__, exc.__context__))


@pytest.fixture
def planted_service(seeded_cloud_run):
    """The seeded service, an adapter on the emulator, and a spec whose API_KEY is a unique value."""
    cr = cloudrun.connect(seeded_cloud_run.url)
    cr.backoff = retry.Backoff(attempts=2, initial_s=0.001)
    planted = f"planted-{uuid.uuid4()}"
    spec = cloudrun.service_spec(cloudrun.get_service(cr, SERVICE))
    env = spec["template"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "API_KEY")["value"] = planted
    return seeded_cloud_run, cr, spec, planted


@pytest.mark.parametrize("status, cls", [(400, gexc.BadRequest), (503, gexc.ServiceUnavailable)])
def test_an_api_error_leaves_the_adapter_without_the_request_body(planted_service, status, cls):
    emulator, cr, spec, planted = planted_service
    emulator.add_fault(method="PATCH", path="/services/", status=status, times=10)

    # The control: the client's own exception holds the body, so the check below can see one.
    msg = cloudrun.from_dict(cloudrun.run_v2.Service, {**spec, "name": SERVICE})
    with pytest.raises(cls) as raw:
        cr.services.update_service(service=msg, retry=None, timeout=cloudrun.CALL_TIMEOUT_S)
    assert planted.encode() in _reachable(raw.value)

    # 400: sent once; 503: retried until the attempts run out (a read-back between the two).
    with pytest.raises(cls) as caught:
        cloudrun.update_service(cr, SERVICE, copy.deepcopy(spec))
    exc = caught.value
    assert planted.encode() not in _reachable(exc)
    assert exc.response is None and exc.__cause__ is None and exc.__context__ is None
    assert exc.code == status and "Injected fault" in exc.message  # the server's message stays

    again = cloudpickle.loads(cloudpickle.dumps(exc))  # as Prefect reads a persisted failure back
    assert type(again) is cls and isinstance(again, gexc.GoogleAPICallError)
    assert again.code == status and str(again) == str(exc)


def test_an_error_in_the_read_back_does_not_chain_the_write_that_carried_the_body(planted_service):
    """The read-back runs while the write's 503 is being handled: Python chains that 503 (body and
    all) to whatever the read-back raises."""
    emulator, cr, spec, planted = planted_service
    emulator.add_fault(method="PATCH", path="/services/", status=503, times=1)
    emulator.add_fault(method="GET", path="/services/", status=400, times=10)
    with pytest.raises(gexc.BadRequest) as caught:
        cloudrun.update_service(cr, SERVICE, spec)
    assert caught.value.__context__ is None and planted.encode() not in _reachable(caught.value)


def _request_with(body: str) -> requests.PreparedRequest:
    return requests.Request("PATCH", "http://cloud-run.invalid/v2/x", data=body).prepare()


def test_scrub_drops_requests_own_errors_and_retry_errors_causes():
    secret = f"planted-{uuid.uuid4()}"
    lost = requests.ConnectionError("connection reset", request=_request_with(secret))
    fn, _ = flaky([lost] * 10)
    with pytest.raises(requests.ConnectionError) as caught:
        retry.call("write", fn, backoff=FAST)
    assert caught.value.request is None and secret.encode() not in _reachable(caught.value)

    response = requests.Response()
    response.status_code, response.request = 503, _request_with(secret)
    gave_up = gexc.RetryError("polling gave up", gexc.ServiceUnavailable("busy", response=response))
    fn, _ = flaky([gave_up])
    with pytest.raises(gexc.RetryError) as caught:
        retry.call("wait", fn, backoff=FAST)
    assert isinstance(caught.value.cause, gexc.ServiceUnavailable) and caught.value.cause.response is None
    assert secret.encode() not in _reachable(caught.value)


def test_scrub_keeps_the_chain_of_other_errors_but_empties_its_links():
    secret = f"planted-{uuid.uuid4()}"
    response = requests.Response()
    response.status_code, response.request = 409, _request_with(secret)

    def fn():
        try:
            raise gexc.Conflict("already exists", response=response)
        except gexc.Conflict as exc:
            raise RuntimeError("while handling a conflict") from exc

    with pytest.raises(RuntimeError) as caught:
        retry.call("write", fn, backoff=FAST)
    assert isinstance(caught.value.__cause__, gexc.Conflict) and caught.value.__cause__.response is None
    assert secret.encode() not in _reachable(caught.value) + _reachable(caught.value.__cause__)
