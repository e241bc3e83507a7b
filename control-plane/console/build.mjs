// Bundles the console into dist/ (index.html, app.js, app.css), which the
// control plane embeds with include_bytes!. Deterministic: the same sources
// give the same bytes, so the test command can check the committed build.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, statSync } from "node:fs";

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
for (const file of ["index.html", "app.js", "app.css"]) {
  console.log(`dist/${file}: ${statSync(`dist/${file}`).size} bytes`);
}
