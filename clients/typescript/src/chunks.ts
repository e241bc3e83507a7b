/**
 * Messages past the gateway's limits (docs/client-protocol.md, "Chunks").
 *
 * API Gateway caps a browser's frame at 32 KB and any message at 128 KB. A
 * larger message is cut into pieces of its JSON text, each sent as
 * `{"action":"chunk","id",payload:{chunk_id,index,count,data}}`; the
 * control plane joins them (in any order, on any replica) and handles the
 * message as one. The other way, the server cuts a frame over 128 KB into
 * `{"type":"chunk",chunk_id,index,count,data}` frames, which the client
 * joins before anything else sees them.
 */

/** The largest frame the client sends whole (API Gateway's browser frame limit is 32 KB). */
export const MAX_FRAME_BYTES = 32_000;

/** Bytes `code` (a code point) takes inside a JSON string, in UTF-8. */
function escapedLength(code: number): number {
  if (code === 0x22 || code === 0x5c || code === 0x0a || code === 0x0d || code === 0x09 || code === 0x08 || code === 0x0c) {
    return 2;
  }
  if (code < 0x20) {
    return 6;
  }
  if (code < 0x80) {
    return 1;
  }
  if (code < 0x800) {
    return 2;
  }
  if (code >= 0xd800 && code <= 0xdfff) {
    return 6; // a lone surrogate is escaped as \uXXXX
  }
  return code < 0x10000 ? 3 : 4;
}

/** UTF-8 bytes of `text`. */
export function byteLength(text: string): number {
  return new TextEncoder().encode(text).length;
}

/** Cuts `text` into pieces whose JSON-escaped UTF-8 length is at most `budget`. */
export function pieces(text: string, budget: number): string[] {
  const out: string[] = [];
  let current = "";
  let used = 0;
  for (const ch of text) {
    const length = escapedLength(ch.codePointAt(0)!);
    if (used + length > budget && current !== "") {
      out.push(current);
      current = "";
      used = 0;
    }
    current += ch;
    used += length;
  }
  if (current !== "") {
    out.push(current);
  }
  return out;
}

let chunkCounter = 0;

/** A fresh chunk id (letters, digits, `-`). */
export function chunkId(): string {
  chunkCounter += 1;
  return `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}-${chunkCounter}`;
}

/**
 * The frames that carry client message `text`: itself when it fits in
 * `maxFrameBytes`, else `chunk` frames (each carrying `requestId`, so an
 * error about a piece names the request).
 */
export function splitMessage(text: string, requestId: string | undefined, maxFrameBytes = MAX_FRAME_BYTES): string[] {
  if (byteLength(text) <= maxFrameBytes) {
    return [text];
  }
  const id = chunkId();
  const envelope = (index: number, count: number, data: string) =>
    JSON.stringify({ id: requestId, action: "chunk", payload: { chunk_id: id, index, count, data } });
  const overhead = byteLength(envelope(4294967295, 4294967295, ""));
  const parts = pieces(text, maxFrameBytes - overhead);
  return parts.map((data, index) => envelope(index, parts.length, data));
}

interface Joining {
  parts: (string | undefined)[];
  received: number;
  bytes: number;
  startedAt: number;
}

/** Bounds of the frames the client joins. */
export interface JoinLimits {
  /** Most bytes held across every frame being joined (default 64 MiB). */
  maxBytes: number;
  /** A frame not complete this long after its first piece is dropped (default 60 s). */
  timeoutMs: number;
}

/**
 * Joins the server's `chunk` frames. Pieces of several frames may
 * interleave (two large broadcasts at once); each frame is given back when
 * its last piece arrives.
 */
export class ChunkJoiner {
  private readonly partials = new Map<string, Joining>();
  private held = 0;
  private readonly limits: JoinLimits;

  constructor(limits: Partial<JoinLimits> = {}) {
    this.limits = { maxBytes: limits.maxBytes ?? 64 * 1024 * 1024, timeoutMs: limits.timeoutMs ?? 60_000 };
  }

  /** Adds a `chunk` frame; the joined frame's text when it was the last piece. */
  add(frame: Record<string, any>, now = Date.now()): string | undefined {
    const { chunk_id: id, index, count, data } = frame;
    if (typeof id !== "string" || typeof data !== "string" || !Number.isInteger(index) || !Number.isInteger(count) || index < 0 || index >= count) {
      return undefined;
    }
    this.expire(now);
    let partial = this.partials.get(id);
    if (!partial) {
      partial = { parts: new Array(count), received: 0, bytes: 0, startedAt: now };
      this.partials.set(id, partial);
    }
    if (partial.parts.length !== count || partial.parts[index] !== undefined) {
      return undefined;
    }
    if (this.held + data.length > this.limits.maxBytes) {
      this.drop(id);
      return undefined;
    }
    partial.parts[index] = data;
    partial.received += 1;
    partial.bytes += data.length;
    this.held += data.length;
    if (partial.received < count) {
      return undefined;
    }
    this.drop(id);
    return partial.parts.join("");
  }

  /** Frames being joined now. */
  get pending(): number {
    return this.partials.size;
  }

  private drop(id: string): void {
    const partial = this.partials.get(id);
    if (partial) {
      this.held -= partial.bytes;
      this.partials.delete(id);
    }
  }

  private expire(now: number): void {
    for (const [id, partial] of this.partials) {
      if (now - partial.startedAt > this.limits.timeoutMs) {
        this.drop(id);
      }
    }
  }
}
