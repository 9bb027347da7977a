// Shows the view the address names (routes.js) and follows the back button (hashchange).
import { gql } from "./api.js";
import { $ } from "./dom.js";
import { ApiError } from "./errors.js";
import { loadGroup, renderGroupOwnerControls } from "./group.js";
import { loadGroups } from "./groups.js";
import { closeDialog, openDialog } from "./image-dialog.js";
import { showError } from "./messages.js";
import { stopAllPolling } from "./polling.js";
import { Q } from "./queries.js";
import { parseRoute } from "./routes.js";
import { showSearch } from "./search.js";
import { view } from "./view.js";

function setView(name) {
  $("groups-view").hidden = name !== "groups";
  $("group-view").hidden = name !== "group";
  $("search-view").hidden = name !== "search";
  $("loading").hidden = name !== "loading";
}

async function route() {
  const seq = ++view.routeSeq;
  const r = parseRoute();
  try {
    if (r.name === "groups" || r.name === "search") {
      closeDialog();
      stopAllPolling();
      view.group = null;
      renderGroupOwnerControls();
      document.title = "Udagram";
      setView(r.name);
      await (r.name === "groups" ? loadGroups(seq) : showSearch(r, seq));
    } else if (r.name === "group") {
      closeDialog();
      if (view.group && view.group.id === r.id && !$("group-view").hidden) return;
      setView("loading");
      await loadGroup(r.id, seq);
      if (seq === view.routeSeq) {
        setView("group");
        $("main").focus({ preventScroll: true });
      }
    } else {
      const data = await gql(Q.image, { id: r.id });
      if (seq !== view.routeSeq) return;
      const image = data.image;
      if (!image) throw new ApiError("This image does not exist (it may have been deleted).", "NOT_FOUND");
      if (!view.group || view.group.id !== image.groupId || $("group-view").hidden) {
        setView("loading");
        await loadGroup(image.groupId, seq);
        if (seq !== view.routeSeq) return;
        setView("group");
      }
      openDialog(image);
    }
  } catch (e) {
    if (seq !== view.routeSeq) return;
    showError(e);
    if (r.name !== "groups" && $("group-view").hidden) {
      setView("groups");
      loadGroups(seq).catch(showError);
    }
  }
}

export function startRouter() {
  window.addEventListener("hashchange", route);
  route();
}
