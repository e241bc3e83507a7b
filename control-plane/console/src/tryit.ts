// The client panel (under `dev`): connect as a user of a tenant with a
// token `dev` mints, send any action, and watch every frame arrive — what a
// newcomer does with wscat, in the browser.

import { devClientToken } from "./api.js";
import { field, fill, h } from "./dom.js";
import type { Session, View } from "./main.js";

/** Frames kept in the log. */
const LOG_LIMIT = 200;

export function tryItView(session: Session): View {
  const root = h("section", { id: "tryit", "aria-labelledby": "tryit-h" }, h("h2", { id: "tryit-h" }, "Try it"));
  const view: View = { id: "tryit", label: "Try it", root, every: 60_000, refresh: async () => {} };
  if (!session.info.dev || !session.info.websocket_url) {
    root.append(
      h(
        "p",
        {},
        "The client panel needs `streamer-control-plane dev`: it connects to dev's gateway with a token signed by dev's own key.",
      ),
    );
    return view;
  }
  const tenant = h("input", { id: "try-tenant", autocomplete: "off", spellcheck: "false" });
  tenant.value = "dev";
  const user = h("input", { id: "try-user", autocomplete: "off", spellcheck: "false" });
  user.value = "console-user";
  const connectButton = h("button", { type: "button", id: "try-connect" }, "Connect");
  const closeButton = h("button", { type: "button", id: "try-close", disabled: true }, "Disconnect");
  const state = h("p", { id: "try-state", role: "status" }, "Not connected.");
  const message = h("textarea", { id: "try-message", rows: 4, spellcheck: "false" });
  message.value = '{"id": "1", "action": "echo", "payload": {"hello": "world"}}';
  const sendButton = h("button", { type: "button", id: "try-send", disabled: true }, "Send");
  const echoButton = h("button", { type: "button", id: "try-echo", disabled: true }, "Echo");
  const reportButton = h("button", { type: "button", id: "try-report", disabled: true }, "Start a report");
  const group = h("input", { id: "try-group", autocomplete: "off", spellcheck: "false" });
  group.value = "room-1";
  const joinButton = h("button", { type: "button", id: "try-join", disabled: true }, "Join");
  const leaveButton = h("button", { type: "button", id: "try-leave", disabled: true }, "Leave");
  const progress = h("progress", { id: "try-progress", max: 100, value: 0, "aria-label": "Report progress" });
  const progressText = h("span", { id: "try-progress-text" }, "no report yet");
  const log = h("ol", { id: "frames", "aria-live": "polite", "aria-label": "Frames" });
  const actionButtons = [sendButton, echoButton, reportButton, joinButton, leaveButton];
  let socket: WebSocket | null = null;
  let counter = 0;
  let reportId = "";

  const record = (direction: "in" | "out" | "note", text: string): void => {
    const item = h(
      "li",
      { class: direction, "data-direction": direction },
      h("span", { class: "dir" }, direction === "in" ? "↓" : direction === "out" ? "↑" : "•"),
      h("code", {}, text),
    );
    log.prepend(item);
    while (log.children.length > LOG_LIMIT) log.lastElementChild?.remove();
  };
  const setConnected = (on: boolean): void => {
    for (const b of actionButtons) b.disabled = !on;
    closeButton.disabled = !on;
    connectButton.disabled = on;
  };
  const send = (text: string): void => {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(text);
    record("out", text);
  };
  const onFrame = (text: string): void => {
    record("in", text);
    let frame: { type?: string; request_id?: string; percentage?: number; data?: { connection_id?: string } };
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.type === "response" && frame.request_id === "whoami" && frame.data?.connection_id) {
      state.textContent = `Connected as ${user.value} of tenant ${tenant.value}: connection ${frame.data.connection_id}.`;
    }
    if (frame.request_id && frame.request_id === reportId) {
      if (frame.type === "progress" && typeof frame.percentage === "number") {
        progress.value = frame.percentage;
        progressText.textContent = `${frame.percentage}%`;
      } else if (frame.type === "complete") {
        progress.value = 100;
        progressText.textContent = "100%: complete";
      } else if (frame.type === "error") {
        progressText.textContent = "failed (see the frame below)";
      }
    }
  };
  connectButton.addEventListener("click", () => {
    connectButton.disabled = true;
    state.textContent = "Connecting…";
    devClientToken(session.token, tenant.value.trim(), user.value.trim())
      .then(({ token, websocket_url }) => {
        const ws = new WebSocket(`${websocket_url}?token=${encodeURIComponent(token)}`);
        socket = ws;
        ws.addEventListener("open", () => {
          setConnected(true);
          state.textContent = `Connected as ${user.value} of tenant ${tenant.value}.`;
          record("note", `connected to ${websocket_url}`);
          send(JSON.stringify({ id: "whoami", action: "whoami" }));
        });
        ws.addEventListener("message", (e) => onFrame(typeof e.data === "string" ? e.data : "(binary frame)"));
        ws.addEventListener("close", (e) => {
          if (socket === ws) socket = null;
          setConnected(false);
          state.textContent = `Closed (${e.code}${e.reason ? `: ${e.reason}` : ""}).`;
          record("note", `closed ${e.code}`);
        });
      })
      .catch((err: Error) => {
        connectButton.disabled = false;
        state.textContent = `Cannot connect: ${err.message}`;
      });
  });
  closeButton.addEventListener("click", () => socket?.close(1000, "closed from the console"));
  sendButton.addEventListener("click", () => {
    const text = message.value;
    try {
      JSON.parse(text);
    } catch (err) {
      // Sent anyway: the control plane's answer to malformed JSON is part
      // of what this panel shows.
      record("note", `not valid JSON (${(err as Error).message}); sent as typed`);
    }
    send(text);
  });
  echoButton.addEventListener("click", () =>
    send(JSON.stringify({ id: `echo-${++counter}`, action: "echo", payload: { hello: "world", n: counter } })),
  );
  reportButton.addEventListener("click", () => {
    reportId = `report-${Date.now()}`;
    progress.value = 0;
    progressText.textContent = "queued";
    send(
      JSON.stringify({
        request_id: reportId,
        action: "generate_report",
        payload: { start_date: "2024-01-01", end_date: "2024-01-31", format: "pdf", report_type: "monthly" },
      }),
    );
  });
  joinButton.addEventListener("click", () =>
    send(JSON.stringify({ id: `join-${++counter}`, action: "join", payload: { group: group.value.trim() } })),
  );
  leaveButton.addEventListener("click", () =>
    send(JSON.stringify({ id: `leave-${++counter}`, action: "leave", payload: { group: group.value.trim() } })),
  );
  fill(
    root,
    h("h2", { id: "tryit-h" }, "Try it"),
    h("p", {}, "A WebSocket client in this page, through dev's gateway, with a token dev mints for the user you name."),
    h("div", { class: "card filters" }, field("Tenant", tenant), field("User", user), connectButton, closeButton),
    state,
    h(
      "div",
      { class: "card" },
      field("Message (any action)", message),
      h("div", { class: "row" }, sendButton, echoButton, reportButton),
      h(
        "div",
        { class: "row" },
        field("Group", group, "Members see each other join and leave in groups listed in STREAMER_PRESENCE_GROUPS."),
        joinButton,
        leaveButton,
      ),
      h("div", { class: "row" }, h("span", {}, "Report: "), progress, progressText),
    ),
    h("h3", {}, "Frames (newest first)"),
    log,
  );
  return view;
}
