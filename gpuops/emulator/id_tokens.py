"""The emulator's stand-in for Google's OAuth2 token endpoint: service-account keys and the ID tokens it signs.

google-auth's own service-account ID-token flow runs unchanged against it: a key file whose
`token_uri` points here makes `service_account.IDTokenCredentials` (and so
`google.oauth2.id_token.fetch_id_token` with GOOGLE_APPLICATION_CREDENTIALS) sign its JWT
assertion, post it here, and get back an ID token that the emulator signed and later checks.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth always addresses its assertion to Google's endpoint, whatever the key file's token_uri.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
ISSUER = "https://accounts.google.com"  # what Google's ID tokens carry as `iss`
DEFAULT_ACCOUNT = "gpuops-prober@emulated-project.iam.gserviceaccount.com"
ID_TOKEN_LIFETIME_S = 3600  # Google's ID tokens last one hour


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_pem: str


def new_key_pair() -> KeyPair:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(private.decode(), public.decode())


class TokenRefused(Exception):
    """The token endpoint says no: OAuth2's error code and a description (never the assertion)."""

    def __init__(self, error: str, description: str):
        super().__init__(description)
        self.error, self.description = error, description


class TokenIssuer:
    """Issues service-account keys, exchanges their signed assertions for ID tokens, checks those tokens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._signing_pair: KeyPair | None = None  # made on first use: most emulators never sign a token
        self._signing_kid = uuid.uuid4().hex
        self._accounts: dict[str, tuple[str, str]] = {}  # key id -> (account email, public key PEM)

    def service_account_key(self, token_uri: str, email: str = DEFAULT_ACCOUNT) -> dict:
        """A service-account key file's content, as IAM hands it out, with `token_uri` pointing here."""
        pair, kid = new_key_pair(), uuid.uuid4().hex
        with self._lock:
            self._accounts[kid] = (email, pair.public_pem)
        return {
            "type": "service_account", "project_id": email.split("@")[-1].split(".")[0],
            "private_key_id": kid, "private_key": pair.private_pem, "client_email": email,
            "client_id": str(uuid.uuid4().int)[:21], "token_uri": token_uri,
            "universe_domain": "googleapis.com",
        }

    def exchange(self, form: dict[str, str]) -> dict:
        """The JWT-bearer grant google-auth sends for an ID token; raises TokenRefused like Google's 400."""
        if form.get("grant_type") != JWT_BEARER_GRANT:
            raise TokenRefused("unsupported_grant_type", f"grant_type must be {JWT_BEARER_GRANT}")
        claims = self._verified_assertion(form.get("assertion", ""))
        audience = claims.get("target_audience")
        if not audience:
            raise TokenRefused("invalid_request", "the assertion has no target_audience: only ID tokens are issued here")
        return {"id_token": self._id_token(claims["iss"], audience)}

    def check(self, token: str, audiences: set[str]) -> str | None:
        """Why an ID token is not good for one of `audiences` (signature, expiry, audience), or None."""
        from google.auth import exceptions, jwt

        try:
            claims = jwt.decode(token, certs={self._signing_kid: self._signing.public_pem}, verify=True)
        except (exceptions.GoogleAuthError, ValueError) as exc:
            return f"the token could not be verified ({type(exc).__name__})"
        if claims.get("iss") != ISSUER:
            return "the token was not issued by the token endpoint"
        if claims.get("aud") not in audiences:
            return f"the token's audience {claims.get('aud')!r} is not this service's URL"
        return None

    @property
    def _signing(self) -> KeyPair:
        with self._lock:
            if self._signing_pair is None:
                self._signing_pair = new_key_pair()
            return self._signing_pair

    def _verified_assertion(self, assertion: str) -> dict:
        from google.auth import exceptions, jwt

        try:
            kid = jwt.decode_header(assertion).get("kid")
        except (exceptions.GoogleAuthError, ValueError):
            raise TokenRefused("invalid_grant", "the assertion is not a JWT") from None
        with self._lock:
            account = self._accounts.get(kid)
        if account is None:
            raise TokenRefused("invalid_grant", "Invalid JWT Signature: unknown key id")
        try:
            claims = jwt.decode(assertion, certs=account[1], audience=GOOGLE_TOKEN_AUDIENCE)
        except (exceptions.GoogleAuthError, ValueError) as exc:
            raise TokenRefused("invalid_grant", f"Invalid JWT: {type(exc).__name__}") from None
        if claims.get("iss") != account[0]:
            raise TokenRefused("invalid_grant", "Invalid JWT: iss is not the key's service account")
        return claims

    def _id_token(self, email: str, audience: str) -> str:
        from google.auth import crypt, jwt

        now = int(time.time())
        claims = {"iss": ISSUER, "aud": audience, "azp": email, "email": email, "email_verified": True,
                  "sub": str(uuid.uuid5(uuid.NAMESPACE_DNS, email).int)[:21], "iat": now,
                  "exp": now + ID_TOKEN_LIFETIME_S}
        signer = crypt.RSASigner.from_string(self._signing.private_pem, key_id=self._signing_kid)
        return jwt.encode(signer, claims).decode()
