// What the web page uses of oidc-client-ts: bundled by `npm run build-web` (esbuild) into
// graphql_api/static/vendor/oidc-client-ts.js, one ES module with no bare imports.
export { Log, UserManager, WebStorageStateStore } from "oidc-client-ts";
