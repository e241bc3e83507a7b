/**
 * Following streams with history: the last offset and epoch of every
 * stream, reordering by offset (a gap waits `reorderWindowMs` for the late
 * message, then is filled by `recover`), recovery after every reconnect
 * (re-joining groups with `since` / `epoch`), and a `reset` when history
 * cannot fill a gap. The client feeds it frames and answers; it calls back
 * to emit messages in order.
 */

/** A broadcast message. */
export interface BroadcastMessage {
  data: unknown;
  topic?: string;
  timestamp: string;
  /** The stream (`tenant`, `user:<id>`, `group:<name>`), when it keeps history. */
  stream?: string;
  /** The message's offset in its stream. */
  offset?: number;
  /** The stream's epoch. */
  epoch?: string;
}

/** History could not fill a stream's gap: messages were lost to the client. */
export interface StreamReset {
  stream: string;
  /** The stream's epoch now. */
  epoch: string;
  /** The stream's latest offset; messages after it will be emitted. */
  offset: number;
}

/** What the server answers to `recover` (and `join` with `since`). */
interface RecoveryData {
  stream: string;
  epoch: string;
  offset: number;
  recovered?: boolean;
  messages?: Array<Record<string, any>>;
}


/** What the client knows of one stream. */
interface StreamState {
  epoch: string;
  /** The last offset emitted. */
  offset: number;
  /** Messages after a gap, by offset. */
  held: Map<number, BroadcastMessage>;
  gapTimer?: ReturnType<typeof setTimeout>;
  /** A `recover` (or `join` with `since`) is in flight: hold everything. */
  recovering: boolean;
}


/** What the follower needs from the client. */
export interface FollowerHooks {
  /** Emits a message to the application, in order. */
  emit: (message: BroadcastMessage) => void;
  /** Tells the application a stream's gap cannot be filled. */
  reset: (reset: StreamReset) => void;
  /** Sends `recover` or `join` and resolves with the answer's data. */
  ask: (action: "join" | "recover", payload: Record<string, unknown>) => Promise<RecoveryData>;
}

/** The reordering and recovery of every followed stream. */
export class StreamFollower {
  private readonly streams = new Map<string, StreamState>();
  /** Groups joined through `join`, re-joined on every reconnect. */
  private readonly groups = new Set<string>();

  constructor(
    private readonly options: { reorderWindowMs: number; maxHeldMessages: number },
    private readonly hooks: FollowerHooks,
  ) {}

  /** A `message` frame. */
  onFrame(frame: Record<string, any>): void {
    const message = toMessage(frame);
    if (message.stream === undefined || message.offset === undefined || message.epoch === undefined) {
      this.hooks.emit(message);
      return;
    }
    let state = this.streams.get(message.stream);
    if (!state) {
      // The first message of a stream this client was not following:
      // follow it from here.
      state = { epoch: message.epoch, offset: message.offset - 1, held: new Map(), recovering: false };
      this.streams.set(message.stream, state);
    }
    this.onPositioned(message.stream, state, message);
  }

  /** The payload of a `join` of `group` (with `since` when followed). */
  joinPayload(group: string): Record<string, unknown> {
    const state = this.streams.get(`group:${group}`);
    return state ? { group, since: state.offset, epoch: state.epoch } : { group };
  }

  /** `join`'s answer. */
  joined(group: string, data: any): void {
    this.groups.add(group);
    if (typeof data?.stream === "string") {
      this.onRecovered(data as RecoveryData);
    }
  }

  /** The client left `group`. */
  left(group: string): void {
    this.groups.delete(group);
    const state = this.streams.get(`group:${group}`);
    clearTimeout(state?.gapTimer);
    this.streams.delete(`group:${group}`);
  }

  /** `recover`'s answer to a plain follow. */
  followed(data: RecoveryData): StreamReset {
    if (!this.streams.has(data.stream)) {
      this.streams.set(data.stream, { epoch: data.epoch, offset: data.offset, held: new Map(), recovering: false });
    }
    return { stream: data.stream, epoch: data.epoch, offset: data.offset };
  }

  /** The last offset and epoch emitted for each followed stream. */
  positions(): Record<string, { offset: number; epoch: string }> {
    const out: Record<string, { offset: number; epoch: string }> = {};
    for (const [stream, state] of this.streams) {
      out[stream] = { offset: state.offset, epoch: state.epoch };
    }
    return out;
  }

  /** Stops every timer (the client closed for good). */
  stop(): void {
    for (const state of this.streams.values()) {
      clearTimeout(state.gapTimer);
    }
  }

  /**
   * After a reconnect: re-join the groups (recovering their streams in the
   * same step) and recover every other stream this client has seen.
   */
  recoverAll(): void {
    for (const group of this.groups) {
      const stream = `group:${group}`;
      const state = this.streams.get(stream);
      const since = state ? { since: state.offset, epoch: state.epoch } : {};
      this.recoverWith(stream, "join", { group, ...since });
    }
    for (const [stream, state] of this.streams) {
      if (!stream.startsWith("group:") || !this.groups.has(stream.slice("group:".length))) {
        this.recoverWith(stream, "recover", { stream, since: state.offset, epoch: state.epoch });
      }
    }
  }

  /** Holds `stream`'s messages until `action` answers with what was missed. */
  private recoverWith(stream: string, action: "join" | "recover", payload: Record<string, unknown>): void {
    const state = this.streams.get(stream);
    if (state) {
      if (state.recovering && action === "recover") {
        return;
      }
      state.recovering = true;
      clearTimeout(state.gapTimer);
      state.gapTimer = undefined;
    }
    this.hooks.ask(action, payload).then(
      (data) => this.onRecovered(data),
      () => {
        // Recovery failed (e.g. rate limited, or the connection dropped):
        // release the held messages; the next reconnect or gap tries again.
        const now = this.streams.get(stream);
        if (now) {
          now.recovering = false;
          this.drain(stream, now);
        }
      },
    );
  }

  /** The answer of `recover` / `join`: fill the gap, or reset the stream. */
  private onRecovered(data: RecoveryData): void {
    if (!data || typeof data.stream !== "string") {
      return;
    }
    let state = this.streams.get(data.stream);
    if (!state) {
      state = { epoch: data.epoch, offset: data.offset, held: new Map(), recovering: false };
      this.streams.set(data.stream, state);
    }
    state.recovering = false;
    if (data.recovered === undefined) {
      // A plain join: the position to follow from.
      if (state.epoch === "" || state.epoch !== data.epoch) {
        state.epoch = data.epoch;
        state.offset = data.offset;
      }
    } else if (data.recovered) {
      if (state.epoch === "") {
        state.epoch = data.epoch;
      }
      for (const frame of data.messages ?? []) {
        this.onPositioned(data.stream, state, toMessage(frame));
      }
    } else {
      state.epoch = data.epoch;
      state.offset = data.offset;
      for (const offset of [...state.held.keys()]) {
        if (offset <= data.offset) {
          state.held.delete(offset);
        }
      }
      this.hooks.reset({ stream: data.stream, epoch: data.epoch, offset: data.offset });
    }
    this.drain(data.stream, state);
  }

  /** One message of a stream: emit it in order, hold it after a gap, drop a duplicate. */
  private onPositioned(stream: string, state: StreamState, message: BroadcastMessage): void {
    const offset = message.offset!;
    if (message.epoch !== state.epoch) {
      if (state.epoch === "" && !state.recovering) {
        // The stream had no message (and so no epoch) when we started following it.
        state.epoch = message.epoch!;
      } else if (state.recovering) {
        state.held.set(offset, message);
        return;
      } else {
        // A new epoch: what came before is lost; ask where things stand.
        state.held.set(offset, message);
        this.recoverWith(stream, "recover", { stream, since: state.offset, epoch: state.epoch });
        return;
      }
    }
    if (offset <= state.offset) {
      return;
    }
    if (state.recovering || offset > state.offset + 1) {
      state.held.set(offset, message);
      if (!state.recovering) {
        this.gap(stream, state);
      }
      return;
    }
    state.offset = offset;
    this.hooks.emit(message);
    this.drain(stream, state);
  }

  /** Emits held messages that now follow in order; waits on a remaining gap. */
  private drain(stream: string, state: StreamState): void {
    if (state.recovering) {
      return;
    }
    for (;;) {
      const next = state.held.get(state.offset + 1);
      if (!next) {
        break;
      }
      state.held.delete(state.offset + 1);
      if (next.epoch !== state.epoch) {
        continue;
      }
      state.offset += 1;
      this.hooks.emit(next);
    }
    for (const offset of [...state.held.keys()]) {
      if (offset <= state.offset) {
        state.held.delete(offset);
      }
    }
    if (state.held.size === 0) {
      clearTimeout(state.gapTimer);
      state.gapTimer = undefined;
    } else {
      this.gap(stream, state);
    }
  }

  /** A gap: wait for the late message a short while, then recover. */
  private gap(stream: string, state: StreamState): void {
    const recover = () => {
      state.gapTimer = undefined;
      this.recoverWith(stream, "recover", { stream, since: state.offset, epoch: state.epoch });
    };
    if (state.held.size > this.options.maxHeldMessages) {
      clearTimeout(state.gapTimer);
      recover();
    } else if (state.gapTimer === undefined) {
      state.gapTimer = setTimeout(recover, this.options.reorderWindowMs);
    }
  }
}

function toMessage(frame: Record<string, any>): BroadcastMessage {
  const message: BroadcastMessage = { data: frame.data, topic: frame.topic, timestamp: frame.timestamp };
  if (typeof frame.stream === "string" && Number.isSafeInteger(frame.offset) && typeof frame.epoch === "string") {
    message.stream = frame.stream;
    message.offset = frame.offset;
    message.epoch = frame.epoch;
  }
  return message;
}

