// Udagram web page: plain JavaScript modules, no build step.
// Talks to the GraphQL API at /graphql; uploads go straight to S3 with the presigned POST the API
// returns. Every piece of API data reaches the page through textContent / attributes, never HTML.
import { startAuth } from "./auth.js";
import { showError } from "./messages.js";
import { setUpGroup } from "./group.js";
import { setUpGroups } from "./groups.js";
import { setUpDialog } from "./image-dialog.js";
import { setUpImageUpdates } from "./image-updates.js";
import { startRouter } from "./router.js";
import { setUpSearch } from "./search.js";
import { setUpUpload } from "./upload.js";

setUpGroups();
setUpGroup();
setUpUpload();
setUpDialog();
setUpImageUpdates();
setUpSearch();
startAuth().catch(showError); // restores a kept session (or finishes a sign-in): the views re-render for its user
startRouter();
