// The real `streamer-control-plane dev`, started for a test file, and what
// the tests need from it: the gateway's URL, tokens, `streamerctl`.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";

const devBin = process.env.STREAMER_DEV_BIN;
const ctlBin = process.env.STREAMER_CTL_BIN;
if (!devBin || !ctlBin) {
  throw new Error("set STREAMER_DEV_BIN and STREAMER_CTL_BIN to the built binaries (bash scripts/test.sh does)");
}

const exec = promisify(execFile);

export interface Dev {
  /** `ws://host:port/stage` of dev's gateway. */
  wsUrl: string;
  /** `host:port` of the gRPC server. */
  grpc: string;
  /** The sample client token dev printed (user dev-user, tenant dev). */
  token: string;
  adminToken: string;
  /** `streamerctl ARGS --output json`, parsed. */
  ctl(...args: string[]): Promise<any>;
  /** A client token of `sub` (tenant dev, every permission) from dev's key, ending in `secs`. */
  mint(sub: string, secs: number): Promise<string>;
  stop(): void;
}

export async function startDev(): Promise<Dev> {
  const stateDir = mkdtempSync(join(tmpdir(), "streamer-ts-"));
  const dev = spawn(devBin!, ["dev"], {
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
  let wsUrl = "";
  let grpc = "";
  let token = "";
  let adminToken = "";
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
  return {
    wsUrl,
    grpc,
    token,
    adminToken,
    async ctl(...args: string[]) {
      const { stdout } = await exec(ctlBin!, [...args, "--output", "json"], {
        env: { STREAMER_ADDR: `http://${grpc}`, STREAMER_TOKEN: adminToken },
      });
      return JSON.parse(stdout);
    },
    async mint(sub: string, secs: number) {
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
    },
    stop() {
      dev.kill("SIGTERM");
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}
