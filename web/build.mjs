// Builds the web page (docs/web.md) into jitbroker/static/, the folder the broker serves and the Functions
// package ships: app.js (web/src with MSAL.js from node_modules, one minified file), app.css, index.html and
// icon.svg copied as they are. Nothing is fetched at run time from anywhere but the broker and the authority.
//
//   npm run build            (make setup runs it after npm ci)
//   npm run build -- --dev   unminified, with an inline source map, for reading the bundle
import { build } from "esbuild";
import { copyFile, mkdir, readdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const web = dirname(fileURLToPath(import.meta.url));
const out = join(web, "..", "jitbroker", "static");
const dev = process.argv.includes("--dev");
const copied = ["index.html", "app.css", "icon.svg"];

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: [join(web, "src", "main.js")],
  outfile: join(out, "app.js"),
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["es2022"],
  minify: !dev,
  sourcemap: dev ? "inline" : false,
  legalComments: "eof",
  logLevel: "warning",
});
await Promise.all(copied.map((name) => copyFile(join(web, name), join(out, name))));
const built = (await readdir(out)).sort();
console.log(`web: built ${built.join(", ")} into jitbroker/static/`);
