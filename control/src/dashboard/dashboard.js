// tern dashboard: polls GET /v1/dashboard and draws it. No dependencies.
"use strict";

const POLL_MS = 500;
const SVG = "http://www.w3.org/2000/svg";
let token = null;
let timer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function ms(v) {
  return v < 10 ? v.toFixed(2) + " ms" : v < 1000 ? v.toFixed(1) + " ms" : (v / 1000).toFixed(2) + " s";
}

function clock(unixMs) {
  return new Date(unixMs).toLocaleTimeString([], { hour12: false });
}

function setStatus(kind, text) {
  const s = document.getElementById("status");
  s.dataset.status = kind;
  s.textContent = text;
}

// ---------------------------------------------------------------- token

function readToken() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("tern-token", decodeURIComponent(m[1]));
    // Keep the token out of the address bar (and of screenshots).
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("tern-token");
}

function askToken(why) {
  clearTimeout(timer);
  document.getElementById("main").hidden = true;
  const form = document.getElementById("login");
  form.hidden = false;
  if (why) document.getElementById("login-why").textContent = why;
  setStatus("error", "no access");
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = document.getElementById("token").value.trim();
    if (!t) return;
    sessionStorage.setItem("tern-token", t);
    token = t;
    document.getElementById("login").hidden = true;
    poll();
  });
  token = readToken();
  if (token) poll(); else askToken();
});

// A new link (`#token=...`) opened in the same tab.
window.addEventListener("hashchange", () => {
  const t = readToken();
  if (t) { token = t; poll(); }
});

// ---------------------------------------------------------------- polling

async function poll() {
  clearTimeout(timer);
  try {
    const r = await fetch("/v1/dashboard", { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    if (r.status === 401) {
      sessionStorage.removeItem("tern-token");
      askToken("The control plane refused this token (401): paste the token from the file `token` in its data dir.");
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    const view = await r.json();
    render(view);
    setStatus("live", "live");
  } catch (e) {
    setStatus("error", "control plane unreachable, retrying (" + e.message + ")");
  }
  timer = setTimeout(poll, POLL_MS);
}

function render(v) {
  document.getElementById("main").hidden = false;
  document.getElementById("login").hidden = true;
  document.getElementById("policy").textContent = "policy: " + v.policy;
  renderCapacity(v.capacity);
  document.getElementById("updated").textContent = "updated " + clock(v.now_unix_ms);
  const migrating = new Set(v.in_flight.map((m) => m.app));
  renderNodes(v.nodes, migrating);
  renderApps(v.apps);
  renderMigrations(v, migrating);
  renderDemand(v.demand);
}

// The capacity advice: whether the forecast needs more nodes.
function renderCapacity(c) {
  const span = document.getElementById("capacity");
  if (!c) {
    span.textContent = "";
    return;
  }
  const cores = (m) => (m / 1000).toFixed(2);
  span.textContent = "forecast " + cores(c.forecast_cpu_milli) + " of " + cores(c.capacity_cpu_milli) + " cores" +
    (c.extra_nodes > 0 ? ": add " + c.extra_nodes + " node" + (c.extra_nodes > 1 ? "s" : "") : "");
  span.classList.toggle("short", c.extra_nodes > 0);
}

// ---------------------------------------------------------------- nodes

function bar(label, used, cap, fmt) {
  const frac = cap > 0 ? used / cap : 0;
  const fill = el("div", { class: "fill" + (frac > 1 ? " over" : frac > 0.8 ? " high" : "") });
  fill.style.width = Math.min(100, frac * 100).toFixed(1) + "%";
  return el("div", { class: "bar" },
    el("div", { class: "label" }, el("span", {}, label), el("span", {}, fmt(used) + " / " + fmt(cap) + " (" + (frac * 100).toFixed(0) + "%)")),
    el("div", { class: "track" }, fill));
}

function renderNodes(nodes, migrating) {
  const root = document.getElementById("nodes");
  root.replaceChildren(...nodes.map((n) => {
    const labels = Object.entries(n.labels || {}).map(([k, v]) => k + "=" + v).join(" ");
    return el("div", { class: "node", "data-node": n.name, "data-state": n.state },
      el("h3", {}, el("span", {}, n.name), el("span", { class: "badge " + n.state }, n.state)),
      el("div", { class: "url" }, n.url + (labels ? " · " + labels : "")),
      bar("CPU", n.usage.cpu_milli, n.capacity.cpu_milli, (m) => (m / 1000).toFixed(2) + " cores"),
      bar("memory", n.usage.memory_bytes, n.capacity.memory_bytes, bytes),
      el("div", { class: "chips" }, ...n.apps.map((a) =>
        el("span", { class: "chip" + (migrating.has(a) ? " migrating" : ""), "data-app": a }, a + (migrating.has(a) ? " ⇢" : "")))));
  }));
}

// ---------------------------------------------------------------- apps

function renderApps(apps) {
  const body = document.querySelector("#apps tbody");
  body.replaceChildren(...apps.map((a) => el("tr", { "data-app": a.name, "data-state": a.state, "data-node": a.node || "" },
    el("td", {}, a.name),
    el("td", {}, a.node || "—"),
    el("td", {}, a.state + (a.last_error ? " — " + a.last_error : "")),
    el("td", {}, a.generation),
    el("td", { class: "num" }, bytes(a.memory_bytes)),
    el("td", { class: "num" }, a.requests_served))));
  document.getElementById("apps-empty").hidden = apps.length > 0;
}

// ---------------------------------------------------------------- migrations

function renderMigrations(v, migrating) {
  const now = v.now_unix_ms;
  const running = v.in_flight.map((m) => ({ ...m, status: "running", total_ms: now - m.started_unix_ms }));
  const done = v.migrations.slice().reverse().map((m) => ({ ...m, status: "done" }));
  const rows = running.concat(done);

  const body = document.querySelector("#migrations tbody");
  body.replaceChildren(...rows.map((m) => el("tr", { "data-app": m.app, "data-status": m.status, "data-mode": m.mode, "data-from": m.from, "data-to": m.to },
    el("td", {}, clock(m.started_unix_ms)),
    el("td", {}, m.app),
    el("td", {}, m.mode),
    el("td", {}, m.from + " → " + m.to),
    el("td", {}, m.status === "running" ? "running " + ms(m.total_ms) : "done"),
    el("td", { class: "num downtime" }, m.status === "running" ? "" : ms(m.downtime_ms)),
    el("td", { class: "num" }, m.status === "running" ? "" : ms(m.total_ms)),
    el("td", { class: "num" }, m.status === "running" ? "" : bytes(m.bytes_sent)),
    el("td", { class: "num" }, m.status === "running" ? "" : m.rounds),
    el("td", {}, m.reason || ""))));
  document.getElementById("migrations-empty").hidden = rows.length > 0;
  drawTimeline(rows.slice(0, 12).reverse(), now);
}

function drawTimeline(rows, now) {
  const t = document.getElementById("timeline");
  const W = Math.max(300, t.clientWidth || 900), ROW = 20, TOP = 18;
  const H = rows.length ? TOP + rows.length * ROW + 6 : 0;
  t.style.height = H + "px";
  t.setAttribute("viewBox", "0 0 " + W + " " + H);
  t.replaceChildren();
  if (!rows.length) return;
  const start = Math.min(...rows.map((m) => m.started_unix_ms));
  const t0 = Math.max(start - 1000, now - 10 * 60 * 1000);
  const span = Math.max(30 * 1000, now - t0);
  const LEFT = 190, RIGHT = 10;
  const x = (ms) => LEFT + ((ms - t0) / span) * (W - LEFT - RIGHT);
  t.append(svg("line", { class: "axis", x1: LEFT, x2: W - RIGHT, y1: TOP - 4, y2: TOP - 4 }));
  t.append(svg("text", { x: LEFT, y: 11 }, clock(t0)));
  t.append(svg("text", { x: W - RIGHT, y: 11, "text-anchor": "end" }, "now " + clock(now)));
  rows.forEach((m, i) => {
    const y = TOP + i * ROW;
    const x0 = x(m.started_unix_ms);
    const w = Math.max(3, x(m.started_unix_ms + m.total_ms) - x0);
    t.append(svg("text", { x: 4, y: y + 13 }, m.app + " " + m.mode + " " + m.from + "→" + m.to));
    const span = svg("rect", { class: "span" + (m.status === "running" ? " running" : ""), x: x0, y: y + 3, width: w, height: ROW - 8, rx: 2 });
    span.append(svg("title", {}, m.status === "running" ? "running for " + ms(m.total_ms) : "total " + ms(m.total_ms) + ", downtime " + ms(m.downtime_ms)));
    t.append(span);
    if (m.status === "done") {
      // The pause is the last part of a move: mark it at the bar's end.
      const dw = Math.max(2, x(m.started_unix_ms + m.downtime_ms) - x(m.started_unix_ms));
      t.append(svg("rect", { class: "down", x: x0 + w - dw, y: y + 1, width: dw, height: ROW - 4 }));
      t.append(svg("text", { x: Math.min(x0 + w + 4, W - 80), y: y + 13 }, "down " + ms(m.downtime_ms)));
    } else {
      t.append(svg("text", { x: Math.min(x0 + w + 4, W - 80), y: y + 13 }, "running"));
    }
  });
}

// ---------------------------------------------------------------- demand

function renderDemand(demand) {
  const root = document.getElementById("demand");
  const apps = Object.keys(demand).filter((a) => demand[a].length > 0);
  root.replaceChildren(...apps.map((a) => chart(a, demand[a])));
  document.getElementById("demand-empty").hidden = apps.length > 0;
}

function chart(app, pts) {
  const W = 360, H = 140, L = 40, R = 6, T = 8, B = 16;
  const max = Math.max(10, ...pts.map((p) => Math.max(p.actual_cpu, p.upper_cpu || 0, p.predicted_cpu || 0))) * 1.1;
  const i0 = pts[0].index, i1 = Math.max(pts[pts.length - 1].index, i0 + 1);
  const x = (i) => L + ((i - i0) / (i1 - i0)) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const s = svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", "data-app": app });
  for (const f of [0, 0.5, 1]) {
    s.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }));
    s.append(svg("text", { x: L - 4, y: y(max * f) + 3, "text-anchor": "end" }, Math.round(max * f) + "m"));
  }
  const pred = pts.filter((p) => p.predicted_cpu !== null);
  if (pred.length) {
    const upper = pred.map((p) => x(p.index) + "," + y(p.upper_cpu));
    const lower = pred.slice().reverse().map((p) => x(p.index) + "," + y(p.predicted_cpu));
    s.append(svg("polygon", { class: "band", points: upper.concat(lower).join(" ") }));
    s.append(svg("polyline", { class: "line-predicted", points: pred.map((p) => x(p.index) + "," + y(p.predicted_cpu)).join(" ") }));
  }
  s.append(svg("polyline", { class: "line-actual", points: pts.map((p) => x(p.index) + "," + y(p.actual_cpu)).join(" ") }));
  s.append(svg("text", { x: L, y: H - 3 }, pts.length + " periods"));

  // Mean absolute error of the model, and of "same as last period", on
  // the same periods (those the model predicted).
  let n = 0, model = 0, naive = 0;
  for (let k = 1; k < pts.length; k++) {
    if (!pts[k].model || pts[k].predicted_cpu === null) continue;
    n++;
    model += Math.abs(pts[k].predicted_cpu - pts[k].actual_cpu);
    naive += Math.abs(pts[k - 1].actual_cpu - pts[k].actual_cpu);
  }
  const stat = n ? "error: model " + (model / n).toFixed(0) + "m · last value " + (naive / n).toFixed(0) + "m (" + n + " periods)"
                 : "no model yet: predicting the last value";
  return el("div", { class: "chart", "data-app": app },
    el("h3", {}, el("span", {}, app), el("span", { class: "stat" }, stat)), s);
}
