// The console page: reads the monitor's JSON once a second (each panel on its own,
// so one slow or failing endpoint leaves the others drawn), draws the history the
// server keeps (/console/history.json: the last hour, one sample a second), and
// tails a subject over NATS (ConsoleNats, as the console identity).
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === undefined || n === null ? "-" : Number(n).toLocaleString("en"));
const rate = (n) => (n === undefined || n === null ? "-" : Number(n).toLocaleString("en", { maximumFractionDigits: n < 10 ? 1 : 0 }));

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(tableId, rows, render) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  for (const r of rows) render(body.insertRow(), r);
}

async function getJSON(path) {
  // (An answer that never comes must not stop the page's next rounds.)
  const response = await fetch(path, { cache: "no-store", signal: AbortSignal.timeout(10000) });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

// -- history: the server's samples, drawn over the chosen window ---------------------
const HISTORY_SIZE = 3600;
const history = { t: [] };
let historySize = HISTORY_SIZE;
let charts = null;

function chartWidth() {
  return Math.max(320, Math.floor(($("chart-msgs").parentElement.clientWidth - 32) / 3));
}

function makeCharts() {
  const width = chartWidth();
  // Two lines that are often equal (in = out with one subscriber per message):
  // "in" is a shaded area under a solid line, "out" a dashed line of another
  // colour on top, so one never hides the other; the legend shows the latest
  // value of each.
  const pair = (title, unit, a, b) => ({
    title, width, height: 190,
    scales: { x: { time: true } },
    series: [
      {},
      { label: a, stroke: "#2b7bb9", width: 2, fill: "rgba(43,123,185,0.18)", value: (u, v) => rate(v) + " " + unit, points: { show: false } },
      { label: b, stroke: "#c2410c", width: 2, dash: [7, 5], value: (u, v) => rate(v) + " " + unit, points: { show: false } },
    ],
    axes: [{}, { size: 64 }],
  });
  const events = {
    title: "events", width, height: 190,
    scales: { x: { time: true }, n: {} },
    series: [
      {},
      { label: "accepted", stroke: "#2e7d32", width: 3, value: (u, v) => rate(v) + "/s", points: { show: false } },
      { label: "refused", stroke: "#d32f2f", width: 1.5, dash: [6, 4], value: (u, v) => rate(v) + "/s", points: { show: false } },
      { label: "queued", stroke: "#777", width: 1, scale: "n", value: (u, v) => fmt(v), points: { show: false } },
    ],
    axes: [{}, { size: 52 }, { scale: "n", side: 1, grid: { show: false }, size: 52 }],
  };
  return {
    msgs: new uPlot(pair("messages per second", "msgs/s", "in", "out"), [[], [], []], $("chart-msgs")),
    bytes: new uPlot(pair("bytes per second", "B/s", "in", "out"), [[], [], []], $("chart-bytes")),
    events: new uPlot(events, [[], [], [], []], $("chart-events")),
  };
}

async function loadHistory() {
  const last = history.t.length ? history.t[history.t.length - 1] : 0;
  const h = await getJSON("/console/history.json" + (last ? "?since=" + last : ""));
  historySize = h.size || HISTORY_SIZE;
  for (const [name, values] of Object.entries(h.columns)) {
    history[name] = (history[name] || []).concat(values);
    if (history[name].length > historySize) history[name] = history[name].slice(-historySize);
  }
  drawHistory();
}

function drawHistory() {
  if (typeof uPlot === "undefined" || !history.t.length) return;
  charts = charts || makeCharts();
  const t = history.t;
  const from = t[t.length - 1] - Number($("window").value);
  let first = 0;
  while (first < t.length && t[first] <= from) first++;
  const cut = (name) => history[name].slice(first);
  const set = (chart, names) => {
    chart.setData([cut("t"), ...names.map(cut)]);
    chart.setLegend({ idx: chart.data[0].length - 1 }); // the latest values, until the pointer is on the chart
  };
  set(charts.msgs, ["in_msgs", "out_msgs"]);
  set(charts.bytes, ["in_bytes", "out_bytes"]);
  set(charts.events, ["accepted", "refused", "queued"]);
}

// -- the monitor's JSON: every panel at once, each on its own ----------------------
function showVarz(varz) {
  const [, version, runtime] = /^eventsvc\/(\S+)\s*(.*)$/.exec(varz.go || "") || [null, varz.go, ""];
  $("version").textContent = "eventsvc " + version + (runtime ? " (" + runtime + ")" : "") + " · NATS " + varz.version;
  $("server").textContent = (varz.server_name || varz.server_id) + " · up " + varz.uptime;
  $("in-msgs").textContent = fmt(varz.in_msgs);
  $("out-msgs").textContent = fmt(varz.out_msgs);
  $("connections").textContent = fmt(varz.connections);
  $("subscriptions").textContent = fmt(varz.subscriptions);
  $("slow-consumers").textContent = fmt(varz.slow_consumers);
}

let refreshing = false;

async function refresh() {
  if (refreshing) return; // (a slow monitor: never two rounds at once)
  refreshing = true;
  try {
    const results = await Promise.allSettled([
      getJSON("/varz").then(showVarz),
      loadConns(),
      getJSON("/eventz").then(showEvents),
      loadHistory(),
      showLinks(),
      loadJetStream(),
    ]);
    const failed = results.find((r) => r.status === "rejected");
    $("monitor-state").textContent = failed ? String(failed.reason.message || failed.reason) : "ok";
    $("monitor-state").className = "state " + (failed ? "bad" : "ok");
  } finally {
    refreshing = false;
  }
}

// -- connections: open or closed, sorted and filtered here ------------------------
const seconds = (text) => {
  // nats-server's uptime ("1d2h3m4s") in seconds, to sort by.
  let total = 0;
  for (const [, n, unit] of String(text || "").matchAll(/(\d+)([dhms])/g)) total += Number(n) * { d: 86400, h: 3600, m: 60, s: 1 }[unit];
  return total;
};
const CONN_COLUMNS = [
  { key: "cid", label: "cid", num: true },
  { key: "type", label: "type" },
  { key: "from", label: "from", value: (c) => c.ip + ":" + c.port },
  { key: "name", label: "name" },
  { key: "user", label: "user", value: (c) => c.authorized_user },
  { key: "client", label: "client", value: (c) => [c.lang, c.version].filter((x) => x).join(" ") },
  { key: "subscriptions", label: "subs", num: true },
  { key: "in_msgs", label: "msgs in", num: true },
  { key: "out_msgs", label: "msgs out", num: true },
  { key: "in_bytes", label: "bytes in", num: true },
  { key: "out_bytes", label: "bytes out", num: true },
  { key: "pending_bytes", label: "pending", num: true, open: true },
  { key: "uptime", label: "uptime", sort: (c) => seconds(c.uptime) },
  { key: "stop", label: "closed at", closed: true, value: (c) => (c.stop ? c.stop.slice(11, 19) : "") },
  { key: "reason", label: "reason", closed: true },
];
const conns = { state: "open", rows: [], total: 0, sort: { key: "cid", up: true } };

// /connz's orders for the columns it can sort by: with more connections than the
// page asks for, the server picks the top ones by the column the page sorts on.
const CONNZ_SORT = {
  cid: "cid", subscriptions: "subs", in_msgs: "msgs_from", out_msgs: "msgs_to", in_bytes: "bytes_from",
  out_bytes: "bytes_to", pending_bytes: "pending", uptime: "uptime", stop: "stop", reason: "reason",
};
const CONNZ_LIMIT = 1000;

function connzPath() {
  const sort = CONNZ_SORT[conns.sort.key] || (conns.state === "closed" ? "stop" : "cid");
  return "/connz?state=" + conns.state + "&limit=" + CONNZ_LIMIT + "&sort=" + sort;
}

function connColumns() {
  return CONN_COLUMNS.filter((col) => (conns.state === "closed" ? !col.open : !col.closed));
}

const connValue = (col, c) => (col.value ? col.value(c) : c[col.key]);

function connHeader() {
  const row = $("conns").tHead.rows[0];
  row.replaceChildren();
  for (const col of connColumns()) {
    const th = document.createElement("th");
    th.textContent = col.label;
    th.dataset.key = col.key;
    th.className = "sortable" + (col.num ? " n" : "");
    if (conns.sort.key === col.key) {
      th.className += conns.sort.up ? " up" : " down";
      th.setAttribute("aria-sort", conns.sort.up ? "ascending" : "descending");
    }
    th.onclick = () => sortConns(col.key);
    row.appendChild(th);
  }
}

function sortConns(key) {
  const col = CONN_COLUMNS.find((c) => c.key === key);
  // A second click turns the order round; a new column starts with its biggest (numbers) or A first.
  conns.sort = conns.sort.key === key ? { key, up: !conns.sort.up } : { key, up: !col.num };
  renderConns();
  if (conns.total > conns.rows.length) loadConns().catch(() => {});
}

function loadConns() {
  const state = conns.state;
  // (An answer for the other tab, come late, is not drawn.)
  return getJSON(connzPath()).then((connz) => { if (state === conns.state) showConns(connz); });
}

function showConns(connz) {
  conns.rows = connz.connections || [];
  conns.total = connz.total;
  renderConns();
}

function renderConns() {
  const columns = connColumns();
  const col = CONN_COLUMNS.find((c) => c.key === conns.sort.key) || columns[0];
  const key = col.sort || ((c) => connValue(col, c));
  const words = $("conns-filter").value.trim().toLowerCase().split(/\s+/).filter((w) => w);
  const text = (c) => columns.map((k) => connValue(k, c)).join(" ").toLowerCase();
  const shown = conns.rows.filter((c) => words.every((w) => text(c).includes(w)));
  shown.sort((a, b) => {
    const x = key(a), y = key(b);
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x ?? "").localeCompare(String(y ?? ""), "en", { numeric: true });
    return (conns.sort.up ? order : -order) || a.cid - b.cid;
  });
  connHeader();
  fill("conns", shown, (row, c) => {
    for (const k of columns) {
      const v = connValue(k, c);
      cell(row, k.num && k.key !== "cid" ? fmt(v) : v, k.num ? "n" : "");
    }
  });
  const what = conns.state === "closed" ? "closed connections kept" : "open connections";
  $("conns-count").textContent = shown.length === conns.total ? fmt(conns.total) + " " + what
    : fmt(shown.length) + " of " + fmt(conns.total) + " " + what + " shown";
}

function connTab(state) {
  conns.state = state;
  conns.rows = [];
  conns.sort = state === "closed" ? { key: "stop", up: false } : { key: "cid", up: true };
  for (const s of ["open", "closed"]) {
    $("conns-" + s).classList.toggle("on", s === state);
    $("conns-" + s).setAttribute("aria-selected", String(s === state));
  }
  renderConns();
  loadConns().catch(() => {});
}

// -- events ----------------------------------------------------------------------
function showStore(store) {
  // (/eventz "store": absent on a server that does not say.)
  const p = $("store");
  p.hidden = !store;
  if (!store) return;
  let text, level;
  if (store.kind === "memory") {
    text = "Events kept in memory only: those not yet delivered are lost if the service stops.";
    level = "warn";
  } else {
    text = "Events kept in " + (store.path || "a file");
    level = "ok";
  }
  if (store.state && store.state !== "ok") {
    text += " · store " + store.state + (store.error ? ": " + store.error : "");
    level = store.state === "full" ? "warn" : "bad";
  } else if (store.error) {
    text += " · " + store.error;
  }
  p.textContent = text;
  p.className = "store " + level;
  p.dataset.state = store.state || "";
}

function handlerState(row, h) {
  const td = row.insertCell();
  if (h.down) {
    row.className = "down";
    td.className = "down";
    const since = h.down_since ? " since " + new Date(h.down_since).toISOString().replace("T", " ").slice(0, 19) : "";
    td.textContent = "down" + since + (h.last_error ? ": " + h.last_error : "");
    td.title = td.textContent;
  } else {
    td.textContent = h.down === false ? "up" : "";
    if (h.last_error) td.title = "last error: " + h.last_error;
  }
}

function showEvents(ev) {
  if (!ev.enabled) {
    $("events-accepted").textContent = "(the event service is off here)";
    return;
  }
  showStore(ev.store);
  $("events-accepted").textContent = fmt(ev.accepted);
  $("events-refused").textContent = fmt(ev.refused);
  $("events-queued").textContent = fmt(ev.queued);
  const reasons = Object.entries(ev.refused_by_reason || {}).sort((a, b) => b[1] - a[1]);
  $("refusals").hidden = reasons.length === 0;
  fill("refusals", reasons, (row, [reason, n]) => { cell(row, reason, "reason"); cell(row, fmt(n), "n"); });
  const rows = [];
  for (const [name, h] of Object.entries(ev.handlers)) {
    const types = new Set([...Object.keys(h.delivered), ...Object.keys(h.retried), ...Object.keys(h.dead_lettered)]);
    for (const t of types) rows.push([name, t, h.delivered[t] || 0, h.retried[t] || 0, h.dead_lettered[t] || 0]);
  }
  for (const [t, n] of Object.entries(ev.accepted_by_type)) {
    if (!rows.some((r) => r[1] === t)) rows.push(["(accepted)", t, n + " accepted", "", ""]);
  }
  fill("events-types", rows, (row, r) => r.forEach((v, i) => cell(row, typeof v === "number" ? fmt(v) : v, i > 1 ? "n" : "")));
  fill("events-handlers", Object.entries(ev.handlers), (row, [name, h]) => {
    cell(row, name);
    handlerState(row, h);
    cell(row, fmt(h.backlog) + (h.backlog_growing_seconds ? " (growing " + Math.round(h.backlog_growing_seconds) + "s)" : ""), "n");
    cell(row, fmt(h.requests), "n");
    row.insertCell().appendChild(histogram(h.latency));
  });
}

function histogram(latency) {
  // Cumulative buckets to counts per bucket, drawn as bars.
  const box = document.createElement("div");
  box.className = "histogram";
  let previous = 0;
  const counts = latency.buckets.map(([le, cumulative]) => { const n = cumulative - previous; previous = cumulative; return [le, n]; });
  const max = Math.max(1, ...counts.map(([, n]) => n));
  for (const [le, n] of counts) {
    const bar = document.createElement("span");
    bar.style.height = Math.round(2 + 28 * n / max) + "px";
    bar.title = "≤ " + le + " s: " + n;
    box.appendChild(bar);
  }
  const label = document.createElement("small");
  label.textContent = latency.count ? " mean " + (1000 * latency.sum / latency.count).toFixed(1) + " ms, n=" + latency.count : " none yet";
  box.appendChild(label);
  return box;
}

async function showLinks() {
  const [routez, gatewayz, leafz] = await Promise.all(["/routez", "/gatewayz", "/leafz"].map((p) => getJSON(p).catch(() => ({}))));
  const rows = [];
  for (const r of routez.routes || []) rows.push(["route", r.remote_name || r.remote_id, r.ip + ":" + r.port, "up", r.in_msgs, r.out_msgs, r.rtt]);
  for (const [dir, key] of [["out", "outbound_gateways"], ["in", "inbound_gateways"]]) {
    for (const [name, links] of Object.entries(gatewayz[key] || {})) {
      for (const g of [].concat(links)) {
        const c = g.connection || {};
        rows.push(["gateway " + dir, name, (c.ip || "") + ":" + (c.port || ""), c.cid ? "up" : "down", c.in_msgs, c.out_msgs, c.rtt]);
      }
    }
  }
  for (const l of leafz.leafs || []) rows.push(["leaf node", l.name || l.account, l.ip + ":" + l.port, "up", l.in_msgs, l.out_msgs, l.rtt]);
  fill("links", rows, (row, r) => r.forEach((v, i) => cell(row, i >= 4 && i < 6 ? fmt(v) : v, i >= 4 ? "n" : "")));
  $("links-none").hidden = rows.length > 0;
}

// -- JetStream: its streams and their consumers, from /jsz ----------------------------
const bytes = (n) => {
  if (n === undefined || n === null) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i ? v.toFixed(1) + " " + units[i] : fmt(n) + " B";
};
const when = (ts) => (!ts || ts.startsWith("0001-") ? "never" : ts.replace("T", " ").slice(0, 19));

// Every stream and consumer in detail costs the server some 0.3 ms each: with more
// than a hundred streams the page asks every ten seconds, not every second.
const JS_MANY = 100;
let jsEvery = 1;
let jsTick = 0;

function loadJetStream() {
  if (jsTick++ % jsEvery) return Promise.resolve();
  return getJSON("/jsz?consumers=1&config=1").then((jsz) => {
    jsEvery = jsz.streams > JS_MANY ? 10 : 1;
    showJetStream(jsz);
  });
}

function showJetStream(jsz) {
  const summary = $("js-summary");
  $("jetstream").dataset.state = jsz.disabled ? "off" : "on";
  if (jsz.disabled) {
    summary.textContent = "JetStream is off on this server (no [jetstream] section).";
    fill("js-streams", [], () => {});
    fill("js-consumers", [], () => {});
    return;
  }
  const cfg = jsz.config || {};
  summary.textContent = fmt(jsz.streams) + " streams · " + fmt(jsz.consumers) + " consumers · " + fmt(jsz.messages) + " messages · "
    + bytes(jsz.storage) + " of " + bytes(cfg.max_storage) + " on disk · " + bytes(jsz.memory) + " of " + bytes(cfg.max_memory) + " in memory · API "
    + fmt((jsz.api || {}).total) + " requests, " + fmt((jsz.api || {}).errors) + " errors" + (cfg.domain ? " · domain " + cfg.domain : "");
  const streams = ((jsz.account_details || [])[0] || {}).stream_detail || [];
  fill("js-streams", streams, (row, s) => {
    const c = s.config || {}, st = s.state || {};
    cell(row, s.name);
    cell(row, c.storage);
    cell(row, (c.subjects || []).join(", "));
    cell(row, fmt(st.messages), "n");
    cell(row, bytes(st.bytes), "n");
    cell(row, fmt(st.first_seq), "n");
    cell(row, fmt(st.last_seq), "n");
    cell(row, fmt(st.consumer_count), "n");
    cell(row, when(st.last_ts));
  });
  const consumers = streams.flatMap((s) => (s.consumer_detail || []).map((c) => [s.name, c]));
  fill("js-consumers", consumers, (row, [stream, c]) => {
    const cc = c.config || {}, d = c.delivered || {}, f = c.ack_floor || {};
    cell(row, stream);
    cell(row, c.name);
    cell(row, (cc.durable_name ? "durable" : "ephemeral") + " " + (cc.deliver_subject ? "push" : "pull"));
    cell(row, cc.ack_policy);
    cell(row, fmt(c.num_pending), "n");
    cell(row, fmt(c.num_ack_pending), "n");
    cell(row, fmt(c.num_redelivered), "n");
    cell(row, fmt(c.num_waiting), "n");
    cell(row, fmt(d.stream_seq), "n");
    cell(row, fmt(f.stream_seq), "n");
    cell(row, when(d.last_active));
  });
  $("js-consumers").hidden = consumers.length === 0;
  // Mirrors and sources: how far each is behind its origin (lag, in messages), and
  // when the origin last spoke (a message or its heartbeat, every second while linked).
  const origins = streams.flatMap((s) => (s.mirror ? [[s.name, "mirror", s.mirror]] : [])
    .concat((s.sources || []).map((o) => [s.name, "source", o])));
  fill("js-origins", origins, (row, [stream, kind, o]) => {
    cell(row, stream);
    cell(row, kind);
    cell(row, o.name + (o.external && o.external.api ? " via " + o.external.api : ""));
    cell(row, fmt(o.lag), "n");
    cell(row, o.active < 0 ? "never" : (o.active / 1e9).toFixed(1) + " s ago");
    cell(row, (o.error || {}).description || "");
    if (o.error || o.active < 0 || o.active > 3e9) row.className = "bad";
  });
  $("js-origins").hidden = origins.length === 0;
}

// -- dead letters ------------------------------------------------------------------
async function showDeadLetters() {
  try {
    const dz = await getJSON("/deadletterz");
    $("dead-status").textContent = dz.total ? dz.total + " in " + dz.file + (dz.total > dz.dead_letters.length ? " (newest " + dz.dead_letters.length + " shown)" : "") : "None.";
    fill("dead", dz.dead_letters, (row, d) => {
      const button = document.createElement("button");
      button.textContent = "Replay";
      button.disabled = !d.replayable;
      button.title = d.replayable ? "Put it back for " + d.handler : "the console identity may not publish to $EVENTSVC.replay." + d.handler;
      button.onclick = () => replay(d.event_id, button);
      row.insertCell().appendChild(button);
      cell(row, d.time ? new Date(d.time * 1000).toISOString().replace("T", " ").slice(0, 19) : "");
      cell(row, d.handler); cell(row, d.event_id); cell(row, d.type); cell(row, d.attempts, "n"); cell(row, d.reason);
    });
  } catch (e) {
    $("dead-status").textContent = String(e.message || e);
  }
}

async function replay(eventId, button) {
  button.disabled = true;
  const response = await fetch("/deadletterz/replay", {
    method: "POST", headers: { "content-type": "application/json", "x-eventsvc-console": "replay" },
    body: JSON.stringify({ event_id: eventId }),
  });
  const answer = await response.json().catch(() => ({}));
  $("dead-status").textContent = response.ok ? "Replayed " + eventId + "." : "Not replayed: " + (answer.error || (answer.errors || []).join("; ") || response.status);
  showDeadLetters();
}

// -- the live tail -------------------------------------------------------------------
let nats = null;
let tailSid = null;
const TAIL_ROWS = 100;

function preview(bytes) {
  const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes.subarray(0, 200));
  return text.replace(/[\x00-\x08\x0b-\x1f]/g, "·") + (bytes.length > 200 ? "…" : "");
}

function tailMessage(sid, subject, reply, headers, payload) {
  if (sid !== tailSid) return;
  const body = $("tail-rows");
  const row = body.insertRow(0);
  cell(row, new Date().toISOString().slice(11, 23));
  cell(row, subject);
  cell(row, payload.length, "n");
  cell(row, preview(payload), "payload");
  while (body.rows.length > TAIL_ROWS) body.deleteRow(-1);
}

let tailSubject = null;

function startTail(event) {
  event.preventDefault();
  const subject = $("tail-subject").value.trim();
  if (!subject || /\s/.test(subject)) return;
  stopTail();
  // Rows of another subject would read as matches of this one.
  if (subject !== tailSubject) $("tail-rows").replaceChildren();
  tailSubject = subject;
  tailSid = nats.subscribe(subject);
  $("tail-status").textContent = "Watching " + subject + ".";
  $("tail-stop").disabled = false;
}

function stopTail() {
  if (tailSid !== null) nats.unsubscribe(tailSid);
  tailSid = null;
  $("tail-stop").disabled = true;
}

async function start() {
  const config = await getJSON("/console.json");
  $("identity").textContent = config.identity;
  const url = config.websocket_url || config.websocket_scheme + "://" + location.hostname + ":" + config.websocket_port + "/";
  nats = new ConsoleNats(url, config.credentials, {
    state: (text, ok) => { $("ws-state").textContent = text; $("ws-state").className = "state " + (ok ? "ok" : "bad"); },
    message: tailMessage,
    error: (text) => {
      $("tail-status").textContent = "Refused by the server: " + text;
      if (/Permissions Violation for Subscription/.test(text)) stopTail();
    },
  });
  $("tail-form").onsubmit = startTail;
  $("tail-stop").onclick = () => { stopTail(); $("tail-status").textContent = "Stopped."; };
}

start().catch((e) => { $("ws-state").textContent = String(e.message || e); $("ws-state").className = "state bad"; });
$("window").onchange = drawHistory;
window.addEventListener("resize", () => {
  if (charts) for (const chart of Object.values(charts)) chart.setSize({ width: chartWidth(), height: 190 });
});
$("conns-open").onclick = () => connTab("open");
$("conns-closed").onclick = () => connTab("closed");
$("conns-filter").oninput = renderConns;
connHeader();
refresh();
showDeadLetters();
setInterval(refresh, 1000);
setInterval(showDeadLetters, 5000);
