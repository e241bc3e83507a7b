/**
 * Streamer WebSocket client for browsers and Node 20+ (pass the `ws`
 * package's WebSocket in Node).
 *
 * - `request(action, payload, { onProgress, signal })` resolves with the
 *   result (`response` data for sync actions, `complete` result for async
 *   ones) or rejects with a {@link StreamerError} carrying the server's code.
 * - Broadcasts arrive as `message` events, presence as `presence` events.
 * - Heartbeat pings keep API Gateway's 10-minute idle timeout away, and the
 *   connection is renewed before its 2-hour maximum.
 * - When the connection drops, it reconnects with exponential backoff and
 *   jitter and re-subscribes to requests still in flight, so their progress
 *   and result keep coming.
 * - Streams with history (`STREAMER_HISTORY` on the server): the client
 *   keeps each stream's last offset and epoch, re-joins the groups it joined
 *   (`join`) and recovers every stream on each reconnect before it emits new
 *   messages, and reorders by offset (a gap waits `reorderWindowMs` for the
 *   late message, then is filled by `recover`). The application sees each
 *   message once, in offset order; when history cannot fill a gap (the epoch
 *   changed, or the missed messages are no longer retained), a `reset`
 *   event says so and the application refetches its state.
 */

import { ChunkJoiner, MAX_FRAME_BYTES, splitMessage } from "./chunks.js";
import { type BroadcastMessage, StreamFollower, type StreamReset } from "./streams.js";

export type { BroadcastMessage, StreamReset } from "./streams.js";
export { ChunkJoiner, MAX_FRAME_BYTES, splitMessage } from "./chunks.js";

/** Error codes the server sends. */
export type ErrorCode =
  | "VALIDATION_ERROR"
  | "INVALID_ACTION"
  | "NOT_FOUND"
  | "UNAUTHORIZED"
  | "FORBIDDEN"
  | "RATE_LIMITED"
  | "DUPLICATE_REQUEST"
  | "PAYLOAD_TOO_LARGE"
  | "INTERNAL_ERROR"
  | "TIMEOUT"
  | "SERVICE_UNAVAILABLE"
  | "PROCESSING_FAILED"
  | "CANCELLED";

/** A failed request, with the server's error code. */
export class StreamerError extends Error {
  readonly code: ErrorCode | string;
  readonly requestId?: string;
  readonly details?: unknown;
  /** Seconds to wait before retrying (for RATE_LIMITED). */
  readonly retryAfter?: number;

  constructor(code: string, message: string, requestId?: string, details?: unknown, retryAfter?: number) {
    super(message);
    this.name = "StreamerError";
    this.code = code;
    this.requestId = requestId;
    this.details = details;
    this.retryAfter = retryAfter;
  }
}

/** A progress report of a long-running request. */
export interface Progress {
  percentage: number;
  message: string;
  details?: unknown;
}

/** Options of one request. */
export interface RequestOptions {
  /** Called for every progress frame, in order. */
  onProgress?: (progress: Progress) => void;
  /** Aborting cancels the request on the server and rejects with CANCELLED. */
  signal?: AbortSignal;
  /** The request id (default: a random one). Ids are unique per tenant. */
  id?: string;
  /** String metadata sent with the request. */
  metadata?: Record<string, string>;
}

/** A presence notification of a group. */
export interface PresenceEvent {
  group: string;
  event: "join" | "leave";
  user_id: string;
  connection_id: string;
  timestamp: string;
}

/** The minimal WebSocket shape the client needs (browser or `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // `any` parameters so both the DOM WebSocket and `ws` fit.
  onopen: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Client options. */
export interface ClientOptions {
  /**
   * The JWT, or a function returning a fresh one: called for each
   * (re)connect, and when the server says the token is about to end
   * (`token_expiring`), whose answer the client sends as `refresh` so the
   * connection outlives the old token. With a plain string the server
   * closes the connection at the token's end and the client reconnects
   * (with the same, by then expired, token: pass a function).
   */
  token: string | (() => string | Promise<string>);
  /** The WebSocket implementation (default: `globalThis.WebSocket`). */
  WebSocket?: WebSocketConstructor;
  /** Heartbeat ping interval (default 5 minutes; API Gateway idles out at 10). */
  heartbeatMs?: number;
  /** Renew the connection after this long (default 110 minutes; API Gateway stops at 2 hours). */
  maxConnectionMs?: number;
  /** First reconnect delay (default 500 ms); doubles up to `maxReconnectDelayMs`, with jitter. */
  minReconnectDelayMs?: number;
  /** Longest reconnect delay (default 30 s). */
  maxReconnectDelayMs?: number;
  /** How long a gap in a stream waits for the late message before `recover` fills it (default 1 s). */
  reorderWindowMs?: number;
  /** Messages held per stream while a gap is open; past it, `recover` at once (default 1,000). */
  maxHeldMessages?: number;
  /**
   * Join the server's `chunk` frames (default true). With false the client
   * connects with `chunks=false`: a frame over the gateway's 128 KB limit
   * then arrives as a `PAYLOAD_TOO_LARGE` error, and messages over
   * `maxFrameBytes` are sent whole (and refused by the gateway).
   */
  chunks?: boolean;
  /** The largest frame sent whole; larger messages go as chunks (default 32,000: API Gateway's browser frame limit is 32 KB). */
  maxFrameBytes?: number;
}

type Events = {
  message: BroadcastMessage;
  presence: PresenceEvent;
  open: undefined;
  close: { code: number; reason: string };
  reconnecting: { attempt: number; delayMs: number };
  reset: StreamReset;
  /** The server renewed the connection with a fresh token (or refused to). */
  refreshed: { expiresAt?: string; error?: StreamerError };
};

interface Pending {
  frame: string;
  action: string;
  acknowledged: boolean;
  /** Sent again after a reconnect (a DUPLICATE_REQUEST then means "accepted before"). */
  resent: boolean;
  onProgress?: (progress: Progress) => void;
  resolve: (value: unknown) => void;
  reject: (error: StreamerError) => void;
  cleanup: () => void;
}

let counter = 0;
function randomId(): string {
  counter += 1;
  const random = Math.random().toString(36).slice(2, 10);
  return `req-${Date.now().toString(36)}-${random}-${counter}`;
}

const OPEN = 1;

/** A connection to a Streamer WebSocket API. */
export class StreamerClient {
  private readonly url: string;
  private readonly options: Required<Omit<ClientOptions, "WebSocket" | "token">> & Pick<ClientOptions, "token">;
  private readonly WebSocketImpl: WebSocketConstructor;
  private socket?: WebSocketLike;
  private readonly pending = new Map<string, Pending>();
  /** Re-subscription ids → the request they follow. */
  private readonly resumes = new Map<string, string>();
  private readonly listeners = new Map<keyof Events, Set<(value: never) => void>>();
  private closedByUser = false;
  private attempt = 0;
  private heartbeat?: ReturnType<typeof setInterval>;
  private renewal?: ReturnType<typeof setTimeout>;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private opening?: Promise<void>;
  private readonly follower: StreamFollower;
  private opened = false;
  private joiner = new ChunkJoiner();

  constructor(url: string, options: ClientOptions) {
    this.url = url;
    const impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!impl) {
      throw new Error("no WebSocket implementation: pass { WebSocket } (in Node: import { WebSocket } from 'ws')");
    }
    this.WebSocketImpl = impl;
    this.options = {
      token: options.token,
      heartbeatMs: options.heartbeatMs ?? 5 * 60_000,
      maxConnectionMs: options.maxConnectionMs ?? 110 * 60_000,
      minReconnectDelayMs: options.minReconnectDelayMs ?? 500,
      maxReconnectDelayMs: options.maxReconnectDelayMs ?? 30_000,
      reorderWindowMs: options.reorderWindowMs ?? 1000,
      maxHeldMessages: options.maxHeldMessages ?? 1000,
      chunks: options.chunks ?? true,
      maxFrameBytes: options.maxFrameBytes ?? MAX_FRAME_BYTES,
    };
    this.follower = new StreamFollower(
      { reorderWindowMs: this.options.reorderWindowMs, maxHeldMessages: this.options.maxHeldMessages },
      {
        emit: (message) => this.emit("message", message),
        reset: (reset) => this.emit("reset", reset),
        ask: (action, payload) => this.request(action, payload),
      },
    );
  }

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof Events>(event: K, listener: (value: Events[K]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    const stored = listener as (value: never) => void;
    set.add(stored);
    return () => set.delete(stored);
  }

  private emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const listener of (this.listeners.get(event) ?? []) as Set<(value: Events[K]) => void>) {
      try {
        listener(value);
      } catch {
        // A listener's failure is its own.
      }
    }
  }

  /** Opens the connection (also done lazily by `request`). */
  connect(): Promise<void> {
    this.closedByUser = false;
    if (this.socket?.readyState === OPEN) {
      return Promise.resolve();
    }
    this.opening ??= this.open().finally(() => {
      this.opening = undefined;
    });
    return this.opening;
  }

  private async open(): Promise<void> {
    const token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    const separator = this.url.includes("?") ? "&" : "?";
    const chunks = this.options.chunks ? "" : "&chunks=false";
    const socket = new this.WebSocketImpl(`${this.url}${separator}token=${encodeURIComponent(token)}${chunks}`);
    await new Promise<void>((resolve, reject) => {
      socket.onopen = () => resolve();
      socket.onerror = () => reject(new StreamerError("UNAUTHORIZED", "connection refused"));
      socket.onclose = (ev) => reject(new StreamerError("SERVICE_UNAVAILABLE", `connection closed (${ev.code})`));
    });
    this.socket = socket;
    this.joiner = new ChunkJoiner();
    this.attempt = 0;
    socket.onmessage = (ev) => this.onFrame(String(ev.data));
    socket.onerror = () => {};
    socket.onclose = (ev) => this.onClose(socket, ev);
    this.heartbeat = setInterval(() => this.sendRaw({ id: randomId(), action: "ping" }), this.options.heartbeatMs);
    this.renewal = setTimeout(() => socket.close(4000, "renewing before the maximum connection duration"), this.options.maxConnectionMs);
    this.emit("open", undefined);
    const reconnected = this.opened;
    this.opened = true;
    if (reconnected) {
      this.follower.recoverAll();
    }
    this.resume();
  }

  /** Re-sends what was in flight when the last connection dropped. */
  private resume(): void {
    for (const [id, pending] of this.pending) {
      if (pending.acknowledged) {
        this.resubscribe(id);
      } else {
        pending.resent = true;
        this.transmit(pending.frame, id);
      }
    }
  }

  private resubscribe(id: string): void {
    const resumeId = randomId();
    this.resumes.set(resumeId, id);
    this.sendRaw({ id: resumeId, action: "subscribe", payload: { request_id: id } });
  }

  private onClose(socket: WebSocketLike, ev: { code: number; reason: string }): void {
    if (socket !== this.socket) {
      return;
    }
    clearInterval(this.heartbeat);
    clearTimeout(this.renewal);
    this.socket = undefined;
    this.emit("close", { code: ev.code, reason: ev.reason });
    if (this.closedByUser) {
      return;
    }
    this.scheduleReconnect(ev.code === 4000 ? 0 : undefined);
  }

  private scheduleReconnect(delayOverride?: number): void {
    this.attempt += 1;
    const ceiling = Math.min(this.options.maxReconnectDelayMs, this.options.minReconnectDelayMs * 2 ** (this.attempt - 1));
    const delayMs = delayOverride ?? ceiling / 2 + Math.random() * (ceiling / 2);
    this.emit("reconnecting", { attempt: this.attempt, delayMs });
    this.reconnectTimer = setTimeout(() => {
      this.connect().catch(() => this.scheduleReconnect());
    }, delayMs);
  }

  private sendRaw(frame: unknown): void {
    if (this.socket?.readyState === OPEN) {
      this.socket.send(JSON.stringify(frame));
    }
  }

  /** Sends a client message, as chunks when it is over the frame limit. */
  private transmit(text: string, requestId: string): void {
    const frames = this.options.chunks ? splitMessage(text, requestId, this.options.maxFrameBytes) : [text];
    for (const frame of frames) {
      this.socket?.send(frame);
    }
  }

  private onFrame(text: string): void {
    let frame: Record<string, any>;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case "chunk": {
        const joined = this.joiner.add(frame);
        if (joined !== undefined) {
          this.onFrame(joined);
        }
        return;
      }
      case "message":
        this.follower.onFrame(frame);
        return;
      case "presence": {
        // One frame carries every change of the group since the last one;
        // each reaches the application as its own event, oldest first.
        const changes = Array.isArray(frame.changes)
          ? (frame.changes as Omit<PresenceEvent, "group">[])
          : [frame as unknown as PresenceEvent];
        for (const change of changes) {
          this.emit("presence", {
            group: String(frame.group),
            event: change.event,
            user_id: change.user_id,
            connection_id: change.connection_id,
            timestamp: change.timestamp,
          });
        }
        return;
      }
      case "pong":
        return;
      case "token_expiring":
        void this.refreshToken();
        return;
    }
    const id: string | undefined = frame.request_id;
    const resumed = id === undefined ? undefined : this.resumes.get(id);
    if (resumed !== undefined && id !== undefined) {
      this.resumes.delete(id);
      this.onResumed(resumed, frame);
      return;
    }
    const pending = id === undefined ? undefined : this.pending.get(id);
    if (!pending) {
      return;
    }
    switch (frame.type) {
      case "response":
        this.settle(id!, pending, () => pending.resolve(frame.data));
        return;
      case "acknowledgment":
        pending.acknowledged = true;
        return;
      case "progress":
        pending.onProgress?.({ percentage: frame.percentage, message: frame.message, details: frame.details });
        return;
      case "complete":
        this.settle(id!, pending, () => pending.resolve(frame.result));
        return;
      case "error": {
        const error = frame.error ?? {};
        if (error.code === "DUPLICATE_REQUEST" && pending.resent) {
          // Sent again after a reconnect, but the first copy was accepted:
          // follow the request instead.
          pending.acknowledged = true;
          this.resubscribe(id!);
          return;
        }
        this.settle(id!, pending, () => pending.reject(toError(error, id)));
        return;
      }
    }
  }

  /** The answer to a re-subscription: the request's state now. */
  private onResumed(id: string, frame: Record<string, any>): void {
    const state = frame.data ?? {};
    const pending = this.pending.get(id);
    if (!pending) {
      return;
    }
    if (frame.type === "error") {
      this.settle(id, pending, () => pending.reject(toError(frame.error ?? {}, id)));
      return;
    }
    if (state.progress) {
      pending.onProgress?.(state.progress);
    }
    if (state.status === "completed") {
      this.settle(id, pending, () => pending.resolve(state.result));
    } else if (state.status === "failed" || state.status === "cancelled" || state.status === "expired") {
      const code = state.status === "cancelled" ? "CANCELLED" : (state.error?.code ?? "PROCESSING_FAILED");
      this.settle(id, pending, () => pending.reject(new StreamerError(code, state.error?.message ?? state.status, id)));
    }
  }

  /**
   * Joins `group`; with history on its stream, its messages are followed
   * from now on (and after every reconnect the group is re-joined and what
   * was missed recovered). Resolves with the server's answer.
   */
  async join(group: string): Promise<{ group: string; joined: boolean; stream?: string; offset?: number; epoch?: string }> {
    const data = await this.request<any>("join", this.follower.joinPayload(group));
    this.follower.joined(group, data);
    return data;
  }

  /** Leaves `group` and stops following its stream. */
  async leave(group: string): Promise<unknown> {
    this.follower.left(group);
    return this.request("leave", { group });
  }

  /**
   * Follows a stream (`tenant`, `user:<id>`) from its current position, so
   * messages sent while this client is away are recovered on reconnect.
   * Groups are followed by `join`.
   */
  async follow(stream: string): Promise<StreamReset> {
    const data = await this.request<any>("recover", { stream });
    return this.follower.followed(data);
  }

  /** The last offset and epoch emitted for each followed stream. */
  positions(): Record<string, { offset: number; epoch: string }> {
    return this.follower.positions();
  }

  private settle(id: string, pending: Pending, finish: () => void): void {
    this.pending.delete(id);
    pending.cleanup();
    finish();
  }

  /**
   * Sends `action` with `payload`. Resolves with the response data (sync
   * actions) or the result (async actions, after their progress).
   */
  /** Sends a fresh token from the `token` function as `refresh`. */
  private async refreshToken(): Promise<void> {
    if (typeof this.options.token !== "function") {
      return;
    }
    try {
      const token = await this.options.token();
      const answer = await this.request<{ expires_at?: string }>("refresh", { token });
      this.emit("refreshed", { expiresAt: answer?.expires_at });
    } catch (error) {
      this.emit("refreshed", { error: error as StreamerError });
    }
  }

  async request<T = unknown>(action: string, payload?: unknown, options: RequestOptions = {}): Promise<T> {
    await this.connect();
    const id = options.id ?? randomId();
    if (this.pending.has(id)) {
      throw new StreamerError("DUPLICATE_REQUEST", "a request with this id is in flight", id);
    }
    const frame = JSON.stringify({ id, action, payload: payload ?? null, metadata: options.metadata });
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        const pending = this.pending.get(id);
        if (!pending) {
          return;
        }
        this.sendRaw({ id: randomId(), action: "cancel", payload: { request_id: id } });
        this.settle(id, pending, () => pending.reject(new StreamerError("CANCELLED", "request cancelled", id)));
      };
      if (options.signal?.aborted) {
        reject(new StreamerError("CANCELLED", "request cancelled", id));
        return;
      }
      options.signal?.addEventListener("abort", onAbort, { once: true });
      this.pending.set(id, {
        frame,
        action,
        acknowledged: false,
        resent: false,
        onProgress: options.onProgress,
        resolve: (value) => resolve(value as T),
        reject,
        cleanup: () => options.signal?.removeEventListener("abort", onAbort),
      });
      this.transmit(frame, id);
    });
  }

  /** Cancels a request by id (this client's or an earlier connection's). */
  async cancel(requestId: string): Promise<unknown> {
    const result = await this.request("cancel", { request_id: requestId });
    const pending = this.pending.get(requestId);
    if (pending) {
      this.settle(requestId, pending, () => pending.reject(new StreamerError("CANCELLED", "request cancelled", requestId)));
    }
    return result;
  }

  /** Closes the connection for good; requests in flight are rejected. */
  close(): void {
    this.closedByUser = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.heartbeat);
    clearTimeout(this.renewal);
    this.follower.stop();
    this.socket?.close(1000, "client closed");
    this.socket = undefined;
    for (const [id, pending] of this.pending) {
      this.settle(id, pending, () => pending.reject(new StreamerError("CANCELLED", "client closed", id)));
    }
  }
}

function toError(error: Record<string, any>, requestId?: string): StreamerError {
  return new StreamerError(
    error.code ?? "INTERNAL_ERROR",
    error.message ?? "request failed",
    requestId,
    error.details,
    error.retry?.after,
  );
}
