// Bundles web/oidc-client.js (oidc-client-ts and its one dependency, jwt-decode) into a single ES
// module the page imports: graphql_api/static/vendor/oidc-client-ts.js. Deterministic: the same
// locked packages give the same bytes (tests/graphql_api/test_web_vendor.py rebuilds and compares).
// Usage: node web/build.mjs [outfile]
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");
const outfile = resolve(process.argv[2] || resolve(root, "../../graphql_api/static/vendor/oidc-client-ts.js"));
const about = (name) => {
  const meta = JSON.parse(readFileSync(resolve(root, "node_modules", name, "package.json"), "utf8"));
  return `${meta.name} ${meta.version} (${meta.license})`;
};

await build({
  entryPoints: [resolve(here, "oidc-client.js")],
  bundle: true,
  format: "esm",
  target: "es2020",
  minify: true,
  legalComments: "eof",
  logLevel: "warning",
  banner: { js: `/* ${about("oidc-client-ts")}, ${about("jwt-decode")}: bundled by tools/node/web/build.mjs */` },
  outfile,
});
