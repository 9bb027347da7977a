"""The built-in OpenID Connect provider: local mode's default issuer, on Authlib's server parts.

One client, the web page (public, `settings.auth_client_id`, redirect URIs: the page's origins
+ "/"). Authorization Code with PKCE (S256 only, required), a server-rendered password form,
JWT access tokens signed with the local key (`auth.issue_token`, the role claim included), ID
tokens, refresh tokens rotated on every use, userinfo, revocation and RP-initiated logout.

Everything the provider remembers is in DynamoDB (`data.AuthGrantModel`, `data.UserModel`), so
any API process answers any step. Secrets (codes, refresh tokens) are stored only as SHA-256.
- a code is redeemed once (conditional update) within `auth_code_ttl_seconds`; redeeming it
  again revokes the sign-in session it started (RFC 6749 section 4.1.2);
- a refresh token is replaced on each use; a used one presented again (stolen, or replayed)
  revokes its session (OAuth 2.0 Security BCP, refresh token rotation);
- a session is one password sign-in: sign-out (end-session or revocation) revokes it, which
  ends every refresh token it has. Access tokens are short-lived JWTs that the API verifies
  without state, so they stay valid until they expire (`auth_access_token_ttl_seconds`).
- failed passwords are counted per account and per address (`udagram.ratelimit`); past the
  limits the form refuses without checking the password.

Authlib has no Starlette integration: `_OAuth2Request` and `Provider.handle_response` convert
requests and responses, and Authlib's blocking calls (DynamoDB, argon2) run in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from authlib.common.security import generate_token
from authlib.oauth2 import AuthorizationServer, OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InsecureTransportError,
    InvalidGrantError,
    InvalidRequestError,
    OAuth2Payload,
    OAuth2Request,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode
from authlib.oidc.rpinitiated import EndSessionEndpoint
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from jinja2 import Environment, PackageLoader, select_autoescape
from joserfc.jwk import RSAKey
from pynamodb.exceptions import DoesNotExist, PutError, UpdateError
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route, request_response

from graphql_api import accounts, auth
from udagram import data, ratelimit
from udagram.settings import Settings

SCOPES = ("openid", "profile", "offline_access")
WRONG_CREDENTIALS = "Wrong user name or password."
_templates = Environment(loader=PackageLoader("graphql_api", "templates"), autoescape=select_autoescape())


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# --- the one client: the web page ---------------------------------------------------------------


@dataclass(frozen=True)
class WebClient(ClientMixin):
    client_id: str
    redirect_uris: tuple[str, ...]

    @property
    def client_metadata(self) -> dict[str, Any]:
        return {"post_logout_redirect_uris": list(self.redirect_uris)}

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # a public client has none

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


# --- what the grants hand around ----------------------------------------------------------------


@dataclass(frozen=True)
class SignedIn:
    """A user who proved their password, and the session that sign-in started."""

    account: data.UserModel
    session: str
    auth_time: int


@dataclass
class _Code(AuthorizationCodeMixin):
    item: data.AuthGrantModel
    code_challenge: str | None = field(init=False)
    code_challenge_method: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.code_challenge = self.item.code_challenge
        self.code_challenge_method = self.item.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.item.redirect_uri

    def get_scope(self) -> str:
        return self.item.scope

    def get_nonce(self) -> str | None:
        return self.item.nonce

    def get_auth_time(self) -> int | None:
        return int(self.item.auth_time) if self.item.auth_time is not None else None

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return ["pwd"]


@dataclass
class _RefreshToken(TokenMixin):
    item: data.AuthGrantModel

    def check_client(self, client: WebClient) -> bool:
        return self.item.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.item.scope

    def get_expires_in(self) -> int:
        return max(0, int(self.item.expires_at.timestamp() - time.time()))

    def is_expired(self) -> bool:
        return self.get_expires_in() <= 0

    def is_revoked(self) -> bool:
        return self.item.used_at is not None

    def get_user(self) -> str:
        return self.item.user

    def get_client(self) -> None:
        return None


# --- grants and endpoints -----------------------------------------------------------------------


class _PKCE(CodeChallenge):
    """PKCE required for every authorization, S256 only (plain would hand the verifier over)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant, redirect_uri):
        values = grant.request.payload.data
        if not values.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send a code_challenge (code_challenge_method=S256)")
        if values.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant, result):
        if not grant.request.form.get("code_verifier"):
            raise InvalidGrantError("the code_verifier (PKCE) is missing")
        super().validate_code_verifier(grant, result)


class _OpenIDCode(OpenIDCode):
    """ID tokens: signed with the local key; `sid` names the session (for end-session)."""

    def __init__(self, provider: Provider) -> None:
        super().__init__(require_nonce=False)
        self.provider = provider

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return False  # every code is single-use, and the client checks the nonce in the ID token

    def resolve_client_private_key(self, client: WebClient) -> RSAKey:
        return self.provider.signing_key()

    def get_client_algorithm(self, client: WebClient) -> str:
        return auth.ALGORITHM

    def get_encode_header(self, client: WebClient) -> dict[str, str]:
        return {"alg": auth.ALGORITHM, "kid": auth.local_key(self.provider.settings).kid}

    def get_client_claims(self, client: WebClient) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.provider.settings.auth_issuer, "aud": client.get_client_id(), "iat": now,
                "exp": now + self.provider.settings.auth_access_token_ttl_seconds}

    def generate_user_info(self, user: SignedIn, scope: str) -> dict[str, Any]:
        return self.provider.user_info(user) | {"sid": user.session}


class _CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

    @property
    def provider(self) -> Provider:
        return self.server

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        user: SignedIn = request.user
        values = request.payload.data
        data.AuthGrantModel(
            id=f"code:{_digest(code)}",
            user=user.account.name,
            client_id=request.client.get_client_id(),
            scope=request.client.get_allowed_scope(request.payload.scope),
            session=user.session,
            redirect_uri=request.payload.redirect_uri,
            nonce=values.get("nonce"),
            code_challenge=values.get("code_challenge"),
            code_challenge_method=values.get("code_challenge_method"),
            auth_time=user.auth_time,
            expires_at=_at(time.time() + self.provider.settings.auth_code_ttl_seconds),
        ).save(condition=data.AuthGrantModel.id.does_not_exist())

    def query_authorization_code(self, code: str, client: WebClient) -> _Code | None:
        item = self.provider.grant_item(f"code:{_digest(code)}")
        if item is None or item.client_id != client.get_client_id() or item.expires_at <= data.utcnow():
            return None
        if item.used_at is not None:
            self.provider.revoke_session(item.session)  # a code used twice: end what it started
            return None
        return _Code(item)

    def authenticate_user(self, authorization_code: _Code) -> SignedIn | None:
        # Redeemed here, atomically, before any token is made: two requests racing with one
        # code cannot both pass (the loser revokes the session, as for any reuse).
        item = authorization_code.item
        if not self.provider.consume(item):
            self.provider.revoke_session(item.session)
            return None
        return self.provider.signed_in(item)

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        pass  # consumed in authenticate_user; the record stays (marked used) to detect reuse


class _RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: every refresh token is used once

    @property
    def provider(self) -> Provider:
        return self.server

    def authenticate_refresh_token(self, refresh_token: str) -> _RefreshToken | None:
        item = self.provider.grant_item(f"refresh:{_digest(refresh_token)}")
        if item is None or item.expires_at <= data.utcnow():
            return None
        if item.used_at is not None:
            self.provider.revoke_session(item.session)  # a rotated-away token came back: stolen?
            return None
        if not self.provider.session_active(item.session):
            return None
        return _RefreshToken(item)

    def authenticate_user(self, refresh_token: _RefreshToken) -> SignedIn:
        item = refresh_token.item
        if not self.provider.consume(item):
            self.provider.revoke_session(item.session)
            raise InvalidGrantError("the refresh token was already used")
        signed_in = self.provider.signed_in(item)
        if signed_in is None:
            raise InvalidGrantError("the account no longer exists")
        return signed_in

    def revoke_old_credential(self, refresh_token: _RefreshToken) -> None:
        pass  # consumed in authenticate_user


class _Revocation(RevocationEndpoint):
    """RFC 7009 for refresh tokens: revoking one ends its whole session."""

    CLIENT_AUTH_METHODS = ["none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> _RefreshToken | None:
        item = self.server.grant_item(f"refresh:{_digest(token_string)}")
        return _RefreshToken(item) if item is not None else None

    def revoke_token(self, token: _RefreshToken, request: OAuth2Request) -> None:
        self.server.revoke_session(token.item.session)


class _EndSession(EndSessionEndpoint):
    """RP-initiated logout: the ID token hint names the session (`sid`), which is revoked."""

    def get_server_jwks(self) -> dict[str, Any]:
        return auth.local_jwks(self.server.settings)

    def get_algorithms(self) -> list[str]:
        return [auth.ALGORITHM]

    def end_session(self, end_session_request) -> None:
        claims = end_session_request.id_token_claims or {}
        if claims.get("iss") == self.server.settings.auth_issuer and isinstance(claims.get("sid"), str):
            self.server.revoke_session(claims["sid"])


# --- the server -----------------------------------------------------------------------------------


class _Payload(OAuth2Payload):
    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._data: dict[str, str] = {}
        self._datalist: dict[str, list[str]] = {}
        for key, value in items:
            self._data.setdefault(key, value)
            self._datalist.setdefault(key, []).append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class _OAuth2Request(OAuth2Request):
    """A Starlette request as Authlib sees it (query and form read beforehand: Authlib is sync)."""

    def __init__(self, method: str, uri: str, headers: Headers, query: list[tuple[str, str]],
                 form: list[tuple[str, str]]) -> None:
        super().__init__(method, uri, headers=headers)
        self._args = dict(query)
        self._form = dict(form)
        self.payload = _Payload(query + form)

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


async def _oauth2_request(request: Request, public_url: str) -> _OAuth2Request:
    """Raises InsecureTransportError unless public_url is https or loopback (Authlib's rule:
    passwords and tokens do not cross a network in clear)."""
    fields: list[tuple[str, str]] = []
    if request.method == "POST":
        async with request.form(max_files=0, max_fields=50) as values:
            fields = [(k, v) for k, v in values.multi_items() if isinstance(v, str)]
    uri = public_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _OAuth2Request(request.method, uri, request.headers, list(request.query_params.multi_items()), fields)


class Provider(AuthorizationServer):
    def __init__(self, settings: Settings) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.settings = settings
        self.base = settings.public_url
        self.client = WebClient(settings.auth_client_id, tuple(f"{origin}/" for origin in settings.page_origins))
        self.register_token_generator("default", self._generate_token)
        self.register_grant(_CodeGrant, [_PKCE(required=True), _OpenIDCode(self)])
        self.register_grant(_RefreshGrant)
        self.register_endpoint(_Revocation)
        self.register_endpoint(_EndSession)

    # Authlib's hooks
    def query_client(self, client_id: str) -> WebClient | None:
        return self.client if client_id == self.client.client_id else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        if "refresh_token" not in token:
            return
        user: SignedIn = request.user
        expires = time.time() + self.settings.auth_refresh_token_ttl_seconds
        data.AuthGrantModel(
            id=f"refresh:{_digest(token['refresh_token'])}", user=user.account.name,
            client_id=request.client.get_client_id(), scope=token.get("scope") or "", session=user.session,
            auth_time=user.auth_time, expires_at=_at(expires),
        ).save(condition=data.AuthGrantModel.id.does_not_exist())
        self._extend_session(user.session, expires)

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        raise TypeError("convert the Starlette request with _oauth2_request first")

    def create_json_request(self, request: Any):
        raise NotImplementedError("no JSON endpoints")

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
        if isinstance(body, dict):
            response: Response = JSONResponse(body, status_code=status)
        else:
            response = Response(body or b"", status_code=status)
        for name, value in headers:
            response.headers[name] = value
        return response

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def _generate_token(self, grant_type: str, client: WebClient, user: SignedIn, scope: str,
                        expires_in: int | None = None, include_refresh_token: bool = True) -> dict[str, Any]:
        ttl = self.settings.auth_access_token_ttl_seconds
        token = {
            "token_type": "Bearer",
            "access_token": auth.issue_token(user.account.name, self.settings, ttl, roles=tuple(user.account.roles),
                                             scope=scope, client_id=client.get_client_id()),
            "expires_in": ttl,
            "scope": scope,
        }
        if include_refresh_token:
            token["refresh_token"] = generate_token(48)
        return token

    # state in DynamoDB
    def signing_key(self) -> RSAKey:
        key = auth.local_key(self.settings)
        pem = key.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        return RSAKey.import_key(pem, {"kid": key.kid})

    def grant_item(self, item_id: str) -> data.AuthGrantModel | None:
        try:
            return data.AuthGrantModel.get(item_id, consistent_read=True)
        except DoesNotExist:
            return None

    def consume(self, item: data.AuthGrantModel) -> bool:
        """Mark a code or refresh token used; False if it was already (or is gone)."""
        try:
            item.update(actions=[data.AuthGrantModel.used_at.set(int(time.time()))],
                        condition=data.AuthGrantModel.id.exists() & data.AuthGrantModel.used_at.does_not_exist())
        except UpdateError:
            return False
        return True

    def start_session(self, account: data.UserModel) -> SignedIn:
        session, now = generate_token(32), int(time.time())
        data.AuthGrantModel(
            id=f"session:{session}", user=account.name, client_id=self.client.client_id, auth_time=now,
            expires_at=_at(now + self.settings.auth_refresh_token_ttl_seconds),
        ).save(condition=data.AuthGrantModel.id.does_not_exist())
        return SignedIn(account, session, now)

    def _extend_session(self, session: str, until: float) -> None:
        try:
            data.AuthGrantModel(id=f"session:{session}").update(
                actions=[data.AuthGrantModel.expires_at.set(_at(until))],
                condition=data.AuthGrantModel.id.exists() & data.AuthGrantModel.revoked_at.does_not_exist())
        except UpdateError:
            pass  # revoked meanwhile: the new refresh token will be refused

    def session_active(self, session: str | None) -> bool:
        item = self.grant_item(f"session:{session}") if session else None
        return item is not None and item.revoked_at is None and item.expires_at > data.utcnow()

    def revoke_session(self, session: str | None) -> None:
        if not session:
            return
        try:
            data.AuthGrantModel(id=f"session:{session}").update(
                actions=[data.AuthGrantModel.revoked_at.set(int(time.time()))],
                condition=data.AuthGrantModel.id.exists() & data.AuthGrantModel.revoked_at.does_not_exist())
        except UpdateError:
            pass  # unknown or revoked already

    def signed_in(self, item: data.AuthGrantModel) -> SignedIn | None:
        account = accounts.get_user(item.user)
        if account is None:
            return None
        return SignedIn(account, item.session, int(item.auth_time or 0))

    def user_info(self, user: SignedIn) -> dict[str, Any]:
        name = user.account.name
        return {"sub": name, "name": name, "preferred_username": name,
                self.settings.auth_role_claim: list(user.account.roles)}

    def metadata(self) -> dict[str, Any]:
        base = self.base
        return {
            "issuer": self.settings.auth_issuer,
            "authorization_endpoint": f"{base}/auth/authorize",
            "token_endpoint": f"{base}/auth/token",
            "userinfo_endpoint": f"{base}/auth/userinfo",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "revocation_endpoint": f"{base}/auth/revoke",
            "end_session_endpoint": f"{base}/auth/logout",
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [auth.ALGORITHM],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "name", "preferred_username", "sid", self.settings.auth_role_claim],
        }


# --- the password form ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Refusal:
    status: int
    message: str


class SignInForm:
    """GET: the form (after Authlib validated the authorization request); POST: the password."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.settings = provider.settings
        self.origins = {provider.base, *provider.settings.page_origins}
        self.security_headers = {
            "Content-Security-Policy": (
                "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'; "
                # the redirect after the form goes to the page (its localhost/127.0.0.1 twin too)
                f"form-action 'self' {' '.join(sorted(self.origins))}"
            ),
            "Cache-Control": "no-store",
            # not no-referrer: with it, browsers send `Origin: null` with the form, and the origin
            # check below must see the page's own origin
            "Referrer-Policy": "same-origin",
            "X-Content-Type-Options": "nosniff",
        }

    def page(self, status: int = 200, *, error: str | None = None, user_name: str = "",
             invalid_request: bool = False) -> HTMLResponse:
        html = _templates.get_template("sign_in.html").render(
            error=error, user_name=user_name, invalid_request=invalid_request,
            signup_enabled=self.settings.auth_signup_enabled, min_password_length=accounts.MIN_PASSWORD_LENGTH,
        )
        return HTMLResponse(html, status_code=status, headers=self.security_headers)

    def respond(self, oauth_request: _OAuth2Request, client_address: str) -> Response:
        try:
            grant = self.provider.get_consent_grant(oauth_request)
        except OAuth2Error as error:
            if error.redirect_uri:  # the client and its redirect URI are known: tell the client
                return self.provider.handle_error_response(oauth_request, error)
            return self.page(400, error=f"This sign-in link is not valid: {error.description or error.error}.",
                             invalid_request=True)
        if oauth_request.method != "POST":
            return self.page()
        origin = oauth_request.headers.get("origin")
        if origin is not None and origin not in self.origins:
            return self.page(403, error="This form was sent from another site.", invalid_request=True)
        form = oauth_request.form
        user_name = (form.get("username") or "").strip()[:64]
        password = form.get("password") or ""
        if form.get("intent") == "sign-up" and self.settings.auth_signup_enabled:
            account = self._sign_up(user_name, password, form.get("password_again") or "", client_address)
        else:
            account = self._sign_in(user_name, password, client_address)
        if isinstance(account, _Refusal):
            return self.page(account.status, error=account.message, user_name=user_name)
        return self.provider.create_authorization_response(
            oauth_request, grant_user=self.provider.start_session(account), grant=grant)

    def _limits(self, user_name: str, client_address: str) -> list[tuple[str, int]]:
        return [
            (f"signin-failures:account:{user_name.lower()}", self.settings.signin_max_failures_per_account),
            (f"signin-failures:address:{client_address}", self.settings.signin_max_failures_per_address),
        ]

    def _sign_in(self, user_name: str, password: str, client_address: str) -> data.UserModel | _Refusal:
        window = self.settings.signin_failure_window_seconds
        limits = self._limits(user_name, client_address)
        blocked = [d for d in (ratelimit.check(key, limit, window) for key, limit in limits) if not d.allowed]
        if blocked:  # refused before the password is checked: nothing to learn by guessing on
            minutes = max(1, round(max(d.retry_after for d in blocked) / 60))
            return _Refusal(429, f"Too many failed sign-ins. Try again in {minutes} minute{'s' * (minutes != 1)}.")
        account = accounts.authenticate(user_name, password)
        if account is None:
            for key, limit in limits:
                ratelimit.hit(key, limit, window)
            return _Refusal(401, WRONG_CREDENTIALS)
        return account

    def _sign_up(self, user_name: str, password: str, again: str, client_address: str) -> data.UserModel | _Refusal:
        window = self.settings.signin_failure_window_seconds
        decision = ratelimit.hit(f"signups:address:{client_address}", self.settings.signin_max_failures_per_address,
                                 window)
        if not decision.allowed:
            return _Refusal(429, "Too many new accounts from this address. Try again later.")
        if password != again:
            return _Refusal(400, "The two passwords differ.")
        try:
            return accounts.add_user(user_name, password)
        except accounts.AccountError as exc:
            message = str(exc)
            return _Refusal(400, message[:1].upper() + message[1:] + ".")
        except PutError:
            return _Refusal(503, "Could not create the account; try again.")


# --- routes -----------------------------------------------------------------------------------------


def routes(settings: Settings, verifier: auth.TokenVerifier) -> list[Route]:
    provider = Provider(settings)
    form = SignInForm(provider)

    async def discovery(request: Request) -> JSONResponse:
        return JSONResponse(provider.metadata(), headers={"Cache-Control": "public, max-age=300"})

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(auth.local_jwks(settings), headers={"Cache-Control": "public, max-age=300"})

    async def oauth2(request: Request, respond) -> Response:
        """Authlib's `respond(oauth2 request)` in a worker thread (it blocks: DynamoDB, argon2)."""
        try:
            oauth_request = await _oauth2_request(request, settings.public_url)
        except InsecureTransportError as error:
            return provider.handle_error_response(None, error)
        return await asyncio.to_thread(respond, oauth_request)

    async def authorize(request: Request) -> Response:
        address = request.client.host if request.client else "unknown"
        return await oauth2(request, lambda oauth_request: form.respond(oauth_request, address))

    async def token(request: Request) -> Response:
        return await oauth2(request, provider.create_token_response)

    async def revoke(request: Request) -> Response:
        return await oauth2(request, lambda oauth_request: provider.create_endpoint_response("revocation",
                                                                                            oauth_request))

    async def logout(request: Request) -> Response:
        response = await oauth2(request, lambda oauth_request: provider.create_endpoint_response("end_session",
                                                                                               oauth_request))
        if response is not None and response.status_code != 302:
            return form.page(400, error="This sign-out link is not valid.", invalid_request=True)
        return response or RedirectResponse(f"{settings.public_url}/", status_code=303)

    async def userinfo(request: Request) -> JSONResponse:
        header = request.headers.get("authorization", "")
        scheme, _, token_string = header.partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise auth.AuthError("send the access token as 'Authorization: Bearer <token>'")
            user = verifier.verify(token_string.strip())
        except auth.AuthError as exc:
            return JSONResponse({"error": "invalid_token", "error_description": str(exc)}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return JSONResponse({"sub": user.id, "name": user.id, "preferred_username": user.id,
                             settings.auth_role_claim: list(user.roles)}, headers={"Cache-Control": "no-store"})

    def cors(endpoint) -> CORSMiddleware:
        # The page may run on the twin origin (localhost vs 127.0.0.1) of the issuer's.
        return CORSMiddleware(request_response(endpoint), allow_origins=settings.page_origins,
                              allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])

    return [
        # OPTIONS: CORS preflights, answered by the CORS middleware
        Route("/.well-known/openid-configuration", cors(discovery), methods=["GET", "OPTIONS"]),
        Route("/.well-known/jwks.json", cors(jwks), methods=["GET", "OPTIONS"]),
        Route("/auth/authorize", authorize, methods=["GET", "POST"]),
        Route("/auth/token", cors(token), methods=["POST", "OPTIONS"]),
        Route("/auth/revoke", cors(revoke), methods=["POST", "OPTIONS"]),
        Route("/auth/userinfo", cors(userinfo), methods=["GET", "POST", "OPTIONS"]),
        Route("/auth/logout", logout, methods=["GET", "POST"]),
    ]
