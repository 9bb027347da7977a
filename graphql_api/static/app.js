// Udagram web page: plain JavaScript, no build step.
// Talks to the GraphQL API at /graphql; uploads go straight to S3 with the presigned POST the API
// returns. Every piece of API data reaches the page through textContent / attributes, never HTML.
"use strict";

(() => {
  // ---- constants ------------------------------------------------------------------------------
  const ACCEPTED_TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"];
  // Browsers leave File.type empty for some files; fall back on the extension.
  const TYPE_BY_EXTENSION = {
    jpg: "image/jpeg", jpeg: "image/jpeg", jfif: "image/jpeg", png: "image/png",
    webp: "image/webp", gif: "image/gif", bmp: "image/bmp",
  };
  const DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024; // the API's default (settings.max_upload_bytes)
  const PAGE_SIZE = 12;
  const TOKEN_KEY = "udagram.token";
  const FINAL_STATUSES = new Set(["DONE", "FAILED"]);
  const STATUS_LABELS = {
    AWAITING_UPLOAD: "Awaiting upload", PROCESSING: "Processing", DONE: "Done", FAILED: "Failed",
    UPLOADING: "Uploading",
  };
  const POLL_FIRST_MS = 1000;
  const POLL_MAX_MS = 10000;
  const POLL_GIVE_UP_MS = 15 * 60 * 1000;

  const IMAGE_FIELDS = `
    id groupId owner caption title status imageUrl processedImageUrl
    predictions { label probability } modelVersion error createdAt processedAt`;
  const GROUP_FIELDS = "id name description owner createdAt imageCount";
  const ERROR_FIELDS = "... on Error { code message }";

  const DATE_FORMAT = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    user: null, // the token's `sub`
    tokenExpiresAt: 0,
    maxUploadBytes: DEFAULT_MAX_UPLOAD_BYTES,
    routeSeq: 0, // bumped on each navigation so late answers of an old view are dropped
    groups: { ids: new Set(), cursor: null },
    group: null, // the group on screen, with its image paging
    dialogImage: null,
    watched: new Map(), // image id -> { started, delay, due } while waiting for the worker
    pollTimer: null,
    polling: false,
    previews: new Map(), // image id -> object URL of the local file just uploaded
    lastFocus: null,
    selectedFile: null,
    uploadsInFlight: 0,
  };

  // ---- messages -------------------------------------------------------------------------------
  function showMessage(text, kind = "error") {
    const box = $("image-dialog").open ? $("dialog-messages") : $("messages");
    const item = document.createElement("div");
    item.className = `message ${kind}`;
    item.setAttribute("role", kind === "error" ? "alert" : "status");
    item.dataset.testid = kind === "error" ? "error-message" : "info-message";
    const p = document.createElement("p");
    p.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "secondary";
    close.textContent = "Dismiss";
    close.setAttribute("aria-label", "Dismiss message");
    close.addEventListener("click", () => item.remove());
    item.append(p, close);
    box.append(item);
    while (box.children.length > 4) box.firstElementChild.remove();
    if (kind !== "error") setTimeout(() => item.remove(), 5000);
  }
  const showError = (err) => showMessage(err && err.message ? err.message : String(err), "error");

  // ---- API ------------------------------------------------------------------------------------
  // The API's messages are terse ("only the owner may do this"): show them as sentences.
  function sentence(text) {
    const t = String(text || "").trim();
    if (!t) return "Something went wrong.";
    return t[0].toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
  }

  class ApiError extends Error {
    constructor(message, code) {
      super(sentence(message));
      this.code = code || "ERROR";
    }
  }

  async function gql(query, variables = {}) {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      response = await fetch("/graphql", { method: "POST", headers, body: JSON.stringify({ query, variables }) });
    } catch (e) {
      throw new ApiError("Cannot reach the server. Check your connection and try again.", "NETWORK");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      /* not JSON: reported below */
    }
    if (body && Array.isArray(body.errors) && body.errors.length) {
      const first = body.errors[0];
      const code = first.extensions && first.extensions.code;
      throw new ApiError(body.errors.map((e) => e.message).join(" "), code);
    }
    if (!response.ok || !body || !body.data) {
      if (response.status === 401) handleSignedOut();
      // e.g. 413 {"error": "request body too large: ..."} from the API's body limit
      const detail = body && typeof body.error === "string" ? body.error : null;
      throw new ApiError(detail || `The server answered ${response.status} ${response.statusText || ""}`.trim(), `HTTP_${response.status}`);
    }
    return body.data;
  }

  // A mutation answers a union of its success type and typed errors (`... on Error`).
  function unwrap(result) {
    if (!result) throw new ApiError("The server gave no answer.", "EMPTY");
    if (typeof result.code === "string" && typeof result.message === "string") {
      // A refused token (expired, or the server's key changed): sign out; the message says why.
      if (result.code === "UNAUTHENTICATED" && state.token) setToken(null);
      throw new ApiError(result.message, result.code);
    }
    return result;
  }

  const Q = {
    groups: `query Groups($first: Int, $after: String) {
      groups(first: $first, after: $after) {
        edges { node { ${GROUP_FIELDS} } } pageInfo { hasNextPage endCursor } } }`,
    group: `query Group($id: ID!, $first: Int, $after: String) {
      group(id: $id) { ${GROUP_FIELDS}
        images(first: $first, after: $after) {
          edges { node { ${IMAGE_FIELDS} } } pageInfo { hasNextPage endCursor } } } }`,
    image: `query Image($id: ID!) { image(id: $id) { ${IMAGE_FIELDS} } }`,
    createGroup: `mutation CreateGroup($name: String!, $description: String!) {
      createGroup(input: { name: $name, description: $description }) {
        __typename ... on Group { ${GROUP_FIELDS} } ${ERROR_FIELDS} } }`,
    createImage: `mutation CreateImage($groupId: ID!, $caption: String!, $fileName: String,
        $contentType: String!, $contentLength: Int!) {
      createImage(input: { groupId: $groupId, caption: $caption, fileName: $fileName,
                           contentType: $contentType, contentLength: $contentLength }) {
        __typename
        ... on ImageUpload { image { ${IMAGE_FIELDS} } upload { url fields expiresAt } }
        ... on UploadTooLarge { maxBytes }
        ${ERROR_FIELDS} } }`,
    deleteImage: `mutation DeleteImage($id: ID!) {
      deleteImage(id: $id) { __typename ... on Deleted { id } ${ERROR_FIELDS} } }`,
    deleteGroup: `mutation DeleteGroup($id: ID!) {
      deleteGroup(id: $id) { __typename ... on Deleted { id } ${ERROR_FIELDS} } }`,
    reprocessImage: `mutation ReprocessImage($id: ID!) {
      reprocessImage(id: $id) { __typename ... on Image { ${IMAGE_FIELDS} } ${ERROR_FIELDS} } }`,
  };

  // ---- auth -----------------------------------------------------------------------------------
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
      state.token = token;
      state.user = String(claims.sub);
      state.tokenExpiresAt = claims.exp ? claims.exp * 1000 : 0;
      localStorage.setItem(TOKEN_KEY, token);
    } else {
      state.token = null;
      state.user = null;
      state.tokenExpiresAt = 0;
      localStorage.removeItem(TOKEN_KEY);
    }
    renderAuth();
  }

  function handleSignedOut() {
    if (!state.token) return;
    setToken(null);
    showMessage("Your session has ended. Please sign in again.", "error");
  }

  function renderAuth() {
    const signedIn = Boolean(state.user);
    $("sign-in-form").hidden = signedIn;
    $("signed-in").hidden = !signedIn;
    $("signed-in-user").textContent = state.user || "";
    $("create-group-form").hidden = !signedIn;
    $("sign-in-hint").hidden = signedIn;
    $("upload-form").hidden = !signedIn || !state.group;
    renderGroupOwnerControls();
    for (const li of $("images-list").children) renderRetry(li);
    if (state.dialogImage) renderDialog(state.dialogImage);
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
        throw new ApiError("Cannot reach the server. Check your connection and try again.", "NETWORK");
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
      if (!state.user) throw new ApiError("The server returned an unusable token.", "SIGN_IN");
      $("sign-in-user").value = "";
      showMessage(`Signed in as ${state.user}.`, "info");
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

  // ---- helpers --------------------------------------------------------------------------------
  function formatDate(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : DATE_FORMAT.format(d);
  }
  const percent = (p) => `${(Number(p) * 100).toFixed(1)}%`;
  const formatBytes = (n) => (n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(n % (1024 * 1024) ? 1 : 0)} MB` : `${Math.ceil(n / 1024)} KB`);
  const imageTitle = (image) => image.title || image.caption || "Untitled image";
  const imagesCountText = (n) => `${n} image${n === 1 ? "" : "s"}`;

  function setBadge(el, status, extra = "") {
    el.className = `badge status-${status}`;
    el.dataset.status = status;
    el.textContent = (STATUS_LABELS[status] || status) + extra;
  }

  function setView(name) {
    $("groups-view").hidden = name !== "groups";
    $("group-view").hidden = name !== "group";
    $("loading").hidden = name !== "loading";
  }

  // ---- groups list (#/) -------------------------------------------------------------------------
  function groupCard(group) {
    const li = $("group-card-template").content.firstElementChild.cloneNode(true);
    li.dataset.id = group.id;
    const link = li.querySelector(".card-link");
    link.href = `#/groups/${encodeURIComponent(group.id)}`;
    li.querySelector(".card-title").textContent = group.name;
    li.querySelector(".description").textContent = group.description || "";
    li.querySelector(".meta").textContent =
      `${imagesCountText(group.imageCount || 0)} · by ${group.owner} · ${formatDate(group.createdAt)}`;
    return li;
  }

  async function loadGroups(seq, more = false) {
    const data = await gql(Q.groups, { first: PAGE_SIZE, after: more ? state.groups.cursor : null });
    if (seq !== state.routeSeq) return;
    const list = $("groups-list");
    if (!more) {
      list.replaceChildren();
      state.groups.ids.clear();
    }
    for (const { node } of data.groups.edges) {
      if (state.groups.ids.has(node.id)) continue;
      state.groups.ids.add(node.id);
      list.append(groupCard(node));
    }
    state.groups.cursor = data.groups.pageInfo.endCursor;
    $("groups-more").hidden = !data.groups.pageInfo.hasNextPage;
    $("groups-empty").hidden = list.children.length > 0;
  }

  async function createGroup(event) {
    event.preventDefault();
    const name = $("group-name").value.trim();
    const description = $("group-description").value.trim();
    if (!name) {
      showMessage("Give the group a name.");
      $("group-name").focus();
      return;
    }
    const button = $("create-group-button");
    button.disabled = true;
    try {
      const data = await gql(Q.createGroup, { name, description });
      const group = unwrap(data.createGroup);
      $("create-group-form").reset();
      showMessage(`Group “${group.name}” created.`, "info");
      location.hash = `#/groups/${encodeURIComponent(group.id)}`;
    } catch (e) {
      showError(e);
    } finally {
      button.disabled = false;
    }
  }

  // ---- one group (#/groups/<id>) -----------------------------------------------------------------
  function renderGroupHeader(group) {
    $("group-heading").textContent = group.name;
    $("group-description-text").textContent = group.description || "";
    $("group-meta").textContent = `${imagesCountText(group.imageCount || 0)} · by ${group.owner} · created ${formatDate(group.createdAt)}`;
    document.title = `${group.name} · Udagram`;
  }

  function renderGroupOwnerControls() {
    const group = state.group;
    $("delete-group").hidden = !(group && state.user && group.owner === state.user);
    $("upload-form").hidden = !(group && state.user);
  }

  function imageCard(image) {
    const li = $("image-card-template").content.firstElementChild.cloneNode(true);
    li.dataset.id = image.id;
    li.querySelector(".card-link").href = `#/images/${encodeURIComponent(image.id)}`;
    const img = li.querySelector("img");
    img.addEventListener("error", () => {
      // An image still awaiting its upload has no object yet: keep the placeholder.
      img.removeAttribute("src");
    });
    updateImageCard(li, image, true);
    return li;
  }

  function cardFor(id) {
    return $("images-list").querySelector(`li[data-id="${CSS.escape(id)}"]`);
  }

  // Per-image retry, right on a failed card, for its owner.
  function renderRetry(li) {
    li.querySelector(".retry").hidden = !(li.dataset.status === "FAILED" && state.user && li.dataset.owner === state.user);
  }

  function updateImageCard(li, image, first = false) {
    const previous = li.dataset.status;
    li.dataset.status = image.status;
    li.dataset.owner = image.owner;
    li.querySelector(".retry").setAttribute("aria-label", `Retry ${imageTitle(image)}`);
    renderRetry(li);
    li.querySelector(".card-title").textContent = imageTitle(image);
    setBadge(li.querySelector(".badge"), image.status);
    li.querySelector(".error-text").textContent = image.status === "FAILED" ? image.error || "Processing failed." : "";
    const img = li.querySelector("img"); // decorative: the card's title names it
    // Presigned URLs change on each read: swap the picture only when it should change, not on
    // every poll, so it does not flicker.
    if (first || previous !== image.status) {
      const url = image.status === "DONE" ? image.processedImageUrl : state.previews.get(image.id) || image.imageUrl;
      if (url) img.src = url;
    }
  }

  async function loadGroup(id, seq, more = false) {
    const current = state.group;
    const data = await gql(Q.group, { id, first: PAGE_SIZE, after: more && current ? current.cursor : null });
    if (more ? state.group !== current : seq !== state.routeSeq) return null; // another view by now
    const group = data.group;
    if (!group) throw new ApiError("This group does not exist (it may have been deleted).", "NOT_FOUND");
    const list = $("images-list");
    if (!more) {
      stopAllPolling();
      list.replaceChildren();
      state.group = { ...group, cursor: null, ids: new Set() };
      renderGroupHeader(group);
      renderGroupOwnerControls();
    }
    const g = state.group;
    for (const { node } of group.images.edges) {
      if (g.ids.has(node.id)) continue;
      g.ids.add(node.id);
      list.append(imageCard(node));
      if (!FINAL_STATUSES.has(node.status)) startPolling(node.id);
    }
    g.cursor = group.images.pageInfo.endCursor;
    $("images-more").hidden = !group.images.pageInfo.hasNextPage;
    $("images-empty").hidden = list.children.length > 0;
    return g;
  }

  async function deleteGroup() {
    const group = state.group;
    if (!group) return;
    if (!confirm(`Delete the group “${group.name}” and its images? This cannot be undone.`)) return;
    const button = $("delete-group");
    button.disabled = true;
    try {
      unwrap((await gql(Q.deleteGroup, { id: group.id })).deleteGroup);
      showMessage(`Group “${group.name}” deleted.`, "info");
      state.group = null;
      location.hash = "#/";
    } catch (e) {
      showError(e);
    } finally {
      button.disabled = false;
    }
  }

  // ---- watching images until the worker is done ------------------------------------------------
  // One loop polls every watched image in a single aliased query (one batch on the API side),
  // each image on its own back-off: every second at first, then less often, up to 10 s.
  const POLL_BATCH = 20; // stays under the API's alias limit

  function startPolling(id) {
    if (state.watched.has(id)) return;
    const now = Date.now();
    state.watched.set(id, { started: now, delay: POLL_FIRST_MS, due: now + POLL_FIRST_MS });
    schedulePoll();
  }

  function stopPolling(id) {
    state.watched.delete(id);
  }

  function stopAllPolling() {
    state.watched.clear();
  }

  function schedulePoll() {
    if (state.pollTimer || state.polling || state.watched.size === 0) return;
    const next = Math.min(...[...state.watched.values()].map((w) => w.due));
    state.pollTimer = setTimeout(pollDue, Math.max(0, next - Date.now()));
  }

  function pollQuery(n) {
    const vars = Array.from({ length: n }, (_, i) => `$id${i}: ID!`).join(", ");
    const fields = Array.from({ length: n }, (_, i) => `i${i}: image(id: $id${i}) { ...ImageFields }`).join(" ");
    return `query Poll(${vars}) { ${fields} } fragment ImageFields on Image { ${IMAGE_FIELDS} }`;
  }

  async function pollDue() {
    state.pollTimer = null;
    state.polling = true;
    try {
      const now = Date.now();
      const due = [...state.watched.entries()].filter(([, w]) => w.due <= now).slice(0, POLL_BATCH).map(([id]) => id);
      if (due.length === 0) return;
      let answer = null;
      try {
        answer = await gql(pollQuery(due.length), Object.fromEntries(due.map((id, i) => [`id${i}`, id])));
      } catch (e) {
        // A transient failure (network, server restart): keep watching, with back-off.
      }
      due.forEach((id, i) => {
        const w = state.watched.get(id);
        if (!w) return; // no longer watched (the view changed meanwhile)
        const image = answer ? answer[`i${i}`] : undefined;
        if (image) applyImageUpdate(image);
        const finished = image === null || (image && FINAL_STATUSES.has(image.status)); // null: deleted
        if (finished || Date.now() - w.started > POLL_GIVE_UP_MS) {
          state.watched.delete(id);
          return;
        }
        w.delay = Math.min(Math.round(w.delay * 1.25), POLL_MAX_MS);
        w.due = Date.now() + w.delay;
      });
    } finally {
      state.polling = false;
      schedulePoll();
    }
  }

  function applyImageUpdate(image) {
    const li = cardFor(image.id);
    if (li && li.dataset.uploading !== "true") updateImageCard(li, image);
    if (state.dialogImage && state.dialogImage.id === image.id) {
      const changed = state.dialogImage.status !== image.status;
      state.dialogImage = image;
      renderDialog(image, changed);
    }
    if (image.status === "DONE" && state.previews.has(image.id)) {
      // The processed picture has replaced the local preview everywhere: free it.
      URL.revokeObjectURL(state.previews.get(image.id));
      state.previews.delete(image.id);
    }
  }

  // ---- upload -----------------------------------------------------------------------------------
  function contentTypeOf(file) {
    if (ACCEPTED_TYPES.includes(file.type)) return file.type;
    if (file.type) return null;
    const ext = (file.name.split(".").pop() || "").toLowerCase();
    return TYPE_BY_EXTENSION[ext] || null;
  }

  function checkFile(file) {
    if (!contentTypeOf(file)) {
      return `“${file.name}” is not a supported image: choose a JPEG, PNG, WebP, GIF or BMP file.`;
    }
    if (file.size === 0) return `“${file.name}” is empty.`;
    if (file.size > state.maxUploadBytes) {
      return `“${file.name}” is ${formatBytes(file.size)}; the limit is ${formatBytes(state.maxUploadBytes)}.`;
    }
    return null;
  }

  function setMaxUploadBytes(bytes) {
    state.maxUploadBytes = bytes;
    $("upload-hint").textContent = `JPEG, PNG, WebP, GIF or BMP, up to ${formatBytes(bytes)}.`;
  }

  function selectFile(file) {
    state.selectedFile = null;
    $("upload-chosen").textContent = "";
    $("upload-button").disabled = true;
    if (!file) return;
    const problem = checkFile(file);
    if (problem) {
      showMessage(problem);
      $("upload-file").value = "";
      return;
    }
    state.selectedFile = file;
    $("upload-chosen").textContent = `${file.name} (${formatBytes(file.size)})`;
    $("upload-button").disabled = false;
  }

  // Multipart POST to the presigned URL: the policy fields first, the file last (S3's rule).
  function postToStorage(upload, file, onProgress) {
    return new Promise((resolve, reject) => {
      const form = new FormData();
      const fields = typeof upload.fields === "string" ? JSON.parse(upload.fields) : upload.fields;
      for (const [key, value] of Object.entries(fields)) form.append(key, value);
      form.append("file", file);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", upload.url);
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) onProgress(e.loaded / e.total);
      });
      xhr.addEventListener("load", () => {
        if (xhr.status >= 200 && xhr.status < 300) return resolve();
        reject(new ApiError(storageError(xhr), "UPLOAD_REJECTED"));
      });
      xhr.addEventListener("error", () =>
        reject(new ApiError("The upload could not reach the storage server. Check your connection and try again.", "NETWORK")));
      xhr.addEventListener("abort", () => reject(new ApiError("The upload was cancelled.", "ABORTED")));
      xhr.send(form);
    });
  }

  // S3 answers an XML <Error><Code/><Message/></Error>; parsed, never inserted as HTML.
  function storageError(xhr) {
    let code = "";
    let message = "";
    try {
      const doc = new DOMParser().parseFromString(xhr.responseText || "", "application/xml");
      code = (doc.querySelector("Error > Code") || {}).textContent || "";
      message = (doc.querySelector("Error > Message") || {}).textContent || "";
    } catch (e) {
      /* not XML */
    }
    const known = {
      EntityTooLarge: `The file is larger than the ${formatBytes(state.maxUploadBytes)} limit.`,
      AccessDenied: "The storage server refused the upload (the upload link may have expired). Please try again.",
    };
    return `Upload failed: ${known[code] || message || code || `storage server answered ${xhr.status}`}`;
  }

  async function uploadSelected(event) {
    event.preventDefault();
    const file = state.selectedFile;
    const group = state.group;
    if (!file || !group) return;
    const problem = checkFile(file);
    if (problem) return showMessage(problem);
    const caption = $("upload-caption").value.trim();
    const button = $("upload-button");
    button.disabled = true;
    let image = null;
    let li = null;
    state.uploadsInFlight += 1;
    try {
      const data = await gql(Q.createImage, {
        groupId: group.id, caption, fileName: file.name.slice(0, 255),
        contentType: contentTypeOf(file), contentLength: file.size,
      });
      // The API's limit wins over the default this page assumed.
      if (data.createImage && data.createImage.maxBytes) setMaxUploadBytes(data.createImage.maxBytes);
      const result = unwrap(data.createImage);
      image = result.image;
      // Show the picture at once, from the local file, with a progress bar.
      state.previews.set(image.id, URL.createObjectURL(file));
      li = imageCard(image);
      li.dataset.uploading = "true";
      setBadge(li.querySelector(".badge"), "UPLOADING");
      const bar = li.querySelector(".upload-progress");
      bar.hidden = false;
      bar.setAttribute("aria-label", `Uploading ${file.name}`);
      if (state.group === group) {
        group.ids.add(image.id);
        $("images-list").prepend(li);
        $("images-empty").hidden = true;
      }
      $("upload-form").reset();
      selectFile(null);
      await postToStorage(result.upload, file, (fraction) => {
        bar.value = Math.round(fraction * 100);
        setBadge(li.querySelector(".badge"), "UPLOADING", ` ${Math.round(fraction * 100)}%`);
      });
      bar.hidden = true;
      delete li.dataset.uploading;
      updateImageCard(li, { ...image, status: "PROCESSING" });
      group.imageCount = (group.imageCount || 0) + 1;
      if (state.group === group) {
        renderGroupHeader(group);
        startPolling(image.id); // watched while its group is on screen
      }
    } catch (e) {
      showError(e);
      if (image) {
        // Nothing half-made stays behind: drop the record whose upload failed.
        li && li.remove();
        group.ids.delete(image.id);
        if (state.previews.has(image.id)) URL.revokeObjectURL(state.previews.get(image.id));
        state.previews.delete(image.id);
        $("images-empty").hidden = $("images-list").children.length > 0;
        gql(Q.deleteImage, { id: image.id }).catch(() => {});
      }
    } finally {
      state.uploadsInFlight -= 1;
      button.disabled = !state.selectedFile;
    }
  }

  function setUpDropzone() {
    const zone = $("dropzone");
    const over = (e) => {
      if (!e.dataTransfer || ![...e.dataTransfer.types].includes("Files")) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragover");
    };
    zone.addEventListener("dragenter", over);
    zone.addEventListener("dragover", over);
    zone.addEventListener("dragleave", (e) => {
      if (!zone.contains(e.relatedTarget)) zone.classList.remove("dragover");
    });
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragover");
      const files = e.dataTransfer ? e.dataTransfer.files : [];
      if (files.length > 1) showMessage("One image at a time, please: the first one was taken.", "info");
      selectFile(files[0] || null);
    });
    // A file dropped next to the zone must not make the browser leave the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
  }

  // ---- one image (dialog, #/images/<id>) ----------------------------------------------------------
  function renderDialog(image, pictureChanged = true) {
    $("image-title").textContent = imageTitle(image);
    const pic = $("image-picture");
    pic.onerror = () => pic.removeAttribute("src"); // no picture to show (e.g. not an image at all)
    const url = image.status === "DONE" ? image.processedImageUrl : state.previews.get(image.id) || image.imageUrl;
    if (pictureChanged || !pic.getAttribute("src")) {
      if (url) pic.src = url;
      else pic.removeAttribute("src");
    }
    pic.alt = imageTitle(image);
    $("image-caption").textContent = image.caption && image.caption !== image.title ? image.caption : "";
    setBadge($("image-status"), image.status);
    $("image-error").textContent = image.status === "FAILED" ? image.error || "Processing failed." : "";

    const list = $("predictions");
    list.replaceChildren();
    const predictions = image.predictions || [];
    $("predictions-section").hidden = predictions.length === 0;
    for (const p of predictions) {
      const li = document.createElement("li");
      li.className = "prediction";
      li.dataset.testid = "prediction";
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = p.label;
      const value = document.createElement("span");
      value.className = "percent";
      value.textContent = percent(p.probability);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.setAttribute("role", "meter");
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-valuenow", (Number(p.probability) * 100).toFixed(1));
      bar.setAttribute("aria-label", `${p.label}: ${percent(p.probability)}`);
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(0, Math.min(100, Number(p.probability) * 100))}%`;
      bar.append(fill);
      li.append(label, value, bar);
      list.append(li);
    }

    const details = $("image-details");
    details.replaceChildren();
    const rows = [
      ["Uploaded by", image.owner],
      ["Uploaded", formatDate(image.createdAt)],
      ["Processed", formatDate(image.processedAt)],
      ["Model", image.modelVersion],
    ];
    for (const [term, value] of rows) {
      if (!value) continue;
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      if (term === "Model") dd.dataset.testid = "image-model-version";
      details.append(dt, dd);
    }

    const original = $("image-original");
    original.hidden = !image.imageUrl || image.status === "AWAITING_UPLOAD";
    if (image.imageUrl) original.href = image.imageUrl;
    const mine = Boolean(state.user) && image.owner === state.user;
    $("delete-image").hidden = !mine;
    $("reprocess-image").hidden = !mine || image.status === "AWAITING_UPLOAD";
  }

  function openDialog(image) {
    state.dialogImage = image;
    renderDialog(image);
    const dialog = $("image-dialog");
    if (!dialog.open) {
      state.lastFocus = document.activeElement;
      dialog.showModal();
      $("image-close").focus();
    }
    document.title = `${imageTitle(image)} · Udagram`;
    if (!FINAL_STATUSES.has(image.status)) startPolling(image.id);
  }

  function closeDialog() {
    const dialog = $("image-dialog");
    state.dialogImage = null;
    if (dialog.open) dialog.close();
  }

  // The dialog closed (Escape, close button, backdrop): go back to the group's address.
  function onDialogClosed() {
    const image = state.dialogImage;
    state.dialogImage = null;
    $("dialog-messages").replaceChildren();
    if (state.group) document.title = `${state.group.name} · Udagram`;
    if (image && parseRoute().name === "image") {
      location.hash = `#/groups/${encodeURIComponent(image.groupId)}`;
    }
    const card = image && cardFor(image.id);
    const target = (card && card.querySelector(".card-link")) || state.lastFocus;
    if (target && document.contains(target)) target.focus();
  }

  async function deleteImage() {
    const image = state.dialogImage;
    if (!image) return;
    if (!confirm(`Delete “${imageTitle(image)}”? This cannot be undone.`)) return;
    const button = $("delete-image");
    button.disabled = true;
    try {
      unwrap((await gql(Q.deleteImage, { id: image.id })).deleteImage);
      stopPolling(image.id);
      const li = cardFor(image.id);
      if (li) li.remove();
      if (state.group && state.group.id === image.groupId) {
        state.group.ids.delete(image.id);
        state.group.imageCount = Math.max(0, (state.group.imageCount || 1) - 1);
        renderGroupHeader(state.group);
        $("images-empty").hidden = $("images-list").children.length > 0;
      }
      closeDialog(); // first: a message shown while the dialog is open lives inside it
      location.hash = `#/groups/${encodeURIComponent(image.groupId)}`;
      showMessage(`Image “${imageTitle(image)}” deleted.`, "info");
    } catch (e) {
      showError(e);
    } finally {
      button.disabled = false;
    }
  }

  // Queue an image again (owner only): from the dialog, or the "Retry" button of a failed card.
  async function reprocessImage(id, button) {
    if (!id) return;
    button.disabled = true;
    try {
      const updated = unwrap((await gql(Q.reprocessImage, { id })).reprocessImage);
      applyImageUpdate(updated);
      showMessage("Queued for processing again.", "info");
      startPolling(updated.id);
    } catch (e) {
      showError(e);
    } finally {
      button.disabled = false;
    }
  }

  // ---- router -------------------------------------------------------------------------------------
  function parseRoute() {
    const hash = location.hash || "#/";
    let m = hash.match(/^#\/groups\/([^/?#]+)$/);
    if (m) return { name: "group", id: decodeURIComponent(m[1]) };
    m = hash.match(/^#\/images\/([^/?#]+)$/);
    if (m) return { name: "image", id: decodeURIComponent(m[1]) };
    return { name: "groups" };
  }

  async function route() {
    const seq = ++state.routeSeq;
    const r = parseRoute();
    try {
      if (r.name === "groups") {
        closeDialog();
        stopAllPolling();
        state.group = null;
        document.title = "Udagram";
        setView("groups");
        renderAuth();
        await loadGroups(seq);
      } else if (r.name === "group") {
        closeDialog();
        if (state.group && state.group.id === r.id && !$("group-view").hidden) return;
        setView("loading");
        await loadGroup(r.id, seq);
        if (seq === state.routeSeq) {
          setView("group");
          $("main").focus({ preventScroll: true });
        }
      } else {
        const data = await gql(Q.image, { id: r.id });
        if (seq !== state.routeSeq) return;
        const image = data.image;
        if (!image) throw new ApiError("This image does not exist (it may have been deleted).", "NOT_FOUND");
        if (!state.group || state.group.id !== image.groupId || $("group-view").hidden) {
          setView("loading");
          await loadGroup(image.groupId, seq);
          if (seq !== state.routeSeq) return;
          setView("group");
        }
        openDialog(image);
      }
    } catch (e) {
      if (seq !== state.routeSeq) return;
      showError(e);
      if (r.name !== "groups" && $("group-view").hidden) {
        setView("groups");
        loadGroups(seq).catch(showError);
      }
    }
  }

  // ---- wiring -------------------------------------------------------------------------------------
  function start() {
    setToken(localStorage.getItem(TOKEN_KEY));
    setMaxUploadBytes(DEFAULT_MAX_UPLOAD_BYTES);
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("create-group-form").addEventListener("submit", createGroup);
    $("upload-form").addEventListener("submit", uploadSelected);
    $("upload-file").addEventListener("change", (e) => selectFile(e.target.files[0] || null));
    $("delete-group").addEventListener("click", deleteGroup);
    $("delete-image").addEventListener("click", deleteImage);
    $("reprocess-image").addEventListener("click", (e) =>
      reprocessImage(state.dialogImage && state.dialogImage.id, e.currentTarget));
    $("images-list").addEventListener("click", (e) => {
      const retry = e.target.closest("button.retry");
      if (retry) reprocessImage(retry.closest("li").dataset.id, retry);
    });
    $("image-close").addEventListener("click", closeDialogAndReturn);
    const dialog = $("image-dialog");
    dialog.addEventListener("close", onDialogClosed);
    dialog.addEventListener("click", (e) => {
      if (e.target === dialog) closeDialogAndReturn(); // a click on the backdrop
    });
    $("groups-more").addEventListener("click", () => loadGroups(state.routeSeq, true).catch(showError));
    $("images-more").addEventListener("click", () => {
      if (state.group) loadGroup(state.group.id, state.routeSeq, true).catch(showError);
    });
    setUpDropzone();
    // A token that expires while the page is open: sign out cleanly.
    setInterval(() => {
      if (state.token && state.tokenExpiresAt && state.tokenExpiresAt <= Date.now()) handleSignedOut();
    }, 30000);
    // Leaving the page would cut an upload short: ask first.
    window.addEventListener("beforeunload", (e) => {
      if (state.uploadsInFlight > 0) e.preventDefault();
    });
    window.addEventListener("hashchange", route);
    route();
  }

  function closeDialogAndReturn() {
    const dialog = $("image-dialog");
    if (dialog.open) dialog.close(); // fires "close" -> onDialogClosed
  }

  start();
})();
