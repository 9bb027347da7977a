// The page's elements are fixed in index.html: look them up by id.
export const $ = (id) => document.getElementById(id);

// A new element with its class, text and test id. Text goes in through textContent only (API data
// is never parsed as HTML).
export function element(tag, { className = "", text = null, testid = "" } = {}) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== null) el.textContent = text;
  if (testid) el.dataset.testid = testid;
  return el;
}
