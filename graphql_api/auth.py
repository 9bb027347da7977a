"""Bearer tokens: RS256 JWT access tokens from an OpenID Connect issuer, and the local signing key.

Verification checks the signature with the key named by the token's `kid` (RS256 only: `none`,
HS256 and every other algorithm are refused before any key is looked up), the issuer, the
audience (`aud`, or Cognito's `client_id`) and the expiry; the user id is the token's `sub`, its
roles the `auth_role_claim` list.
The keys come from the JWKS named by the issuer's discovery document (`jwks_uri`).

In local mode the API is its own issuer by default (graphql_api/oidc_provider.py): an RSA key is
created on first use at `settings.local_signing_key_path` (mode 0600), its public half is served
at `/.well-known/jwks.json`, and `issue_token` signs tokens with it. Verification then reads the
local key directly instead of fetching it from itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from udagram.settings import Settings

ALGORITHM = "RS256"
JWKS_REFETCH_COOLDOWN_SECONDS = 30.0  # a rotated-in key waits at most this long after the last fetch
# Local user names: what the sign-in form accepts and `udagram token --user` takes.
USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
ADMIN_ROLE = "admin"  # the role that may use the admin view (graphql_api/admin/)


class AuthError(Exception):
    """A token that cannot be trusted; the message says why, for the client."""


@dataclass(frozen=True)
class User:
    id: str  # the token's `sub`
    roles: tuple[str, ...] = ()  # the token's role claim (settings.auth_role_claim)

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


def validate_user_name(user: str) -> str:
    if not isinstance(user, str) or not USER_NAME_RE.fullmatch(user):
        raise ValueError(
            "user name must be 1-32 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return user


# --- local signing key -------------------------------------------------------------------------

_key_lock = threading.Lock()


def _load_or_create_private_key(path: Path) -> rsa.RSAPrivateKey:
    with _key_lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # Written whole under a private name, then linked into place: another process (a second
            # API starting at once) finds no key or a complete one, never a half-written file.
            partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
                try:
                    os.link(partial, path)
                except FileExistsError:
                    pass  # another process won the race: use its key
            finally:
                partial.unlink(missing_ok=True)
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):  # RS256 signs with RSA only
            raise ValueError(f"{path} holds a {type(loaded).__name__}, not an RSA private key")
        return loaded


@dataclass(frozen=True)
class LocalKey:
    private_key: rsa.RSAPrivateKey
    kid: str
    jwk: dict[str, Any]


@lru_cache(maxsize=8)
def _local_key_for(path: str, mtime_ns: int) -> LocalKey:
    private_key = _load_or_create_private_key(Path(path))
    public_key = private_key.public_key()
    jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    # RFC 7638 thumbprint as kid: stable for the key, changes when the key file is replaced.
    kid = _thumbprint(jwk)
    jwk.update({"kid": kid, "use": "sig", "alg": ALGORITHM})
    return LocalKey(private_key, kid, jwk)


def _thumbprint(jwk: dict[str, Any]) -> str:
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def local_key(settings: Settings) -> LocalKey:
    path = settings.local_signing_key_path
    if not path.exists():
        _load_or_create_private_key(path)
    return _local_key_for(str(path.resolve()), path.stat().st_mtime_ns)


def local_jwks(settings: Settings) -> dict[str, Any]:
    return {"keys": [local_key(settings).jwk]}


def issue_token(user: str, settings: Settings, ttl_seconds: int | None = None, *, roles: tuple[str, ...] = (),
                scope: str | None = None, client_id: str | None = None) -> str:
    """An access token for `user` (its `sub`) signed with the local key: what the built-in
    provider hands the web page, and what `udagram token` prints for scripts."""
    if not settings.builtin_idp:
        raise RuntimeError("tokens come from the configured identity provider (UDAGRAM_AUTH_ISSUER), not from udagram")
    validate_user_name(user)
    key = local_key(settings)
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user,
        "name": user,
        "iss": settings.auth_issuer,
        "aud": settings.auth_audience,
        "iat": now,
        "nbf": now,
        "exp": now + (ttl_seconds if ttl_seconds is not None else settings.token_ttl_seconds),
        "jti": base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode(),
    }
    if roles:
        claims[settings.auth_role_claim] = list(roles)
    if scope:
        claims["scope"] = scope
    if client_id:
        claims["client_id"] = client_id
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


def discovery_url(issuer: str) -> str:
    """Where an OpenID provider describes itself (OpenID Connect Discovery 1.0, section 4)."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def issuer_metadata(issuer: str, timeout: float = 10) -> dict[str, Any]:
    """The issuer's discovery document; AuthError if it cannot be had or names another issuer."""
    url = discovery_url(issuer)
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=False)
        response.raise_for_status()
        metadata = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise AuthError(f"could not fetch the issuer's discovery document ({url})") from exc
    named = metadata.get("issuer") if isinstance(metadata, dict) else None
    if named != issuer:
        raise AuthError(f"the discovery document at {url} is for issuer {named!r}, "
                        f"not the configured {issuer!r} (UDAGRAM_AUTH_ISSUER must match it exactly)")
    if not isinstance(metadata.get("jwks_uri"), str):
        raise AuthError(f"the discovery document at {url} names no jwks_uri")
    return metadata


# --- verification ------------------------------------------------------------------------------


class TokenVerifier:
    """Verifies bearer tokens for one Settings; the JWKS client (and its key cache) lives here."""

    def __init__(self, settings: Settings) -> None:
        if not settings.auth_issuer:
            raise ValueError("auth_issuer must be set (UDAGRAM_AUTH_ISSUER)")
        self.settings = settings
        self.issuer: str = settings.auth_issuer
        self.self_issued = settings.builtin_idp
        self._jwks_client: jwt.PyJWKClient | None = None
        self._jwks_lock = threading.Lock()

    def _jwks(self) -> jwt.PyJWKClient:
        """The issuer's key set, at the discovery document's jwks_uri (looked up once, unless it failed)."""
        with self._jwks_lock:
            if self._jwks_client is None:
                url = self.settings.auth_jwks_url or issuer_metadata(self.issuer)["jwks_uri"]
                # The key set is cached whole and expires, so a key the issuer withdraws stops
                # verifying (PyJWT's per-kid cache_keys never expires: not used). An unknown kid
                # refetches at most once per cooldown: invented kids must not each cost a fetch.
                self._jwks_client = jwt.PyJWKClient(
                    url, cache_jwk_set=True, lifespan=self.settings.auth_jwks_cache_seconds, timeout=10,
                    cooldown_duration=JWKS_REFETCH_COOLDOWN_SECONDS)
            return self._jwks_client

    def _signing_key(self, token: str, kid: str) -> Any:
        if self.self_issued:
            key = local_key(self.settings)
            if kid != key.kid:
                raise AuthError("token signed with an unknown key (kid)")
            return key.private_key.public_key()
        try:
            # Looks the kid up in the cached JWKS; refetches once for a kid it has not seen.
            return self._jwks().get_signing_key(kid).key
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthError("could not fetch the signing keys (JWKS) to verify the token") from exc
        except jwt.PyJWKClientError as exc:
            raise AuthError("token signed with an unknown key (kid)") from exc

    def verify(self, token: str) -> User:
        """The user a token belongs to; AuthError (with a client-facing reason) otherwise.

        Blocking when the JWKS must be fetched: call it from a worker thread in async code.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise AuthError("malformed token") from exc
        except jwt.InvalidTokenError as exc:  # a readable header PyJWT refuses: kid not a string, crit
            raise AuthError(f"malformed token header: {exc}") from exc
        if header.get("alg") != ALGORITHM:
            raise AuthError(f"token algorithm must be {ALGORITHM}, got {header.get('alg')!r}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("token has no key id (kid)")
        key = self._signing_key(token, kid)
        audience_claim = self.settings.auth_audience_claim  # "client_id" for Cognito (no `aud`)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.settings.auth_audience if audience_claim == "aud" else None,
                issuer=self.issuer,
                options={"require": ["exp", "iss", audience_claim, "sub"], "verify_aud": audience_claim == "aud"},
                leeway=30,
            )
            if audience_claim != "aud" and claims[audience_claim] != self.settings.auth_audience:
                raise jwt.InvalidAudienceError(f"{audience_claim} is not {self.settings.auth_audience!r}")
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("token has the wrong audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("token has the wrong issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("token signature is invalid") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 256:
            raise AuthError("token subject (sub) is invalid")
        roles = claims.get(self.settings.auth_role_claim)
        if isinstance(roles, str):
            roles = roles.split()
        if not isinstance(roles, list):
            roles = []
        return User(id=sub, roles=tuple(role for role in roles if isinstance(role, str)))
