// The console in Firefox (Debian's firefox-esr, headless), driven over
// WebDriver BiDi, the W3C protocol Firefox serves itself: Playwright drives
// only its own patched Firefox, which cannot be downloaded here. A smoke
// test of what differs between engines: the module script runs, gRPC-Web
// calls work over fetch, the WebSocket client panel works.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { WebSocket } from "ws";
import { Client, type Dev, startDev, stateDir, until } from "./harness.js";

const firefoxPath = process.env.STREAMER_FIREFOX ?? "/usr/bin/firefox-esr";
if (!existsSync(firefoxPath)) {
  throw new Error(`no Firefox at ${firefoxPath}: bash scripts/test.sh installs Debian's firefox-esr package`);
}

/** Just enough of a WebDriver BiDi client: one tab, evaluate scripts in it. */
class Firefox {
  private next = 0;
  private readonly pending = new Map<number, (m: any) => void>();
  context = "";

  private constructor(
    readonly proc: ChildProcess,
    readonly ws: WebSocket,
    readonly profile: string,
  ) {
    ws.on("message", (data) => {
      const message = JSON.parse(String(data));
      const resolve = this.pending.get(message.id);
      if (resolve) {
        this.pending.delete(message.id);
        resolve(message);
      }
    });
  }

  static async launch(): Promise<Firefox> {
    const profile = mkdtempSync(join(tmpdir(), "streamer-firefox-"));
    const proc = spawn(firefoxPath, ["--headless", "--no-remote", "--profile", profile, "--remote-debugging-port", "0"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("Firefox did not open WebDriver BiDi in time")), 30_000);
      const look = (data: Buffer) => {
        const found = String(data).match(/WebDriver BiDi listening on (ws:\/\/\S+)/);
        if (found) {
          clearTimeout(timer);
          resolve(found[1]);
        }
      };
      proc.stdout!.on("data", look);
      proc.stderr!.on("data", look);
      proc.on("exit", (code) => reject(new Error(`Firefox exited (${code})`)));
    });
    const ws = new WebSocket(`${url}/session`);
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    const firefox = new Firefox(proc, ws, profile);
    await firefox.call("session.new", { capabilities: {} });
    const tree = await firefox.call("browsingContext.getTree", {});
    firefox.context = tree.contexts[0].context;
    return firefox;
  }

  async call(method: string, params: object): Promise<any> {
    const id = ++this.next;
    const answer = new Promise<any>((resolve) => this.pending.set(id, resolve));
    this.ws.send(JSON.stringify({ id, method, params }));
    const message = await answer;
    if (message.type === "error") throw new Error(`${method}: ${message.error}: ${message.message}`);
    return message.result;
  }

  async goto(url: string): Promise<void> {
    await this.call("browsingContext.navigate", { context: this.context, url, wait: "complete" });
  }

  /** The value of `expression` (a string, number or boolean) in the page. */
  async eval(expression: string): Promise<unknown> {
    const out = await this.call("script.evaluate", { expression, target: { context: this.context }, awaitPromise: true });
    if (out.type === "exception") throw new Error(`page: ${out.exceptionDetails?.text}`);
    return out.result?.value;
  }

  async close(): Promise<void> {
    this.ws.close();
    this.proc.kill();
    await new Promise((resolve) => this.proc.once("exit", resolve));
    rmSync(this.profile, { recursive: true, force: true });
  }
}

const state = stateDir();
let dev: Dev;
let firefox: Firefox;

before(async () => {
  dev = await startDev(state);
  firefox = await Firefox.launch();
});

after(async () => {
  await firefox?.close();
  await dev?.stop();
  rmSync(state.dir, { recursive: true, force: true });
});

const text = (selector: string) => `document.querySelector(${JSON.stringify(selector)})?.textContent ?? ""`;
const click = (selector: string) => `(document.querySelector(${JSON.stringify(selector)}).click(), true)`;

test("in Firefox: sign in, live connections over gRPC-Web, the client panel's WebSocket", async () => {
  const agent = String(await firefox.eval("navigator.userAgent"));
  assert.match(agent, /Firefox\//);
  await firefox.goto(`${dev.consoleUrl}#token=${dev.adminToken}`);
  await until("signed in", async () => (await firefox.eval(text("#who span"))) === "admin (admin)");

  const ada = await Client.open(dev, "t-firefox", "ada");
  await until("ada's tenant in the overview", async () =>
    String(await firefox.eval(text('#tenant-table tr[data-tenant="t-firefox"]'))).includes("1"),
  );

  await firefox.eval(click('nav button[data-view="tryit"]'));
  await firefox.eval(click("#try-connect"));
  await until("the panel connected", async () => String(await firefox.eval(text("#try-state"))).includes("connection "));
  await firefox.eval(click("#try-echo"));
  await until("the echo", async () =>
    Boolean(
      await firefox.eval(
        `[...document.querySelectorAll("#frames li.in")].some((li) => li.textContent.includes('"hello":"world"'))`,
      ),
    ),
  );
  await ada.close();
});
