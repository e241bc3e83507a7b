// The console's view of the control plane: the generated gRPC-Web clients
// of the server's own services, on this page's origin, with the operator's
// token as `authorization` metadata. Nothing here is a second API: every
// rule (roles, tenant binding, validation) is the gRPC server's.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AdminService } from "./gen/streamer/v1/admin_pb.js";
import { BroadcastService } from "./gen/streamer/v1/broadcast_pb.js";
import { ConnectionService } from "./gen/streamer/v1/connections_pb.js";
import { GroupService } from "./gen/streamer/v1/groups_pb.js";
import { RequestService } from "./gen/streamer/v1/requests_pb.js";

const TOKEN_KEY = "streamer-console-token";

export interface Api {
  admin: Client<typeof AdminService>;
  broadcast: Client<typeof BroadcastService>;
  connections: Client<typeof ConnectionService>;
  groups: Client<typeof GroupService>;
  requests: Client<typeof RequestService>;
}

/** Reachability of the control plane, as the last calls found it. */
export const link = {
  down: false,
  listeners: [] as ((down: boolean) => void)[],
  set(down: boolean): void {
    if (down === this.down) return;
    this.down = down;
    for (const listener of this.listeners) listener(down);
  },
};

/** Calls that fail with these codes reached the server: it answered. */
const ANSWERED = new Set<Code>([
  Code.InvalidArgument,
  Code.NotFound,
  Code.AlreadyExists,
  Code.PermissionDenied,
  Code.Unauthenticated,
  Code.FailedPrecondition,
  Code.ResourceExhausted,
  Code.OutOfRange,
  Code.Aborted,
  Code.Canceled,
]);

export function makeApi(token: string): Api {
  const auth: Interceptor = (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    try {
      const res = await next(req);
      link.set(false);
      return res;
    } catch (err) {
      const code = ConnectError.from(err).code;
      link.set(!ANSWERED.has(code));
      throw err;
    }
  };
  const transport = createGrpcWebTransport({
    baseUrl: window.location.origin,
    interceptors: [auth],
    defaultTimeoutMs: 10_000,
  });
  return {
    admin: createClient(AdminService, transport),
    broadcast: createClient(BroadcastService, transport),
    connections: createClient(ConnectionService, transport),
    groups: createClient(GroupService, transport),
    requests: createClient(RequestService, transport),
  };
}

/** What to tell a person about a failed call: the server's own message for
 * an answered call (it never carries internal text), a plain sentence
 * otherwise. */
export function describe(err: unknown): string {
  const e = ConnectError.from(err);
  if (ANSWERED.has(e.code)) return `${Code[e.code]}: ${e.rawMessage}`;
  if (e.code === Code.DeadlineExceeded) return "the control plane did not answer in time";
  return "the control plane cannot be reached";
}

export function codeOf(err: unknown): Code {
  return ConnectError.from(err).code;
}

export const tokenStore = {
  get(): string | null {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(token: string): void {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear(): void {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** `dev`'s extras for the client panel, and who the token is. */
export interface ConsoleInfo {
  dev: boolean;
  websocket_url?: string;
  /** The token's name (never the token). */
  principal?: string;
  /** `admin`, `read` or `service`. */
  role?: string;
  /** The one tenant a bound service token reaches. */
  tenant_id?: string;
}

export async function consoleInfo(token?: string): Promise<ConsoleInfo> {
  const res = await fetch("/console/info", {
    cache: "no-store",
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  if (!res.ok) throw new Error(`console info: HTTP ${res.status}`);
  return (await res.json()) as ConsoleInfo;
}

export async function devClientToken(
  token: string,
  tenantId: string,
  userId: string,
): Promise<{ token: string; websocket_url: string }> {
  const res = await fetch("/console/dev/token", {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ tenant_id: tenantId, user_id: userId }),
    cache: "no-store",
  });
  const body = (await res.json().catch(() => ({}))) as { token?: string; websocket_url?: string; error?: string };
  if (!res.ok || !body.token || !body.websocket_url) {
    throw new Error(body.error ?? `HTTP ${res.status}`);
  }
  return { token: body.token, websocket_url: body.websocket_url };
}
