// The host's dashboard. Every value from the host is rendered with textContent or
// setAttribute (never innerHTML): message texts and push names are attacker-controlled.
"use strict";

const KEY_STORAGE = "waclient-api-key";
const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
let timer = null;
let qrUrl = null;
let refreshes = 0;

class Unavailable extends Error {}

function $(id) { return document.getElementById(id); }

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

async function call(path, options) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const headers = Object.assign({ "X-API-Key": key || "" }, (options || {}).headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (response.status === 404) throw new Unavailable(path);
  if (response.status === 401) throw new Error("wrong API key (401)");
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).message || message; } catch (e) { /* not JSON */ }
    throw new Error(path + ": " + message);
  }
  return response;
}

async function json(path, options) { return (await call(path, options)).json(); }

function fill(target, pairs) {
  target.replaceChildren();
  for (const [name, value] of pairs) {
    target.append(el("dt", name), el("dd", value === null || value === undefined ? "—" : value));
  }
}

function table(target, head, rows) {
  const t = el("table");
  const tr = el("tr");
  for (const h of head) tr.append(el("th", h));
  t.append(tr);
  for (const row of rows) {
    const r = el("tr");
    for (const cell of row) {
      const td = el("td");
      if (cell instanceof Node) td.append(cell); else td.textContent = cell === null || cell === undefined ? "—" : String(cell);
      r.append(td);
    }
    t.append(r);
  }
  target.replaceChildren(t);
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function when(seconds) { return new Date(seconds * 1000).toISOString(); }

function unavailable(target, what) {
  target.replaceChildren(el("p", what + ": not available on this host"));
}

async function section(run, target, what) {
  try { await run(); } catch (error) {
    if (error instanceof Unavailable) unavailable(target, what); else throw error;
  }
}

async function showSession() {
  const s = await json("/session");
  fill($("session-state"), [
    ["state", s.state], ["connected", s.connected ? "yes" : "no"], ["transport", s.transport],
    ["attempts", s.attempts], ["failures in a row", s.failures_in_a_row], ["last error", s.last_error],
    ["worker rss", s.worker ? bytes(s.worker.rss) : null],
    ["worker recycles", s.worker ? s.worker.recycles : null],
    ["host restarts of the session", s.healing ? s.healing.restarts : null],
    ["next restart", s.healing && s.healing.next_restart_at ? when(s.healing.next_restart_at) : null],
    ["gave up", s.healing ? s.healing.gave_up : null],
    ["advice", s.healing ? s.healing.advice : null],
  ]);
  $("pair-form").hidden = !s.pair_code_supported || s.connected;
  if (s.qr_available) await showQr();
  else {
    $("qr").hidden = true;
    $("qr-note").textContent = s.connected ? "Paired." : "No QR code yet.";
  }
}

async function showQr() {
  try {
    const blob = await (await call("/session/qr.png")).blob();
    const previous = qrUrl;
    qrUrl = URL.createObjectURL(blob);
    $("qr").src = qrUrl;
    $("qr").hidden = false;
    $("qr-note").textContent = "Scan with WhatsApp: Settings > Linked devices > Link a device.";
    if (previous) URL.revokeObjectURL(previous);
  } catch (error) {
    if (!(error instanceof Unavailable)) throw error;
    $("qr").hidden = true;
  }
}

async function showMemory() {
  const m = await json("/health/memory");
  const s = m.snapshot || {};
  const g = m.guard || {};
  const limits = g.limits || {};
  fill($("memory-now"), [
    ["rss", bytes(s.rss)], ["pss", bytes(s.pss)], ["python blocks", s.py_blocks],
    ["fds", s.fds], ["threads", s.threads], ["tasks", s.tasks],
    ["guard level", g.level], ["soft limit", bytes(limits.soft)], ["hard limit", bytes(limits.hard)],
    ["worker rss", m.worker ? bytes(m.worker.rss) : null],
  ]);
  await section(() => showHistory(limits), $("chart"), "memory history");
}

async function showHistory(limits) {
  let trend = null;
  try { trend = await json("/health/memory/trend"); } catch (error) {
    if (!(error instanceof Unavailable)) throw error;
  }
  const verdict = $("trend-verdict");
  verdict.replaceChildren();
  if (trend) {
    verdict.append("Verdict: ", el("span", trend.status, { class: trend.status, id: "verdict" }),
      " (" + trend.samples + " samples)");
  } else verdict.textContent = "Trend verdict: not available on this host";
  let restarts = [];
  try { restarts = ((await json("/health/runs")).runs || []).map((r) => r.started); } catch (error) {
    if (!(error instanceof Unavailable)) throw error;
  }
  const history = await json("/health/memory/history?channels=rss");
  const rss = (history.channels || {}).rss;
  const chart = $("chart");
  chart.replaceChildren();
  if (!rss || !history.t || history.t.length < 2) {
    chart.append(el("p", "Not enough history yet (" + (history.t || []).length + " samples)."));
    return;
  }
  const ch = trend && trend.channels && trend.channels.rss;
  chart.append(drawChart(history.t, rss.values, ch,
    { soft: trend ? trend.soft_limit : limits.soft, hard: trend ? trend.hard_limit : limits.hard }, restarts));
  if (ch) chart.append(el("p", "rss: " + ch.status + ", " + bytes(ch.slope_per_hour) + "/h" +
    (ch.hours_to_hard_limit ? ", hard limit in " + Number(ch.hours_to_hard_limit).toFixed(1) + " h" : "") +
    (ch.reason ? " — " + ch.reason : "")));
}

function drawChart(t, values, channel, limits, restarts) {
  const W = 600, H = 200, P = 40;
  const lines = [limits.soft, limits.hard].filter((x) => typeof x === "number");
  const lo = Math.min(...values) * 0.95;
  const hi = Math.max(...values, ...lines) * 1.02;
  const t0 = t[0], t1 = t[t.length - 1] || t0 + 1;
  const x = (v) => P + (W - 2 * P) * (v - t0) / Math.max(1, t1 - t0);
  const y = (v) => H - P / 2 - (H - P) * (v - lo) / Math.max(1, hi - lo);
  const root = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", role: "img", "aria-label": "rss over time" });
  const points = values.map((v, i) => x(t[i]).toFixed(1) + "," + y(v).toFixed(1)).join(" ");
  root.append(svg("polyline", { points, class: "line" }));
  for (const [name, v] of [["soft", limits.soft], ["hard", limits.hard]]) {
    if (typeof v !== "number") continue;
    root.append(svg("line", { x1: P, x2: W - P, y1: y(v), y2: y(v), class: "limit" }));
    const label = svg("text", { x: W - P + 2, y: y(v) + 4 });
    label.textContent = name;
    root.append(label);
  }
  for (const started of restarts) {
    if (started < t0 || started > t1) continue;
    root.append(svg("line", { x1: x(started), x2: x(started), y1: P / 2, y2: H - P / 2, class: "restart" }));
  }
  if (channel && typeof channel.slope_per_hour === "number") {
    const mid = t[Math.floor(t.length / 2)], vmid = values[Math.floor(values.length / 2)];
    const at = (tt) => vmid + channel.slope_per_hour * (tt - mid) / 3600;
    root.append(svg("polyline", { points: x(t0) + "," + y(at(t0)) + " " + x(t1) + "," + y(at(t1)), class: "trend" }));
  }
  const top = svg("text", { x: 2, y: 12 });
  top.textContent = bytes(hi);
  const bottom = svg("text", { x: 2, y: H - 4 });
  bottom.textContent = bytes(lo);
  root.append(top, bottom);
  return root;
}

async function showRuns() {
  const r = await json("/health/runs");
  const target = $("runs-body");
  target.replaceChildren(el("p", "uptime " + Math.round(r.uptime_s) + " s, restarts 24 h: " +
    r.restarts_24h + ", 7 d: " + r.restarts_7d));
  const box = el("div");
  table(box, ["started", "ended", "end", "version", "pid"], (r.runs || []).map((run) => [
    when(run.started), run.ended ? when(run.ended) : null,
    run.end, run.version, run.pid]));
  target.append(box);
}

async function showRedis() {
  const r = await json("/health/redis");
  const pairs = [["configured", r.configured ? "yes" : "no"], ["up", r.up === null ? null : r.up ? "yes" : "no"],
    ["latency", r.probe && r.probe.latency !== null ? (r.probe.latency * 1000).toFixed(1) + " ms" : null]];
  for (const [name, st] of Object.entries(r.recorders || {})) {
    pairs.push(["recorder " + name, (st.up ? "up" : "down") + ", written " + st.written + ", dropped " + st.dropped]);
  }
  fill($("redis-state"), pairs);
}

async function showWebhooks() {
  const target = $("webhooks-body");
  try {
    const w = await json("/webhooks");
    table(target, ["url", "delivered", "failed", "backlog", "dead letters", ""], w.endpoints.map((e) => {
      const s = e.stats || {};
      const button = el("button", "Replay", { "data-endpoint": e.id, class: "replay" });
      button.disabled = !s.dead_letters;
      button.addEventListener("click", () => replay(e.id, button));
      return [e.url, s.delivered, s.failed, s.backlog, s.dead_letters, button];
    }));
  } catch (error) {
    if (error instanceof Unavailable) unavailable(target, "webhooks"); else throw error;
  }
}

async function replay(id, button) {
  button.disabled = true;
  try {
    const r = await json("/webhooks/" + encodeURIComponent(id) + "/replay", { method: "POST" });
    button.textContent = "Replayed " + r.replayed;
  } catch (error) { showError(error); }
}

async function showScheduled() {
  const target = $("scheduled-body");
  const s = await json("/scheduled");
  table(target, ["chat", "text", "kind", "next run", "runs", "failures"],
    s.jobs.map((j) => [j.chat, j.text, j.cron || j.kind, j.next_run, j.runs, j.failures]));
}

function showError(error) { $("error").textContent = error.message; }

async function refresh() {
  const parts = [
    [showSession, $("session-state"), "session"], [showMemory, $("memory-now"), "memory"],
    [showRuns, $("runs-body"), "run history"], [showRedis, $("redis-state"), "redis"],
    [showWebhooks, $("webhooks-body"), "webhooks"], [showScheduled, $("scheduled-body"), "scheduled jobs"],
  ];
  const results = await Promise.allSettled(parts.map(([run, target, what]) => section(run, target, what)));
  const failed = results.find((r) => r.status === "rejected");
  $("error").textContent = failed ? failed.reason.message : "";
  refreshes += 1;
  document.body.dataset.refreshes = String(refreshes);  // done: what the page shows is current
}

async function open() {
  try { await json("/session"); } catch (error) {
    sessionStorage.removeItem(KEY_STORAGE);
    $("login-error").textContent = error.message;
    return;
  }
  $("login-error").textContent = "";
  $("login").hidden = true;
  $("panels").hidden = false;
  $("logout").hidden = false;
  timer = setInterval(refresh, REFRESH_MS);
  await refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("key").value);
    open();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    clearInterval(timer);
    location.reload();
  });
  $("pair-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const r = await json("/session/pair-code", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ phone: $("phone").value }) });
      $("pair-code").textContent = "Type this code on the phone: " + r.code;
    } catch (error) { $("pair-code").textContent = error.message; }
  });
  if (sessionStorage.getItem(KEY_STORAGE)) open();
});
