// Bundles the console into dist/ (index.html, app.js, app.css), which the
// control plane embeds with include_bytes!. Deterministic: the same sources
// give the same bytes, so the test command can check the committed build.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { constants, gzipSync } from "node:zlib";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome120", "firefox121", "safari17"],
  outfile: "dist/app.js",
  legalComments: "none",
  logLevel: "warning",
});
copyFileSync("src/index.html", "dist/index.html");
copyFileSync("src/app.css", "dist/app.css");
// Served to browsers that accept gzip (all of them): a third of the bytes.
// Node's gzip header carries no time or name, so the bytes are the same on
// every machine.
writeFileSync("dist/app.js.gz", gzipSync(readFileSync("dist/app.js"), { level: constants.Z_BEST_COMPRESSION }));
for (const file of ["index.html", "app.js", "app.js.gz", "app.css"]) {
  console.log(`dist/${file}: ${statSync(`dist/${file}`).size} bytes`);
}
