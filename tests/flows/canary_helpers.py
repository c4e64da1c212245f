"""What the canary tests share: the runbook's service, fast windows, and how to read its traffic."""
from gpuops import cloud_run_traffic, cloudrun
from gpuops.demo_seed import release

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
NAME = cloudrun.service_name(P, R, S)
FAST = dict(window_s=0.3, probe_requests=8, min_requests=5, probe_body={"prompt": "t", "steps": 50})


def stable_of(cr) -> str:
    return cloudrun.short(cloudrun.get_service(cr, NAME)["latestReadyRevision"])


def break_next_revision(cr, stable: str) -> None:
    """A bad release (its /generate answers 500) while `stable` keeps 100%."""
    assert stable_of(cr) == stable
    release(P, R, S, bad=True)


def split_of(cr) -> dict:
    service = cloudrun.get_service(cr, NAME)
    return {cloudrun.short(t["revision"]): t.get("percent", 0) for t in service["traffic"] if t.get("revision")}


def assert_rolled_back_at_first_step(cr, failed, stable: str) -> list[dict]:
    """One failed window at 20%, stable back at 100%, the state on the service says why."""
    from gpuops import traffic

    [history] = [d["history"] for d in failed.value.details]
    assert [(h["percent"], h["verdict"]) for h in history] == [(20, "fail")]
    assert split_of(cr)[stable] == 100 and sum(split_of(cr).values()) == 100
    service = cloudrun.get_service(cr, NAME)
    state = cloud_run_traffic.state_of(service)
    assert state.phase == traffic.ROLLED_BACK and "error rate" in state.failed_checks[0]
    assert "nodeSelector" not in service["template"]
    return history
