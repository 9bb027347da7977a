// One image in a <dialog> (#/images/<id>): picture, predictions with bars, details, and its
// owner's delete. Escape, the close button or the backdrop close it, back to the group's address.
import { gql, unwrap } from "./api.js";
import { currentUser, onAuthChange } from "./auth.js";
import { $, element } from "./dom.js";
import { formatDate, imageTitle, percent, setBadge } from "./format.js";
import { countImages, renderEmptyNote } from "./group.js";
import { cardFor, pictureUrl } from "./image-cards.js";
import { showError, showMessage } from "./messages.js";
import { unwatchImage, watchImage } from "./live.js";
import { isFinal } from "./polling.js";
import { Q } from "./queries.js";
import { groupHref, parseRoute } from "./routes.js";
import { view } from "./view.js";

let shown = null; // the image in the dialog
let lastFocus = null;

export const dialogImageId = () => shown && shown.id;

function predictionItem(p) {
  const li = element("li", { className: "prediction", testid: "prediction" });
  const label = element("span", { className: "label", text: p.label });
  const value = element("span", { className: "percent", text: percent(p.probability) });
  const bar = element("div", { className: "bar" });
  bar.setAttribute("role", "meter");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.setAttribute("aria-valuenow", (Number(p.probability) * 100).toFixed(1));
  bar.setAttribute("aria-label", `${p.label}: ${percent(p.probability)}`);
  const fill = document.createElement("span");
  // A CSSOM property, not a style="" attribute: allowed by the page's style-src 'self'.
  fill.style.width = `${Math.max(0, Math.min(100, Number(p.probability) * 100))}%`;
  bar.append(fill);
  li.append(label, value, bar);
  return li;
}

function renderDialog(image, pictureChanged = true) {
  $("image-title").textContent = imageTitle(image);
  const pic = $("image-picture");
  pic.onerror = () => pic.removeAttribute("src"); // no picture to show (e.g. not an image at all)
  const url = pictureUrl(image);
  if (pictureChanged || !pic.getAttribute("src")) {
    if (url) pic.src = url;
    else pic.removeAttribute("src");
  }
  pic.alt = imageTitle(image);
  $("image-caption").textContent = image.caption && image.caption !== image.title ? image.caption : "";
  setBadge($("image-status"), image.status);
  $("image-error").textContent = image.status === "FAILED" ? image.error || "Processing failed." : "";

  const predictions = image.predictions || [];
  $("predictions-section").hidden = predictions.length === 0;
  $("predictions").replaceChildren(...predictions.map(predictionItem));

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
    details.append(element("dt", { text: term }),
      element("dd", { text: value, testid: term === "Model" ? "image-model-version" : "" }));
  }

  const original = $("image-original");
  original.hidden = !image.imageUrl || image.status === "AWAITING_UPLOAD";
  if (image.imageUrl) original.href = image.imageUrl;
  const user = currentUser();
  const mine = Boolean(user) && image.owner === user;
  $("delete-image").hidden = !mine;
  $("reprocess-image").hidden = !mine || image.status === "AWAITING_UPLOAD";
}

export function openDialog(image) {
  shown = image;
  renderDialog(image);
  const dialog = $("image-dialog");
  if (!dialog.open) {
    lastFocus = document.activeElement;
    dialog.showModal();
    $("image-close").focus();
  }
  document.title = `${imageTitle(image)} · Udagram`;
  if (!isFinal(image.status)) watchImage(image.id);
}

// A fresh copy of an image: shown if it is the one in the dialog (the picture swapped only
// when its status changed: presigned URLs differ on every read).
export function updateDialog(image) {
  if (!shown || shown.id !== image.id) return;
  const changed = shown.status !== image.status;
  shown = image;
  renderDialog(image, changed);
}

export function closeDialog() {
  const dialog = $("image-dialog");
  shown = null;
  if (dialog.open) dialog.close();
}

function closeDialogAndReturn() {
  const dialog = $("image-dialog");
  if (dialog.open) dialog.close(); // fires "close" -> onDialogClosed
}

// The dialog closed (Escape, close button, backdrop): go back to the group's address.
function onDialogClosed() {
  const image = shown;
  shown = null;
  $("dialog-messages").replaceChildren();
  if (view.group) document.title = `${view.group.name} · Udagram`;
  if (image && parseRoute().name === "image") {
    location.hash = groupHref(image.groupId);
  }
  const card = image && cardFor(image.id);
  const target = (card && card.querySelector(".card-link")) || lastFocus;
  if (target && document.contains(target)) target.focus();
}

async function deleteImage() {
  const image = shown;
  if (!image) return;
  if (!confirm(`Delete “${imageTitle(image)}”? This cannot be undone.`)) return;
  const button = $("delete-image");
  button.disabled = true;
  try {
    unwrap((await gql(Q.deleteImage, { id: image.id })).deleteImage);
    unwatchImage(image.id);
    const li = cardFor(image.id);
    if (li) li.remove();
    if (view.group && view.group.id === image.groupId) {
      view.group.ids.delete(image.id);
      countImages(view.group, -1);
      renderEmptyNote();
    }
    closeDialog(); // first: a message shown while the dialog is open lives inside it
    location.hash = groupHref(image.groupId);
    showMessage(`Image “${imageTitle(image)}” deleted.`, "info");
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

export function setUpDialog() {
  const dialog = $("image-dialog");
  $("image-close").addEventListener("click", closeDialogAndReturn);
  $("delete-image").addEventListener("click", deleteImage);
  dialog.addEventListener("close", onDialogClosed);
  dialog.addEventListener("click", (e) => {
    if (e.target === dialog) closeDialogAndReturn(); // a click on the backdrop
  });
  onAuthChange(() => {
    if (shown) renderDialog(shown);
  });
}
