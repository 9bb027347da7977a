// Search by label: the header's search box, with suggestions from the labels that occur
// (`labels(prefix)`, asked for once typing pauses), and the results view (#/search/<label>):
// images newest first, "Load more results", and a minimum model confidence.
import { gql } from "./api.js";
import { $, element } from "./dom.js";
import { percent } from "./format.js";
import { imageCard } from "./image-cards.js";
import { showError, showMessage } from "./messages.js";
import { showPage } from "./pages.js";
import { IMAGE_FIELDS, PAGE_SIZE } from "./queries.js";
import { searchHref } from "./routes.js";
import { view } from "./view.js";

const SUGGEST_DELAY_MS = 200; // ask for suggestions once typing pauses this long
const SUGGESTIONS = 8;
// A page can come back short (the minimum confidence filters entries after DynamoDB read them):
// while nothing was found yet, read on this many pages before offering "Load more results".
const EMPTY_PAGES_READ_ON = 5;

const SEARCH = `query SearchImages($label: String!, $min: Float, $first: Int, $after: String) {
  searchImages(label: $label, minProbability: $min, first: $first, after: $after) {
    edges { node { ${IMAGE_FIELDS} } } pageInfo { hasNextPage endCursor } } }`;
const LABELS = `query Labels($prefix: String, $first: Int) { labels(prefix: $prefix, first: $first) { label count } }`;

const results = { label: "", min: 0, cursor: null, ids: new Set() };
const suggest = { timer: null, seq: 0, items: [], active: -1 };

// The index compares labels this way too (udagram/labels.py: NFKC, casefolded, spaces collapsed).
const normalise = (label) => String(label || "").normalize("NFKC").toLowerCase().split(/\s+/).filter(Boolean).join(" ");

// A result card: the image card, plus how sure the model is of the label searched for.
function resultCard(image) {
  const li = imageCard(image);
  const match = (image.predictions || []).find((p) => normalise(p.label) === normalise(results.label));
  if (match) {
    const line = document.createElement("p");
    line.className = "meta match";
    line.dataset.testid = "search-match";
    line.textContent = `${match.label}: ${percent(match.probability)}`;
    li.querySelector(".card-link").after(line);
  }
  return li;
}

function renderSummary() {
  const n = $("search-results").children.length;
  $("search-empty").hidden = n > 0;
  const sure = results.min ? `, the model at least ${results.min}% sure` : "";
  $("search-meta").textContent = `${n}${$("search-more").hidden ? "" : "+"} image${n === 1 ? "" : "s"}${sure}`;
}

async function loadResults(seq, more = false) {
  for (let pagesRead = 1; ; pagesRead += 1) {
    const data = await gql(SEARCH, {
      label: results.label, min: results.min / 100, first: PAGE_SIZE, after: more ? results.cursor : null,
    });
    if (seq !== view.routeSeq) return; // another view by now
    const list = $("search-results");
    const hasNextPage = showPage(list, results, data.searchImages, resultCard, more);
    $("search-more").hidden = !hasNextPage;
    more = true;
    if (!hasNextPage || list.children.length > 0 || pagesRead >= EMPTY_PAGES_READ_ON) break;
  }
  renderSummary();
}

// The view for #/search/<label>?min=<percent> (router.js shows the section).
export async function showSearch(route, seq) {
  results.label = route.label.trim();
  results.min = route.min;
  $("search-heading").textContent = `Images labelled “${results.label}”`;
  $("search-label").value = results.label;
  const choice = $("search-min");
  choice.value = String(results.min);
  if (choice.value !== String(results.min)) { // a hand-made address: offer its value too
    choice.append(new Option(`${results.min}% or more`, String(results.min)));
    choice.value = String(results.min);
  }
  document.title = `${results.label} · Udagram`;
  $("search-results").replaceChildren();
  $("search-meta").textContent = "";
  $("search-empty").hidden = true;
  $("search-more").hidden = true;
  try {
    await loadResults(seq);
  } catch (e) {
    if (seq === view.routeSeq) showError(e); // e.g. a label longer than the API accepts
  }
}

// ---- the search box ---------------------------------------------------------------------------

function setActive(index) {
  const options = $("search-suggestions").children;
  suggest.active = options.length ? (index + options.length) % options.length : -1;
  [...options].forEach((li, i) => li.setAttribute("aria-selected", String(i === suggest.active)));
  const active = options[suggest.active];
  const input = $("search-label");
  if (active) {
    input.setAttribute("aria-activedescendant", active.id);
    active.scrollIntoView({ block: "nearest" });
  } else {
    input.removeAttribute("aria-activedescendant");
  }
}

function closeSuggestions() {
  clearTimeout(suggest.timer);
  suggest.seq += 1; // an answer still on its way is not shown
  suggest.items = [];
  $("search-suggestions").hidden = true;
  $("search-suggestions").replaceChildren();
  $("search-label").setAttribute("aria-expanded", "false");
  setActive(-1);
}

function renderSuggestions(items) {
  suggest.items = items;
  const list = $("search-suggestions");
  list.replaceChildren(...items.map((item, i) => {
    const li = element("li", { testid: "search-suggestion" });
    li.id = `search-option-${i}`;
    li.setAttribute("role", "option");
    const label = element("span", { className: "label", text: item.label });
    const count = element("span", { className: "count", text: String(item.count) });
    count.setAttribute("aria-label", `${item.count} image${item.count === 1 ? "" : "s"}`);
    li.append(label, count);
    li.addEventListener("mousedown", (e) => e.preventDefault()); // keep the focus in the box
    li.addEventListener("click", () => search(item.label));
    return li;
  }));
  list.hidden = items.length === 0;
  $("search-label").setAttribute("aria-expanded", String(items.length > 0));
  setActive(-1);
}

async function fetchSuggestions(prefix) {
  const seq = ++suggest.seq;
  let found;
  try {
    found = (await gql(LABELS, { prefix, first: SUGGESTIONS })).labels;
  } catch (e) {
    return; // suggestions only help: a failure here leaves the box working as a plain search
  }
  if (seq === suggest.seq && $("search-label").value.trim() === prefix) renderSuggestions(found);
}

function onInput() {
  clearTimeout(suggest.timer);
  const prefix = $("search-label").value.trim();
  if (!prefix) return closeSuggestions();
  suggest.timer = setTimeout(() => fetchSuggestions(prefix), SUGGEST_DELAY_MS);
}

function onKeyDown(e) {
  const open = !$("search-suggestions").hidden;
  if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    if (!open) return;
    e.preventDefault();
    setActive(suggest.active + (e.key === "ArrowDown" ? 1 : -1));
  } else if (e.key === "Escape" && open) {
    e.preventDefault();
    closeSuggestions();
  }
}

function search(label) {
  closeSuggestions();
  const keepMin = results.label && normalise(results.label) === normalise(label) ? results.min : 0;
  location.hash = searchHref(label.trim(), keepMin);
}

function onSubmit(e) {
  e.preventDefault();
  const chosen = suggest.items[suggest.active];
  const label = chosen ? chosen.label : $("search-label").value.trim();
  if (!label) {
    showMessage("Type a label to search for, for example “tabby”.", "info");
    $("search-label").focus();
    return;
  }
  search(label);
}

export function setUpSearch() {
  const input = $("search-label");
  input.addEventListener("input", onInput);
  input.addEventListener("keydown", onKeyDown);
  $("search-form").addEventListener("submit", onSubmit);
  $("search-form").addEventListener("focusout", (e) => {
    if (!$("search-form").contains(e.relatedTarget)) closeSuggestions();
  });
  $("search-min").addEventListener("change", (e) => {
    location.hash = searchHref(results.label, Number(e.target.value));
  });
  $("search-more").addEventListener("click", () => loadResults(view.routeSeq, true).catch(showError));
}
