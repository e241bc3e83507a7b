// A few DOM helpers. Every text from the server goes in as text
// (textContent), never as HTML: connection ids, user agents and results are
// whatever clients sent.

type Child = Node | string | number | null | undefined | false;
type Attr = string | number | boolean | EventListener | undefined | null;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, Attr> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, ...children);
  return el;
}

export function append(el: Element, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces an element's children. */
export function fill(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, ...children);
}

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el as T;
}

/** A labelled form field: <label for> + the control. */
export function field(label: string, control: HTMLElement, hint?: string): HTMLElement {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  const wrap = h("div", { class: "field" }, h("label", { for: id }, label), control);
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    wrap.append(h("small", { id: hintId, class: "hint" }, hint));
  }
  return wrap;
}

export function table(headers: string[], rows: Child[][], caption?: string): HTMLTableElement {
  return h(
    "table",
    {},
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, ...headers.map((text) => h("th", { scope: "col" }, text)))),
    h("tbody", {}, ...rows.map((row) => h("tr", {}, ...row.map((cell) => h("td", {}, cell))))),
  );
}

export function when(date: Date | undefined): string {
  if (!date || Number.isNaN(date.getTime()) || date.getTime() === 0) return "—";
  return date.toLocaleTimeString(undefined, { hour12: false }) + " " + date.toLocaleDateString();
}

export function pretty(text: string, max = 2000): string {
  let out = text;
  try {
    out = JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    // not JSON: shown as it is
  }
  return out.length > max ? `${out.slice(0, max)}… (${out.length} characters)` : out;
}

/** A view's section: its heading (which labels it) and its content. */
export function section(id: string, title: string, ...children: Child[]): HTMLElement {
  return h("section", { id, "aria-labelledby": `${id}-h` }, h("h2", { id: `${id}-h` }, title), ...children);
}

/**
 * Brings `tbody` to one row per item, in order, keeping the rows whose
 * `signature` has not changed: a refresh every second or two must not
 * replace a button under the operator's pointer (a click that lands on a
 * row being replaced is lost). `patch`, when given, updates a kept row in
 * place (a progress bar) without replacing it.
 */
export function syncRows<T>(
  tbody: HTMLElement,
  items: T[],
  key: (item: T) => string,
  signature: (item: T) => string,
  render: (item: T) => HTMLElement,
  patch?: (row: HTMLElement, item: T) => void,
): void {
  const existing = new Map<string, HTMLElement>();
  for (const row of Array.from(tbody.children) as HTMLElement[]) {
    if (row.dataset.key !== undefined) existing.set(row.dataset.key, row);
  }
  const rows = items.map((item) => {
    const k = key(item);
    const sig = signature(item);
    const kept = existing.get(k);
    if (kept && kept.dataset.sig === sig) {
      patch?.(kept, item);
      return kept;
    }
    const row = render(item);
    row.dataset.key = k;
    row.dataset.sig = sig;
    return row;
  });
  rows.forEach((row, i) => {
    if (tbody.children[i] !== row) tbody.insertBefore(row, tbody.children[i] ?? null);
  });
  while (tbody.children.length > rows.length) tbody.lastElementChild?.remove();
}

/** A table with a fixed head and a body for [`syncRows`], and what to show
 * when it has no rows. */
export function liveTable(id: string, headers: string[], empty: string): { root: HTMLElement; body: HTMLElement; setEmpty(isEmpty: boolean): void } {
  const body = h("tbody");
  const table = h("table", { id }, h("thead", {}, h("tr", {}, ...headers.map((t) => h("th", { scope: "col" }, t)))), body);
  const none = h("p", {}, empty);
  const root = h("div", {}, table, none);
  return {
    root,
    body,
    setEmpty(isEmpty: boolean) {
      table.hidden = isEmpty;
      none.hidden = !isEmpty;
    },
  };
}
