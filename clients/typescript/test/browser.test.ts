// The TypeScript client in headless Chromium (the browser's own WebSocket,
// not `ws`) against the real `dev`: the token refresh it does by itself.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { type AddressInfo } from "node:net";
import { dirname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, chromium } from "playwright-core";
import { type Dev, startDev } from "./dev.js";

const executablePath = process.env.STREAMER_CHROMIUM ?? "/usr/bin/chromium";
if (!existsSync(executablePath)) {
  throw new Error(`no Chromium at ${executablePath}: bash scripts/test.sh installs Debian's chromium package (or set STREAMER_CHROMIUM)`);
}

// dist/src: the client's built modules, served to the page as they ship.
const built = join(dirname(fileURLToPath(import.meta.url)), "..", "src");

/** Where the page imports the client from (the server below). */
const CLIENT_MODULE = "/index.js";

let dev: Dev;
let browser: Browser;
let server: Server;
let origin = "";

before(async () => {
  dev = await startDev();
  server = createServer((req, res) => {
    const path = normalize(new URL(req.url ?? "/", "http://page").pathname);
    if (path === "/") {
      res.writeHead(200, { "content-type": "text/html" }).end("<!doctype html><title>client</title>");
      return;
    }
    const file = join(built, path);
    if (!file.startsWith(built + "/") || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": "text/javascript" }).end(readFileSync(file));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  browser = await chromium.launch({
    executablePath,
    // As root in a container Chromium needs --no-sandbox; the rest keep it
    // from calling out to the network.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  server?.close();
  dev?.stop();
});

test("in Chromium, told its token is ending, the client refreshes it and the connection outlives the old token", async () => {
  const page = await browser.newPage();
  page.on("pageerror", (error) => console.error("page error:", error));
  // The page asks the test for tokens: the first ends in 6 s (dev warns
  // 60 s ahead, so at once), every later one in an hour.
  let minted = 0;
  let firstEnds = 0;
  await page.exposeFunction("mintToken", async () => {
    minted += 1;
    if (minted === 1) firstEnds = Date.now() + 6_000;
    return dev.mint("browser-refresher", minted === 1 ? 6 : 3600);
  });
  await page.goto(origin + "/");
  const outcome = await page.evaluate(async ([wsUrl, clientModule]) => {
    const { StreamerClient } = await import(clientModule);
    const c = new StreamerClient(wsUrl, { token: () => (window as any).mintToken(), minReconnectDelayMs: 50 });
    (window as any).client = c;
    (window as any).reconnected = false;
    c.on("reconnecting", () => ((window as any).reconnected = true));
    const refreshed = new Promise<any>((resolve) => c.on("refreshed", resolve));
    const echoed = await c.request("echo", 1);
    const r = await Promise.race([refreshed, new Promise<any>((resolve) => setTimeout(() => resolve({ error: "no refresh within 15 s" }), 15_000))]);
    return { echoed, expiresAt: r.expiresAt ?? null, error: r.error ? String(r.error) : null };
  }, [dev.wsUrl, CLIENT_MODULE] as const);
  assert.equal(outcome.echoed, 1);
  assert.equal(outcome.error, null, "the refresh was accepted");
  assert.ok(outcome.expiresAt, "the server said the new end");
  assert.ok(minted >= 2, "the client asked for a second token by itself");

  // Past the first token's end (plus the server's one-second tick), the
  // same socket still answers and never reconnected.
  const wait = firstEnds + 1_500 - Date.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  const after = await page.evaluate(async () => {
    const c = (window as any).client;
    const echoed = await c.request("echo", 2);
    return { echoed, reconnected: (window as any).reconnected };
  });
  assert.equal(after.echoed, 2);
  assert.equal(after.reconnected, false, "never reconnected: the connection outlived its first token");
  await page.close();
});

test("in Chromium, a client holding a plain token is closed at the token's end", async () => {
  const page = await browser.newPage();
  // A string, not a function: nothing to refresh with, so the server ends
  // the socket when the 4-second token ends.
  const short = await dev.mint("browser-short", 4);
  const minted = Date.now();
  await page.goto(origin + "/");
  const closed = await page.evaluate(
    async ([wsUrl, token, clientModule]) => {
      const { StreamerClient } = await import(clientModule);
      const c = new StreamerClient(wsUrl, { token, minReconnectDelayMs: 60_000, maxReconnectDelayMs: 60_000 });
      const close = new Promise<number>((resolve) => c.on("close", () => resolve(Date.now())));
      await c.request("echo", 1);
      const at = await Promise.race([close, new Promise<number>((resolve) => setTimeout(() => resolve(-1), 15_000))]);
      c.close();
      return at;
    },
    [dev.wsUrl, short, CLIENT_MODULE] as const,
  );
  assert.notEqual(closed, -1, "the socket closed within 15 s");
  const after = closed - minted;
  assert.ok(after >= 3_000 && after < 9_000, `the socket closed at the token's end (${after} ms after minting a 4 s token)`);
  await page.close();
});
