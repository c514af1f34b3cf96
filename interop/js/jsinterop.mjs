// nats.js v3 (@nats-io/jetstream, @nats-io/kv over @nats-io/transport-node): the
// JetStream scenes of eventsvc/test/jsscenes.py, run against eventsvc and
// nats-server -js by eventsvc/test/test_interop_jetstream.py.  Usage:
//   node jsinterop.mjs nats://127.0.0.1:PORT SCENE PREFIX
// It prints one JSON line: {"scene", "result"} or {"scene", "error"}; the
// result has the fields of jsscenes.EXPECTED[SCENE].
import { connect, createInbox } from "@nats-io/transport-node";
import { AckPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";

const [url, scene, prefix] = process.argv.slice(2);
const upper = prefix.toUpperCase();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function fetchAll(consumer, max, expires) {
  const out = [];
  for await (const m of await consumer.fetch({ max_messages: max, expires })) {
    out.push(m);
    if (out.length === max) break;
  }
  return out;
}

const scenes = {
  async publish(nc, js, jsm) {
    const stream = upper + "_PUB";
    await jsm.streams.add({ name: stream, subjects: [prefix + ".pub.>"] });
    const acks = [];
    for (const [data, id] of [["one", ""], ["two", "id-1"], ["two", "id-1"], ["three", ""]]) {
      const pa = await js.publish(prefix + ".pub.a", data, id ? { msgID: id } : {});
      if (pa.stream !== stream) throw new Error("puback names stream " + pa.stream);
      acks.push([pa.seq, Boolean(pa.duplicate)]);
    }
    const si = await jsm.streams.info(stream);
    return { acks, messages: si.state.messages };
  },

  async pull(nc, js, jsm) {
    const stream = upper + "_PULL";
    await jsm.streams.add({ name: stream, subjects: [prefix + ".pull.>"] });
    for (let i = 0; i < 25; i++) await js.publish(prefix + ".pull.job", "m" + i);
    await jsm.consumers.add(stream, { durable_name: "worker", ack_policy: AckPolicy.Explicit });
    const consumer = await js.consumers.get(stream, "worker");
    const batches = [];
    const seen = [];
    for (let b = 0; b < 3; b++) {
      const msgs = await fetchAll(consumer, 10, 2000);
      batches.push(msgs.length);
      for (const m of msgs) {
        seen.push(m.string());
        await m.ackAck();
      }
    }
    const ci = await jsm.consumers.info(stream, "worker");
    const inOrder = seen.length === 25 && seen.every((s, i) => s === "m" + i);
    return {
      batches, in_order: inOrder, num_ack_pending: ci.num_ack_pending, num_pending: ci.num_pending,
      delivered: ci.delivered.stream_seq, ack_floor: ci.ack_floor.stream_seq,
    };
  },

  async queue(nc, js, jsm) {
    const stream = upper + "_QUEUE";
    await jsm.streams.add({ name: stream, subjects: [prefix + ".queue.>"] });
    await jsm.consumers.add(stream, {
      durable_name: "workers", deliver_subject: createInbox(), deliver_group: "workers", ack_policy: AckPolicy.Explicit,
    });
    const got = { one: [], two: [] };
    let done;
    const all = new Promise((r) => (done = r));
    for (const name of ["one", "two"]) {
      const consumer = await js.consumers.getPushConsumer(stream, "workers");
      const messages = await consumer.consume();
      (async () => {
        for await (const m of messages) {
          got[name].push(m.string());
          m.ack();
          if (got.one.length + got.two.length >= 50) done();
        }
      })();
    }
    await sleep(100);  // both members subscribed before the first message
    for (let i = 0; i < 50; i++) await js.publish(prefix + ".queue.job", "q" + i);
    await Promise.race([all, sleep(10000)]);
    await sleep(300);
    const every = got.one.concat(got.two);
    return { received: every.length, distinct: new Set(every).size, both_served: got.one.length > 0 && got.two.length > 0 };
  },

  async acks(nc, js, jsm) {
    const stream = upper + "_ACKS";
    await jsm.streams.add({ name: stream, subjects: [prefix + ".acks.>"] });
    for (const w of ["a", "b", "c"]) await js.publish(prefix + ".acks.x", w);
    await jsm.consumers.add(stream, { durable_name: "acker", ack_policy: AckPolicy.Explicit, ack_wait: 30e9 });
    const consumer = await js.consumers.get(stream, "acker");
    const first = await fetchAll(consumer, 3, 5000);
    first[0].nak();
    first[1].term();
    await first[2].ackAck();
    const again = await fetchAll(consumer, 3, 2000);
    const againOut = [];
    for (const m of again) {
      againOut.push([m.string(), m.info.deliveryCount]);
      await m.ackAck();
    }
    const left = (await fetchAll(consumer, 1, 1000)).length;
    return { first: first.map((m) => m.string()), again: againOut, left };
  },

  async redelivery(nc, js, jsm) {
    const stream = upper + "_REDO";
    await jsm.streams.add({ name: stream, subjects: [prefix + ".redo.>"] });
    await js.publish(prefix + ".redo.x", "x");
    await jsm.consumers.add(stream, { durable_name: "slow", ack_policy: AckPolicy.Explicit, ack_wait: 1e9 });
    const consumer = await js.consumers.get(stream, "slow");
    const [first] = await fetchAll(consumer, 1, 5000);
    await sleep(1500);
    const [second] = await fetchAll(consumer, 1, 5000);
    await second.ackAck();
    return { first: [first.string(), first.info.deliveryCount], second: [second.string(), second.info.deliveryCount] };
  },

  async kv(nc, js) {
    const kv = await new Kvm(js).create(upper + "_CFG", { history: 5 });
    const watcher = await kv.watch({ key: ">" });
    const revisions = [await kv.put("color", "red"), await kv.put("color", "blue"), await kv.put("size", "L")];
    const entry = await kv.get("color");
    let history = 0;
    for await (const _ of await kv.history({ key: "color" })) history++;
    await kv.delete("size");
    const watched = [];
    const seen = (async () => {
      for await (const e of watcher) {
        watched.push([e.key, e.string(), e.operation]);
        if (watched.length === 4) break;
      }
    })();
    await Promise.race([seen, sleep(5000)]);
    watcher.stop();
    return { revisions, get: [entry.string(), entry.revision], history, watched };
  },
};

const out = { scene };
let nc;
try {
  nc = await connect({ servers: url, reconnect: false, timeout: 5000 });
  const js = jetstream(nc, { timeout: 5000 });
  const jsm = await jetstreamManager(nc, { timeout: 5000 });
  out.result = await scenes[scene](nc, js, jsm);
} catch (e) {
  // Where in this script it failed: the step a reader looks for first.
  const where = ((e && e.stack) || "").split("\n").find((l) => l.includes("jsinterop.mjs")) || "";
  out.error = String((e && e.message) || e) + (where ? " (" + where.trim().replace(/^at /, "") + ")" : "");
}
console.log(JSON.stringify(out));
if (nc) await nc.close();
process.exit(0);
