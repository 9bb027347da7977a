// The page's addresses: #/ (groups), #/groups/<id>, #/images/<id> (the image dialog over its group),
// #/search/<label>[?min=<percent>] (images with a label).
export const groupHref = (id) => `#/groups/${encodeURIComponent(id)}`;
export const imageHref = (id) => `#/images/${encodeURIComponent(id)}`;
export const searchHref = (label, min = 0) => `#/search/${encodeURIComponent(label)}${min ? `?min=${min}` : ""}`;

export function parseRoute() {
  const hash = location.hash || "#/";
  let m = hash.match(/^#\/groups\/([^/?#]+)$/);
  if (m) return { name: "group", id: decodeURIComponent(m[1]) };
  m = hash.match(/^#\/images\/([^/?#]+)$/);
  if (m) return { name: "image", id: decodeURIComponent(m[1]) };
  m = hash.match(/^#\/search\/([^/?#]+)(?:\?min=(\d{1,2}))?$/);
  if (m) return { name: "search", label: safeDecode(m[1]), min: Number(m[2] || 0) };
  return { name: "groups" };
}

function safeDecode(text) {
  try {
    return decodeURIComponent(text);
  } catch (e) {
    return text; // a hand-typed address with a stray "%": search for it as typed
  }
}
