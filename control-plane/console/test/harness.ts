// What the browser tests stand on: the real `streamer-control-plane dev`
// (its console embedded in the binary), Debian's Chromium driven by
// Playwright, and plain WebSocket clients through dev's gateway.

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium, type Browser } from "playwright-core";
import { WebSocket } from "ws";

export interface Ready {
  grpc: string;
  gateway: string;
  stage: string;
  console: string;
}

export interface Dev {
  proc: ChildProcess;
  ready: Ready;
  adminToken: string;
  /** The client token dev prints (user dev-user of tenant dev). */
  sampleToken: string;
  consoleUrl: string;
  stop(): Promise<void>;
}

const devBin = process.env.STREAMER_DEV_BIN;
if (!devBin) throw new Error("set STREAMER_DEV_BIN to the built streamer-control-plane (bash scripts/test.sh does)");

export const SERVICE_TOKEN = "acme-console-service-token-0001";
export const SERVICE_TENANT = "acme";
/** A named operator with the `read` role. */
export const READ_TOKEN = "olivia-console-read-token-0001";

/** A state folder and config shared by the dev processes of one file. */
export function stateDir(): { dir: string; config: string } {
  const dir = mkdtempSync(join(tmpdir(), "streamer-console-"));
  const config = join(dir, "streamer.toml");
  writeFileSync(
    config,
    `[[tokens.services]]\nname = "acme-dashboard"\ntoken = "${SERVICE_TOKEN}"\ntenant_id = "${SERVICE_TENANT}"\n` +
      `[[tokens.operators]]\nname = "olivia"\ntoken = "${READ_TOKEN}"\nrole = "read"\n`,
  );
  return { dir, config };
}

export async function startDev(
  state: { dir: string; config: string },
  consoleAddr = "127.0.0.1:0",
  extra: Record<string, string> = {},
): Promise<Dev> {
  const proc = spawn(devBin!, ["dev"], {
    env: {
      PATH: process.env.PATH ?? "",
      RUST_LOG: "warn",
      STREAMER_CONFIG: state.config,
      STREAMER_STATE_DIR: state.dir,
      STREAMER_GRPC_ADDR: "127.0.0.1:0",
      STREAMER_GATEWAY_ADDR: "127.0.0.1:0",
      STREAMER_CONSOLE_ADDR: consoleAddr,
      STREAMER_DEMO_DURATION_MS: "5000",
      STREAMER_PRESENCE_GROUPS: "room-*",
      STREAMER_CONNECTS_PER_MINUTE_PER_IP: "100000",
      STREAMER_MESSAGES_PER_MINUTE: "100000",
      STREAMER_MESSAGE_BURST: "10000",
      ...extra,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  let adminToken = "";
  let sampleToken = "";
  const lines = createInterface({ input: proc.stdout! });
  const ready = await new Promise<Ready>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("dev did not start in time")), 30_000);
    lines.on("line", (line) => {
      const admin = line.match(/#token=([0-9a-f]+)/);
      if (admin) adminToken = admin[1];
      const sample = line.match(/\?token=([^']+)'/);
      if (sample) sampleToken = sample[1];
      if (line.startsWith("STREAMER_DEV_READY ")) {
        clearTimeout(timer);
        resolve(JSON.parse(line.slice("STREAMER_DEV_READY ".length)) as Ready);
      }
    });
    proc.on("exit", (code) => reject(new Error(`dev exited (${code})`)));
  });
  adminToken = extra.STREAMER_ADMIN_TOKEN ?? adminToken;
  if (!ready.console || !adminToken || !sampleToken) throw new Error("dev printed no console address or tokens");
  const exited = new Promise<void>((resolve) => proc.on("exit", () => resolve()));
  return {
    proc,
    ready,
    adminToken,
    sampleToken,
    consoleUrl: `http://${ready.console}/`,
    async stop() {
      if (proc.exitCode === null) proc.kill("SIGTERM");
      await exited;
    },
  };
}

export async function launch(): Promise<Browser> {
  const executablePath = process.env.STREAMER_CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(executablePath)) {
    throw new Error(`no Chromium at ${executablePath}: bash scripts/test.sh installs Debian's chromium package`);
  }
  return chromium.launch({
    executablePath,
    // As root in a container Chromium needs --no-sandbox; the rest keep it
    // from calling out to the network (this machine's network is closed).
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Polls `check` until it returns a value other than undefined/false. */
export async function until<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A token for any user of any tenant, from dev through the console's helper. */
export async function clientToken(dev: Dev, tenant: string, user: string): Promise<string> {
  const res = await fetch(`${dev.consoleUrl}console/dev/token`, {
    method: "POST",
    headers: { authorization: `Bearer ${dev.adminToken}`, "content-type": "application/json" },
    body: JSON.stringify({ tenant_id: tenant, user_id: user }),
  });
  if (!res.ok) throw new Error(`token: HTTP ${res.status} ${await res.text()}`);
  return ((await res.json()) as { token: string }).token;
}

type Frame = Record<string, any>;

/** A WebSocket client of dev's gateway that keeps every frame. */
export class Client {
  readonly frames: Frame[] = [];
  connectionId = "";
  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data) => this.frames.push(JSON.parse(String(data)) as Frame));
  }

  static async open(dev: Dev, tenant: string, user: string): Promise<Client> {
    const token = await clientToken(dev, tenant, user);
    const ws = new WebSocket(`ws://${dev.ready.gateway}/${dev.ready.stage}?token=${encodeURIComponent(token)}`);
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    const client = new Client(ws);
    client.send({ id: "whoami", action: "whoami" });
    const who = await client.next((f) => f.request_id === "whoami" && f.type === "response");
    client.connectionId = who.data.connection_id as string;
    return client;
  }

  send(frame: Frame): void {
    this.ws.send(JSON.stringify(frame));
  }

  async next(match: (f: Frame) => boolean, ms = 15_000): Promise<Frame> {
    return until("a frame", () => this.frames.find(match), ms);
  }

  async close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return;
    const closed = new Promise<void>((resolve) => this.ws.once("close", () => resolve()));
    this.ws.close(1000);
    await closed;
  }
}
