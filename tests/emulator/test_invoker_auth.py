"""Invoker authentication on the emulator's service URLs, with google-auth's real service-account ID-token flow."""

import json

import httpx
import pytest

from gpuops import cloudrun

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
NAME = cloudrun.service_name(P, R, S)


def service_url(emu) -> str:
    return cloudrun.get_service(cloudrun.connect(emu.url), NAME)["uri"]


def google_id_token(audience: str) -> str:
    import google.auth.transport.requests
    import google.oauth2.id_token

    return google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)


def test_google_auths_own_id_token_flow_gets_a_token_the_emulator_accepts(gpu_cloud_run, key_file):
    url = service_url(gpu_cloud_run)
    gpu_cloud_run.require_auth(NAME, id_token=True)

    missing = httpx.get(url + "/healthz")
    junk = httpx.get(url + "/healthz", headers={"Authorization": "Bearer not-a-token"})
    elsewhere = httpx.get(url + "/healthz", headers={"Authorization": f"Bearer {google_id_token('https://other')}"})
    good = httpx.get(url + "/healthz", headers={"Authorization": f"Bearer {google_id_token(url)}"})

    assert missing.status_code == 403 and "does not have permission" in missing.text
    assert junk.status_code == 401 and junk.headers["www-authenticate"].startswith("Bearer")
    assert elsewhere.status_code == 401  # a token for another audience is no good here
    assert good.status_code == 200 and good.json()["status"] == "ok"


def test_a_required_header_is_checked_and_its_value_never_shown(gpu_cloud_run):
    url = service_url(gpu_cloud_run)
    gpu_cloud_run.require_auth(NAME, header="X-API-Key", value="planted-value")

    assert httpx.get(url + "/healthz").status_code == 401
    wrong = httpx.get(url + "/healthz", headers={"X-API-Key": "guess"})
    assert wrong.status_code == 401 and "X-API-Key" in wrong.text and "planted" not in wrong.text
    assert httpx.get(url + "/healthz", headers={"X-API-Key": "planted-value"}).status_code == 200
    listing = httpx.get(gpu_cloud_run.url + "/emulator/v1/auth/services").text
    assert '"value_set":true' in listing.replace(" ", "") and "planted" not in listing


def test_the_control_api_sets_checks_and_reset_clears_requirements(gpu_cloud_run, key_file):
    url, control = service_url(gpu_cloud_run), gpu_cloud_run.url + "/emulator/v1/auth/services"
    set_ = httpx.post(control, json={"service": NAME, "id_token": True})
    assert set_.status_code == 200 and set_.json()["id_token"] is True
    assert httpx.get(url + "/healthz").status_code == 403
    assert httpx.post(control, json={"service": "web", "id_token": True}).status_code == 400
    assert httpx.post(control, json={"service": NAME, "header": "X-API-Key"}).status_code == 400  # no value
    assert httpx.post(control, json={"service": NAME, "bogus": 1}).status_code == 400

    httpx.post(gpu_cloud_run.url + "/emulator/v1/reset", json={"reseed": False})
    assert httpx.get(control).json() == {"services": {}}


def test_the_token_endpoint_refuses_an_assertion_from_a_key_it_did_not_issue(gpu_cloud_run, tmp_path, monkeypatch):
    from google.auth import exceptions

    from gpuops.emulator.id_tokens import TokenIssuer

    foreign = TokenIssuer().service_account_key(gpu_cloud_run.url + "/emulator/v1/auth/token")
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(foreign))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises(exceptions.RefreshError, match="invalid_grant"):
        google_id_token("https://anything")


def test_a_key_file_can_be_had_over_http(gpu_cloud_run):
    key = httpx.post(gpu_cloud_run.url + "/emulator/v1/auth/service-account-keys").json()
    assert key["type"] == "service_account" and key["token_uri"].startswith(gpu_cloud_run.url)
