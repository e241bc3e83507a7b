// The send form: BroadcastService.Send with a JSON body, and the delivery
// report it returns.

import { describe } from "./api.js";
import { field, fill, h, section } from "./dom.js";
import type { Session, View } from "./main.js";
import type { SendRequest } from "./gen/streamer/v1/broadcast_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { SendRequestSchema } from "./gen/streamer/v1/broadcast_pb.js";

/** Bodies over this are refused here, before a call: far past what one
 * WebSocket message should carry (the server chunks frames over 128 KB). */
export const MAX_BODY_BYTES = 1024 * 1024;

type Kind = "tenant" | "user" | "group" | "connection";

export function sendView(session: Session): View {
  const kind = h(
    "select",
    { id: "send-kind" },
    h("option", { value: "group" }, "a group"),
    h("option", { value: "user" }, "a user's connections"),
    h("option", { value: "tenant" }, "the whole tenant"),
    h("option", { value: "connection" }, "one connection"),
  );
  const target = h("input", { id: "send-target", autocomplete: "off", spellcheck: "false" });
  const body = h("textarea", { id: "send-body", rows: 6, spellcheck: "false" });
  body.value = '{"hello": "from the console"}';
  const bodyError = h("p", { id: "send-body-error", class: "error", role: "alert" });
  const topic = h("input", { id: "send-topic", autocomplete: "off" });
  const exclude = h("input", { id: "send-exclude", autocomplete: "off", spellcheck: "false" });
  const submit = h("button", { type: "submit", id: "send-submit" }, "Send");
  const report = h("div", { id: "send-report", "aria-live": "polite" });
  const targetLabel = h("label", { for: "send-target" }, "Group");
  const labels: Record<Kind, string> = { group: "Group", user: "User id", tenant: "(the tenant above)", connection: "Connection id" };
  const syncKind = (): void => {
    const k = kind.value as Kind;
    targetLabel.textContent = labels[k];
    target.disabled = k === "tenant";
  };
  kind.addEventListener("change", syncKind);
  const validate = (): string | null => {
    const text = body.value;
    const size = new TextEncoder().encode(text).length;
    let problem: string | null = null;
    if (size > MAX_BODY_BYTES) {
      problem = `The body is ${size} bytes; at most ${MAX_BODY_BYTES} bytes can be sent from here.`;
    } else {
      try {
        JSON.parse(text);
      } catch (err) {
        problem = `The body is not valid JSON: ${(err as Error).message}`;
      }
    }
    bodyError.textContent = problem ?? "";
    body.setAttribute("aria-invalid", problem ? "true" : "false");
    submit.disabled = problem !== null;
    return problem;
  };
  body.addEventListener("input", () => void validate());
  const form = h(
    "form",
    { id: "send-form", class: "card" },
    field("Send to", kind),
    h("div", { class: "field" }, targetLabel, target),
    field("Body (JSON: the frame's data)", body),
    bodyError,
    field("Topic (optional)", topic),
    field("Exclude connection ids (optional, comma separated)", exclude),
    submit,
  );
  // (getRandomValues, unlike randomUUID, works outside secure contexts: a
  // console reached over plain HTTP inside a VPC.)
  const newKey = (): string =>
    "console-" +
    Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  // One idempotency key per message being sent: a second submit of the
  // same form (a double click, Enter twice, a retry after an error) is a
  // replay and delivers nothing again; an edit or a finished send makes a
  // new key.
  let idempotencyKey = newKey();
  form.addEventListener("input", () => {
    idempotencyKey = newKey();
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (validate()) return;
    const tenant = session.tenant();
    const k = kind.value as Kind;
    const value = target.value.trim();
    if (!tenant && k !== "connection") {
      fill(report, h("p", { class: "error" }, "Choose a tenant above."));
      return;
    }
    if (k !== "tenant" && !value) {
      fill(report, h("p", { class: "error" }, `${labels[k]} is required.`));
      return;
    }
    const targets: Record<Kind, MessageInitShape<typeof SendRequestSchema>["target"]> = {
      tenant: { case: "tenantId", value: tenant },
      user: { case: "user", value: { tenantId: tenant, userId: value } },
      group: { case: "group", value: { tenantId: tenant, group: value } },
      connection: { case: "connectionId", value },
    };
    const request: MessageInitShape<typeof SendRequestSchema> = {
      target: targets[k],
      payload: { case: "dataJson", value: body.value },
      topic: topic.value.trim(),
      excludeConnectionIds: exclude.value
        .split(/[\s,]+/)
        .map((s) => s.trim())
        .filter(Boolean),
      idempotencyKey,
    };
    submit.disabled = true;
    fill(report, h("p", {}, "Sending…"));
    session.api.broadcast
      .send(request)
      .then((res) => {
        idempotencyKey = newKey();
        const r = res.report;
        fill(
          report,
          h("h3", {}, "Delivery report"),
          h(
            "table",
            { id: "report-table" },
            h("tbody", {}, ...(
              [
                ["targeted", r?.targeted ?? 0],
                ["delivered", r?.delivered ?? 0],
                ["gone", r?.gone ?? 0],
                ["throttled", r?.throttled ?? 0],
                ["too large", r?.tooLarge ?? 0],
                ["failed", r?.failed ?? 0],
              ] as [string, number][]
            ).map(([name, n]) => h("tr", { "data-outcome": name }, h("th", { scope: "row" }, name), h("td", {}, String(n))))),
          ),
          res.position ? h("p", {}, `Stored in stream ${res.position.stream} at offset ${res.position.offset}.`) : null,
          res.replayed ? h("p", { id: "replayed" }, "A replay of the same send: nothing was delivered again.") : null,
        );
      })
      .catch((err) => fill(report, h("p", { class: "error", role: "alert" }, describe(err))))
      .finally(() => void validate());
  });
  syncKind();
  return {
    id: "send",
    label: "Send",
    every: 60_000,
    root: section("send", "Send a message", form, report),
    async refresh() {
      // Nothing to poll: the form acts on submit.
    },
  };
}

export type { SendRequest };
