// How values are shown: dates, percentages, sizes, image titles and status badges.
const DATE_FORMAT = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const STATUS_LABELS = {
  AWAITING_UPLOAD: "Awaiting upload", PROCESSING: "Processing", DONE: "Done", FAILED: "Failed",
  UPLOADING: "Uploading",
};

export function formatDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : DATE_FORMAT.format(d);
}

export const percent = (p) => `${(Number(p) * 100).toFixed(1)}%`;
export const formatBytes = (n) => (n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(n % (1024 * 1024) ? 1 : 0)} MB` : `${Math.ceil(n / 1024)} KB`);
export const imageTitle = (image) => image.title || image.caption || "Untitled image";
export const imagesCountText = (n) => `${n} image${n === 1 ? "" : "s"}`;

export function setBadge(el, status, extra = "") {
  el.className = `badge status-${status}`;
  el.dataset.status = status;
  el.textContent = (STATUS_LABELS[status] || status) + extra;
}
