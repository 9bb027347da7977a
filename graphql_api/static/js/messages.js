// Notifications in an aria-live region: errors stay until dismissed, confirmations fade after 5 s.
import { $ } from "./dom.js";

export function showMessage(text, kind = "error") {
  // The page behind a modal dialog is inert: while the image dialog is open, messages show inside it.
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

export const showError = (err) => showMessage(err && err.message ? err.message : String(err), "error");
