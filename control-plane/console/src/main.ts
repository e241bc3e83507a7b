// Streamer's console: sign in with a server token, then look at and drive
// the control plane through its own gRPC services (gRPC-Web).

import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { type Api, codeOf, consoleInfo, type ConsoleInfo, describe, link, makeApi, tokenStore } from "./api.js";
import { History, lineChart } from "./chart.js";
import { byId, fill, h, section } from "./dom.js";
import { connectionsView, groupsView, requestsView } from "./views.js";
import { sendView } from "./send.js";
import { tryItView } from "./tryit.js";
import type { TenantSummary } from "./gen/streamer/v1/connections_pb.js";
import type { GetStatsResponse } from "./gen/streamer/v1/admin_pb.js";

export interface Session {
  api: Api;
  token: string;
  /** An operator (the admin API's reads are theirs). */
  admin: boolean;
  /** A `read` operator: the console hides every change (the server refuses them anyway). */
  readOnly: boolean;
  info: ConsoleInfo;
  tenants: TenantSummary[];
  /** The tenant the views show (the toolbar's field). */
  tenant(): string;
}

/** A tab: built once, refreshed every `every` ms while it is shown. */
export interface View {
  id: string;
  label: string;
  root: HTMLElement;
  every: number;
  refresh(): Promise<void>;
}

export const date = (t: Timestamp | undefined): Date | undefined => (t ? timestampDate(t) : undefined);

/** Readings kept for the charts: two minutes at one every two seconds. */
const CHART_POINTS = 60;
const OVERVIEW_EVERY_MS = 2000;

function signInForm(message?: string): void {
  const input = h("input", { type: "password", id: "token", autocomplete: "off", required: true, spellcheck: "false" });
  const error = h("p", { id: "signin-error", class: "error", role: "alert" }, message ?? "");
  const form = h(
    "form",
    { id: "signin", class: "card narrow" },
    h("h2", {}, "Sign in"),
    h("p", {}, "Use the admin token (everything) or a service token (a tenant-bound one sees only its tenant)."),
    h("div", { class: "field" }, h("label", { for: "token" }, "Token"), input),
    h("button", { type: "submit" }, "Sign in"),
    error,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    void signIn(input.value.trim(), error);
  });
  fill(byId("main"), form);
  fill(byId("who"));
  byId("nav").hidden = true;
  byId("toolbar").hidden = true;
  input.focus();
}

async function signIn(token: string, error?: HTMLElement): Promise<void> {
  if (!token) return;
  const api = makeApi(token);
  let admin = false;
  let tenants: TenantSummary[] = [];
  try {
    tenants = (await api.connections.listTenants({})).tenants;
    try {
      await api.admin.getStats({});
      admin = true;
    } catch (err) {
      if (codeOf(err) !== Code.PermissionDenied) throw err;
    }
  } catch (err) {
    tokenStore.clear();
    const code = codeOf(err);
    const why =
      code === Code.Unauthenticated
        ? "That token was refused."
        : code === Code.PermissionDenied
          ? "That token's role may not use the server API."
          : describe(err);
    if (error) error.textContent = why;
    else signInForm(why);
    return;
  }
  tokenStore.set(token);
  let info: ConsoleInfo = { dev: false };
  try {
    info = await consoleInfo(token);
  } catch {
    // the client panel and the name shown only
  }
  const readOnly = info.role === "read";
  start({ api, token, admin, readOnly, info, tenants, tenant: () => tenantField.value.trim() });
}

const tenantField = h("input", { id: "tenant", list: "tenant-list", autocomplete: "off", spellcheck: "false" });

function start(session: Session): void {
  const overview = overviewView(session);
  const views: View[] = [
    overview,
    connectionsView(session),
    groupsView(session),
    requestsView(session),
    ...(session.readOnly ? [] : [sendView(session)]),
    tryItView(session),
  ];
  if (!tenantField.value) {
    // `dev`'s sample user is in tenant `dev`.
    tenantField.value = session.tenants[0]?.tenantId ?? (session.info.dev ? "dev" : "");
  }
  fill(
    byId("toolbar"),
    h("label", { for: "tenant" }, "Tenant"),
    tenantField,
    h("datalist", { id: "tenant-list" }),
  );
  byId("toolbar").hidden = false;
  fill(
    byId("who"),
    h(
      "span",
      { id: "principal" },
      session.info.principal
        ? `${session.info.principal} (${session.info.role})`
        : session.admin
          ? "admin"
          : "service token",
    ),
    h(
      "button",
      {
        type: "button",
        class: "link",
        onclick: () => {
          tokenStore.clear();
          window.location.reload();
        },
      },
      "Sign out",
    ),
  );
  const nav = byId("nav");
  nav.hidden = false;
  const main = byId("main");
  const problems = new Map<View, HTMLElement>();
  for (const v of views) {
    const problem = h("p", { class: "error view-error", role: "alert" });
    problems.set(v, problem);
    v.root.insertBefore(problem, v.root.children[1] ?? null);
  }
  fill(main, ...views.map((v) => v.root));
  let current = views.find((v) => `#${v.id}` === window.location.hash) ?? views[0];
  const due = new Map<View, number>();
  const busy = new Set<View>();
  const show = (view: View): void => {
    current = view;
    for (const v of views) v.root.hidden = v !== view;
    for (const button of nav.querySelectorAll("button")) {
      if (button.dataset.view === view.id) button.setAttribute("aria-current", "page");
      else button.removeAttribute("aria-current");
    }
    due.set(view, 0);
    if (window.location.hash !== `#${view.id}`) history.replaceState(null, "", `#${view.id}`);
    void tick();
  };
  fill(
    nav,
    ...views.map((v) => h("button", { type: "button", "data-view": v.id, onclick: () => show(v) }, v.label)),
  );
  tenantField.addEventListener("change", () => {
    for (const v of views) due.set(v, 0);
    void tick();
  });
  const run = async (view: View): Promise<void> => {
    if (busy.has(view) || Date.now() < (due.get(view) ?? 0)) return;
    busy.add(view);
    const problem = problems.get(view);
    try {
      await view.refresh();
      if (problem) problem.textContent = "";
    } catch (err) {
      if (problem) problem.textContent = describe(err);
      if (codeOf(err) === Code.Unauthenticated) {
        tokenStore.clear();
        signInForm("The token is no longer accepted; sign in again.");
        stopped = true;
      }
    } finally {
      busy.delete(view);
      // While the control plane is away, try again every two seconds.
      due.set(view, Date.now() + (link.down ? 2000 : view.every));
    }
  };
  let stopped = false;
  const tick = async (): Promise<void> => {
    if (stopped || document.hidden) return;
    // The overview's history keeps filling under every tab (its charts
    // need the readings); the tab shown refreshes on its own period.
    await Promise.all([run(overview), current === overview ? Promise.resolve() : run(current)]);
  };
  setInterval(() => void tick(), 250);
  document.addEventListener("visibilitychange", () => void tick());
  show(current);
}

function overviewView(session: Session): View {
  const history = new History(CHART_POINTS);
  const tenantsBox = h("div", { id: "tenants" });
  const deliveryBox = h("div", { id: "delivery" });
  const reconcileBox = h("div", { id: "reconcile" });
  const reconcileResult = h("p", { id: "reconcile-result", role: "status" });
  const runButton = h("button", { type: "button", id: "run-reconcile" }, "Run reconcile now");
  runButton.addEventListener("click", () => {
    runButton.disabled = true;
    reconcileResult.textContent = "running…";
    session.api.admin
      .runReconcile({})
      .then((res) => {
        const r = res.report;
        reconcileResult.textContent = r
          ? r.skipped
            ? "Skipped: another replica holds the reconcile lease."
            : `Done in ${r.durationMs} ms: checked ${r.checked}, removed ${r.removed}, alive ${r.alive}, errors ${r.errors}.`
          : "Done.";
      })
      .catch((err) => (reconcileResult.textContent = describe(err)))
      .finally(() => (runButton.disabled = false));
  });
  const root = section(
    "overview",
    "Overview",
    h("div", { class: "card" }, h("h3", {}, "Connections by tenant"), tenantsBox),
    session.admin ? h("div", { class: "card" }, h("h3", {}, "Delivery (this replica)"), deliveryBox) : null,
    session.admin
      ? h(
          "div",
          { class: "card" },
          h("h3", {}, "Reconcile"),
          reconcileBox,
          session.readOnly ? null : runButton,
          reconcileResult,
        )
      : null,
  );
  let previous: { at: number; stats: GetStatsResponse } | undefined;
  const rates = { broadcasts: 0, messages: 0, delivered: 0, gone: 0, throttled: 0, failed: 0, meanMs: 0 };
  return {
    id: "overview",
    label: "Overview",
    root,
    every: OVERVIEW_EVERY_MS,
    async refresh() {
      const { tenants } = await session.api.connections.listTenants({});
      session.tenants = tenants;
      const list = document.getElementById("tenant-list");
      if (list) fill(list, ...tenants.map((t) => h("option", { value: t.tenantId })));
      if (!tenantField.value && tenants.length > 0) {
        tenantField.value = tenants[0].tenantId;
        tenantField.dispatchEvent(new Event("change"));
      }
      const top = [...tenants].sort((a, b) => Number(b.connections - a.connections)).slice(0, 6);
      for (const t of top) history.push(`tenant ${t.tenantId}`, Number(t.connections));
      const total = tenants.reduce((n, t) => n + Number(t.connections), 0);
      history.push("all", total);
      fill(
        tenantsBox,
        lineChart("Connections", history.series(["all", ...top.map((t) => `tenant ${t.tenantId}`)]), CHART_POINTS),
        tenants.length === 0
          ? h("p", {}, "No connections.")
          : h(
              "table",
              { id: "tenant-table" },
              h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Tenant"), h("th", { scope: "col" }, "Connections"))),
              h(
                "tbody",
                {},
                ...tenants.map((t) =>
                  h("tr", { "data-tenant": t.tenantId }, h("td", {}, t.tenantId), h("td", {}, String(t.connections))),
                ),
              ),
            ),
      );
      if (!session.admin) return;
      const [stats, reconcile] = await Promise.all([
        session.api.admin.getStats({}),
        session.api.admin.getReconcileStatus({}),
      ]);
      const now = performance.now();
      let latency = "—";
      if (previous) {
        const secs = Math.max(0.001, (now - previous.at) / 1000);
        const was = previous.stats;
        const d = (a: bigint, b: bigint): number => Number(a - b) / secs;
        rates.broadcasts = d(stats.broadcasts, was.broadcasts);
        rates.messages = d(stats.messages, was.messages);
        const r = stats.recipients;
        const p = was.recipients;
        if (r && p) {
          rates.delivered = d(r.delivered, p.delivered);
          rates.gone = d(r.gone, p.gone);
          rates.throttled = d(r.throttled, p.throttled);
          rates.failed = d(r.failed + r.tooLarge, p.failed + p.tooLarge);
        }
        const calls = Number(stats.managementApiCalls - was.managementApiCalls);
        rates.meanMs = calls > 0 ? (stats.managementApiMsSum - was.managementApiMsSum) / calls : 0;
        if (calls > 0) {
          const q = (quantile: number): string => {
            const want = quantile * calls;
            for (let i = 0; i < stats.managementApiBucketCounts.length; i++) {
              const seen = Number(stats.managementApiBucketCounts[i] - (was.managementApiBucketCounts[i] ?? 0n));
              if (seen >= want) {
                const upper = stats.managementApiBucketMs[i];
                return upper > 0 ? `≤ ${upper < 1 ? upper.toFixed(1) : upper.toFixed(0)} ms` : "over 3.3 s";
              }
            }
            return "—";
          };
          latency = `mean ${rates.meanMs.toFixed(1)} ms, p50 ${q(0.5)}, p99 ${q(0.99)} (${calls} calls)`;
        } else {
          latency = "no calls in the last interval";
        }
      }
      previous = { at: now, stats };
      history.push("broadcasts/s", rates.broadcasts);
      history.push("messages/s", rates.messages);
      history.push("delivered/s", rates.delivered);
      history.push("gone/s", rates.gone);
      history.push("throttled/s", rates.throttled);
      history.push("failed/s", rates.failed);
      history.push("Management API mean ms", rates.meanMs);
      const rec = stats.recipients;
      fill(
        deliveryBox,
        h(
          "div",
          { class: "charts" },
          lineChart("Broadcasts and client messages per second", history.series(["broadcasts/s", "messages/s"]), CHART_POINTS),
          lineChart(
            "Recipients per second by outcome",
            history.series(["delivered/s", "gone/s", "throttled/s", "failed/s"]),
            CHART_POINTS,
          ),
          lineChart("Management API latency", history.series(["Management API mean ms"]), CHART_POINTS, " ms"),
        ),
        h(
          "p",
          { id: "delivery-totals" },
          `Since start (${stats.uptimeSecs} s ago): ${stats.broadcasts} broadcasts; recipients delivered ${rec?.delivered ?? 0}, ` +
            `gone ${rec?.gone ?? 0}, throttled ${rec?.throttled ?? 0}, too large ${rec?.tooLarge ?? 0}, failed ${rec?.failed ?? 0}; ` +
            `${stats.messages} client messages; ${stats.processors} processors connected.`,
        ),
        h("p", {}, `Management API latency: ${latency}`),
      );
      const last = reconcile.lastRun;
      fill(
        reconcileBox,
        h(
          "p",
          {},
          reconcile.intervalSecs > 0n
            ? `Runs every ${reconcile.intervalSecs} s; checks rows idle over ${reconcile.idleThresholdSecs} s.`
            : "Periodic runs are off.",
        ),
        last
          ? h(
              "p",
              { id: "reconcile-last" },
              `Last run ${date(last.startedAt)?.toLocaleTimeString() ?? "?"}` +
                (last.skipped
                  ? ": skipped (another replica held the lease)."
                  : `: ${last.durationMs} ms, checked ${last.checked}, removed ${last.removed}, alive ${last.alive}, ` +
                    `errors ${last.errors}, counters fixed ${last.countersFixed}, orphans removed ${last.orphansRemoved}.`),
            )
          : h("p", { id: "reconcile-last" }, "No run yet."),
      );
    },
  };
}

function boot(): void {
  const status = byId("status");
  link.listeners.push((down) => {
    status.hidden = false;
    status.className = down ? "banner down" : "banner up";
    status.textContent = down
      ? "The control plane cannot be reached. Retrying every 2 seconds…"
      : "Connected to the control plane again.";
    if (!down) setTimeout(() => (status.hidden = !link.down ? true : status.hidden), 4000);
  });
  // `dev` prints the console's address with the admin token in the
  // fragment (never sent to the server); keep it for this tab only and
  // take it out of the address bar.
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  const fromLink = fragment.get("token");
  if (fromLink) {
    tokenStore.set(fromLink);
    history.replaceState(null, "", window.location.pathname);
  }
  const token = tokenStore.get();
  if (token) void signIn(token);
  else signInForm();
}

boot();
