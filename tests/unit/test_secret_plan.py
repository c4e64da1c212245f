"""The Secret Manager migration's planner (pure): which resources move, refusals, traffic forms, names."""
from __future__ import annotations

import json

from gpuops import secret_plan as sp

REF = {"valueSource": {"secretKeyRef": {"secret": "svc-api-key", "version": "1"}}}
LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"


def service(env: list[dict], traffic=None, annotations=None, revision=None, labels=None) -> dict:
    template = {"containers": [{"image": "img", "env": env}], **({"revision": revision} if revision else {})}
    return {"name": "projects/p/locations/r/services/svc", "template": template, "labels": labels or {},
            "annotations": annotations or {}, "traffic": traffic or [{"type": LATEST, "percent": 100}],
            "trafficStatuses": [{"type": LATEST, "revision": "svc-00001-abc", "percent": 100}],
            "latestReadyRevision": "projects/p/locations/r/services/svc/revisions/svc-00001-abc",
            "latestCreatedRevision": "projects/p/locations/r/services/svc/revisions/svc-00001-abc"}


PLAIN = [{"name": "API_KEY", "value": "v"}, {"name": "LOG_LEVEL", "value": "info"},
         {"name": "SA_CREDENTIALS", "valueSource": {"secretKeyRef": {"secret": "sa", "version": "latest"}}}]


def test_names_and_labels():
    assert sp.secret_id("svc", "API_KEY") == "svc-api-key"
    assert sp.secret_id("svc", "GCP_SA_CREDENTIALS") == "svc-gcp-sa-credentials"
    assert sp.secret_labels("svc", "API_KEY") == {"managed-by": "gpuops", "gpuops-source-service": "svc",
                                                 "gpuops-env": "api_key"}
    template = {"containers": [{"env": [{"name": "API_KEY", **REF}]}]}
    name = sp.revision_name("svc", template)
    assert name == sp.revision_name("svc", {**template, "revision": "svc-other"})  # the name is not content
    assert sp.is_own_revision("svc", name) and not sp.is_own_revision("svc", "svc-00002-xyz")
    assert not sp.is_own_revision("other", name)


def test_only_plaintext_secrets_move_and_the_rest_is_untouched():
    assert sp.plaintext_suspects(sp.template_containers(service(PLAIN))) == ["API_KEY"]
    switched = sp.with_refs(service(PLAIN)["template"]["containers"], {"API_KEY": REF["valueSource"]["secretKeyRef"]})
    assert switched[0]["env"] == [{"name": "API_KEY", **REF}, PLAIN[1], PLAIN[2]]
    assert sp.plaintext_values(service(PLAIN)["template"]["containers"], "API_KEY") == {"v"}
    job = {"name": "j", "etag": "e", "uid": "u", "labels": {"managed-by": "gpuops"},
           "template": {"taskCount": 1, "template": {"containers": [{"env": PLAIN}]}}}
    body = sp.switched_job(job, {"API_KEY": REF["valueSource"]["secretKeyRef"]})
    assert set(body) == {"labels", "template"} and body["template"]["template"]["containers"][0]["env"][0] == \
        {"name": "API_KEY", **REF}


def test_resource_actions_switch_resume_unchanged_refused():
    plain, done = service(PLAIN), service([{"name": "API_KEY", **REF}])
    serving_plain = {"containers": [{"env": PLAIN}]}
    assert sp.resource_plan("service", "service", "svc", plain, serving_plain, False)["action"] == "switch"
    assert sp.resource_plan("service", "service", "svc", done, {"containers": [{"env": [{"name": "API_KEY", **REF}]}]},
                            False)["action"] == "unchanged"
    assert sp.resource_plan("cpu_job", "job", "svc-cpu-job", None, None, False)["action"] == "absent"

    own = sp.revision_name("svc", done["template"])
    resumed = sp.resource_plan("service", "service", "svc", service(done["template"]["containers"][0]["env"],
                                                                    revision=own), serving_plain, False)
    assert (resumed["action"], resumed["vars"], resumed["serving_vars"]) == ("resume", [], ["API_KEY"])
    assert sp.moving(resumed) == ["API_KEY"]
    elsewhere = sp.resource_plan("service", "service", "svc", done, serving_plain, False)
    assert elsewhere["action"] == "refused" and "no longer does" in elsewhere["why"]

    foreign_job = {"template": {"template": {"containers": [{"env": PLAIN}]}}}
    refused = sp.resource_plan("cpu_job", "job", "svc-cpu-job", foreign_job, None, False)
    assert refused["action"] == "refused" and "--adopt" in refused["fix"]
    assert sp.resource_plan("cpu_job", "job", "svc-cpu-job", foreign_job, None, True)["action"] == "switch"

    from gpuops.traffic import CanaryState

    canary = CanaryState(stable="svc-00001-abc", candidate="svc-gpu-123456", steps=(20, 100), step=0).to_json()
    live = sp.resource_plan("service", "service", "svc", service(PLAIN, annotations={"gpuops.dev/canary": canary}),
                            serving_plain, False)
    assert live["action"] == "refused" and "canary" in live["why"]


def test_variables_and_refusals_name_only_names():
    items = [sp.resource_plan("service", "service", "svc", service(PLAIN), {"containers": [{"env": PLAIN}]}, False),
             sp.resource_plan("gpu_job", "job", "svc-gpu-job", {"labels": {"managed-by": "gpuops"}, "template": {
                 "template": {"containers": [{"env": PLAIN}]}}}, None, False)]
    rows = sp.variables("svc", items, {"svc-api-key": {"labels": {}}}, adopt=False)
    assert rows == [{"name": "API_KEY", "secret": "svc-api-key", "secret_state": "foreign", "adopted": False,
                     "resources": ["svc", "svc-gpu-job"]}]
    refused = sp.refusals(items, rows, False, ["API_KEY"])
    assert [v.rule for v in refused] == ["foreign-secret", "values-differ"]
    assert not sp.refusals(items, sp.variables("svc", items, {}, False), False, [])
    clash = [{"name": "API_KEY", "secret": "svc-api-key"}, {"name": "API-KEY", "secret": "svc-api-key"}]
    assert [v.rule for v in sp.refusals([], [{**r, "secret_state": "absent"} for r in clash], False, [])] == \
        ["secret-name-clash"]
    assert "v" not in json.dumps([rows, [v.__dict__ for v in refused]]).replace('"', " ").split()


def test_traffic_pins_stable_while_verifying_and_ends_in_the_form_it_had():
    svc = service(PLAIN)
    traffic, record = sp.deploy_traffic(svc, "svc-00001-abc", "svc-sm-123456")
    assert traffic == [{"type": REVISION, "revision": "svc-00001-abc", "percent": 100},
                       {"type": REVISION, "revision": "svc-sm-123456", "percent": 0, "tag": sp.SECRETS_TAG}]
    assert record["latest"] and record["from"] == "svc-00001-abc"
    after = {**svc, "latestCreatedRevision": "projects/p/locations/r/services/svc/revisions/svc-sm-123456"}
    assert sp.final_traffic(after, record, "svc-sm-123456") == [{"type": LATEST, "percent": 100}]

    tagged = service(PLAIN, traffic=[{"type": REVISION, "revision": "svc-00001-abc", "percent": 100, "tag": "prod"},
                                     {"type": REVISION, "revision": "svc-00000-old", "percent": 0, "tag": "old"}])
    traffic, record = sp.deploy_traffic(tagged, "svc-00001-abc", "svc-sm-123456")
    assert traffic[0]["tag"] == "prod" and {"type": REVISION, "revision": "svc-00000-old", "percent": 0,
                                            "tag": "old"} in traffic
    assert sp.final_traffic(tagged, record, "svc-sm-123456") == [
        {"type": REVISION, "revision": "svc-sm-123456", "percent": 100, "tag": "prod"},
        {"type": REVISION, "revision": "svc-00000-old", "percent": 0, "tag": "old"}]
    assert sp.ready_state({"conditions": [{"type": "Ready", "state": "CONDITION_FAILED", "message": "boom"}]}) == \
        ("failed", "boom")
    assert sp.ready_state({"conditions": []})[0] == "pending" and sp.ready_state(None)[0] == "failed"
