// nats.js v3's object store (@nats-io/obj over @nats-io/transport-node) against
// eventsvc and nats-server -js, run by eventsvc/test/test_interop_objectstore.py.
//   node objinterop.mjs nats://127.0.0.1:PORT PREFIX
// It plays put, get, info, list, update, links, watch, delete, status and
// seal on a bucket named from PREFIX and prints one JSON line:
// {"scene": "os", "result": {...}} or {"scene": "os", "error": "..."}.
import { createHash, randomBytes } from "node:crypto";
import { connect } from "@nats-io/transport-node";
import { Objm } from "@nats-io/obj";

const [url, prefix] = process.argv.slice(2);
const name = prefix.toUpperCase() + "_FILES";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const text = (bytes) => new TextDecoder().decode(bytes);
const same = (a, b) => a !== null && b !== null && Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

async function scene(nc) {
  const objm = new Objm(nc);
  const os = await objm.create(name, { description: "js scene" });
  const watched = [];
  const watcher = await os.watch();
  (async () => {
    for await (const e of watcher) watched.push([e.name, Boolean(e.deleted)]);
  })();

  // Three chunks of 128 KiB and a short last one.
  const big = randomBytes(3 * 128 * 1024 + 100);
  const info = await os.putBlob({ name: "big.bin" }, big);
  const digest = "SHA-256=" + createHash("sha256").update(big).digest("base64url") + "=";
  await os.putBlob({ name: "a.txt" }, new TextEncoder().encode("alpha"));
  await os.putBlob({ name: "small", description: "five byte chunks", options: { max_chunk_size: 5 } },
    new TextEncoder().encode("0123456789ab"));
  const got = await os.getBlob("big.bin");
  const small = await os.info("small");
  const smallData = text(await os.getBlob("small"));
  // A second put of a name replaces it.
  await os.putBlob({ name: "a.txt" }, new TextEncoder().encode("alpha two"));
  const replaced = text(await os.getBlob("a.txt"));
  // Rename with update.
  await os.update("small", { name: "renamed", description: "changed" });
  const renamed = await os.info("renamed");
  const renamedData = text(await os.getBlob("renamed"));
  const old = await os.info("small");
  // Links: to an object here, and to another bucket.
  await os.link("link.bin", info);
  const viaLink = await os.getBlob("link.bin");
  const other = await objm.create(name + "_OTHER");
  await other.putBlob({ name: "there" }, new TextEncoder().encode("in the other bucket"));
  const bucketLink = await os.linkStore("other", other);
  await os.link("there.link", await other.info("there"));
  const viaOther = text(await os.getBlob("there.link"));
  // Delete: get finds nothing, info says deleted.
  await os.delete("big.bin");
  const deletedGet = await os.get("big.bin");
  const deletedInfo = await os.info("big.bin");
  const names = (await os.list()).map((e) => e.name).sort();
  const status = await os.status();
  for (let i = 0; i < 50 && watched.length < 9; i++) await sleep(100);
  watcher.stop();
  await os.seal();
  let sealedPut = false;
  try {
    await os.putBlob({ name: "late" }, new TextEncoder().encode("refused"));
  } catch (e) {
    sealedPut = true;
  }
  const sealed = await os.status();
  await other.destroy();
  let gone = false;
  try {
    await objm.open(name + "_OTHER");
  } catch (e) {
    gone = true;
  }
  return {
    big: [info.size, info.chunks, info.digest === digest, same(got, big)],
    small: [small.size, small.chunks, small.description, smallData],
    replaced,
    renamed: [renamed.name, renamed.description, renamedData, old === null],
    links: [same(viaLink, big), bucketLink.options.link.bucket, viaOther],
    deleted: [deletedGet === null, deletedInfo !== null && Boolean(deletedInfo.deleted)],
    list: names,
    status: [status.bucket, status.description, status.backingStore, status.sealed],
    watched,
    sealed: [sealed.sealed, sealedPut],
    bucket_gone: gone,
  };
}

const out = { scene: "os" };
let nc;
try {
  nc = await connect({ servers: url, reconnect: false, timeout: 5000 });
  out.result = await scene(nc);
} catch (e) {
  const where = ((e && e.stack) || "").split("\n").find((l) => l.includes("objinterop.mjs")) || "";
  out.error = String((e && e.message) || e) + (where ? " (" + where.trim().replace(/^at /, "") + ")" : "");
}
console.log(JSON.stringify(out));
if (nc) await nc.close();
process.exit(0);
