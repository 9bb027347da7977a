// Lists filled a page at a time from a GraphQL connection ("Load more ..."): the first page
// replaces what is shown, later ones are appended. A node already shown is skipped (newer items
// push older ones onto the next page while the user reads). `shown` is the list's { ids, cursor }.
export function showPage(list, shown, connection, card, more) {
  if (!more) {
    list.replaceChildren();
    shown.ids.clear();
  }
  for (const { node } of connection.edges) {
    if (shown.ids.has(node.id)) continue;
    shown.ids.add(node.id);
    list.append(card(node));
  }
  shown.cursor = connection.pageInfo.endCursor;
  return connection.pageInfo.hasNextPage; // whether to offer "Load more"
}
