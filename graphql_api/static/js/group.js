// One group (#/groups/<id>): its header, its images newest first with "Load more images",
// and its owner's controls.
import { gql, unwrap } from "./api.js";
import { currentUser, onAuthChange } from "./auth.js";
import { $ } from "./dom.js";
import { ApiError } from "./errors.js";
import { formatDate, imagesCountText } from "./format.js";
import { cardFor, imageCard } from "./image-cards.js";
import { applyImageUpdate } from "./image-updates.js";
import { unwatchAll, watchGroup, watchImage } from "./live.js";
import { showError, showMessage } from "./messages.js";
import { showPage } from "./pages.js";
import { isFinal } from "./polling.js";
import { PAGE_SIZE, Q } from "./queries.js";
import { view } from "./view.js";

function renderGroupHeader(group) {
  $("group-heading").textContent = group.name;
  $("group-description-text").textContent = group.description || "";
  $("group-meta").textContent = `${imagesCountText(group.imageCount || 0)} · by ${group.owner} · created ${formatDate(group.createdAt)}`;
  document.title = `${group.name} · Udagram`;
}

// An image was added (+1) or deleted (-1): the header's count follows, if the group is on screen.
export function countImages(group, delta) {
  group.imageCount = Math.max(0, (group.imageCount || 0) + delta);
  if (view.group === group) renderGroupHeader(group);
}

export function renderEmptyNote() {
  $("images-empty").hidden = $("images-list").children.length > 0;
}

export function renderGroupOwnerControls() {
  const group = view.group;
  const user = currentUser();
  $("delete-group").hidden = !(group && user && group.owner === user);
  $("upload-form").hidden = !(group && user);
}

export async function loadGroup(id, seq, more = false) {
  const current = view.group;
  const data = await gql(Q.group, { id, first: PAGE_SIZE, after: more && current ? current.cursor : null });
  if (more ? view.group !== current : seq !== view.routeSeq) return null; // another view by now
  const group = data.group;
  if (!group) throw new ApiError("This group does not exist (it may have been deleted).", "NOT_FOUND");
  const list = $("images-list");
  if (!more) {
    unwatchAll();
    view.group = { ...group, cursor: null, ids: new Set() };
    renderGroupHeader(group);
    renderGroupOwnerControls();
    const g = view.group;
    watchGroup(group.id, (change) => onGroupChange(g, change)); // images others add, change, delete
  }
  const g = view.group;
  $("images-more").hidden = !showPage(list, g, group.images, watchedImageCard, more);
  renderEmptyNote();
  return g;
}

function watchedImageCard(image) {
  if (!isFinal(image.status)) watchImage(image.id); // its status follows as the worker goes on
  return imageCard(image);
}

// Live: an image of the group on screen was added, changed or deleted (by anyone).
function onGroupChange(group, { id, image }) {
  if (view.group !== group) return;
  const li = cardFor(id);
  if (!image) {
    if (li && li.dataset.uploading !== "true") li.remove();
    if (group.ids.delete(id)) countImages(group, -1);
    renderEmptyNote();
  } else if (li || group.ids.has(id)) {
    applyImageUpdate(image);
  } else {
    // New: shown on top if it is newer than the newest card (an old one re-run is not news here).
    const first = $("images-list").firstElementChild;
    if (first && first.dataset.createdAt && first.dataset.createdAt > image.createdAt) return;
    group.ids.add(id);
    $("images-list").prepend(imageCard(image));
    countImages(group, +1);
    renderEmptyNote();
    if (!isFinal(image.status)) watchImage(id);
  }
}

async function deleteGroup() {
  const group = view.group;
  if (!group) return;
  if (!confirm(`Delete the group “${group.name}” and its images? This cannot be undone.`)) return;
  const button = $("delete-group");
  button.disabled = true;
  try {
    unwrap((await gql(Q.deleteGroup, { id: group.id })).deleteGroup);
    showMessage(`Group “${group.name}” deleted.`, "info");
    view.group = null;
    location.hash = "#/";
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

export function setUpGroup() {
  $("delete-group").addEventListener("click", deleteGroup);
  $("images-more").addEventListener("click", () => {
    if (view.group) loadGroup(view.group.id, view.routeSeq, true).catch(showError);
  });
  onAuthChange(renderGroupOwnerControls);
}
