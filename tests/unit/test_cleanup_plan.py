"""The cleanup planner: what the migration left, what may go, and why the rest stays."""
from gpuops import cleanup_plan, cloud_run_traffic, traffic

LOC = "projects/p/locations/us-central1"
SVC = f"{LOC}/services/app"
REV = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
OURS = {"managed-by": "gpuops", "gpuops-source-service": "app"}


def rev(short: str) -> dict:
    return {"name": f"{SVC}/revisions/{short}"}


def service(traffic_targets: list[dict], latest: str = "app-3", state: traffic.CanaryState | None = None) -> dict:
    body = {"name": SVC, "latestReadyRevision": f"{SVC}/revisions/{latest}",
            "latestCreatedRevision": f"{SVC}/revisions/{latest}", "traffic": traffic_targets,
            "trafficStatuses": traffic_targets}
    if state:
        body["annotations"] = {cloud_run_traffic.STATE_ANNOTATION: state.to_json()}
    return body


def by_name(items: list[dict]) -> dict:
    return {i["name"]: i for i in items}


JOBS = [{"name": f"{LOC}/jobs/app-cpu-job", "labels": {**OURS, "gpuops-role": "cpu-job"}},
        {"name": f"{LOC}/jobs/app-gpu-job", "labels": {**OURS, "gpuops-role": "gpu-job"}},
        {"name": f"{LOC}/jobs/other-job", "labels": {"managed-by": "gpuops", "gpuops-source-service": "other"}},
        {"name": f"{LOC}/jobs/unlabelled"}]
SERVICES = [{"name": f"{LOC}/services/app-gpu", "labels": {**OURS, "gpuops-role": "gpu-service"}},
            {"name": SVC}]


def test_lists_only_what_gpuops_made_for_this_service_and_idle_untagged_revisions():
    svc = service([{"type": LATEST, "percent": 100}])
    items = cleanup_plan.plan(svc, [rev("app-3"), rev("app-2"), rev("app-1")], JOBS, SERVICES)
    assert cleanup_plan.deletable(items) == [
        f"{SVC}/revisions/app-2", f"{SVC}/revisions/app-1",
        f"{LOC}/services/app-gpu", f"{LOC}/jobs/app-cpu-job", f"{LOC}/jobs/app-gpu-job"]
    latest = by_name(items)[f"{SVC}/revisions/app-3"]
    assert not latest["deletable"] and "latest" in latest["why_not"]
    assert {i["kind"] for i in items} == {"revision", "service", "job"}
    assert "gpu-job" in by_name(items)[f"{LOC}/jobs/app-gpu-job"]["reason"]


def test_a_revision_with_traffic_or_a_tag_or_any_reference_stays():
    svc = service([{"type": LATEST, "percent": 90},
                   {"type": REV, "revision": "app-2", "percent": 10},
                   {"type": REV, "revision": "app-1", "percent": 0, "tag": "old"},
                   {"type": REV, "revision": "app-0", "percent": 0}])
    items = by_name(cleanup_plan.plan(svc, [rev(r) for r in ("app-3", "app-2", "app-1", "app-0")], [], []))
    assert items[f"{SVC}/revisions/app-2"]["why_not"] == "serves 10% of the traffic"
    assert "tagged old" in items[f"{SVC}/revisions/app-1"]["why_not"]
    assert items[f"{SVC}/revisions/app-0"]["why_not"] == "referenced by a traffic target"
    assert cleanup_plan.deletable(list(items.values())) == []


def test_gpu_canary_tag_on_a_zero_percent_revision_goes_a_foreign_tag_stays():
    svc = service([{"type": REV, "revision": "app-3", "percent": 100},
                   {"type": REV, "revision": "app-2", "percent": 0, "tag": "gpu-canary"},
                   {"type": REV, "revision": "app-1", "percent": 0, "tag": "blue"}])
    items = by_name(cleanup_plan.plan(svc, [rev("app-3"), rev("app-2"), rev("app-1")], [], []))
    assert items["tag:gpu-canary"]["deletable"]
    assert "not a gpuops tag" in items["tag:blue"]["why_not"]
    assert "delete tag:gpu-canary first" in items[f"{SVC}/revisions/app-2"]["why_not"]


def test_stable_tag_only_with_gpuops_state_that_is_not_live_and_never_on_a_serving_revision():
    split = [{"type": REV, "revision": "app-3", "percent": 100, "tag": "gpu-canary"},
             {"type": REV, "revision": "app-2", "percent": 0, "tag": "stable"}]
    promoted = traffic.CanaryState("app-2", "app-3", (20, 100), step=1, phase=traffic.PROMOTED)
    assert cleanup_plan.tag_blocker(service(split, state=promoted), "stable") is None
    assert "may not be gpuops'" in cleanup_plan.tag_blocker(service(split), "stable")
    assert "serves 100%" in cleanup_plan.tag_blocker(service(split, state=promoted), "gpu-canary")


def test_a_live_canary_blocks_everything_with_the_way_out():
    split = cloud_run_traffic.split("app-2", "app-3", 20)
    live = traffic.CanaryState("app-2", "app-3", (20, 100), step=0, phase=traffic.HOLDING)
    items = cleanup_plan.plan(service(split, state=live), [rev("app-3"), rev("app-2"), rev("app-1")], JOBS, SERVICES)
    assert cleanup_plan.deletable(items) == []
    gpu_job = by_name(items)[f"{LOC}/jobs/app-gpu-job"]
    assert "holding" in gpu_job["why_not"] and "finish or roll back the canary first" in gpu_job["why_not"]


def test_without_tag_drops_only_that_target_and_keeps_percentages():
    targets = [{"type": REV, "revision": "app-3", "percent": 100, "tag": "stable"},
               {"type": REV, "revision": "app-2", "tag": "gpu-canary"}]
    assert cleanup_plan.without_tag(service(targets), "gpu-canary") == [targets[0]]


def test_select_deletes_only_approved_names_on_the_list_and_refuses_the_rest():
    svc = service([{"type": LATEST, "percent": 100}])
    items = cleanup_plan.plan(svc, [rev("app-3"), rev("app-2")], JOBS, SERVICES)
    cpu, latest = f"{LOC}/jobs/app-cpu-job", f"{SVC}/revisions/app-3"
    chosen, refused = cleanup_plan.select(items, True, [cpu, latest, "projects/x/jobs/nope", cpu])
    assert [i["name"] for i in chosen] == [cpu]
    assert [r["name"] for r in refused] == [latest, "projects/x/jobs/nope"]
    assert "latest" in refused[0]["why"] and "not on the list" in refused[1]["why"]
    assert cleanup_plan.select(items, False, [cpu]) == ([], [])
    assert cleanup_plan.select(items, True, []) == ([], [])  # approving without naming deletes nothing


def test_the_plan_and_the_result_read_as_the_runbook_asks():
    items = [{"kind": "job", "name": "jobs/x-cpu-job", "deletable": True, "why_not": "", "reason": "gpuops made it"},
             {"kind": "revision", "name": "revisions/x-2", "deletable": False, "why_not": "serves 100%", "reason": ""}]
    plan = cleanup_plan.plan_markdown("x", "emulator", items, execute=False)
    assert "dry run: nothing is changed" in plan
    assert "| job | `jobs/x-cpu-job` | yes | gpuops made it |" in plan and "| no | serves 100% |" in plan
    form = cleanup_plan.approval_description(["jobs/x-cpu-job"])
    assert "- `jobs/x-cpu-job`" in form and "Nothing is deleted without an answer" in form
    result = {"api": "emulator", "deleted": [{"kind": "job", "name": "jobs/x-cpu-job", "result": "deleted"}],
              "refused": [{"name": "revisions/x-2", "why": "serves 100%"}]}
    text = cleanup_plan.result_markdown("x", result, [items[1]])
    assert "- deleted job `jobs/x-cpu-job` (deleted)" in text and "- refused `revisions/x-2`: serves 100%" in text
    assert text.endswith("- revision `revisions/x-2`")
