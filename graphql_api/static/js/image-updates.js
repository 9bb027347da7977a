// A fresh copy of an image (live, polled, or from a reprocess) updates its card and the open dialog;
// the owner queues an image again from the dialog or the "Retry" button of a failed card.
import { gql, unwrap } from "./api.js";
import { onAuthChange } from "./auth.js";
import { $ } from "./dom.js";
import { cardFor, dropPreview, renderRetries, updateImageCard } from "./image-cards.js";
import { dialogImageId, updateDialog } from "./image-dialog.js";
import { showError, showMessage } from "./messages.js";
import { onImageUpdate, watchImage } from "./live.js";
import { Q } from "./queries.js";

export function applyImageUpdate(image) {
  const li = cardFor(image.id);
  if (li && li.dataset.uploading !== "true") updateImageCard(li, image);
  updateDialog(image);
  // The processed picture has replaced the local preview everywhere: free it.
  if (image.status === "DONE") dropPreview(image.id);
}

async function reprocessImage(id, button) {
  if (!id) return;
  button.disabled = true;
  try {
    const updated = unwrap((await gql(Q.reprocessImage, { id })).reprocessImage);
    applyImageUpdate(updated);
    showMessage("Queued for processing again.", "info");
    watchImage(updated.id);
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

export function setUpImageUpdates() {
  onImageUpdate(applyImageUpdate);
  $("reprocess-image").addEventListener("click", (e) => reprocessImage(dialogImageId(), e.currentTarget));
  $("images-list").addEventListener("click", (e) => {
    const retry = e.target.closest("button.retry");
    if (retry) reprocessImage(retry.closest("li").dataset.id, retry);
  });
  onAuthChange(renderRetries);
}
