// The list of groups (#/), newest first with "Load more groups", and the form that creates one.
import { gql, unwrap } from "./api.js";
import { currentUser, onAuthChange } from "./auth.js";
import { $ } from "./dom.js";
import { formatDate, imagesCountText } from "./format.js";
import { showError, showMessage } from "./messages.js";
import { showPage } from "./pages.js";
import { PAGE_SIZE, Q } from "./queries.js";
import { groupHref } from "./routes.js";
import { view } from "./view.js";

const listed = { ids: new Set(), cursor: null };

function groupCard(group) {
  const li = $("group-card-template").content.firstElementChild.cloneNode(true);
  li.dataset.id = group.id;
  li.querySelector(".card-link").href = groupHref(group.id);
  li.querySelector(".card-title").textContent = group.name;
  li.querySelector(".description").textContent = group.description || "";
  li.querySelector(".meta").textContent =
    `${imagesCountText(group.imageCount || 0)} · by ${group.owner} · ${formatDate(group.createdAt)}`;
  return li;
}

export async function loadGroups(seq, more = false) {
  const data = await gql(Q.groups, { first: PAGE_SIZE, after: more ? listed.cursor : null });
  if (seq !== view.routeSeq) return;
  const list = $("groups-list");
  $("groups-more").hidden = !showPage(list, listed, data.groups, groupCard, more);
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
    location.hash = groupHref(group.id);
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

function renderForUser() {
  const signedIn = Boolean(currentUser());
  $("create-group-form").hidden = !signedIn;
  $("sign-in-hint").hidden = signedIn;
}

export function setUpGroups() {
  $("create-group-form").addEventListener("submit", createGroup);
  $("groups-more").addEventListener("click", () => loadGroups(view.routeSeq, true).catch(showError));
  onAuthChange(renderForUser);
}
