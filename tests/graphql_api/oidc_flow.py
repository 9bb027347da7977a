"""The web page's side of an Authorization Code + PKCE sign-in, step by step, over any httpx-like
client (Starlette's TestClient or httpx against a running API): tests drive each step themselves
and can leave one out or change it."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from html import unescape
from urllib.parse import parse_qs, urlsplit

from udagram.settings import Settings

PASSWORD = "correct horse battery staple"


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class Authorization:
    """One authorization request: its PKCE verifier, state and nonce, and its query parameters."""

    settings: Settings
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    state: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    @property
    def redirect_uri(self) -> str:
        return f"{self.settings.public_url}/"

    def params(self, **overrides: str | None) -> dict[str, str]:
        values = {
            "response_type": "code",
            "client_id": self.settings.auth_client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.settings.auth_scopes,
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": s256(self.verifier),
            "code_challenge_method": "S256",
        }
        values.update(overrides)
        return {k: v for k, v in values.items() if v is not None}


def sign_in(client, authorization: Authorization, user: str, password: str, **params: str | None):
    """POST the password form of the authorize endpoint (no redirects followed)."""
    return client.post("/auth/authorize", params=authorization.params(**params),
                       data={"intent": "sign-in", "username": user, "password": password}, follow_redirects=False)


def redirect_params(response) -> dict[str, str]:
    """The query parameters of a redirect back to the page."""
    assert response.status_code == 302, (response.status_code, response.text[:500])
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


def code_for(client, authorization: Authorization, user: str, password: str = PASSWORD) -> str:
    values = redirect_params(sign_in(client, authorization, user, password))
    assert values["state"] == authorization.state
    return values["code"]


def redeem(client, authorization: Authorization, code: str, verifier: str | None = "", **extra: str):
    """The token request; verifier "" means the authorization's own, None leaves it out."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": authorization.redirect_uri,
            "client_id": authorization.settings.auth_client_id}
    if verifier is not None:
        form["code_verifier"] = verifier or authorization.verifier
    form.update(extra)
    return client.post("/auth/token", data=form)


def refresh(client, settings: Settings, refresh_token: str):
    return client.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token,
                                            "client_id": settings.auth_client_id})


def tokens_for(client, settings: Settings, user: str, password: str = PASSWORD) -> dict:
    """A whole sign-in: the token response (access, ID and refresh token)."""
    authorization = Authorization(settings)
    response = redeem(client, authorization, code_for(client, authorization, user, password))
    assert response.status_code == 200, response.text
    return response.json()


def form_error(response) -> str:
    """The message the sign-in page shows."""
    found = re.search(r'data-testid="sign-in-error">([^<]*)<', response.text)
    assert found, response.text[:1000]
    return unescape(found.group(1))
