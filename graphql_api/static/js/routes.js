// The page's addresses: #/ (groups), #/groups/<id>, #/images/<id> (the image dialog over its group).
export const groupHref = (id) => `#/groups/${encodeURIComponent(id)}`;
export const imageHref = (id) => `#/images/${encodeURIComponent(id)}`;

export function parseRoute() {
  const hash = location.hash || "#/";
  let m = hash.match(/^#\/groups\/([^/?#]+)$/);
  if (m) return { name: "group", id: decodeURIComponent(m[1]) };
  m = hash.match(/^#\/images\/([^/?#]+)$/);
  if (m) return { name: "image", id: decodeURIComponent(m[1]) };
  return { name: "groups" };
}
