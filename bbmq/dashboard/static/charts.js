// The overview's charts: one SVG line chart per rate, drawn by hand (no chart library).
"use strict";

// The time the charts span: what the history holds, from one minute up to five.
function chartSpan(points) {
  const held = points.length ? Date.now() - points[0].t : 0;
  return Math.min(HISTORY_MS, Math.max(60000, Math.ceil(held / 30000) * 30000));
}

function niceMax(value) {
  if (value <= 5) return 5;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function drawChart(box, points, series, span) {
  const W = 600, H = 170, left = 48, right = 8, top = 8, bottom = 24;
  const now = Date.now(), from = now - span;
  const shown = points.filter((p) => p.t >= from);
  const max = niceMax(Math.max(0, ...shown.map((p) => p[series.key] || 0)));
  const x = (t) => left + ((t - from) / span) * (W - left - right);
  const y = (v) => top + (1 - v / max) * (H - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
                             "aria-label": `${series.label} per second` });
  for (let i = 0; i <= 2; i += 1) {
    const v = (max / 2) * i;
    chart.append(svg("line", { class: "grid", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
    chart.append(svg("text", { class: "axis", x: left - 6, y: y(v) + 4, "text-anchor": "end" },
                     rate(v)));
  }
  const step = span > 180000 ? 60000 : 30000;
  for (let ago = 0; ago <= span; ago += step) {
    const label = ago === 0 ? "now" : ago % 60000 ? `-${ago / 1000}s` : `-${ago / 60000}m`;
    chart.append(svg("text", { class: "axis", x: x(now - ago), y: H - 6,
                               "text-anchor": ago === 0 ? "end" : ago === span ? "start" : "middle" }, label));
  }
  if (shown.length >= 2) {
    const line = shown.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p[series.key] || 0).toFixed(1)}`).join("");
    const area = `${line}L${x(shown[shown.length - 1].t).toFixed(1)},${y(0)}L${x(shown[0].t).toFixed(1)},${y(0)}Z`;
    chart.append(svg("path", { d: area, fill: series.color, "fill-opacity": 0.08, stroke: "none" }));
    chart.append(svg("path", { d: line, fill: "none", stroke: series.color, "stroke-width": 2,
                               "stroke-linejoin": "round", "data-series": series.key }));
  } else {
    chart.append(svg("text", { class: "axis", x: W / 2, y: H / 2, "text-anchor": "middle" },
                     "collecting the first seconds…"));
  }
  box.replaceChildren(chart);
}
