"""status.json as CONTRACTS §7 writes it: created -> build -> run -> overall, and the moves §7 forbids."""
from datetime import datetime, timedelta, timezone

import pytest

from gpuops import job_status as js
from gpuops.errors import BadInput

T0 = datetime(2025, 6, 18, 14, 30, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=5)
SHA = "a1b2c3d4"


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_created_job_has_the_contract_shape():
    doc = js.new_status(SHA, T0)
    assert doc == {
        "jobId": SHA, "overallStatus": "Pending",
        "timestamps": {"created": "2025-06-18T14:30:00Z", "updated": "2025-06-18T14:30:00Z"},
        "build": {"status": "Pending", "log": "/a1b2c3d4/build.log", "imageUri": None},
        "run": {"status": "Pending", "log": "/a1b2c3d4/app.log", "artifactUrl": None},
    }
    assert js.check_document(doc) == []


def test_a_successful_job_walks_every_stage_to_the_contract_example():
    doc = js.new_status(SHA, T0)
    doc = js.transition(doc, "build", "Running", at(1))
    assert doc["overallStatus"] == "Running"
    doc = js.transition(doc, "build", "Succeeded", at(5), imageUri="ghcr.io/user/repo:a1b2c3d4")
    assert (doc["overallStatus"], doc["run"]["status"]) == ("Running", "Pending")
    doc = js.transition(doc, "run", "Running", at(6))
    doc = js.transition(doc, "run", "Succeeded", at(25), artifactUrl="https://huggingface.co/user/model/commit/1")
    assert doc["overallStatus"] == "Succeeded"
    assert doc["timestamps"] == {"created": "2025-06-18T14:30:00Z", "updated": "2025-06-18T14:55:00Z"}
    assert doc["build"]["imageUri"] == "ghcr.io/user/repo:a1b2c3d4"
    assert doc["run"]["artifactUrl"].startswith("https://huggingface.co/")
    assert (doc["build"]["started"], doc["build"]["finished"]) == ("2025-06-18T14:31:00Z", "2025-06-18T14:35:00Z")
    assert js.check_document(doc) == []


def test_a_failed_build_fails_the_job_and_leaves_the_run_pending():
    doc = js.transition(js.new_status(SHA, T0), "build", "Running", at(1))
    doc = js.transition(doc, "build", "Failed", at(2))
    assert (doc["overallStatus"], doc["build"]["status"], doc["run"]["status"]) == ("Failed", "Failed", "Pending")
    with pytest.raises(js.BadTransition, match="run cannot be Running while the build is Failed"):
        js.transition(doc, "run", "Running", at(3))


def test_a_failed_run_fails_the_job():
    doc = js.new_status(SHA, T0)
    for stage, status in [("build", "Running"), ("build", "Succeeded"), ("run", "Running"), ("run", "Failed")]:
        doc = js.transition(doc, stage, status, at(1))
    assert doc["overallStatus"] == "Failed"


@pytest.mark.parametrize("moves, refused", [
    ([], ("run", "Running")),                                           # run before build
    ([("build", "Running")], ("run", "Running")),                       # run while building
    ([("build", "Running"), ("build", "Succeeded")], ("build", "Running")),  # a finished stage again
    ([], ("build", "Succeeded")),                                       # skipping Running
    ([], ("build", "Done")),                                            # unknown status
    ([], ("publish", "Running")),                                       # unknown stage
])
def test_moves_the_contract_forbids_are_refused(moves, refused):
    doc = js.new_status(SHA, T0)
    for stage, status in moves:
        doc = js.transition(doc, stage, status, at(1))
    with pytest.raises(js.BadTransition):
        js.transition(doc, *refused, at(2))


def test_a_field_of_the_other_stage_is_refused():
    with pytest.raises(js.BadTransition, match="build has no field artifactUrl"):
        js.transition(js.new_status(SHA, T0), "build", "Running", T0, artifactUrl="x")


def test_saying_the_same_status_twice_is_harmless_and_the_input_is_never_changed():
    doc = js.transition(js.new_status(SHA, T0), "build", "Running", at(1))
    before = js.transition(doc, "build", "Running", at(2))
    assert before["build"]["started"] == "2025-06-18T14:31:00Z"
    assert doc["timestamps"]["updated"] == "2025-06-18T14:31:00Z"  # not mutated


def test_timestamps_are_utc_with_z_whatever_the_zone_given():
    tokyo = timezone(timedelta(hours=9))
    assert js.timestamp(datetime(2025, 6, 18, 23, 30, 5, 999, tzinfo=tokyo)) == "2025-06-18T14:30:05Z"
    with pytest.raises(ValueError):
        js.timestamp(datetime(2025, 6, 18))


@pytest.mark.parametrize("sha", ["abc123", "g" * 7, "a" * 41, "", "abc1234 ; rm", "../abcdef1"])
def test_a_job_id_is_7_to_40_hex_digits(sha):
    with pytest.raises(BadInput, match="--sha"):
        js.check_job_id(sha)


def test_a_job_id_is_lower_cased():
    assert js.check_job_id(" ABCDEF1 ") == "abcdef1" and js.check_job_id("f" * 40) == "f" * 40


def test_prefect_links_drop_credentials_from_parameters():
    doc = js.set_prefect(js.new_status(SHA, T0), at(1), flow_run_id="run-1", deployment_id="dep-1",
                         parameters={"repo": "https://user:ghp_secret@github.com/o/r.git", "sha": SHA})
    assert doc["prefect"] == {"flowRunId": "run-1", "deploymentId": "dep-1",
                              "parameters": {"repo": "https://github.com/o/r.git", "sha": SHA}}
    assert "ghp_secret" not in str(doc)


def test_restart_keeps_created_and_counts_attempts():
    doc = js.new_status(SHA, T0)
    doc = js.transition(js.transition(doc, "build", "Running", at(1)), "build", "Failed", at(2))
    doc = js.set_prefect(doc, at(2), flow_run_id="run-1", deployment_id="dep-1")
    again = js.restart(doc, at(10))
    assert again["overallStatus"] == "Pending" and again["attempt"] == 2
    assert again["timestamps"] == {"created": "2025-06-18T14:30:00Z", "updated": "2025-06-18T14:40:00Z"}
    assert again["prefect"] == {"deploymentId": "dep-1"}


@pytest.mark.parametrize("doc, problem", [
    ([], "not a JSON object"),
    ({"jobId": SHA}, "missing overallStatus"),
    ({**js.new_status(SHA, T0), "overallStatus": "Done"}, "overallStatus"),
    ({**js.new_status(SHA, T0), "timestamps": {"created": "2025-06-18 14:30", "updated": "2025-06-18T14:30:00Z"}},
     "timestamps.created"),
])
def test_documents_that_are_not_the_contract_are_named(doc, problem):
    assert any(problem in p for p in js.check_document(doc))


# --- claim: one active flow run per job id ------------------------------------------------------

def _owned(owner: str, **stages) -> dict:
    t0 = T0
    doc = js.set_prefect(js.new_status("a1b2c3d4", t0), t0, flow_run_id=owner, deployment_id="dep",
                         parameters={"sha": "a1b2c3d4"})
    for stage, status in stages.items():
        doc = js.transition(doc, stage, status, t0)
    return doc


def test_claim_refuses_a_job_whose_owner_is_still_active_and_asks_only_about_that_owner():
    asked = []
    doc = _owned("run-1", build="Running")
    with pytest.raises(js.JobBusy, match="already being run by flow run run-1"):
        js.claim(doc, "run-2", T1, lambda owner: asked.append(owner) or True)
    assert asked == ["run-1"]


def test_claim_takes_over_a_crashed_owners_job_and_starts_it_again():
    doc = _owned("run-1", build="Running")
    claimed = js.claim(doc, "run-2", T1, lambda owner: False)
    assert claimed["prefect"]["flowRunId"] == "run-2" and claimed["attempt"] == 2
    assert (claimed["build"]["status"], claimed["run"]["status"], claimed["overallStatus"]) == ("Pending",) * 3
    assert claimed["timestamps"]["created"] == doc["timestamps"]["created"]
    assert claimed["prefect"]["deploymentId"] == "dep"  # what a re-run link needs is kept


def test_a_finished_job_is_run_again_without_asking_and_its_own_claim_is_a_no_op():
    finished = _owned("run-1", build="Failed")
    claimed = js.claim(finished, "run-2", T1, lambda owner: pytest.fail("a finished job needs no owner check"))
    assert claimed["attempt"] == 2 and claimed["prefect"]["flowRunId"] == "run-2"
    assert js.claim(claimed, "run-2", T1, lambda owner: True) is claimed


def test_an_untouched_job_without_owner_is_claimed_as_it_is():
    fresh = js.new_status("a1b2c3d4", T0)
    claimed = js.claim(fresh, "run-9", T1, lambda owner: True, flow_run_url="http://ui/runs/flow-run/run-9")
    assert "attempt" not in claimed and claimed["prefect"] == {"flowRunId": "run-9",
                                                                 "flowRunUrl": "http://ui/runs/flow-run/run-9"}
