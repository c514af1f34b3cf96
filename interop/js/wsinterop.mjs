// nats.js (@nats-io/nats-core) over WebSocket: one script, run against eventsvc and
// against nats-server by eventsvc/test/test_interop_websocket.py, which compares what
// it prints (one JSON object).  Usage:
//   node --experimental-websocket wsinterop.mjs ws://127.0.0.1:PORT TOKEN
import { wsconnect, headers } from "@nats-io/nats-core";

const [url, token] = process.argv.slice(2);
const out = {};
const nc = await wsconnect({ servers: url, token, name: "wsinterop", reconnect: false });
out.server_max_payload = nc.info.max_payload;
out.headers_supported = nc.info.headers;

// Publish and subscribe, in order.
const sub = nc.subscribe("interop.pubsub", { max: 3 });
for (const word of ["one", "two", "three"]) nc.publish("interop.pubsub", word);
out.pubsub = [];
for await (const m of sub) out.pubsub.push([m.subject, m.string()]);

// Request and reply.
nc.subscribe("interop.echo", { callback: (err, m) => m.respond("echo:" + m.string()) });
const reply = await nc.request("interop.echo", "ping", { timeout: 2000 });
out.request = reply.string();

// Headers, both ways.
const hsub = nc.subscribe("interop.headers", { max: 1 });
const h = headers();
h.set("X-Event-Id", "evt-42");
h.append("X-Tag", "a");
h.append("X-Tag", "b");
nc.publish("interop.headers", "with headers", { headers: h });
for await (const m of hsub) {
  out.headers = { id: m.headers.get("X-Event-Id"), tags: m.headers.values("X-Tag"), body: m.string() };
}

// No responders.
try {
  await nc.request("interop.nobody", "anyone?", { timeout: 2000 });
  out.no_responders = "answered";
} catch (e) {
  out.no_responders = String(e.message || e).includes("no responders") ? "no responders" : String(e.message || e);
}

// A 1 MiB payload (the default max_payload), there and back.
const big = new Uint8Array(1024 * 1024);
for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
const bsub = nc.subscribe("interop.big", { max: 1 });
nc.publish("interop.big", big);
for await (const m of bsub) {
  let same = m.data.length === big.length;
  for (let i = 0; same && i < big.length; i++) same = m.data[i] === big[i];
  out.big = { length: m.data.length, same };
}

// One byte over max_payload: the client refuses it before sending.
try {
  nc.publish("interop.big", new Uint8Array(nc.info.max_payload + 1));
  out.over_max_payload = "sent";
} catch (e) {
  out.over_max_payload = e.name || "error";
}

await nc.flush();
out.rtt_ok = (await nc.rtt()) >= 0;
await nc.drain();
out.closed = (await nc.closed()) === undefined ? "clean" : "error";
console.log(JSON.stringify(out));
