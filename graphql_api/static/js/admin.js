// The admin view (#/admin), for users whose token has the `admin` role (the API says so in
// `me { roles }`, and refuses everyone else with Forbidden): images by status, the failed ones
// with their reason and "Retry", "Retry all failed", "Re-run older model versions" with a
// progress bar (live over the websocket, polled while it is down).
import { gql, unwrap } from "./api.js";
import { onAuthChange } from "./auth.js";
import { $, element } from "./dom.js";
import { formatDate, imageTitle, setBadge } from "./format.js";
import { onImageUpdate, subscribe, unsubscribe, watchImage } from "./live.js";
import { showError, showMessage } from "./messages.js";
import { isFinal } from "./polling.js";
import { Q } from "./queries.js";
import { imageHref } from "./routes.js";
import { view } from "./view.js";

const FAILED_PAGE = 20;
const JOB_POLL_MS = 2000;
const JOB_NAMES = { RETRY_FAILED: "Retrying failed images", RERUN_OLDER_MODEL: "Re-running older model versions" };

const state = { admin: false, cursor: null, job: null, jobSubscription: null, jobPoll: null, statsTimer: null };

// Whether the signed-in user is an admin (asked of the API: it decides, from the token).
async function checkAdmin() {
  let admin = false;
  try {
    const data = await gql(Q.me);
    admin = Boolean(data.me && data.me.roles.includes("admin"));
  } catch (e) {
    /* unknown: not shown */
  }
  state.admin = admin;
  $("admin-link").hidden = !admin;
  return admin;
}

export async function loadAdmin(seq) {
  stopFollowing();
  state.job = null;
  const admin = await checkAdmin();
  if (seq !== view.routeSeq) return;
  $("admin-denied").hidden = admin;
  $("admin-body").hidden = !admin;
  if (!admin) return;
  await Promise.all([loadStats(seq), loadFailed(seq)]);
}

async function loadStats(seq = view.routeSeq) {
  const stats = unwrap((await gql(Q.adminStats)).adminStats);
  if (seq !== view.routeSeq) return;
  const counts = $("admin-counts");
  counts.replaceChildren();
  for (const { status, count } of stats.counts) {
    const item = element("div", { className: "count", testid: "admin-count" });
    item.dataset.status = status;
    const badge = element("span");
    setBadge(badge, status);
    const number = element("strong", { text: String(count) });
    item.append(number, badge);
    counts.append(item);
  }
  $("admin-model").textContent = stats.currentModelVersion
    ? `Current model version: ${stats.currentModelVersion}`
    : "The model server's management API cannot be reached: re-running older model versions needs it.";
  if (stats.runningJobs.length && !state.job) followJob(stats.runningJobs[0]);
}

async function loadFailed(seq = view.routeSeq, more = false) {
  const page = unwrap((await gql(Q.failedImages, { first: FAILED_PAGE, after: more ? state.cursor : null })).failedImages);
  if (seq !== view.routeSeq) return;
  const list = $("admin-failed");
  if (!more) list.replaceChildren();
  for (const { node } of page.edges) {
    if (!list.querySelector(`li[data-id="${CSS.escape(node.id)}"]`)) list.append(failedItem(node));
  }
  state.cursor = page.pageInfo.endCursor;
  $("admin-failed-more").hidden = !page.pageInfo.hasNextPage;
  $("admin-failed-empty").hidden = list.children.length > 0;
}

function failedItem(image) {
  const li = element("li", { className: "failed-item", testid: "admin-failed-item" });
  li.dataset.id = image.id;
  const link = element("a", { className: "title" });
  link.href = imageHref(image.id);
  const badge = element("span", { testid: "admin-failed-status" });
  const error = element("p", { className: "error-text", testid: "admin-failed-error" });
  const meta = element("p", { className: "meta" });
  const retry = element("button", { className: "secondary retry", text: "Retry" });
  retry.type = "button";
  retry.addEventListener("click", () => retryImage(image.id, retry));
  li.append(link, badge, error, meta, retry);
  renderFailedItem(li, image);
  return li;
}

function renderFailedItem(li, image) {
  li.querySelector(".title").textContent = imageTitle(image);
  setBadge(li.querySelector("[data-testid=admin-failed-status]"), image.status);
  li.querySelector(".error-text").textContent = image.status === "FAILED" ? image.error || "Processing failed." : "";
  li.querySelector(".meta").textContent = `by ${image.owner} · uploaded ${formatDate(image.createdAt)}`;
  const retry = li.querySelector(".retry");
  retry.hidden = image.status !== "FAILED";
  retry.setAttribute("aria-label", `Retry ${imageTitle(image)}`);
}

// A retried image on the list: its status follows it; once DONE it leaves the list.
function onAdminImage(image) {
  const li = $("admin-failed").querySelector(`li[data-id="${CSS.escape(image.id)}"]`);
  if (!li) return;
  renderFailedItem(li, image);
  if (isFinal(image.status)) refreshStatsSoon();
  if (image.status === "DONE") {
    li.remove();
    $("admin-failed-empty").hidden = $("admin-failed").children.length > 0;
  }
}

async function retryImage(id, button) {
  button.disabled = true;
  try {
    const image = unwrap((await gql(Q.retryImage, { id })).retryImage);
    onAdminImage(image);
    watchImage(id);
    showMessage("Queued for processing again.", "info");
    refreshStatsSoon();
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

async function startJob(query, field, button) {
  button.disabled = true;
  try {
    const job = unwrap((await gql(query))[field]);
    followJob(job);
    if (job.state === "DONE" && job.total === 0) showMessage("Nothing to re-run.", "info");
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

// A bulk job's progress: live (adminJobUpdated) or polled (adminJob) while the socket is down.
function followJob(job) {
  stopFollowing();
  state.job = job;
  renderJob(job);
  if (job.state !== "RUNNING") return;
  const seq = view.routeSeq;
  const update = (fresh) => {
    if (seq !== view.routeSeq || !fresh || fresh.id === undefined) return true;
    state.job = fresh;
    renderJob(fresh);
    refreshStatsSoon();
    if (fresh.state !== "RUNNING") {
      stopFollowing();
      showMessage(`${JOB_NAMES[fresh.kind] || "Job"}: done, ${fresh.finished} of ${fresh.total} images.`, "info");
      loadFailed().catch(showError);
      return true;
    }
    return false;
  };
  const poll = async () => {
    try {
      update(unwrap((await gql(Q.adminJob, { id: job.id })).adminJob));
    } catch (e) {
      /* transient: the next poll tries again */
    }
  };
  state.jobSubscription = subscribe(Q.adminJobUpdated, { id: job.id }, {
    next: (data) => update(data && data.adminJobUpdated),
    poll: () => {
      clearInterval(state.jobPoll);
      state.jobPoll = setInterval(poll, JOB_POLL_MS);
    },
    unpoll: () => clearInterval(state.jobPoll),
  });
}

function stopFollowing() {
  if (state.jobSubscription) unsubscribe(state.jobSubscription);
  state.jobSubscription = null;
  clearInterval(state.jobPoll);
}

function renderJob(job) {
  $("admin-job").hidden = false;
  const done = job.state !== "RUNNING";
  const percent = job.total ? Math.round((100 * job.finished) / job.total) : 100;
  const bar = $("admin-job-progress");
  bar.value = done ? 100 : percent;
  bar.setAttribute("aria-label", `${JOB_NAMES[job.kind] || "Job"} progress`);
  const version = job.modelVersion ? ` through version ${job.modelVersion}` : "";
  $("admin-job-text").textContent = done
    ? `${JOB_NAMES[job.kind] || "Job"}${version}: done, ${job.finished} of ${job.total} images.`
    : `${JOB_NAMES[job.kind] || "Job"}${version}: ${job.finished} of ${job.total} done, ${job.queued} queued.`;
  $("admin-retry-failed").disabled = !done;
  $("admin-rerun-older").disabled = !done;
}

function refreshStatsSoon() {
  if (state.statsTimer) return;
  state.statsTimer = setTimeout(() => {
    state.statsTimer = null;
    if (!$("admin-view").hidden) loadStats().catch(() => {});
  }, 1000);
}

export function setUpAdmin() {
  $("admin-retry-failed").addEventListener("click", (e) => startJob(Q.retryFailed, "retryFailed", e.currentTarget));
  $("admin-rerun-older").addEventListener("click", (e) => startJob(Q.rerunOlderModel, "rerunOlderModel", e.currentTarget));
  $("admin-failed-more").addEventListener("click", () => loadFailed(view.routeSeq, true).catch(showError));
  onImageUpdate(onAdminImage);
  onAuthChange(() => {
    checkAdmin();
    if (!$("admin-view").hidden) loadAdmin(view.routeSeq).catch(showError);
  });
}
