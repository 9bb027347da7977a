// Image cards in a group's grid, and the local previews shown while an upload is on its way.
import { currentUser } from "./auth.js";
import { $ } from "./dom.js";
import { imageTitle, setBadge } from "./format.js";
import { imageHref } from "./routes.js";

const previews = new Map(); // image id -> object URL of the local file just uploaded

export function setPreview(id, file) {
  previews.set(id, URL.createObjectURL(file));
}

export function dropPreview(id) {
  if (previews.has(id)) URL.revokeObjectURL(previews.get(id));
  previews.delete(id);
}

// The picture to show: the processed one once done, else the local file or the original.
export const pictureUrl = (image) =>
  image.status === "DONE" ? image.processedImageUrl : previews.get(image.id) || image.imageUrl;

export function imageCard(image) {
  const li = $("image-card-template").content.firstElementChild.cloneNode(true);
  li.dataset.id = image.id;
  li.dataset.createdAt = image.createdAt;
  li.querySelector(".card-link").href = imageHref(image.id);
  const img = li.querySelector("img");
  img.addEventListener("error", () => {
    // An image still awaiting its upload has no object yet: keep the placeholder.
    img.removeAttribute("src");
  });
  updateImageCard(li, image, true);
  return li;
}

export function cardFor(id) {
  return $("images-list").querySelector(`li[data-id="${CSS.escape(id)}"]`);
}

// Per-image retry, right on a failed card, for its owner.
function renderRetry(li) {
  const user = currentUser();
  li.querySelector(".retry").hidden = !(li.dataset.status === "FAILED" && user && li.dataset.owner === user);
}

export function renderRetries() {
  for (const li of $("images-list").children) renderRetry(li);
}

export function updateImageCard(li, image, first = false) {
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
    const url = pictureUrl(image);
    if (url) img.src = url;
  }
}
