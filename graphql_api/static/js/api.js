// The GraphQL API at /graphql: every failure becomes an ApiError with a readable message.
import { authorizationHeader, sessionEnded, tokenRefused } from "./auth.js";
import { ApiError, networkError } from "./errors.js";

export async function gql(query, variables = {}) {
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  const authorization = await authorizationHeader(); // renewed first if it is about to expire
  if (authorization) headers.Authorization = authorization;
  let response;
  try {
    response = await fetch("/graphql", { method: "POST", headers, body: JSON.stringify({ query, variables }) });
  } catch (e) {
    throw networkError();
  }
  let text;
  try {
    text = await response.text();
  } catch (e) {
    throw networkError(); // the connection dropped while the answer was arriving
  }
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (e) {
    /* not JSON: reported below */
  }
  if (body && Array.isArray(body.errors) && body.errors.length) {
    const first = body.errors[0];
    const code = first.extensions && first.extensions.code;
    throw new ApiError(body.errors.map((e) => e.message).join(" "), code);
  }
  if (!response.ok || !body || !body.data) {
    if (response.status === 401) sessionEnded();
    // e.g. 413 {"error": "request body too large: ..."} from the API's body limit
    const detail = body && typeof body.error === "string" ? body.error : null;
    if (detail) throw new ApiError(detail, `HTTP_${response.status}`);
    // A success status whose answer is not GraphQL (cut short by a proxy, a captive portal's page):
    // "The server answered 200 OK" would read like success.
    if (response.ok) throw new ApiError("The server's answer could not be read. Try again.", "BAD_RESPONSE");
    throw new ApiError(`The server answered ${response.status} ${response.statusText || ""}`.trim(), `HTTP_${response.status}`);
  }
  return body.data;
}

// A mutation answers a union of its success type and typed errors (`... on Error`).
export function unwrap(result) {
  if (!result) throw new ApiError("The server gave no answer.", "EMPTY");
  if (typeof result.code === "string" && typeof result.message === "string") {
    // A refused token (expired, or the server's key changed): sign out; the message says why.
    if (result.code === "UNAUTHENTICATED") tokenRefused();
    throw new ApiError(result.message, result.code);
  }
  return result;
}
