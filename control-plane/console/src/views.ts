// The tabs that list what the control plane holds: connections, groups,
// long-running requests.

import { describe } from "./api.js";
import { field, fill, h, liveTable, pretty, section, syncRows, when } from "./dom.js";
import type { Session, View } from "./main.js";
import { date } from "./main.js";
import type { Connection } from "./gen/streamer/v1/connections_pb.js";
import { type Request, RequestStatus } from "./gen/streamer/v1/requests_pb.js";

const PAGE_SIZE = 25;

function plural(n: bigint, noun: string): string {
  return `${n} ${noun}${n === 1n ? "" : "s"}`;
}

function needTenant(box: HTMLElement, session: Session): string | null {
  const tenant = session.tenant();
  if (!tenant) {
    fill(box, h("p", {}, "Choose a tenant above."));
    return null;
  }
  return tenant;
}

export function connectionsView(session: Session): View {
  const user = h("input", { id: "conn-user", autocomplete: "off", spellcheck: "false" });
  const group = h("input", { id: "conn-group", autocomplete: "off", spellcheck: "false" });
  const lookup = h("input", { id: "conn-id", autocomplete: "off", spellcheck: "false" });
  const summary = h("p", { id: "conn-summary", role: "status" });
  const table = liveTable("conn-table", ["Connection", "User", "Connected", "Last seen", "Source IP", ""], "None.");
  const list = h("div", { id: "conn-list" }, table.root);
  const details = h("div", { id: "conn-details", "aria-live": "polite" });
  const message = h("p", { id: "conn-message", role: "status" });
  // Page tokens of the pages before this one, for "Previous".
  let pages: string[] = [];
  let pageToken = "";
  let next = "";
  let selected: string | null = null;
  const prev = h("button", { type: "button", id: "conn-prev", disabled: true }, "Previous page");
  const nextButton = h("button", { type: "button", id: "conn-next", disabled: true }, "Next page");
  const form = h(
    "form",
    { class: "filters", id: "conn-filters" },
    field("User (optional)", user),
    field("Group (optional)", group),
    h("button", { type: "submit" }, "Show"),
    field("Connection id", lookup),
    h("button", { type: "button", id: "conn-lookup" }, "Look up"),
  );
  const view: View = {
    id: "connections",
    label: "Connections",
    every: 2000,
    root: section(
      "connections",
      "Connections",
      form,
      summary,
      list,
      h("div", { class: "pager" }, prev, nextButton),
      message,
      details,
    ),
    async refresh() {
      const tenant = session.tenant();
      if (!tenant) {
        summary.textContent = "Choose a tenant above.";
        table.setEmpty(true);
        return;
      }
      const groupName = group.value.trim();
      const userId = user.value.trim();
      let connections: Connection[];
      if (groupName) {
        const [page, count] = await Promise.all([
          session.api.groups.listGroupMembers({ tenantId: tenant, group: groupName, pageSize: PAGE_SIZE, pageToken }),
          session.api.groups.countGroupMembers({ tenantId: tenant, group: groupName }),
        ]);
        connections = page.connections;
        next = page.nextPageToken;
        summary.textContent = `${plural(count.count, "member")} of group ${groupName} in tenant ${tenant}`;
      } else {
        const [page, count] = await Promise.all([
          session.api.connections.listConnections({ tenantId: tenant, userId, pageSize: PAGE_SIZE, pageToken }),
          session.api.connections.countConnections({ tenantId: tenant, userId }),
        ]);
        connections = page.connections;
        next = page.nextPageToken;
        summary.textContent = userId
          ? `${plural(count.count, "connection")} of user ${userId} in tenant ${tenant}`
          : `${plural(count.count, "connection")} in tenant ${tenant}`;
      }
      prev.disabled = pages.length === 0;
      nextButton.disabled = next === "";
      table.setEmpty(connections.length === 0);
      syncRows(
        table.body,
        connections,
        (c) => c.connectionId,
        (c) => [c.userId, c.lastSeen?.seconds ?? 0, c.sourceIp, c.connectionId === selected].join("\u0000"),
        (c) =>
          h(
            "tr",
            { "data-connection-id": c.connectionId, class: c.connectionId === selected ? "selected" : undefined },
            h("td", { class: "mono" }, c.connectionId),
            h("td", {}, c.userId),
            h("td", {}, when(date(c.connectedAt))),
            h("td", {}, when(date(c.lastSeen))),
            h("td", {}, c.sourceIp),
            h(
              "td",
              { class: "actions" },
              h(
                "button",
                { type: "button", "aria-label": `Details of ${c.connectionId}`, onclick: () => select(c.connectionId) },
                "Details",
              ),
              session.readOnly
                ? null
                : h(
                    "button",
                    {
                      type: "button",
                      class: "danger",
                      "aria-label": `Disconnect ${c.connectionId}`,
                      onclick: () => disconnect(c.connectionId),
                    },
                    "Disconnect",
                  ),
            ),
          ),
      );
      if (selected) await showDetails(selected);
    },
  };
  const reload = (): void => {
    void view.refresh().catch((err) => (message.textContent = describe(err)));
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    pages = [];
    pageToken = "";
    message.textContent = "";
    reload();
  });
  prev.addEventListener("click", () => {
    pageToken = pages.pop() ?? "";
    reload();
  });
  nextButton.addEventListener("click", () => {
    if (!next) return;
    pages.push(pageToken);
    pageToken = next;
    reload();
  });
  byIdLater(form, "conn-lookup", () => {
    const id = lookup.value.trim();
    if (id) select(id);
  });
  const select = (id: string): void => {
    selected = id;
    void showDetails(id);
  };
  const showDetails = async (id: string): Promise<void> => {
    try {
      const [one, groups] = await Promise.all([
        session.api.connections.getConnection({ connectionId: id }),
        session.api.groups.listConnectionGroups({ connectionId: id }),
      ]);
      const c = one.connection;
      if (!c) return;
      // Unchanged: keep the card (and its button) as it is.
      const sig = [c.connectionId, c.lastSeen?.seconds ?? 0, groups.groups.join(",")].join("\u0000");
      if (details.dataset.sig === sig) return;
      details.dataset.sig = sig;
      fill(
        details,
        h(
          "div",
          { class: "card" },
          h("h3", {}, `Connection ${c.connectionId}`),
          h(
            "dl",
            {},
            ...(
              [
                ["Tenant", c.tenantId],
                ["User", c.userId],
                ["Connected", when(date(c.connectedAt))],
                ["Last seen", when(date(c.lastSeen))],
                ["Permissions", c.permissions.join(", ") || "none"],
                ["Groups", groups.groups.join(", ") || "none"],
                ["Source IP", c.sourceIp],
                ["User agent", c.userAgent],
                ["Management endpoint", c.endpoint],
              ] as [string, string][]
            ).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
          ),
          session.readOnly
            ? null
            : h("button", { type: "button", class: "danger", onclick: () => disconnect(c.connectionId) }, "Disconnect"),
        ),
      );
    } catch (err) {
      details.dataset.sig = "";
      fill(details, h("p", { class: "error" }, `${id}: ${describe(err)}`));
      if (selected === id) selected = null;
    }
  };
  const disconnect = (id: string): void => {
    if (!window.confirm(`Close connection ${id}? The client may reconnect.`)) return;
    session.api.connections
      .disconnectConnection({ connectionId: id })
      .then((res) => {
        message.textContent = res.closed
          ? `Closed ${id}.`
          : `${id} was already gone at the gateway; its row is removed.`;
        if (selected === id) {
          selected = null;
          details.dataset.sig = "";
          fill(details);
        }
        reload();
      })
      .catch((err) => (message.textContent = describe(err)));
  };
  return view;
}

function byIdLater(scope: HTMLElement, id: string, onClick: () => void): void {
  scope.querySelector(`#${id}`)?.addEventListener("click", onClick);
}

export function groupsView(session: Session): View {
  const groupTable = liveTable("group-table", ["Group", "Members", ""], "No groups in this tenant.");
  const truncated = h("p", { hidden: true }, "The tenant has more connections than were walked; some groups may be missing.");
  const list = h("div", { id: "group-list" }, groupTable.root, truncated);
  const members = h("div", { id: "group-members" });
  let selected: string | null = null;
  return {
    id: "groups",
    label: "Groups",
    every: 3000,
    root: section(
      "groups",
      "Groups",
      list,
      members,
    ),
    async refresh() {
      const tenant = session.tenant();
      if (!tenant) {
        groupTable.setEmpty(true);
        return;
      }
      const res = await session.api.groups.listGroups({ tenantId: tenant });
      groupTable.setEmpty(res.groups.length === 0);
      truncated.hidden = !res.truncated;
      syncRows(
        groupTable.body,
        res.groups,
        (g) => g.group,
        (g) => `${g.members}\u0000${tenant}`,
        (g) =>
          h(
            "tr",
            { "data-group": g.group },
            h("td", {}, g.group),
            h("td", {}, String(g.members)),
            h(
              "td",
              {},
              h(
                "button",
                {
                  type: "button",
                  "aria-label": `Members of ${g.group}`,
                  onclick: () => {
                    selected = g.group;
                    void showMembers(tenant);
                  },
                },
                "Members",
              ),
            ),
          ),
      );
      if (selected) await showMembers(tenant);
    },
  };
  async function showMembers(tenant: string): Promise<void> {
    if (!selected) return;
    const res = await session.api.groups.listGroupMembers({ tenantId: tenant, group: selected, pageSize: 100 });
    fill(
      members,
      h("h3", {}, `Members of ${selected}`),
      h(
        "ul",
        { id: "member-list" },
        ...res.connections.map((c) => h("li", {}, h("span", { class: "mono" }, c.connectionId), ` — user ${c.userId}`)),
      ),
      res.nextPageToken ? h("p", {}, "Showing the first 100.") : null,
    );
  }
}

const FINISHED = [RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.CANCELLED, RequestStatus.EXPIRED];

function statusName(status: RequestStatus): string {
  return (RequestStatus[status] ?? "UNKNOWN").toLowerCase();
}

export function requestsView(session: Session): View {
  const liveRequests = liveTable("req-active-table", ["Request", "Action", "User", "Status", "Progress", ""], "None.");
  const active = h("div", { id: "req-active" }, liveRequests.root);
  const finished = h("div", { id: "req-finished" });
  const processors = h("div", { id: "processors" });
  const message = h("p", { id: "req-message", role: "status" });
  let round = 0;
  const cancel = (tenant: string, id: string): void => {
    session.api.requests
      .cancelRequest({ tenantId: tenant, requestId: id })
      .then((res) => {
        message.textContent = `Request ${id}: ${statusName(res.request?.status ?? RequestStatus.UNSPECIFIED)}.`;
      })
      .catch((err) => (message.textContent = `Request ${id}: ${describe(err)}`));
  };
  return {
    id: "requests",
    label: "Requests",
    every: 1000,
    root: section(
      "requests",
      "Long-running requests",
      message,
      h("div", { class: "card" }, h("h3", {}, "Queued and running"), active),
      h("div", { class: "card" }, h("h3", {}, "Finished (latest)"), finished),
      h("div", { class: "card" }, h("h3", {}, "Processors"), processors),
    ),
    async refresh() {
      const tenant = needTenant(finished, session);
      if (!tenant) {
        liveRequests.setEmpty(true);
        return;
      }
      const [queued, running] = await Promise.all(
        [RequestStatus.QUEUED, RequestStatus.RUNNING].map((status) =>
          session.api.requests.listRequests({ tenantId: tenant, status, pageSize: 100 }),
        ),
      );
      const live = [...running.requests, ...queued.requests];
      liveRequests.setEmpty(live.length === 0);
      syncRows(
        liveRequests.body,
        live,
        (r) => r.requestId,
        (r) => [r.status, r.userId, r.action].join("\u0000"),
        (r) => activeRow(r, tenant),
        (row, r) => {
          const bar = row.querySelector("progress");
          const label = row.querySelector(".progress-text");
          if (bar) bar.value = r.progress?.percentage ?? 0;
          if (label) label.textContent = ` ${r.progress?.percentage ?? 0}% ${r.progress?.message ?? ""}`;
        },
      );
      // Finished ones and processors change less often: every third round.
      if (round++ % 3 !== 0) return;
      const [done, procs] = await Promise.all([
        Promise.all(
          FINISHED.map((status) => session.api.requests.listRequests({ tenantId: tenant, status, pageSize: 50 })),
        ),
        session.api.requests.listProcessors({}),
      ]);
      const latest = done
        .flatMap((page) => page.requests)
        .sort((a, b) => (date(b.updatedAt)?.getTime() ?? 0) - (date(a.updatedAt)?.getTime() ?? 0))
        .slice(0, 20);
      fill(
        finished,
        latest.length === 0
          ? h("p", {}, "None yet.")
          : h(
              "table",
              { id: "req-finished-table" },
              h("thead", {}, h("tr", {}, ...["Request", "Action", "Status", "Finished", "Result or error"].map((t) => h("th", { scope: "col" }, t)))),
              h(
                "tbody",
                {},
                ...latest.map((r) =>
                  h(
                    "tr",
                    { "data-request-id": r.requestId, "data-status": statusName(r.status) },
                    h("td", { class: "mono" }, r.requestId),
                    h("td", {}, r.action),
                    h(
                      "td",
                      {},
                      h("progress", {
                        max: 100,
                        value: r.status === RequestStatus.COMPLETED ? 100 : (r.progress?.percentage ?? 0),
                        "aria-label": `Progress of ${r.requestId}`,
                      }),
                      ` ${statusName(r.status)}`,
                    ),
                    h("td", {}, when(date(r.updatedAt))),
                    h(
                      "td",
                      {},
                      r.error
                        ? h("span", { class: "error" }, `${r.error.code}: ${r.error.message}`)
                        : h("pre", {}, pretty(r.resultJson, 600)),
                    ),
                  ),
                ),
              ),
            ),
      );
      fill(
        processors,
        procs.processors.length === 0
          ? h("p", {}, "No processor is connected.")
          : h(
              "table",
              { id: "processor-table" },
              h("thead", {}, h("tr", {}, ...["Processor", "Tenant", "Actions", "In flight"].map((t) => h("th", { scope: "col" }, t)))),
              h(
                "tbody",
                {},
                ...procs.processors.map((p) =>
                  h(
                    "tr",
                    {},
                    h("td", {}, p.name || p.sessionId),
                    h("td", {}, p.tenantId || "any"),
                    h("td", {}, p.actions.join(", ")),
                    h("td", {}, `${p.inFlight} / ${p.concurrency}`),
                  ),
                ),
              ),
            ),
      );
    },
  };

  function activeRow(r: Request, tenant: string): HTMLElement {
    const pct = r.progress?.percentage ?? 0;
    return h(
      "tr",
      { "data-request-id": r.requestId, "data-status": statusName(r.status) },
      h("td", { class: "mono" }, r.requestId),
      h("td", {}, r.action),
      h("td", {}, r.userId),
      h("td", {}, statusName(r.status)),
      h(
        "td",
        {},
        h("progress", { max: 100, value: pct, "aria-label": `Progress of ${r.requestId}` }),
        h("span", { class: "progress-text" }, ` ${pct}% ${r.progress?.message ?? ""}`),
      ),
      h(
        "td",
        {},
        session.readOnly
          ? null
          : h(
              "button",
              { type: "button", class: "danger", "aria-label": `Cancel ${r.requestId}`, onclick: () => cancel(tenant, r.requestId) },
              "Cancel",
            ),
      ),
    );
  }
}
