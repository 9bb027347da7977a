"""Forged bearer tokens, one per way a token can be wrong, for the API's auth tests and the
whole-stack security tests.

`forged(settings, case)` builds the token of `case` against `settings` (the API's own local
signing key where a case needs it, so only the named defect is wrong); `FORGED` maps each case
to the part of the refusal message that names the defect.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from graphql_api import auth
from udagram.settings import Settings

FORGED = {
    "alg none": "algorithm must be RS256",
    "HS256 with the public key": "algorithm must be RS256",
    "RS512 with the right key": "algorithm must be RS256",
    "expired": "token expired",
    "not yet valid": "not yet valid (nbf)",
    "issued in the future": "not yet valid (iat)",
    "wrong audience": "wrong audience",
    "wrong issuer": "wrong issuer",
    "unknown kid": "unknown key",
    "no kid": "no key id (kid)",
    "right kid, other key": "signature is invalid",
    "tampered payload": "signature is invalid",
    "signature stripped": "signature is invalid",
    "no sub": "'sub'",
    "sub not a string": "Subject must be a string",
    "no exp": "'exp'",
    "no aud": "'aud'",
    "no iss": "'iss'",
    "garbage": "malformed token",
    # header and claim types the outside test sent (a number or list kid, crit gave HTTP 500)
    "kid a number": "Key ID header parameter must be a string",
    "kid a list": "Key ID header parameter must be a string",
    "crit header": "Unsupported critical extension",
    "crit not a list": "Invalid 'crit' header",
    "alg a list": "algorithm must be RS256",
    "aud a list without ours": "wrong audience",
    "iss a list": "wrong issuer",
    "sub huge": "subject (sub) is invalid",
}


def b64(obj) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(settings: Settings, **overrides) -> dict:
    """Valid claims for `alice`; an override of None removes that claim."""
    now = int(time.time())
    values = {"sub": "alice", "iss": settings.auth_issuer, "aud": settings.auth_audience, "iat": now, "exp": now + 600}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def signed(settings: Settings, algorithm: str = "RS256", headers: dict | None = None, **overrides) -> str:
    """A token signed with the API's own key (so only what `overrides` change is wrong)."""
    key = auth.local_key(settings)
    return jwt.encode(claims(settings, **overrides), key.private_key, algorithm=algorithm,
                      headers={"kid": key.kid} if headers is None else headers)


def raw_signed(settings: Settings, header: dict, payload: dict) -> str:
    """Signed (RS256, the API's key) as is: PyJWT's encode refuses odd headers such as a number kid."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = auth.local_key(settings).private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


def forged(settings: Settings, case: str) -> str:
    key = auth.local_key(settings)
    header = {"alg": "RS256", "typ": "JWT", "kid": key.kid}
    now = int(time.time())
    if case == "alg none":
        return f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': key.kid})}.{b64(claims(settings))}."
    if case == "HS256 with the public key":
        pem = key.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}.{b64(claims(settings))}"
        signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(signature)}"
    if case == "RS512 with the right key":
        return signed(settings, algorithm="RS512")
    if case == "expired":
        return signed(settings, iat=now - 7200, exp=now - 3600)
    if case == "not yet valid":
        return signed(settings, nbf=now + 3600, exp=now + 7200)
    if case == "issued in the future":
        return signed(settings, iat=now + 3600, exp=now + 7200)
    if case == "wrong audience":
        return signed(settings, aud="someone-else")
    if case == "wrong issuer":
        return signed(settings, iss="https://evil.example/")
    if case == "unknown kid":
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return jwt.encode(claims(settings), other, algorithm="RS256", headers={"kid": "not-our-key"})
    if case == "no kid":
        return signed(settings, headers={})
    if case == "right kid, other key":
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return jwt.encode(claims(settings), other, algorithm="RS256", headers={"kid": key.kid})
    if case == "tampered payload":
        header, _, signature = signed(settings, sub="mallory").split(".")
        return f"{header}.{b64(claims(settings, sub='alice'))}.{signature}"
    if case == "signature stripped":
        header, payload, _ = signed(settings).split(".")
        return f"{header}.{payload}.{b64(b'x' * 256)}"
    if case == "no sub":
        return signed(settings, sub=None)
    if case == "sub not a string":
        return signed(settings, sub=12345)
    if case == "no exp":
        return signed(settings, exp=None)
    if case == "no aud":
        return signed(settings, aud=None)
    if case == "no iss":
        return signed(settings, iss=None)
    if case == "garbage":
        return "garbage.token.here"
    if case == "kid a number":
        return raw_signed(settings, header | {"kid": 12345}, claims(settings))
    if case == "kid a list":
        return raw_signed(settings, header | {"kid": [key.kid]}, claims(settings))
    if case == "crit header":
        return raw_signed(settings, header | {"crit": ["exp"]}, claims(settings))
    if case == "crit not a list":
        return raw_signed(settings, header | {"crit": "exp"}, claims(settings))
    if case == "alg a list":
        return raw_signed(settings, header | {"alg": ["RS256"]}, claims(settings))
    if case == "aud a list without ours":
        return signed(settings, aud=["someone-else", "another"])
    if case == "iss a list":
        return raw_signed(settings, header, claims(settings, iss=[settings.auth_issuer]))
    if case == "sub huge":
        return signed(settings, sub="a" * 5000)
    raise AssertionError(f"unknown forged-token case {case!r}")
