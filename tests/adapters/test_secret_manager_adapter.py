"""gpuops.secret_manager against the Secret Manager emulation over real HTTP: guarded writes, no payload in logs."""
from __future__ import annotations

import logging

import pytest
from google.api_core import exceptions as gexc

from gpuops import secret_manager

NAME = "projects/nca-toolkit-438301/secrets/svc-api-key"
LABELS = {"managed-by": "gpuops"}


@pytest.fixture
def sm(fresh_cloudrun_emulator, monkeypatch):
    monkeypatch.setenv("GPUOPS_RETRY_INITIAL_S", "0.01")
    monkeypatch.delenv(secret_manager.ENDPOINT_ENV, raising=False)
    return secret_manager.connect(fresh_cloudrun_emulator.url)


def test_a_lost_create_answer_is_read_back_not_sent_again(sm, fresh_cloudrun_emulator):
    fresh_cloudrun_emulator.add_fault(method="POST", path=r"/secrets$", status=503, mode="after")

    made = secret_manager.create_secret(sm, NAME, LABELS)

    assert made["name"] == NAME and made["labels"] == LABELS
    assert len(fresh_cloudrun_emulator.requests(method="POST", path=r"/secrets$")) == 1  # no 409 from a resend
    assert sm.is_emulator and "(not Google)" in sm.where()


def test_a_lost_create_of_a_secret_someone_else_holds_is_not_taken_for_ours(sm, fresh_cloudrun_emulator):
    sm.client.create_secret(parent="projects/nca-toolkit-438301", secret_id="svc-api-key",
                            secret={"replication": {"automatic": {}}})
    fresh_cloudrun_emulator.add_fault(method="POST", path=r"/secrets$", status=503)

    with pytest.raises(gexc.Conflict):  # the read-back found a secret without our labels: resent, refused
        secret_manager.create_secret(sm, NAME, LABELS)


def test_a_lost_add_version_answer_adds_one_version_and_access_compares(sm, fresh_cloudrun_emulator):
    secret_manager.create_secret(sm, NAME, LABELS)
    fresh_cloudrun_emulator.add_fault(method="POST", path=r":addVersion$", status=500, mode="after")

    added = secret_manager.add_version(sm, NAME, b"the-value")

    assert added["name"] == f"{NAME}/versions/1"
    assert [v.name for v in sm.client.list_secret_versions(parent=NAME)] == [f"{NAME}/versions/1"]
    assert secret_manager.matching_version(sm, NAME, b"the-value") == f"{NAME}/versions/1"
    assert secret_manager.matching_version(sm, NAME, b"other") is None
    sm.client.disable_secret_version(name=f"{NAME}/versions/1")
    assert secret_manager.access(sm, f"{NAME}/versions/1") is None  # disabled: a 400 FAILED_PRECONDITION
    assert secret_manager.get_secret(sm, NAME + "-absent") is None
    assert secret_manager.delete_secret(sm, NAME) and not secret_manager.delete_secret(sm, NAME)


def test_a_failed_add_version_keeps_no_payload_in_its_exception(sm, fresh_cloudrun_emulator):
    secret_manager.create_secret(sm, NAME, LABELS)
    fresh_cloudrun_emulator.add_fault(method="POST", path=r":addVersion$", status=400, message="refused")

    with pytest.raises(gexc.BadRequest) as err:
        secret_manager.add_version(sm, NAME, b"hidden-in-the-request")
    assert err.value.response is None  # scrubbed: the requests.Response held the request body


def test_google_debug_logs_keep_their_records_but_never_a_payload(sm, caplog):
    logger = logging.getLogger(f"{secret_manager.TRANSPORT_LOGGER}.services.secret_manager_service.transports.rest")
    secret_manager.create_secret(sm, NAME, LABELS)
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        secret_manager.add_version(sm, NAME, b"debug-logged-value")
        assert secret_manager.access(sm, f"{NAME}/versions/latest")[1] == b"debug-logged-value"
    records = [r for r in caplog.records if r.name == logger.name]
    assert any("AddSecretVersion" in r.getMessage() for r in records)
    import base64
    encoded = base64.b64encode(b"debug-logged-value").decode()
    for record in records:
        dumped = repr(vars(record))
        assert "debug-logged-value" not in dumped and encoded not in dumped
