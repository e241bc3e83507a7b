// The TypeScript client against the real `streamer-control-plane dev`
// server, started by these tests; broadcasts and server-side disconnects go
// through the real `streamerctl`.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { WebSocket } from "ws";
import { ChunkJoiner, splitMessage, StreamerClient, StreamerError, type Progress, type StreamReset } from "../src/index.js";
import { type Dev, startDev } from "./dev.js";

let dev: Dev;
let wsUrl = "";
let token = "";

before(async () => {
  dev = await startDev();
  ({ wsUrl, token } = dev);
});

after(() => dev.stop());

const ctl = (...args: string[]) => dev.ctl(...args);
const mint = (sub: string, secs: number) => dev.mint(sub, secs);

function client(): StreamerClient {
  return new StreamerClient(wsUrl, { token, WebSocket, minReconnectDelayMs: 50, maxReconnectDelayMs: 400 });
}

const report = { start_date: "2024-01-01", end_date: "2024-01-31", format: "pdf", report_type: "monthly" };

test("request / response", async () => {
  const c = client();
  assert.deepEqual(await c.request("echo", { hello: "ts" }), { hello: "ts" });
  const who = (await c.request("whoami")) as Record<string, unknown>;
  assert.equal(who.user_id, "dev-user");
  assert.equal(who.tenant_id, "dev");
  c.close();
});

test("async request with progress", async () => {
  const c = client();
  const progress: Progress[] = [];
  const result = (await c.request("generate_report", report, {
    onProgress: (p) => progress.push(p),
  })) as Record<string, unknown>;
  assert.equal(result.days, 31);
  assert.ok(progress.length >= 2, `several progress frames, got ${progress.length}`);
  const percentages = progress.map((p) => p.percentage);
  assert.deepEqual([...percentages].sort((a, b) => a - b), percentages, "in order");
  assert.equal(percentages.at(-1), 100);
  c.close();
});

test("a message over 32 KB is cut into chunk frames that each fit and join back", () => {
  const text = JSON.stringify({ id: "r1", action: "echo", payload: { s: "é漢🎉\"\\\n\u0001".repeat(20_000) } });
  const frames = splitMessage(text, "r1");
  assert.ok(frames.length > 1);
  const pieces: string[] = [];
  for (const frame of frames) {
    assert.ok(new TextEncoder().encode(frame).length <= 32_000, "each frame fits in 32,000 bytes");
    const parsed = JSON.parse(frame);
    assert.equal(parsed.action, "chunk");
    assert.equal(parsed.id, "r1");
    pieces[parsed.payload.index] = parsed.payload.data;
  }
  assert.equal(pieces.join(""), text);
  assert.deepEqual(splitMessage("{}", "r2"), ["{}"], "a message that fits goes whole");

  // Server chunk frames of two frames, interleaved and out of order.
  const joiner = new ChunkJoiner();
  const piece = (id: string, index: number, data: string) => ({ type: "chunk", chunk_id: id, index, count: 2, data });
  assert.equal(joiner.add(piece("a", 1, "2}")), undefined);
  assert.equal(joiner.add(piece("b", 0, '{"b":')), undefined);
  assert.equal(joiner.add(piece("a", 1, "dup")), undefined, "a repeated piece is ignored");
  assert.equal(joiner.add(piece("a", 0, '{"a":')), '{"a":2}');
  assert.equal(joiner.add(piece("b", 1, "3}")), '{"b":3}');
  assert.equal(joiner.pending, 0);
});

test("a 2 MB report and a 500 KB message arrive whole through the gateway", async () => {
  const c = client();
  const big = { start_date: "2019-01-01", end_date: "2025-12-31", format: "csv", report_type: "annual", include_data: true };
  const result = (await c.request("generate_report", big)) as { days: number; data: string };
  assert.ok(result.data.length > 2_000_000, `2 MB of rows, got ${result.data.length}`);
  const lines = result.data.trimEnd().split("\n");
  assert.equal(lines.length, result.days * 24 + 1, "every row");
  assert.equal(lines[0], "hour,region,amount,orders");
  for (const i of [0, 1, 12_345, result.days * 24 - 1]) {
    const cents = (i * 7919) % 100_000;
    const hour = new Date(Date.UTC(2019, 0, 1) + i * 3_600_000).toISOString().slice(0, 19);
    const expected = `${hour}Z,region-${i % 7},${Math.floor(cents / 100)}.${String(cents % 100).padStart(2, "0")},${i % 1000}`;
    assert.equal(lines[i + 1], expected, `row ${i}`);
  }
  const blob = Array.from({ length: 500_000 }, (_, i) => String.fromCharCode(97 + (i % 26))).join("");
  const echoed = (await c.request("echo", { blob, quote: '"é漢🎉\\' })) as { blob: string; quote: string };
  assert.equal(echoed.blob, blob);
  assert.equal(echoed.quote, '"é漢🎉\\');
  c.close();
});

test("a client that refuses chunks is told PAYLOAD_TOO_LARGE", async () => {
  const c = new StreamerClient(wsUrl, { token, WebSocket, chunks: false });
  const big = { start_date: "2019-01-01", end_date: "2025-12-31", format: "csv", report_type: "annual", include_data: true };
  await assert.rejects(c.request("generate_report", big), (error: unknown) => {
    assert.ok(error instanceof StreamerError);
    assert.equal(error.code, "PAYLOAD_TOO_LARGE");
    return true;
  });
  c.close();
});

test("typed errors carry the server's code", async () => {
  const c = client();
  await assert.rejects(c.request("no_such_action", {}), (error: unknown) => {
    assert.ok(error instanceof StreamerError);
    assert.equal(error.code, "INVALID_ACTION");
    assert.ok(error.requestId);
    return true;
  });
  await assert.rejects(c.request("generate_report", { format: "docx" }), (error: unknown) => {
    assert.ok(error instanceof StreamerError);
    return error.code === "VALIDATION_ERROR";
  });
  c.close();
});

test("broadcasts arrive as message events", async () => {
  const c = client();
  await c.connect();
  const received = new Promise<unknown>((resolve) => c.on("message", (m) => resolve(m.data)));
  const sent = await ctl("send", "--tenant", "dev", "--data", JSON.stringify({ hello: "everyone" }));
  assert.ok(sent.delivered >= 1);
  assert.deepEqual(await received, { hello: "everyone" });
  c.close();
});

test("after the server drops the connection, it reconnects and the progress continues", async () => {
  const c = client();
  let opens = 0;
  c.on("open", () => opens++);
  const me = (await c.request("whoami")) as { connection_id: string };
  const progress: Progress[] = [];
  let dropped = false;
  let afterDrop = 0;
  const done = c.request("generate_report", report, {
    onProgress: (p) => {
      progress.push(p);
      if (dropped) afterDrop++;
      if (!dropped) {
        dropped = true;
        ctl("connections", "disconnect", me.connection_id).catch(() => {});
      }
    },
  });
  const result = (await done) as Record<string, unknown>;
  assert.equal(result.report_type, "monthly");
  assert.ok(opens >= 2, `reconnected (opens: ${opens})`);
  assert.ok(afterDrop >= 1, "progress continued after the reconnect");
  assert.equal(progress.at(-1)?.percentage, 100);
  c.close();
});

test("aborting cancels the request on the server", async () => {
  const c = client();
  const controller = new AbortController();
  const id = `abort-${Date.now()}`;
  const pending = c.request("generate_report", report, {
    id,
    signal: controller.signal,
    onProgress: () => controller.abort(),
  });
  await assert.rejects(pending, (error: unknown) => error instanceof StreamerError && error.code === "CANCELLED");
  for (let i = 0; i < 100; i++) {
    const request = await ctl("requests", "get", "--tenant", "dev", id);
    if (request.status === "cancelled") {
      c.close();
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail("the request was not cancelled on the server");
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const between = (low: number, high: number) => low + Math.floor(Math.random() * (high - low));

test("five clients dropped twice each get all 500 broadcasts once, in order, by recovery", async () => {
  const group = `room-ts-${Date.now()}`;
  const stream = `group:${group}`;
  const total = 500;
  const clients = Array.from({ length: 5 }, () => client());
  const offsets: number[][] = clients.map(() => []);
  const data: unknown[][] = clients.map(() => []);
  const resets: StreamReset[] = [];
  const opens = clients.map(() => 0);
  clients.forEach((c, i) => {
    c.on("open", () => opens[i]++);
    c.on("message", (m) => {
      if (m.stream === stream) {
        offsets[i].push(m.offset!);
        data[i].push(m.data);
      }
    });
    c.on("reset", (r) => resets.push(r));
  });
  for (const c of clients) {
    const joined = await c.join(group);
    assert.equal(joined.stream, stream);
  }
  let sent = 0;
  const sender = async (who: number) => {
    for (let seq = 0; seq < total / 2; seq++) {
      const report = await ctl("send", "--tenant", "dev", "--group", group, "--data", JSON.stringify({ who, seq }));
      assert.equal(report.stream, stream);
      sent++;
    }
  };
  const until = async (count: number) => {
    while (sent < count) await sleep(5);
  };
  // Each client drops once on its side (a network blip) and is
  // disconnected once by the server, at random points of the stream.
  const drops = clients.map(async (c, i) => {
    await until(between(30, 200));
    (c as any).socket?.close(4001, "network blip");
    await until(between(250, 450));
    const me = (await c.request("whoami")) as { connection_id: string };
    await ctl("connections", "disconnect", me.connection_id);
    return i;
  });
  await Promise.all([sender(0), sender(1), ...drops]);
  for (let waited = 0; offsets.some((o) => o.length < total) && waited < 20_000; waited += 20) {
    await sleep(20);
  }
  const expected = Array.from({ length: total }, (_, i) => i + 1);
  offsets.forEach((o, i) => assert.deepEqual(o, expected, `client ${i} saw every offset once, in order`));
  assert.deepEqual(resets, [], "nothing was lost beyond recovery");
  opens.forEach((n, i) => assert.ok(n >= 3, `client ${i} reconnected twice (opens: ${n})`));
  const bySender = data[0].map((d) => JSON.stringify(d));
  assert.equal(new Set(bySender).size, total, "data intact and distinct");
  data.forEach((d) => assert.deepEqual(d, data[0]));
  for (const c of clients) c.close();
});

test("told its token is ending, the client refreshes it and the connection outlives the old token", async () => {
  // The first token ends in 6 s (dev warns 60 s ahead: at once); every
  // later one in an hour.
  let calls = 0;
  const c = new StreamerClient(wsUrl, {
    token: async () => mint("refresher", ++calls === 1 ? 6 : 3600),
    WebSocket,
    minReconnectDelayMs: 50,
  });
  let reconnected = false;
  c.on("reconnecting", () => {
    reconnected = true;
  });
  const refreshed = new Promise<{ expiresAt?: string; error?: StreamerError }>((resolve) => c.on("refreshed", resolve));
  assert.deepEqual(await c.request("echo", 1), 1);
  const outcome = await refreshed;
  assert.equal(outcome.error, undefined, String(outcome.error));
  assert.ok(outcome.expiresAt, "the server said the new end");
  // Past the first token's end, the same connection still answers.
  await new Promise((resolve) => setTimeout(resolve, 7_000));
  assert.deepEqual(await c.request("echo", 2), 2);
  assert.equal(reconnected, false, "never reconnected: the connection outlived its first token");
  c.close();
});
