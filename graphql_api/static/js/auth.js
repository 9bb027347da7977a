// Who is signed in. Everything about sign-in lives here, so another sign-in method can replace
// this module by keeping its exports:
//   currentUser()          the signed-in user's name (the token's `sub`), or null
//   authorizationHeader()  the Authorization header value for API requests, or null
//   onAuthChange(fn)       fn() runs after every sign-in or sign-out
//   sessionEnded()         the API answered 401: sign out and say so
//   tokenRefused()         the API refused the token (UNAUTHENTICATED; its message says why): sign out
//   startAuth()            wire the sign-in/out controls and restore a kept session
// Local mode: a user name -> POST /auth/local/token -> a JWT kept in localStorage.
import { $ } from "./dom.js";
import { ApiError, networkError } from "./errors.js";
import { showError, showMessage } from "./messages.js";

const TOKEN_KEY = "udagram.token";
const session = { token: null, user: null, expiresAt: 0 };
const listeners = [];

export const currentUser = () => session.user;
export const authorizationHeader = () => (session.token ? `Bearer ${session.token}` : null);

export function onAuthChange(listener) {
  listeners.push(listener);
}

function decodeJwt(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      Array.from(atob(part), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
    );
    return JSON.parse(json);
  } catch (e) {
    return null;
  }
}

function setToken(token) {
  const claims = token ? decodeJwt(token) : null;
  if (claims && claims.sub && (!claims.exp || claims.exp * 1000 > Date.now())) {
    session.token = token;
    session.user = String(claims.sub);
    session.expiresAt = claims.exp ? claims.exp * 1000 : 0;
    localStorage.setItem(TOKEN_KEY, token);
  } else {
    session.token = null;
    session.user = null;
    session.expiresAt = 0;
    localStorage.removeItem(TOKEN_KEY);
  }
  render();
}

function render() {
  const signedIn = Boolean(session.user);
  $("sign-in-form").hidden = signedIn;
  $("signed-in").hidden = !signedIn;
  $("signed-in-user").textContent = session.user || "";
  for (const listener of listeners) listener();
}

export function sessionEnded() {
  if (!session.token) return;
  setToken(null);
  showMessage("Your session has ended. Please sign in again.", "error");
}

export function tokenRefused() {
  if (session.token) setToken(null);
}

async function signIn(event) {
  event.preventDefault();
  const user = $("sign-in-user").value.trim();
  if (!user) return;
  const button = $("sign-in-button");
  button.disabled = true;
  try {
    let response;
    try {
      response = await fetch("/auth/local/token", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ user }),
      });
    } catch (e) {
      throw networkError();
    }
    const body = await response.json().catch(() => null);
    if (response.status === 404 || response.status === 405) { // no such route outside local mode
      throw new ApiError("Signing in with a user name is only available when the API runs in local mode.", "NOT_LOCAL");
    }
    if (!response.ok || !body || !body.token) {
      const detail = body && (body.message || body.error || body.detail);
      throw new ApiError(detail ? String(detail) : `Sign-in failed (${response.status}).`, "SIGN_IN");
    }
    setToken(body.token);
    if (!session.user) throw new ApiError("The server returned an unusable token.", "SIGN_IN");
    $("sign-in-user").value = "";
    showMessage(`Signed in as ${session.user}.`, "info");
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

function signOut() {
  setToken(null);
  showMessage("Signed out.", "info");
}

export function startAuth() {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  setToken(localStorage.getItem(TOKEN_KEY)); // an expired kept token is dropped here
  // A token that expires while the page is open: sign out cleanly.
  setInterval(() => {
    if (session.token && session.expiresAt && session.expiresAt <= Date.now()) sessionEnded();
  }, 30000);
}
