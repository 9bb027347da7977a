// Who is signed in. Everything about sign-in lives here; the other modules use only these exports:
//   currentUser()          the signed-in user's id (the access token's `sub`), or null
//   authorizationHeader()  (async) the Authorization header value for API requests, or null
//   onAuthChange(fn)       fn() runs after every sign-in or sign-out
//   sessionEnded()         the API answered 401: sign out and say so
//   tokenRefused()         the API refused the token (UNAUTHENTICATED; its message says why): sign out
//   startAuth()            wire the sign-in/out controls and restore a kept session
// One sign-in path: OpenID Connect, Authorization Code with PKCE (S256), by oidc-client-ts, at the
// issuer GET /auth/config names (the API itself locally; Auth0, Cognito, Keycloak... in production).
// Tokens are renewed with the refresh token before they expire (the page cannot be framed, so no
// hidden-iframe renewal), one tab at a time (Web Locks): a refresh token is good for one use only.
import { $ } from "./dom.js";
import { ApiError, networkError } from "./errors.js";
import { showError, showMessage } from "./messages.js";
import { UserManager, WebStorageStateStore } from "../vendor/oidc-client-ts.js";

const RENEW_BEFORE_SECONDS = 60;
const session = { user: null, renewTimer: 0 };
const listeners = [];
let manager = null;
let issuer = "";

export const currentUser = () => (session.user ? String(session.user.profile.sub) : null);

export function onAuthChange(listener) {
  listeners.push(listener);
}

export async function authorizationHeader() {
  if (!session.user) return null;
  if (session.user.expires_in !== undefined && session.user.expires_in < 10) await renew();
  return session.user ? `Bearer ${session.user.access_token}` : null;
}

function setUser(user) {
  session.user = user && !user.expired ? user : null;
  clearTimeout(session.renewTimer);
  if (session.user && session.user.expires_in !== undefined) {
    const due = Math.max(0, session.user.expires_in - RENEW_BEFORE_SECONDS);
    session.renewTimer = setTimeout(renew, due * 1000);
  }
  render();
}

function render() {
  const user = session.user;
  $("sign-in").hidden = Boolean(user);
  $("signed-in").hidden = !user;
  const profile = user ? user.profile : {};
  $("signed-in-user").textContent = user ? String(profile.preferred_username || profile.name || profile.sub) : "";
  for (const listener of listeners) listener();
}

async function forget(message) {
  if (!session.user) return;
  if (manager) await manager.removeUser().catch(() => {});
  setUser(null);
  if (message) showMessage(message, "error");
}

export function sessionEnded() {
  forget("Your session has ended. Please sign in again.");
}

export function tokenRefused() {
  forget(null);
}

// The issuer answered (an OAuth error such as invalid_grant), as opposed to being unreachable.
const refusedByIssuer = (e) => Boolean(e && typeof e.error === "string");

function unreachable() {
  return new ApiError(`Cannot reach the sign-in service (${issuer}). Try again in a moment.`, "ISSUER_UNREACHABLE");
}

// Renew the access token with the refresh token; another tab may have done it already.
async function renew() {
  if (!manager) return;
  const work = async () => {
    const kept = await manager.getUser();
    if (kept && !kept.expired && kept.expires_in > RENEW_BEFORE_SECONDS
        && (!session.user || kept.access_token !== session.user.access_token)) {
      setUser(kept);
      return;
    }
    if (!kept) {
      await forget("Your session has ended. Please sign in again.");
      return;
    }
    try {
      setUser(await manager.signinSilent());
    } catch (e) {
      if (refusedByIssuer(e) || !kept.refresh_token) {
        await forget("Your session has ended. Please sign in again.");
      } else {
        showError(unreachable());
        clearTimeout(session.renewTimer);
        session.renewTimer = setTimeout(renew, 15000); // try again; the API says when it is too late
      }
    }
  };
  if (navigator.locks) await navigator.locks.request("udagram-token-renewal", work);
  else await work();
}

async function signIn() {
  const button = $("sign-in-button");
  button.disabled = true;
  try {
    if (!manager) await configure();
    const nonce = crypto.randomUUID();
    // The view to come back to after the issuer's login page.
    await manager.signinRedirect({ nonce, state: { hash: location.hash } });
  } catch (e) {
    showError(e instanceof ApiError ? e : refusedByIssuer(e) ? new ApiError(e.message, "SIGN_IN") : unreachable());
    button.disabled = false;
  }
}

async function signOut() {
  const user = session.user;
  setUser(null);
  if (!manager) return;
  try {
    // Ends the session at the issuer too (the built-in provider revokes its refresh tokens), then
    // the issuer sends the browser back here.
    // client_id too: an ID token may name several audiences (Canaille lists them), and the issuer
    // then needs it to accept post_logout_redirect_uri.
    await manager.signoutRedirect({ id_token_hint: user && user.id_token, client_id: manager.settings.client_id,
      state: { hash: location.hash } });
  } catch (e) {
    await manager.removeUser().catch(() => {});
    const noEndpoint = /end session endpoint/i.test(String(e && e.message)); // an issuer without sign-out
    showMessage(noEndpoint ? "Signed out." :
      `Signed out on this page; the sign-in service (${issuer}) could not be reached to end the session there.`,
    "info");
  }
}

async function configure() {
  let response;
  try {
    response = await fetch("/auth/config", { headers: { Accept: "application/json" } });
  } catch (e) {
    throw networkError();
  }
  if (!response.ok) throw new ApiError(`The server answered ${response.status} for /auth/config`, "AUTH_CONFIG");
  const config = await response.json();
  issuer = new URL(config.issuer).origin;
  const page = `${location.origin}/`;
  manager = new UserManager({
    authority: config.issuer,
    client_id: config.clientId,
    redirect_uri: page,
    post_logout_redirect_uri: page,
    response_type: "code",
    scope: config.scopes,
    extraQueryParams: { audience: config.audience }, // Auth0 issues a JWT access token only for an audience
    userStore: new WebStorageStateStore({ store: window.localStorage }), // shared by the page's tabs
    automaticSilentRenew: false, // renew() does it, one tab at a time
    loadUserInfo: false,
    monitorSession: false,
  });
}

// Back from the issuer: "?code=...&state=..." (or "?error=...") after sign-in, "?state=..." after
// sign-out. Returns the view to show.
async function finishRedirect() {
  const query = new URLSearchParams(location.search);
  if (!query.has("state")) return null;
  let hash = location.hash;
  try {
    if (query.has("code") || query.has("error")) {
      const user = await manager.signinRedirectCallback();
      hash = (user.state && user.state.hash) || hash;
      setUser(user);
      showMessage(`Signed in as ${$("signed-in-user").textContent}.`, "info");
    } else {
      const response = await manager.signoutRedirectCallback();
      hash = (response.userState && response.userState.hash) || hash;
      showMessage("Signed out.", "info");
    }
  } catch (e) {
    showError(refusedByIssuer(e) ? new ApiError(`Sign-in failed: ${e.message}`, "SIGN_IN") : e);
  }
  history.replaceState(null, "", `/${hash || ""}`); // drop the code and state from the address
  return hash;
}

export async function startAuth() {
  $("sign-in-button").addEventListener("click", signIn);
  $("sign-out").addEventListener("click", signOut);
  render();
  try {
    await configure();
  } catch (e) {
    showError(e);
    return;
  }
  const shown = location.hash; // the router already shows this view
  const returnedTo = await finishRedirect();
  if (returnedTo !== null && returnedTo !== shown) window.dispatchEvent(new HashChangeEvent("hashchange"));
  if (!session.user) {
    const kept = await manager.getUser();
    if (kept && kept.expired && kept.refresh_token) {
      session.user = kept;
      await renew(); // an expired access token with a live refresh token: renew it now
    } else {
      setUser(kept);
    }
  }
}
