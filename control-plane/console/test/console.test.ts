// The console in a real browser (Debian's headless Chromium, driven by
// Playwright) against the real `dev`, with real WebSocket clients through
// dev's gateway. The screenshots in docs/console/ are taken here, so the
// README shows what the page really looks like.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Browser, Page } from "playwright-core";
import { Client, type Dev, READ_TOKEN, SERVICE_TENANT, SERVICE_TOKEN, clientToken, launch, startDev, stateDir, until } from "./harness.js";

const shots = process.env.STREAMER_CONSOLE_SCREENSHOTS ?? join(dirname(fileURLToPath(import.meta.url)), "../../../../docs/console");
mkdirSync(shots, { recursive: true });

const state = stateDir();
let dev: Dev;
let browser: Browser;

before(async () => {
  dev = await startDev(state);
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await dev?.stop();
  rmSync(state.dir, { recursive: true, force: true });
});

/** A new tab, signed in with `token` through the form. */
async function signedIn(token = dev.adminToken, width = 1280): Promise<Page> {
  const page = await browser.newPage({ viewport: { width, height: 900 } });
  page.on("pageerror", (err) => assert.fail(`the page threw: ${err.message}`));
  await page.goto(dev.consoleUrl);
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
  return page;
}

async function tab(page: Page, name: string): Promise<void> {
  await page.getByRole("navigation", { name: "Views" }).getByRole("button", { name, exact: true }).click();
}

async function setTenant(page: Page, tenant: string): Promise<void> {
  const field = page.locator("#tenant");
  await field.fill(tenant);
  await field.dispatchEvent("change");
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

test("a bad token is refused with a clear message, a good one signs in", async () => {
  const page = await browser.newPage();
  await page.goto(dev.consoleUrl);
  const error = page.locator("#signin-error");
  for (const [token, message] of [
    ["not-a-token-of-this-deployment", "That token was refused."],
    // A client's JWT is not a server token (an expired one even less so).
    [dev.sampleToken, "That token was refused."],
  ] as const) {
    await page.getByLabel("Token").fill(token);
    await page.getByRole("button", { name: "Sign in" }).click();
    await until("the refusal", async () => (await error.textContent()) === message);
  }
  assert.equal(await page.getByRole("button", { name: "Sign out" }).count(), 0, "not signed in");
  await page.getByLabel("Token").fill(dev.adminToken);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
  assert.equal(await page.locator("#who span").textContent(), "admin (admin)");
  await page.close();
});

test("dev's banner link signs in with the token in the fragment and takes it out of the address bar", async () => {
  const page = await browser.newPage();
  await page.goto(`${dev.consoleUrl}#token=${dev.adminToken}`);
  await page.getByRole("button", { name: "Sign out" }).waitFor();
  assert.ok(!page.url().includes(dev.adminToken), `token gone from ${page.url()}`);
  await page.close();
});

test("a connection appears when a client connects and disappears when it leaves", async () => {
  const page = await signedIn();
  await tab(page, "Connections");
  await setTenant(page, "t-live");
  await until("an empty list", async () => (await page.locator("#conn-summary").textContent())?.startsWith("0 connections"));
  const alice = await Client.open(dev, "t-live", "alice");
  const row = page.locator(`tr[data-connection-id="${alice.connectionId}"]`);
  await row.waitFor({ timeout: 10_000 });
  assert.equal(await row.locator("td").nth(1).textContent(), "alice");
  await row.getByRole("button", { name: /^Details/ }).click();
  await until("the details", async () => (await page.locator("#conn-details").textContent())?.includes("alice"));
  await shot(page, "connections");
  await alice.close();
  await row.waitFor({ state: "detached", timeout: 10_000 });
  await page.close();
});

test("disconnect from the list closes the client's socket", async () => {
  const page = await signedIn();
  const bob = await Client.open(dev, "t-kick", "bob");
  await tab(page, "Connections");
  await setTenant(page, "t-kick");
  const row = page.locator(`tr[data-connection-id="${bob.connectionId}"]`);
  await row.waitFor();
  page.once("dialog", (dialog) => void dialog.accept());
  await row.getByRole("button", { name: /^Disconnect/ }).click();
  await until("bob's socket closed", () => bob.ws.readyState === bob.ws.CLOSED);
  await row.waitFor({ state: "detached" });
  await page.close();
});

test("a message to a group from the form reaches a real client and the report says so", async () => {
  const carol = await Client.open(dev, "t-send", "carol");
  carol.send({ id: "j", action: "join", payload: { group: "team-1" } });
  await carol.next((f) => f.request_id === "j" && f.type === "response");
  const page = await signedIn();
  await tab(page, "Send");
  await setTenant(page, "t-send");
  await page.getByLabel("Send to").selectOption("group");
  await page.locator("#send-target").fill("team-1");
  const body = page.getByLabel("Body (JSON: the frame's data)");

  // Malformed JSON: said at once, and nothing can be sent.
  await body.fill('{"hello": ');
  await until("the JSON error", async () => (await page.locator("#send-body-error").textContent())?.includes("not valid JSON"));
  assert.ok(await page.locator("#send-submit").isDisabled());
  // Oversized: refused before any call.
  await body.fill(JSON.stringify({ blob: "x".repeat(1_100_000) }));
  await until("the size error", async () => (await page.locator("#send-body-error").textContent())?.includes("bytes"));
  assert.ok(await page.locator("#send-submit").isDisabled());

  await body.fill('{"hello": "team", "n": 1}');
  await page.getByLabel("Topic (optional)").fill("news");
  await page.locator("#send-submit").click();
  const delivered = page.locator('#report-table tr[data-outcome="delivered"] td');
  await until("the report", async () => (await delivered.textContent()) === "1");
  assert.equal(await page.locator('#report-table tr[data-outcome="targeted"] td').textContent(), "1");
  const message = await carol.next((f) => f.type === "message");
  assert.deepEqual(message.data, { hello: "team", n: 1 });
  assert.equal(message.topic, "news");
  await shot(page, "send");

  // A double submit (Enter pressed twice, a double click before the button
  // greys out) sends one key twice: the second is a replay and carol gets
  // the frame once. The next, edited send is a new message; frames to one
  // connection keep their order, so once it is here a copy of the first
  // would have been too.
  await body.fill('{"hello": "team", "n": 2}');
  await page.locator("#send-form").evaluate((form) => {
    (form as HTMLFormElement).requestSubmit();
    (form as HTMLFormElement).requestSubmit();
  });
  await until("both answered", async () => !(await page.locator("#send-submit").isDisabled()));
  await body.fill('{"hello": "team", "n": 3}');
  await page.locator("#send-submit").click();
  await carol.next((f) => f.type === "message" && f.data.n === 3);
  assert.equal(carol.frames.filter((f) => f.type === "message" && f.data.n === 2).length, 1, "the double submit delivered once");

  // The server's own refusal, shown as it says it: a bad group name.
  await page.locator("#send-target").fill("no spaces allowed");
  await page.locator("#send-submit").click();
  await until("the server's error", async () =>
    (await page.locator("#send-report").textContent())?.startsWith("InvalidArgument:"),
  );
  await carol.close();
  await page.close();
});

test("a request's progress bar reaches 100% and the result is shown", async () => {
  const dana = await Client.open(dev, "t-req", "dana");
  const page = await signedIn();
  await tab(page, "Requests");
  await setTenant(page, "t-req");
  dana.send({
    request_id: "report-1",
    action: "generate_report",
    payload: { start_date: "2024-01-01", end_date: "2024-01-31", format: "pdf", report_type: "monthly" },
  });
  const running = page.locator('#req-active-table tr[data-request-id="report-1"] progress');
  const seen = await until("progress under way", async () => {
    const value = Number(await running.getAttribute("value", { timeout: 500 }));
    return value > 0 && value < 100 ? value : undefined;
  });
  assert.ok(seen > 0);
  await shot(page, "requests");
  const finished = page.locator('#req-finished-table tr[data-request-id="report-1"]');
  await finished.waitFor({ timeout: 20_000 });
  assert.equal(await finished.getAttribute("data-status"), "completed");
  assert.equal(await finished.locator("progress").getAttribute("value"), "100");
  assert.ok((await finished.textContent())?.includes('"days": 31'), "the result is shown");
  await dana.next((f) => f.request_id === "report-1" && f.type === "complete");
  await dana.close();
  await page.close();
});

test("a running request is cancelled from the console", async () => {
  const erin = await Client.open(dev, "t-cancel", "erin");
  const page = await signedIn();
  await tab(page, "Requests");
  await setTenant(page, "t-cancel");
  erin.send({
    request_id: "report-2",
    action: "generate_report",
    payload: { start_date: "2024-01-01", end_date: "2024-12-31", format: "pdf", report_type: "annual" },
  });
  const row = page.locator('#req-active-table tr[data-request-id="report-2"]');
  await row.waitFor();
  await row.getByRole("button", { name: "Cancel report-2" }).click();
  await until("the cancellation", async () => (await page.locator("#req-message").textContent())?.includes("cancelled"));
  const finished = page.locator('#req-finished-table tr[data-request-id="report-2"]');
  await finished.waitFor({ timeout: 10_000 });
  assert.equal(await finished.getAttribute("data-status"), "cancelled");
  await erin.next((f) => f.request_id === "report-2" && f.type === "error");
  await erin.close();
  await page.close();
});

test("a tenant-bound token sees only its tenant, and the server refuses another", async () => {
  const mine = await Client.open(dev, SERVICE_TENANT, "frank");
  const other = await Client.open(dev, "t-other", "gina");
  const admin = await signedIn();
  await until("both tenants for the admin", async () => {
    const rows = await admin.locator("#tenant-table tr[data-tenant]").evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-tenant")));
    return rows.includes(SERVICE_TENANT) && rows.includes("t-other");
  });
  await admin.close();

  const page = await signedIn(SERVICE_TOKEN);
  assert.equal(await page.locator("#who span").textContent(), "acme-dashboard (service)");
  const tenants = await until("the tenant table", async () => {
    const rows = await page.locator("#tenant-table tr[data-tenant]").evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-tenant")));
    return rows.length > 0 ? rows : undefined;
  });
  assert.deepEqual(tenants, [SERVICE_TENANT]);
  assert.equal(await page.locator("#delivery").count(), 0, "no fleet-wide figures for a service token");
  assert.equal(await page.locator("#run-reconcile").count(), 0, "no admin job for a service token");
  await tab(page, "Connections");
  await page.locator(`tr[data-connection-id="${mine.connectionId}"]`).waitFor();
  await setTenant(page, "t-other");
  await until("the refusal", async () =>
    (await page.locator("#connections .view-error").textContent())?.includes("PermissionDenied"),
  );
  assert.equal(await page.locator(`tr[data-connection-id="${other.connectionId}"]`).count(), 0);
  // Its client-panel helper is bound the same way.
  const res = await page.evaluate(async (token) => {
    const r = await fetch("/console/dev/token", {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ tenant_id: "t-other", user_id: "x" }),
    });
    return r.status;
  }, SERVICE_TOKEN);
  assert.equal(res, 403);
  await mine.close();
  await other.close();
  await page.close();
});

test("the client panel: echo, a report's progress, a group with presence", async () => {
  const page = await signedIn();
  await tab(page, "Try it");
  await page.locator("#try-tenant").fill("dev");
  await page.locator("#try-user").fill("panel-user");
  await page.getByRole("button", { name: "Connect", exact: true }).click();
  await until("connected", async () => (await page.locator("#try-state").textContent())?.includes("connection "));
  await page.getByRole("button", { name: "Echo", exact: true }).click();
  await until("the echo", async () =>
    (await page.locator("#frames li.in").allTextContents()).some((t) => t.includes('"type":"response"') && t.includes('"hello":"world"')),
  );
  await page.getByRole("button", { name: "Start a report" }).click();
  await until("some progress", async () => {
    const value = Number(await page.locator("#try-progress").evaluate((p) => (p as HTMLProgressElement).value));
    return value > 0 && value < 100;
  });
  await until("the report at 100%", async () =>
    Number(await page.locator("#try-progress").evaluate((p) => (p as HTMLProgressElement).value)) === 100,
  20_000);
  await page.locator("#try-group").fill("room-7");
  await page.getByRole("button", { name: "Join", exact: true }).click();
  await until("joined", async () =>
    (await page.locator("#frames li.in").allTextContents()).some((t) => t.includes('"request_id":"join-')),
  );
  const hank = await Client.open(dev, "dev", "hank");
  hank.send({ id: "j", action: "join", payload: { group: "room-7" } });
  await until("hank's presence in the panel", async () =>
    (await page.locator("#frames li.in").allTextContents()).some((t) => t.includes('"type":"presence"') && t.includes('"user_id":"hank"')),
  );
  // Malformed input from the panel gets the server's clear error.
  await page.locator("#try-message").fill("{not json");
  await page.locator("#try-send").click();
  await until("the validation error", async () =>
    (await page.locator("#frames li.in").allTextContents()).some((t) => t.includes("VALIDATION_ERROR")),
  );
  await shot(page, "try-it");
  await tab(page, "Groups");
  await setTenant(page, "dev");
  await until("room-7 with two members", async () =>
    (await page.locator('#group-table tr[data-group="room-7"] td').nth(1).textContent()) === "2",
  );
  await hank.close();
  await page.close();
});

test("the overview charts connections and delivery, and runs the reconcile job", async () => {
  const clients = await Promise.all(["ivy", "jack", "kim"].map((u) => Client.open(dev, "t-over", u)));
  for (const c of clients) c.send({ id: "j", action: "join", payload: { group: "room-all" } });
  const page = await signedIn();
  const token = await clientToken(dev, "t-over", "x");
  assert.ok(token);
  // A few broadcasts so the delivery chart has something to show.
  await tab(page, "Send");
  await setTenant(page, "t-over");
  await page.getByLabel("Send to").selectOption("tenant");
  for (let i = 0; i < 3; i++) {
    await page.locator("#send-submit").click();
    await until("a report", async () => (await page.locator('#report-table tr[data-outcome="delivered"] td').textContent()) === "3");
    await page.locator("#send-report").evaluate((el) => el.replaceChildren());
  }
  await tab(page, "Overview");
  await until("t-over counted", async () =>
    (await page.locator('#tenant-table tr[data-tenant="t-over"] td').nth(1).textContent()) === "3",
  );
  await until("delivered counted", async () => /recipients delivered [1-9]/.test((await page.locator("#delivery-totals").textContent()) ?? ""));
  await page.getByRole("button", { name: "Run reconcile now" }).click();
  await until("the reconcile report", async () => (await page.locator("#reconcile-result").textContent())?.startsWith("Done"));
  await shot(page, "overview");
  await Promise.all(clients.map((c) => c.close()));
  await page.close();
});

test("the page says when the control plane goes away and recovers when it is back", async () => {
  const page = await signedIn();
  await page.locator("#tenant-table, #tenants p").first().waitFor();
  const addr = dev.ready.console;
  await dev.stop();
  const banner = page.locator("#status");
  await until("the outage banner", async () => (await banner.textContent())?.includes("cannot be reached"), 20_000);
  assert.ok(await banner.isVisible());
  dev = await startDev(state, addr);
  await until("the recovery", async () => (await banner.textContent())?.includes("again"), 20_000);
  const zoe = await Client.open(dev, "t-back", "zoe");
  await until("fresh data", async () => (await page.locator('#tenant-table tr[data-tenant="t-back"]').count()) === 1);
  await zoe.close();

  // Back with other tokens: the page's token is no longer accepted, and it
  // says so and asks for one, instead of retrying forever.
  await dev.stop();
  dev = await startDev(state, addr, { STREAMER_ADMIN_TOKEN: "a-new-admin-token-after-rotation" });
  await until("the sign-in form", async () =>
    (await page.locator("#signin-error").textContent())?.includes("no longer accepted"), 20_000);
  await page.getByLabel("Token").fill("a-new-admin-token-after-rotation");
  await page.keyboard.press("Enter");
  await page.getByRole("button", { name: "Sign out" }).waitFor();
  await page.close();
  // The rest of the file signs in with dev.adminToken: this one.
  dev.adminToken = "a-new-admin-token-after-rotation";
});

test("the console works from the keyboard", async () => {
  const page = await browser.newPage();
  await page.goto(dev.consoleUrl);
  // The token field has the focus on arrival; Enter signs in.
  await page.keyboard.type(dev.adminToken);
  await page.keyboard.press("Enter");
  await page.getByRole("button", { name: "Sign out" }).waitFor();
  // Tab through the views' buttons to "Requests" and open it with Enter.
  let focused = "";
  for (let i = 0; i < 10 && focused !== "Requests"; i++) {
    await page.keyboard.press("Tab");
    focused = await page.evaluate(() => document.activeElement?.textContent ?? "");
  }
  assert.equal(focused, "Requests", "the views are reachable with Tab");
  await page.keyboard.press("Enter");
  await until("the requests view", async () => page.locator("#requests").isVisible());
  // Every form control has a label.
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea")]
      .filter((el) => !(el as HTMLInputElement).labels?.length && !el.getAttribute("aria-label"))
      .map((el) => el.id),
  );
  assert.deepEqual(unlabelled, []);
  await page.close();
});

test("the page's headers keep it same-origin and unframed; unknown paths are 404", async () => {
  const res = await fetch(dev.consoleUrl);
  assert.equal(res.status, 200);
  const csp = res.headers.get("content-security-policy") ?? "";
  assert.ok(csp.includes("script-src 'self'") && csp.includes("frame-ancestors 'none'"), csp);
  assert.equal(res.headers.get("x-frame-options"), "DENY");
  const script = await fetch(`${dev.consoleUrl}assets/app.js`, { headers: { "accept-encoding": "gzip" } });
  assert.equal(script.headers.get("content-encoding"), "gzip", "the script goes compressed");
  assert.ok((await script.text()).length > 100_000, "and unpacks to the bundle");
  assert.equal((await fetch(`${dev.consoleUrl}assets/../../etc/passwd`)).status, 404);
  assert.equal((await fetch(`${dev.consoleUrl}nothing-here`)).status, 404);
  // The client-panel helper: no token, a foreign token, junk.
  const post = (headers: Record<string, string>, body: string) =>
    fetch(`${dev.consoleUrl}console/dev/token`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
  assert.equal((await post({}, '{"tenant_id":"dev","user_id":"u"}')).status, 401);
  assert.equal((await post({ authorization: "Bearer foreign-token-0000000000" }, '{"tenant_id":"dev","user_id":"u"}')).status, 401);
  assert.equal((await post({ authorization: `Bearer ${dev.adminToken}` }, "{junk")).status, 400);
  assert.equal((await post({ authorization: `Bearer ${dev.adminToken}` }, '{"tenant_id":"bad tenant!","user_id":"u"}')).status, 400);
  assert.equal((await post({ authorization: `Bearer ${dev.adminToken}` }, JSON.stringify({ tenant_id: "dev", user_id: "u".repeat(10_000) }))).status, 413);
});

test("a read operator is named, sees everything and is offered no change", async () => {
  const client = await Client.open(dev, "t-read", "rita");
  const page = await signedIn(READ_TOKEN);
  assert.equal(await page.locator("#who span").textContent(), "olivia (read)");
  const views = await page.getByRole("navigation", { name: "Views" }).getByRole("button").allTextContents();
  assert.ok(!views.includes("Send"), `no Send view: ${views}`);
  assert.equal(await page.locator("#run-reconcile").count(), 0, "no reconcile button");
  await setTenant(page, "t-read");
  await tab(page, "Connections");
  await page.locator(`tr[data-connection-id="${client.connectionId}"]`).waitFor();
  assert.equal(await page.getByRole("button", { name: `Disconnect ${client.connectionId}` }).count(), 0);
  // The server refuses it anyway: a change through gRPC-Web is PermissionDenied.
  const api = await page.evaluate(async ([id, token]) => {
    const r = await fetch("/streamer.v1.ConnectionService/DisconnectConnection", {
      method: "POST",
      headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", authorization: `Bearer ${token}` },
      body: new Uint8Array([0, 0, 0, 0, 2 + id.length, 10, id.length, ...new TextEncoder().encode(id)]),
    });
    return r.headers.get("grpc-status") ?? (await r.text());
  }, [client.connectionId, READ_TOKEN]);
  assert.match(String(api), /7|permission/i);
  await client.close();
  await page.close();
});
