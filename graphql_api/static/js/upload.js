// Adding an image to the group on screen: the file checks, createImage, then the multipart POST
// straight to S3 with the presigned fields the API returned (with progress), and drag and drop.
import { gql, unwrap } from "./api.js";
import { $ } from "./dom.js";
import { ApiError } from "./errors.js";
import { formatBytes, setBadge } from "./format.js";
import { countImages, renderEmptyNote } from "./group.js";
import { cardFor, dropPreview, imageCard, setPreview, updateImageCard } from "./image-cards.js";
import { showError, showMessage } from "./messages.js";
import { watchImage } from "./live.js";
import { Q } from "./queries.js";
import { view } from "./view.js";

const ACCEPTED_TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"];
// Browsers leave File.type empty for some files; fall back on the extension.
const TYPE_BY_EXTENSION = {
  jpg: "image/jpeg", jpeg: "image/jpeg", jfif: "image/jpeg", png: "image/png",
  webp: "image/webp", gif: "image/gif", bmp: "image/bmp",
};
const DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024; // the API's default (settings.max_upload_bytes)

const uploads = { maxBytes: DEFAULT_MAX_UPLOAD_BYTES, selectedFile: null, inFlight: 0 };

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
  if (file.size > uploads.maxBytes) {
    return `“${file.name}” is ${formatBytes(file.size)}; the limit is ${formatBytes(uploads.maxBytes)}.`;
  }
  return null;
}

function setMaxUploadBytes(bytes) {
  uploads.maxBytes = bytes;
  $("upload-hint").textContent = `JPEG, PNG, WebP, GIF or BMP, up to ${formatBytes(bytes)}.`;
}

function selectFile(file) {
  uploads.selectedFile = null;
  $("upload-chosen").textContent = "";
  $("upload-button").disabled = true;
  if (!file) return;
  const problem = checkFile(file);
  if (problem) {
    showMessage(problem);
    $("upload-file").value = "";
    return;
  }
  uploads.selectedFile = file;
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
    EntityTooLarge: `The file is larger than the ${formatBytes(uploads.maxBytes)} limit.`,
    AccessDenied: "The storage server refused the upload (the upload link may have expired). Please try again.",
  };
  return `Upload failed: ${known[code] || message || code || `storage server answered ${xhr.status}`}`;
}

async function uploadSelected(event) {
  event.preventDefault();
  const file = uploads.selectedFile;
  const group = view.group;
  if (!file || !group) return;
  const problem = checkFile(file);
  if (problem) return showMessage(problem);
  const caption = $("upload-caption").value.trim();
  const button = $("upload-button");
  button.disabled = true;
  let image = null;
  let li = null;
  let isNew = true;
  uploads.inFlight += 1;
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
    setPreview(image.id, file);
    const shown = cardFor(image.id); // (the group's live updates may have shown it already)
    isNew = !group.ids.has(image.id);
    li = imageCard(image);
    if (shown) shown.replaceWith(li);
    li.dataset.uploading = "true";
    setBadge(li.querySelector(".badge"), "UPLOADING");
    const bar = li.querySelector(".upload-progress");
    bar.hidden = false;
    bar.setAttribute("aria-label", `Uploading ${file.name}`);
    if (view.group === group) {
      group.ids.add(image.id);
      if (!shown) $("images-list").prepend(li);
      renderEmptyNote();
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
    if (isNew) countImages(group, +1);
    if (view.group === group) watchImage(image.id); // watched while its group is on screen
  } catch (e) {
    showError(e);
    if (image) {
      // Nothing half-made stays behind: drop the record whose upload failed.
      li && li.remove();
      if (group.ids.delete(image.id) && !isNew) countImages(group, -1); // (counted by the live update)
      dropPreview(image.id);
      renderEmptyNote();
      gql(Q.deleteImage, { id: image.id }).catch(() => {});
    }
  } finally {
    uploads.inFlight -= 1;
    button.disabled = !uploads.selectedFile;
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

export function setUpUpload() {
  setMaxUploadBytes(DEFAULT_MAX_UPLOAD_BYTES);
  $("upload-form").addEventListener("submit", uploadSelected);
  $("upload-file").addEventListener("change", (e) => selectFile(e.target.files[0] || null));
  setUpDropzone();
  // Leaving the page would cut an upload short: ask first.
  window.addEventListener("beforeunload", (e) => {
    if (uploads.inFlight > 0) e.preventDefault();
  });
}
