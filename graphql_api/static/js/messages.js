// Notifications in an aria-live region: errors stay until dismissed, confirmations fade after 5 s.
import { $, element } from "./dom.js";

export function showMessage(text, kind = "error") {
  // The page behind a modal dialog is inert: while the image dialog is open, messages show inside it.
  const box = $("image-dialog").open ? $("dialog-messages") : $("messages");
  const item = element("div", { className: `message ${kind}`, testid: kind === "error" ? "error-message" : "info-message" });
  item.setAttribute("role", kind === "error" ? "alert" : "status");
  const p = element("p", { text });
  const close = element("button", { className: "secondary", text: "Dismiss" });
  close.type = "button";
  close.setAttribute("aria-label", "Dismiss message");
  close.addEventListener("click", () => item.remove());
  item.append(p, close);
  box.append(item);
  while (box.children.length > 4) box.firstElementChild.remove();
  if (kind !== "error") setTimeout(() => item.remove(), 5000);
}

export const showError = (err) => showMessage(err && err.message ? err.message : String(err), "error");
