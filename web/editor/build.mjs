// Bundles entry.js (CodeMirror 6, yjs, y-websocket, y-codemirror.next, the
// versions pinned in package-lock.json) into ../vendor/editor.bundle.js, an
// IIFE defining the global `TetherEditor`, and gathers the packages'
// licenses into ../vendor/editor.LICENSES.txt. tether serve embeds both.
//
//   cd web/editor && npm ci && npm run build
import { build } from "esbuild";
import { readFileSync, readdirSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";

const here = new URL(".", import.meta.url).pathname;
const out = join(here, "../vendor/editor.bundle.js");
const result = await build({
  entryPoints: [join(here, "entry.js")],
  bundle: true,
  minify: true,
  format: "iife",
  globalName: "TetherEditor",
  target: "es2020",
  legalComments: "none",
  metafile: true,
  outfile: out,
  banner: { js: "/* tether editor bundle: CodeMirror 6, yjs, y-websocket, y-codemirror.next (licenses: /vendor/editor.LICENSES.txt; rebuilt by web/editor/build.mjs) */" },
});

// Every package with a file in the bundle, with its version and license text.
const packages = new Map();
for (const input of Object.keys(result.metafile.inputs)) {
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input);
  if (m) packages.set(m[1], join(here, "node_modules", m[1]));
}
let text = "Packages bundled into editor.bundle.js, with their licenses.\n";
for (const [name, dir] of [...packages].sort()) {
  const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  const file = readdirSync(dir).find((f) => /^(licen[cs]e|copying)/i.test(f));
  text += `\n==== ${name}@${pkg.version} (${pkg.license}) ====\n`;
  text += file && existsSync(join(dir, file)) ? readFileSync(join(dir, file), "utf8").trim() + "\n" : `(no license file in the package; package.json says ${pkg.license})\n`;
}
writeFileSync(join(here, "../vendor/editor.LICENSES.txt"), text);
console.log(`${out}: ${readFileSync(out).length} bytes, ${packages.size} packages`);
