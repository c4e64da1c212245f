"""Hub authentication: the API key, GitHub's signature, Pub/Sub push (OIDC through google-auth, or a token)."""
from __future__ import annotations

import functools
import hashlib
import hmac
import http.server
import json
import sys
import threading
import time
from types import ModuleType, SimpleNamespace

import pytest

from gpuops.emulator import id_tokens
from gpuops.emulator.id_tokens import GOOGLE_TOKEN_AUDIENCE, JWT_BEARER_GRANT, TokenIssuer
from gpuops.errors import BadInput
from gpuops.hub import hub_auth
from gpuops.hub.hub_auth import (
    AuthUnavailable,
    HubSettings,
    PubSubAuth,
    Unauthorized,
    api_key_ok,
    github_signature_ok,
    settings_from_env,
)

AUDIENCE = "https://hub.example.com/v1/pubsub/push"
PUSHER = "pubsub-push@emulated-project.iam.gserviceaccount.com"
PUSH_TOKEN = "s3cr3t-push-token-0123456789abcdef"

# --- X-API-Key --------------------------------------------------------------------------------


def test_the_api_key_matches_only_itself():
    assert api_key_ok("k-123", "k-123") and api_key_ok(b"k-123", "k-123")
    assert not api_key_ok("k-124", "k-123") and not api_key_ok("k-12", "k-123")
    assert api_key_ok("clé-ü", "clé-ü") and not api_key_ok("clé-u", "clé-ü")  # compare_digest refuses non-ASCII str


@pytest.mark.parametrize("given, expected", [(None, "k"), ("", "k"), ("k", None), ("k", ""), (None, None),
                                             ("", ""), (123, "123"), (["k"], "k"), ("\udc80", "k")])
def test_missing_empty_or_odd_keys_are_refused_without_raising(given, expected):
    assert api_key_ok(given, expected) is False


def test_the_key_is_compared_in_constant_time(monkeypatch):
    seen = []
    monkeypatch.setattr(hub_auth.hmac, "compare_digest", lambda a, b: seen.append((a, b)) or a == b)
    assert api_key_ok("k-123", "k-123") and seen == [(b"k-123", b"k-123")]


# --- GitHub X-Hub-Signature-256 ---------------------------------------------------------------

# GitHub's documented test values ("Validating webhook deliveries").
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_githubs_documented_test_vector_is_accepted():
    assert github_signature_ok(GITHUB_SECRET.encode(), GITHUB_BODY, GITHUB_SIGNATURE)
    assert github_signature_ok(GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE.upper().replace("SHA256", "sha256"))


@pytest.mark.parametrize("secret, body, header", [
    (GITHUB_SECRET, b"Hello, World?", GITHUB_SIGNATURE),              # tampered body
    (GITHUB_SECRET, GITHUB_BODY + b"\n", GITHUB_SIGNATURE),           # re-serialized body
    ("It's a Secret to Everybody!", GITHUB_BODY, GITHUB_SIGNATURE),   # another secret
    (GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE.replace("sha256=", "sha1=")),
    (GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE[7:]), (GITHUB_SECRET, GITHUB_BODY, GITHUB_SIGNATURE[:-1]),
    (GITHUB_SECRET, GITHUB_BODY, None), (GITHUB_SECRET, GITHUB_BODY, ""), (GITHUB_SECRET, "Hello, World!",
                                                                           GITHUB_SIGNATURE),
    (None, GITHUB_BODY, GITHUB_SIGNATURE),
])
def test_a_tampered_body_another_secret_or_a_bad_header_is_refused(secret, body, header):
    assert github_signature_ok(secret, body, header) is False


def test_an_empty_secret_matches_nothing_not_even_an_hmac_under_the_empty_key():
    forged = "sha256=" + hmac.new(b"", GITHUB_BODY, hashlib.sha256).hexdigest()
    assert github_signature_ok(b"", GITHUB_BODY, forged) is False


# --- Pub/Sub push: OIDC through google-auth, against the emulator's token issuer ---------------


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer()


def certs_of(*issuers: TokenIssuer) -> dict:
    # id_tokens.py serves no certs document yet: its signing key is read here, {kid: PEM} as Google serves.
    return {i._signing_kid: i._signing.public_pem for i in issuers}


@functools.lru_cache(maxsize=None)
def account_signer(issuer: TokenIssuer, email: str):
    # One key per account, loaded once: making and loading an RSA key takes a tenth of a second or more.
    from google.auth import crypt

    return crypt.RSASigner.from_service_account_info(
        issuer.service_account_key("http://127.0.0.1:9/token", email=email))


def mint(issuer: TokenIssuer, audience: str = AUDIENCE, email: str = PUSHER) -> str:
    """An ID token the issuer signs, through its public flow: a service-account key, a signed assertion."""
    from google.auth import jwt

    now = int(time.time())
    claims = {"iss": email, "sub": email, "aud": GOOGLE_TOKEN_AUDIENCE, "target_audience": audience,
              "iat": now, "exp": now + 600}
    assertion = jwt.encode(account_signer(issuer, email), claims).decode()
    return issuer.exchange({"grant_type": JWT_BEARER_GRANT, "assertion": assertion})["id_token"]


id_token = functools.lru_cache(maxsize=None)(mint)  # tokens last an hour: one per (issuer, audience, account)


class Certs:
    """A google-auth transport serving a certs document, counting fetches."""

    def __init__(self, certs: dict, status: int = 200, data: bytes | None = None):
        self.status, self.data, self.fetches = status, data or json.dumps(certs).encode(), []

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        self.fetches.append((url, timeout))
        return SimpleNamespace(status=self.status, headers={}, data=self.data)


def oidc(issuer, **kwargs) -> PubSubAuth:
    return PubSubAuth("oidc", audience=AUDIENCE, request=Certs(certs_of(issuer)), **kwargs)


def unauthorized(auth: PubSubAuth, authorization=None, query_token=None) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        auth.check(authorization, query_token)
    return caught.value


def test_a_valid_google_id_token_for_the_audience_passes(issuer):
    assert oidc(issuer).check(f"Bearer {id_token(issuer)}") is None
    assert oidc(issuer, service_account=PUSHER).check(f"bearer  {id_token(issuer)} ") is None


def test_a_token_for_another_audience_is_refused(issuer):
    error = unauthorized(oidc(issuer), f"Bearer {id_token(issuer, audience='https://other.example.com')}")
    assert error.status == 401 and "audience is not GPUOPS_PUBSUB_AUDIENCE" in error.reason


def test_an_expired_token_is_refused(issuer, monkeypatch):
    real = time.time
    monkeypatch.setattr(id_tokens, "time", SimpleNamespace(time=lambda: real() - 2 * 3600))  # issued 2 h ago
    token = mint(issuer)
    monkeypatch.undo()
    assert "expired" in unauthorized(oidc(issuer), f"Bearer {token}").reason


def test_a_token_with_a_bad_signature_or_an_unknown_key_is_refused(issuer):
    header, payload, signature = id_token(issuer).split(".")
    forged_payload = id_token(issuer, email="intruder@evil.example.com").split(".")[1]
    forged = ".".join([header, forged_payload, signature])
    assert "signature does not verify" in unauthorized(oidc(issuer), f"Bearer {forged}").reason
    foreign = id_token(TokenIssuer())
    assert "key the certs do not hold" in unauthorized(oidc(issuer), f"Bearer {foreign}").reason


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "token-only"])
def test_a_missing_or_non_bearer_authorization_is_refused_with_the_fix(issuer, authorization):
    error = unauthorized(oidc(issuer), authorization)
    assert error.status == 401 and "--push-auth-service-account" in error.reason


def test_a_refusal_never_repeats_what_was_sent(issuer):
    garbage = "not-a-jwt-" + "Z" * 40
    assert unauthorized(oidc(issuer), f"Bearer {garbage}").reason == "the bearer value is not a Google ID token"
    token = id_token(issuer, audience="https://other.example.com")
    assert token not in unauthorized(oidc(issuer), f"Bearer {token}").reason


def test_a_token_from_an_account_not_allowed_is_forbidden(issuer):
    error = unauthorized(oidc(issuer, service_account="other@p.iam.gserviceaccount.com"),
                         f"Bearer {id_token(issuer)}")
    assert error.status == 403 and PUSHER in error.reason


def test_a_token_signed_by_a_known_key_but_not_issued_by_google_is_refused(issuer):
    from google.auth import crypt, jwt

    pair, now = id_tokens.new_key_pair(), int(time.time())
    claims = {"iss": "https://evil.example.com", "aud": AUDIENCE, "iat": now, "exp": now + 600, "email": PUSHER}
    token = jwt.encode(crypt.RSASigner.from_string(pair.private_pem, key_id="evil"), claims).decode()
    auth = PubSubAuth("oidc", audience=AUDIENCE, request=Certs({**certs_of(issuer), "evil": pair.public_pem}))
    assert "not issued by Google" in unauthorized(auth, f"Bearer {token}").reason


def test_the_certs_are_fetched_once_within_their_time_to_live_with_a_bounded_timeout(issuer):
    certs = Certs(certs_of(issuer))
    auth = PubSubAuth("oidc", audience=AUDIENCE, certs_url="https://certs.example.com/v1", request=certs)
    for _ in range(3):
        auth.check(f"Bearer {id_token(issuer)}")
    assert certs.fetches == [("https://certs.example.com/v1", hub_auth.CERTS_TIMEOUT_S)]


@pytest.mark.parametrize("status, data", [(500, b"{}"), (200, b"<html>"), (200, b"[1, 2]")])
def test_certs_that_do_not_load_are_unavailable_not_a_bad_token(issuer, status, data):
    auth = PubSubAuth("oidc", audience=AUDIENCE, request=Certs({}, status=status, data=data))
    with pytest.raises(AuthUnavailable, match="did not load"):
        auth.check(f"Bearer {id_token(issuer)}")


def test_the_default_transport_fetches_the_certs_over_http_on_loopback(issuer):
    document = json.dumps(certs_of(issuer)).encode()

    class CertsHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CertsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        auth = PubSubAuth("oidc", audience=AUDIENCE, certs_url=f"http://127.0.0.1:{server.server_port}/certs")
        assert auth.check(f"Bearer {id_token(issuer)}") is None
    finally:
        server.shutdown()
        server.server_close()


# --- Pub/Sub push: the token in the push URL --------------------------------------------------


def test_the_push_token_in_the_query_passes_and_any_other_is_refused_without_echo():
    auth = PubSubAuth("token", token=PUSH_TOKEN)
    assert auth.check(None, PUSH_TOKEN) is None
    wrong = unauthorized(auth, None, PUSH_TOKEN + "x")
    assert wrong.status == 401 and "GPUOPS_PUBSUB_PUSH_TOKEN" in wrong.reason and PUSH_TOKEN not in wrong.reason
    assert "no ?token=" in unauthorized(auth, f"Bearer {PUSH_TOKEN}", None).reason  # only the query counts
    assert PUSH_TOKEN not in repr(auth)


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, names", [
    ({"mode": "oidc"}, "GPUOPS_PUBSUB_AUDIENCE"), ({"mode": "oidc", "audience": " "}, "GPUOPS_PUBSUB_AUDIENCE"),
    ({"mode": "oidc", "audience": AUDIENCE, "certs_url": "http://certs.example.com/"}, "GPUOPS_PUBSUB_CERTS_URL"),
    ({"mode": "oidc", "audience": AUDIENCE, "certs_url": "certs"}, "GPUOPS_PUBSUB_CERTS_URL"),
    ({"mode": "oidc", "audience": AUDIENCE, "service_account": "me"}, "GPUOPS_PUBSUB_SERVICE_ACCOUNT"),
    ({"mode": "token"}, "GPUOPS_PUBSUB_PUSH_TOKEN"), ({"mode": "token", "token": "short-tok"}, "16+"),
    ({"mode": "token", "token": "has spaces and & in it"}, "GPUOPS_PUBSUB_PUSH_TOKEN"),
    ({"mode": "basic", "token": PUSH_TOKEN}, "oidc, token"),
])
def test_an_unusable_configuration_is_refused_at_construction_naming_the_setting(kwargs, names):
    with pytest.raises(BadInput, match=names.replace("+", r"\+")) as caught:
        PubSubAuth(**kwargs)
    assert "short-tok" not in str(caught.value) and "has spaces" not in str(caught.value)


def test_settings_without_an_audience_or_a_push_token_refuse_pub_sub():
    with pytest.raises(BadInput, match="GPUOPS_PUBSUB_AUDIENCE.*GPUOPS_PUBSUB_PUSH_TOKEN"):
        HubSettings(api_key="k").pubsub_auth()


def test_settings_come_from_the_environment_and_choose_oidc_over_the_token():
    env = {"GPUOPS_HUB_API_KEY": " hub-key \n", "GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
           "GPUOPS_PUBSUB_PUSH_TOKEN": PUSH_TOKEN, "GPUOPS_PUBSUB_AUDIENCE": AUDIENCE, "GPUOPS_PUBSUB_CERTS_URL": ""}
    settings = settings_from_env(env)
    assert (settings.api_key, settings.github_secret, settings.pubsub_certs_url) == ("hub-key", GITHUB_SECRET, None)
    assert settings.pubsub_auth().mode == "oidc"
    assert settings.pubsub_auth().certs_url == hub_auth.GOOGLE_CERTS_URL
    del env["GPUOPS_PUBSUB_AUDIENCE"]
    assert settings_from_env(env).pubsub_auth().mode == "token"
    shown = repr(settings_from_env(env))
    assert all(secret not in shown for secret in ("hub-key", GITHUB_SECRET, PUSH_TOKEN))


@pytest.fixture
def secret_blocks(monkeypatch) -> dict:
    """Prefect's Secret blocks, stood in for by a module holding {name: value} (importing prefect takes seconds)."""
    saved: dict = {}

    class Secret:
        @classmethod
        def load(cls, name):
            if name not in saved:
                raise ValueError(f"Unable to find block document named {name} for block type secret")
            return SimpleNamespace(get=lambda: saved[name])

    module = ModuleType("prefect.blocks.system")
    module.Secret = Secret
    monkeypatch.setitem(sys.modules, "prefect.blocks.system", module)
    return saved


def test_a_named_secret_block_fills_a_setting_and_the_environment_wins(secret_blocks):
    secret_blocks.update({"hub-key": "key-from-block", "gh": "gh-from-block"})
    blocks = {"api_key": "hub-key", "github_secret": "gh"}
    settings = settings_from_env({"GITHUB_WEBHOOK_SECRET": "gh-from-env"}, blocks)
    assert (settings.api_key, settings.github_secret) == ("key-from-block", "gh-from-env")


@pytest.mark.parametrize("saved, says", [({}, "was not found"), ({"hub-key": "  "}, "non-empty string"),
                                         ({"hub-key": {"k": "v"}}, "non-empty string")])
def test_a_missing_or_unusable_block_names_the_block_and_the_variable(secret_blocks, saved, says):
    secret_blocks.update(saved)
    with pytest.raises(BadInput, match=f"'hub-key' \\(for GPUOPS_HUB_API_KEY\\) .*{says}"):
        settings_from_env({}, {"api_key": "hub-key"})


def test_only_secrets_come_from_blocks():
    with pytest.raises(BadInput, match="pubsub_audience"):
        settings_from_env({}, {"pubsub_audience": "aud-block"})
