"""Probe credentials: which one a refusal asks for, names never values, values never in a repr, pickle or message."""
import copy
import pickle

import pytest

from gpuops import params
from gpuops.errors import BadInput
from gpuops.probe_auth import HeaderSecret, ProbeAuth, explain_refusal, from_parameters

URL = "https://gpu-service-abc.a.run.app"
FORBIDDEN = "Error: Forbidden\nYour client does not have permission to get URL /healthz from this server."
BEARER = 'Bearer error="invalid_token"'


def test_a_front_end_403_without_a_token_asks_for_an_id_token():
    said = explain_refusal(None, URL, 403, "", FORBIDDEN)
    assert "requires a Google ID token" in said and "--id-token" in said


def test_a_refused_token_names_its_audience_and_the_invoker_role():
    said = explain_refusal(ProbeAuth(id_token=True), URL, 401, BEARER, "")
    assert URL in said and "roles/run.invoker" in said and "--id-token-audience" in said


def test_an_app_401_without_a_key_asks_for_the_key_header_and_where_to_name_it():
    said = explain_refusal(ProbeAuth(id_token=True), URL, 401, "", '{"error": "bad key"}')
    assert "X-API-Key" in said and "--api-key-secret" in said and "--api-key-env" in said


def test_an_app_401_to_the_key_sent_names_where_the_key_came_from():
    auth = ProbeAuth(api_key=HeaderSecret("X-Token", secret_block="gpu-key"))
    said = explain_refusal(auth, URL, 401, "", "no")
    assert "X-Token" in said and "Secret block 'gpu-key'" in said


def test_other_answers_are_no_refusal():
    assert explain_refusal(None, URL, 500, "", "boom") is None
    assert explain_refusal(None, URL, None) is None


def test_the_key_is_read_from_the_env_var_sent_and_redacted_but_never_kept_in_a_repr_or_pickle(monkeypatch):
    monkeypatch.setenv("GPU_KEY", "  planted-value  ")
    auth = from_parameters(api_key_env="GPU_KEY")
    assert auth.headers_for(URL) == {"X-API-Key": "planted-value"}
    assert auth.redact("echo planted-value!") == "echo [redacted]!"
    for shown in (repr(auth), str(auth), auth.describe(), repr(HeaderSecret(env_var="GPU_KEY"))):
        assert "planted" not in shown and "GPU_KEY" in shown
    for copied in (pickle.dumps(auth), pickle.dumps(copy.deepcopy(auth))):
        assert b"planted" not in copied
    assert pickle.loads(pickle.dumps(auth)).headers_for(URL) == {"X-API-Key": "planted-value"}  # read again


def test_a_missing_or_unsendable_key_is_bad_input_naming_the_place_not_the_value(monkeypatch):
    with pytest.raises(BadInput, match="environment variable GPU_KEY .*--api-key-env"):
        from_parameters(api_key_env="GPU_KEY").prepare()
    monkeypatch.setenv("GPU_KEY", "planted\nvalue")
    with pytest.raises(BadInput, match="printable ASCII") as refused:
        from_parameters(api_key_env="GPU_KEY").prepare()
    assert "planted" not in str(refused.value)


def test_nothing_asked_means_no_provider_and_an_audience_implies_the_id_token():
    assert from_parameters() is None
    assert from_parameters(id_token_audience="custom").id_token is True


@pytest.mark.parametrize("field, value", [("api_key_env", "sk-live-planted"), ("api_key_secret", "Planted Key!")])
def test_a_key_pasted_where_its_place_belongs_is_refused_without_echoing_it(field, value):
    with pytest.raises(BadInput) as refused:
        params.probe_auth(**{field: value})
    assert "planted" not in str(refused.value).lower() and f"--{field.replace('_', '-')}" in str(refused.value)


@pytest.mark.parametrize("given, flag", [
    (dict(api_key_header="Authorization"), "--api-key-header"),
    (dict(api_key_header="X Key"), "--api-key-header"),
    (dict(api_key_secret="gpu-key", api_key_env="GPU_KEY"), "--api-key-env"),
    (dict(id_token="yes"), "--id-token"),
    (dict(id_token_audience="two words"), "--id-token-audience"),
])
def test_bad_places_are_refused_naming_the_flag(given, flag):
    with pytest.raises(BadInput, match=flag):
        params.probe_auth(**given)


@pytest.mark.parametrize("url, audience", [
    ("https://gpu-canary---svc-abc-uc.a.run.app", "https://svc-abc-uc.a.run.app"),
    ("https://svc-abc-uc.a.run.app/", "https://svc-abc-uc.a.run.app"),
    ("http://127.0.0.1:8780/emulated/p/us-central1/gpu-canary---svc", "http://127.0.0.1:8780/emulated/p/us-central1/svc"),
])
def test_a_tag_urls_token_is_for_the_service_url_which_cloud_run_always_accepts(url, audience):
    assert ProbeAuth(id_token=True).audience_for(url) == audience
    assert ProbeAuth(id_token_audience="custom").audience_for(url) == "custom"
