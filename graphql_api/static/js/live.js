// Live updates over the API's websocket (/graphql), and polling (polling.js) while it is down.
//
// The socket speaks graphql-transport-ws, the protocol of the npm `graphql-ws` client
// (github.com/enisdenjo/graphql-ws, PROTOCOL.md): connection_init (with the user's token, for
// private subscriptions) and connection_ack; subscribe, next, error, complete per operation;
// ping and pong. It is written here rather than vendored from graphql-ws: the page has no build
// step, the protocol is this small, and what the page needs around it (each subscription falling
// back to polling and back again) is not something graphql-ws does.
//
// A subscription has handlers: next(data) (true when it is over), poll() (the socket is down or
// the server refused the subscription: poll instead) and unpoll() (live again: stop polling; the
// subscription is sent again and its first message is the current state, so nothing is missed).
import { authorizationHeader, currentUser, onAuthChange } from "./auth.js";
import { isFinal, onImageUpdate as onPolledImage, startPolling, stopAllPolling, stopPolling } from "./polling.js";
import { Q } from "./queries.js";

const PROTOCOL = "graphql-transport-ws";
const ACK_TIMEOUT_MS = 5000;
const RECONNECT_FIRST_MS = 1000;
const RECONNECT_MAX_MS = 30000;

const subscriptions = new Map(); // operation id -> { query, variables, handlers, sent, polling }
const images = new Map(); // watched image id -> operation id
const imageListeners = [];
let socket = null;
let acknowledged = false;
let reconnectDelay = RECONNECT_FIRST_MS;
let reconnectTimer = null;
let lastId = 0;
let socketUser = null; // whose token the socket sent in connection_init (null: anonymous)

// `listener(image)` receives every fresh copy of a watched image, live or polled.
export function onImageUpdate(listener) {
  imageListeners.push(listener);
}
const emitImage = (image) => imageListeners.forEach((listener) => listener(image));

export const isLive = () => acknowledged;

function connect() {
  if (socket || reconnectTimer) return;
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql`, PROTOCOL);
  socket = ws;
  const ackTimer = setTimeout(() => ws.close(), ACK_TIMEOUT_MS);
  ws.addEventListener("open", async () => {
    const user = currentUser();
    let authorization = null;
    try {
      authorization = await authorizationHeader(); // renewed first if it is about to expire
    } catch (e) {
      /* the issuer is unreachable: anonymous (subscriptions are public) */
    }
    if (ws !== socket || ws.readyState !== WebSocket.OPEN) return;
    socketUser = authorization ? user : null;
    ws.send(JSON.stringify({ type: "connection_init", payload: authorization ? { authorization } : {} }));
  });
  ws.addEventListener("message", (event) => {
    if (ws !== socket) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    if (message.type === "connection_ack") {
      clearTimeout(ackTimer);
      onAcknowledged();
    } else onMessage(message);
  });
  ws.addEventListener("close", () => {
    clearTimeout(ackTimer);
    if (ws === socket) onClosed();
  });
}

function send(message) {
  socket.send(JSON.stringify(message));
}

function onAcknowledged() {
  acknowledged = true;
  reconnectDelay = RECONNECT_FIRST_MS;
  for (const [id, sub] of subscriptions) sendSubscribe(id, sub);
}

function sendSubscribe(id, sub) {
  if (sub.polling) {
    sub.polling = false;
    sub.handlers.unpoll();
  }
  sub.sent = true;
  send({ id, type: "subscribe", payload: { query: sub.query, variables: sub.variables } });
}

function fallBack(sub) {
  sub.sent = false;
  if (!sub.polling) {
    sub.polling = true;
    sub.handlers.poll();
  }
}

function onMessage(message) {
  if (message.type === "ping") return send({ type: "pong" });
  const sub = subscriptions.get(message.id);
  if (!sub) return;
  if (message.type === "next") {
    const payload = message.payload || {};
    if (payload.errors && payload.errors.length) return fallBack(sub); // e.g. too many subscriptions
    if (sub.handlers.next(payload.data)) unsubscribe(message.id);
  } else if (message.type === "error") {
    fallBack(sub); // refused (a limit, a bad document): poll instead
  } else if (message.type === "complete") {
    subscriptions.delete(message.id);
  }
}

// The socket closed (server gone, network down, refused): poll, and try again with back-off.
function onClosed() {
  socket = null;
  acknowledged = false;
  for (const sub of subscriptions.values()) fallBack(sub);
  if (subscriptions.size === 0) return;
  reconnectTimer = setTimeout(() => {
    reconnectTimer = null;
    connect();
  }, reconnectDelay);
  reconnectDelay = Math.min(reconnectDelay * 2, RECONNECT_MAX_MS);
}

// Another user (or none): a new connection, so private subscriptions run as them. A renewed
// token of the same user changes nothing here (the socket checked who it is when it opened).
function reconnectAsNewUser() {
  if (!socket || currentUser() === socketUser) return;
  const old = socket;
  socket = null;
  acknowledged = false;
  for (const sub of subscriptions.values()) sub.sent = false;
  old.close();
  connect();
}

export function subscribe(query, variables, handlers) {
  const id = String(++lastId);
  const sub = { query, variables, handlers, sent: false, polling: false };
  subscriptions.set(id, sub);
  if (acknowledged) sendSubscribe(id, sub);
  else if (socket) {
    /* connecting: sent once acknowledged */
  } else {
    fallBack(sub); // down: poll meanwhile
    connect();
  }
  return id;
}

export function unsubscribe(id) {
  const sub = subscriptions.get(id);
  if (!sub) return;
  subscriptions.delete(id);
  if (sub.sent && acknowledged) send({ id, type: "complete" });
  if (sub.polling) sub.handlers.unpoll();
}

// Watching an image until the worker is done with it (or it is deleted).
export function watchImage(imageId) {
  if (images.has(imageId)) return;
  const done = () => {
    images.delete(imageId);
    return true;
  };
  images.set(imageId, subscribe(Q.imageUpdated, { id: imageId }, {
    next: (data) => {
      const image = data && data.imageUpdated;
      if (!image) return done(); // deleted
      emitImage(image);
      return isFinal(image.status) ? done() : false;
    },
    poll: () => startPolling(imageId),
    unpoll: () => stopPolling(imageId),
  }));
}

export function unwatchImage(imageId) {
  const id = images.get(imageId);
  images.delete(imageId);
  if (id) unsubscribe(id);
  stopPolling(imageId);
}

// A group's images: `onChange({ id, image })` for each one added, changed or deleted (image null).
// While the socket is down, the images on screen are polled (watchImage); additions wait.
export function watchGroup(groupId, onChange) {
  return subscribe(Q.groupImagesUpdated, { groupId }, {
    next: (data) => {
      if (data && data.groupImagesUpdated) onChange(data.groupImagesUpdated);
      return false;
    },
    poll: () => {},
    unpoll: () => {},
  });
}

// The view changed: nothing on screen is watched any more.
export function unwatchAll() {
  for (const id of [...subscriptions.keys()]) unsubscribe(id);
  images.clear();
  stopAllPolling();
}

export function startLive() {
  onPolledImage(emitImage);
  onAuthChange(reconnectAsNewUser);
  connect();
}
