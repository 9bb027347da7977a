// Watching images until the worker is done. One loop polls every watched image in a single
// aliased query (one batch on the API side), each image on its own back-off: every second at
// first, then less often, up to 10 s; given up after 15 minutes.
import { gql } from "./api.js";
import { pollQuery } from "./queries.js";

const POLL_FIRST_MS = 1000;
const POLL_MAX_MS = 10000;
const POLL_GIVE_UP_MS = 15 * 60 * 1000;
const POLL_BATCH = 20; // stays under the API's alias limit
const FINAL_STATUSES = new Set(["DONE", "FAILED"]);

const watched = new Map(); // image id -> { started, delay, due }
let timer = null;
let polling = false;
let onUpdate = () => {};

export const isFinal = (status) => FINAL_STATUSES.has(status);

// `listener(image)` receives every fresh copy of a watched image.
export function onImageUpdate(listener) {
  onUpdate = listener;
}

export function startPolling(id) {
  if (watched.has(id)) return;
  const now = Date.now();
  watched.set(id, { started: now, delay: POLL_FIRST_MS, due: now + POLL_FIRST_MS });
  schedulePoll();
}

export function stopPolling(id) {
  watched.delete(id);
}

export function stopAllPolling() {
  watched.clear();
}

function schedulePoll() {
  if (timer || polling || watched.size === 0) return;
  const next = Math.min(...[...watched.values()].map((w) => w.due));
  timer = setTimeout(pollDue, Math.max(0, next - Date.now()));
}

async function pollDue() {
  timer = null;
  polling = true;
  try {
    const now = Date.now();
    const due = [...watched.entries()].filter(([, w]) => w.due <= now).slice(0, POLL_BATCH).map(([id]) => id);
    if (due.length === 0) return;
    let answer = null;
    try {
      answer = await gql(pollQuery(due.length), Object.fromEntries(due.map((id, i) => [`id${i}`, id])));
    } catch (e) {
      // A transient failure (network, server restart): keep watching, with back-off.
    }
    due.forEach((id, i) => {
      const w = watched.get(id);
      if (!w) return; // no longer watched (the view changed meanwhile)
      const image = answer ? answer[`i${i}`] : undefined;
      if (image) onUpdate(image);
      const finished = image === null || (image && isFinal(image.status)); // null: deleted
      if (finished || Date.now() - w.started > POLL_GIVE_UP_MS) {
        watched.delete(id);
        return;
      }
      w.delay = Math.min(Math.round(w.delay * 1.25), POLL_MAX_MS);
      w.due = Date.now() + w.delay;
    });
  } finally {
    polling = false;
    schedulePoll();
  }
}
