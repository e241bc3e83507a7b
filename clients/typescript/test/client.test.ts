// The TypeScript client against the real `streamer-control-plane dev`
// server, started by these tests; broadcasts and server-side disconnects go
// through the real `streamerctl`.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { WebSocket } from "ws";
import { ChunkJoiner, splitMessage, StreamerClient, StreamerError, type Progress, type StreamReset } from "../src/index.js";

const devBin = process.env.STREAMER_DEV_BIN;
const ctlBin = process.env.STREAMER_CTL_BIN;
if (!devBin || !ctlBin) {
  throw new Error("set STREAMER_DEV_BIN and STREAMER_CTL_BIN to the built binaries (bash scripts/test.sh does)");
}

let dev: ChildProcess;
let wsUrl = "";
let grpc = "";
let token = "";
let adminToken = "";
const stateDir = mkdtempSync(join(tmpdir(), "streamer-ts-"));

before(async () => {
  dev = spawn(devBin, ["dev"], {
    env: {
      PATH: process.env.PATH ?? "",
      RUST_LOG: "warn",
      STREAMER_STATE_DIR: stateDir,
      STREAMER_GRPC_ADDR: "127.0.0.1:0",
      STREAMER_GATEWAY_ADDR: "127.0.0.1:0",
      STREAMER_CONSOLE_ADDR: "127.0.0.1:0",
      STREAMER_DEMO_DURATION_MS: "1600",
      STREAMER_CONNECTS_PER_MINUTE_PER_IP: "100000",
      STREAMER_MESSAGES_PER_MINUTE: "100000",
      STREAMER_MESSAGE_BURST: "10000",
      STREAMER_HISTORY: "group:room-*",
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: dev.stdout! });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("dev did not start in time")), 30_000);
    lines.on("line", (line) => {
      const wscat = line.match(/token=([^']+)'/);
      if (wscat) token = wscat[1];
      const exported = line.match(/STREAMER_TOKEN=([0-9a-f]+)/);
      if (exported) adminToken = exported[1];
      if (line.startsWith("STREAMER_DEV_READY ")) {
        const ready = JSON.parse(line.slice("STREAMER_DEV_READY ".length));
        wsUrl = `ws://${ready.gateway}/${ready.stage}`;
        grpc = ready.grpc;
        clearTimeout(timer);
        resolve();
      }
    });
    dev.on("exit", (code) => reject(new Error(`dev exited (${code})`)));
  });
  assert.ok(token && adminToken, "dev printed a client token and the admin token");
});

after(() => {
  dev.kill("SIGTERM");
  rmSync(stateDir, { recursive: true, force: true });
});

const exec = promisify(execFile);

async function ctl(...args: string[]): Promise<any> {
  const { stdout } = await exec(ctlBin!, [...args, "--output", "json"], {
    env: { STREAMER_ADDR: `http://${grpc}`, STREAMER_TOKEN: adminToken },
  });
  return JSON.parse(stdout);
}

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

/** A client token of `sub` (tenant dev) from dev's key, ending in `secs`. */
async function mint(sub: string, secs: number): Promise<string> {
  const { stdout } = await exec(ctlBin!, [
    "token",
    "--private-key",
    join(stateDir, "jwt-private.pem"),
    "--sub",
    sub,
    "--tenant",
    "dev",
    "--permission",
    "*",
    "--expires-in",
    String(secs),
    "--output",
    "json",
  ]);
  return JSON.parse(stdout).token;
}

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
