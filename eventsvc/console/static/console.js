// The console page: polls the monitor's JSON once a second, draws the rates, and
// tails a subject over NATS (ConsoleNats, as the console identity).
"use strict";

const $ = (id) => document.getElementById(id);
const POINTS = 120; // two minutes of one-second samples
const fmt = (n) => (n === undefined || n === null ? "-" : Number(n).toLocaleString("en"));

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
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

// -- rates ---------------------------------------------------------------------
const series = { t: [], inMsgs: [], outMsgs: [], inBytes: [], outBytes: [] };
let last = null;
let charts = null;

function makeCharts() {
  const width = Math.max(320, Math.floor(($("chart-msgs").parentElement.clientWidth - 24) / 2));
  const opts = (title, unit) => ({
    title, width, height: 180,
    scales: { x: { time: true } },
    series: [{}, { label: "in " + unit, stroke: "#2b7bb9", width: 2 }, { label: "out " + unit, stroke: "#d2691e", width: 2 }],
    axes: [{}, { size: 60 }],
  });
  return {
    msgs: new uPlot(opts("messages per second", "msgs/s"), [[], [], []], $("chart-msgs")),
    bytes: new uPlot(opts("bytes per second", "B/s"), [[], [], []], $("chart-bytes")),
  };
}

function sample(varz) {
  const now = Date.now() / 1000;
  if (last) {
    const dt = Math.max(now - last.now, 0.001);
    const push = (key, value) => { series[key].push(value); if (series[key].length > POINTS) series[key].shift(); };
    push("t", now);
    push("inMsgs", (varz.in_msgs - last.in_msgs) / dt);
    push("outMsgs", (varz.out_msgs - last.out_msgs) / dt);
    push("inBytes", (varz.in_bytes - last.in_bytes) / dt);
    push("outBytes", (varz.out_bytes - last.out_bytes) / dt);
    if (typeof uPlot !== "undefined") {
      charts = charts || makeCharts();
      charts.msgs.setData([series.t, series.inMsgs, series.outMsgs]);
      charts.bytes.setData([series.t, series.inBytes, series.outBytes]);
    }
  }
  last = { now, in_msgs: varz.in_msgs, out_msgs: varz.out_msgs, in_bytes: varz.in_bytes, out_bytes: varz.out_bytes };
}

// -- the monitor's JSON ----------------------------------------------------------
async function refresh() {
  try {
    const varz = await getJSON("/varz");
    $("server").textContent = (varz.server_name || varz.server_id) + " · NATS protocol of nats-server " + varz.version + " · up " + varz.uptime;
    $("in-msgs").textContent = fmt(varz.in_msgs);
    $("out-msgs").textContent = fmt(varz.out_msgs);
    $("connections").textContent = fmt(varz.connections);
    $("subscriptions").textContent = fmt(varz.subscriptions);
    $("slow-consumers").textContent = fmt(varz.slow_consumers);
    sample(varz);
    const [connz, events] = await Promise.all([getJSON("/connz?limit=50&sort=cid"), getJSON("/eventz")]);
    fill("conns", connz.connections || [], (row, c) => {
      cell(row, c.cid); cell(row, c.type); cell(row, c.ip + ":" + c.port); cell(row, c.name);
      cell(row, [c.lang, c.version].filter((x) => x).join(" ")); cell(row, c.subscriptions, "n");
      cell(row, fmt(c.in_msgs), "n"); cell(row, fmt(c.out_msgs), "n"); cell(row, fmt(c.pending_bytes), "n"); cell(row, c.uptime);
    });
    showEvents(events);
    await showLinks();
    $("monitor-state").textContent = "ok";
    $("monitor-state").className = "state ok";
  } catch (e) {
    $("monitor-state").textContent = String(e.message || e);
    $("monitor-state").className = "state bad";
  }
}

function showEvents(ev) {
  if (!ev.enabled) {
    $("events-accepted").textContent = "(the event service is off here)";
    return;
  }
  $("events-accepted").textContent = fmt(ev.accepted);
  $("events-refused").textContent = fmt(ev.refused);
  $("events-queued").textContent = fmt(ev.queued);
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
    cell(row, name); cell(row, fmt(h.backlog) + (h.backlog_growing_seconds ? " (growing " + Math.round(h.backlog_growing_seconds) + "s)" : ""), "n");
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

function startTail(event) {
  event.preventDefault();
  const subject = $("tail-subject").value.trim();
  if (!subject || /\s/.test(subject)) return;
  stopTail();
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
refresh();
showDeadLetters();
setInterval(refresh, 1000);
setInterval(showDeadLetters, 5000);
