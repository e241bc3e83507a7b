// A small line chart in SVG: a few series over the last minutes, the
// newest point on the right. No chart library: it is all this page needs.

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

export interface Series {
  name: string;
  points: number[];
}

function el(tag: string, attrs: Record<string, string | number>): SVGElement {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

/** A chart of `series` (each up to `capacity` points) with a legend. */
export function lineChart(title: string, series: Series[], capacity: number, unit = ""): HTMLElement {
  const width = 480;
  const height = 140;
  const pad = 28;
  const max = Math.max(1, ...series.flatMap((s) => s.points));
  const figure = document.createElement("figure");
  figure.className = "chart";
  const latest = series.map((s) => `${s.name} ${fmt(s.points.at(-1) ?? 0)}${unit}`).join(", ");
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title}: ${latest || "no data yet"}` });
  svg.append(el("line", { x1: pad, y1: height - pad, x2: width - 4, y2: height - pad, class: "axis" }));
  svg.append(el("line", { x1: pad, y1: 6, x2: pad, y2: height - pad, class: "axis" }));
  const top = el("text", { x: 2, y: 14, class: "tick" });
  top.textContent = fmt(max);
  svg.append(top);
  const zero = el("text", { x: 2, y: height - pad, class: "tick" });
  zero.textContent = "0";
  svg.append(zero);
  const step = (width - pad - 8) / Math.max(1, capacity - 1);
  series.forEach((s, i) => {
    if (s.points.length === 0) return;
    const offset = capacity - s.points.length;
    const coords = s.points
      .map((v, j) => {
        const x = pad + (offset + j) * step;
        const y = height - pad - (v / max) * (height - pad - 8);
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      })
      .join(" ");
    svg.append(el("polyline", { points: coords, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2 }));
  });
  const caption = document.createElement("figcaption");
  const strong = document.createElement("strong");
  strong.textContent = title;
  caption.append(strong);
  const legend = document.createElement("ul");
  legend.className = "legend";
  series.forEach((s, i) => {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = COLORS[i % COLORS.length];
    li.append(swatch, `${s.name}: ${fmt(s.points.at(-1) ?? 0)}${unit}`);
    legend.append(li);
  });
  caption.append(legend);
  figure.append(svg, caption);
  return figure;
}

function fmt(n: number): string {
  if (Number.isInteger(n)) return String(n);
  return n >= 10 ? n.toFixed(0) : n.toFixed(2);
}

/** A ring of the last `capacity` readings. */
export class History {
  private readonly data = new Map<string, number[]>();
  constructor(readonly capacity: number) {}

  push(name: string, value: number): void {
    const points = this.data.get(name) ?? [];
    points.push(value);
    if (points.length > this.capacity) points.shift();
    this.data.set(name, points);
  }

  series(names?: string[]): Series[] {
    const keys = names ?? [...this.data.keys()];
    return keys.map((name) => ({ name, points: this.data.get(name) ?? [] }));
  }
}
