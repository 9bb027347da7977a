// The one error type the page shows: a sentence, with a code saying what went wrong.

// The API's messages are terse ("only the owner may do this"): show them as sentences.
function sentence(text) {
  const t = String(text || "").trim();
  if (!t) return "Something went wrong.";
  return t[0].toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
}

export class ApiError extends Error {
  constructor(message, code) {
    super(sentence(message));
    this.code = code || "ERROR";
  }
}

// fetch() itself failed: the server is down or the network is gone.
export const networkError = () =>
  new ApiError("Cannot reach the server. Check your connection and try again.", "NETWORK");
