// A small NATS client over WebSocket, enough for the console: CONNECT with the
// console identity, SUB/UNSUB, MSG and HMSG, PING/PONG, -ERR.  It never publishes.
// (nats.js is the client for applications; this page needs no build step.)
"use strict";

class ConsoleNats {
  constructor(url, credentials, on) {
    this.url = url;
    this.credentials = credentials;
    this.on = on; // {state(text, ok), message(sid, subject, reply, headers, payload), error(text)}
    this.subs = new Map();
    this.nextSid = 1;
    this.buf = new Uint8Array(0);
    this.decoder = new TextDecoder();
    this.encoder = new TextEncoder();
    this.connected = false;
    this.closed = false;
    this.open();
  }

  open() {
    this.on.state("connecting", false);
    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (e) => this.received(new Uint8Array(e.data instanceof ArrayBuffer ? e.data : this.encoder.encode(e.data)));
    ws.onclose = (e) => {
      this.connected = false;
      this.on.state("closed" + (e.reason ? ": " + e.reason : "") + (this.closed ? "" : " (retrying)"), false);
      if (!this.closed) setTimeout(() => this.open(), 2000);
    };
    ws.onerror = () => this.on.state("error", false);
    this.ws = ws;
  }

  send(text) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(this.encoder.encode(text));
  }

  subscribe(subject) {
    const sid = String(this.nextSid++);
    this.subs.set(sid, subject);
    if (this.connected) this.send("SUB " + subject + " " + sid + "\r\n");
    return sid;
  }

  unsubscribe(sid) {
    this.subs.delete(sid);
    if (this.connected) this.send("UNSUB " + sid + "\r\n");
  }

  received(chunk) {
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf);
    joined.set(chunk, this.buf.length);
    this.buf = joined;
    for (;;) {
      const end = this.lineEnd();
      if (end < 0) return;
      const line = this.decoder.decode(this.buf.subarray(0, end));
      const verb = line.split(" ", 1)[0].toUpperCase();
      if (verb === "MSG" || verb === "HMSG") {
        const args = line.split(" ").filter((a) => a);
        const headered = verb === "HMSG";
        const total = Number(args[args.length - 1]);
        const hdrLen = headered ? Number(args[args.length - 2]) : 0;
        const start = end + 2;
        if (this.buf.length < start + total + 2) return; // the payload is not all here yet
        const body = this.buf.subarray(start, start + total);
        const reply = args.length === (headered ? 6 : 5) ? args[3] : null;
        const headers = headered ? this.decoder.decode(body.subarray(0, hdrLen)) : "";
        this.on.message(args[2], args[1], reply, headers, body.slice(hdrLen));
        this.buf = this.buf.slice(start + total + 2);
        continue;
      }
      this.buf = this.buf.slice(end + 2);
      if (verb === "INFO") this.greeted(JSON.parse(line.slice(5)));
      else if (verb === "PING") this.send("PONG\r\n");
      else if (verb === "-ERR") this.on.error(line.slice(5).replace(/^'|'$/g, ""));
    }
  }

  lineEnd() {
    for (let i = 0; i + 1 < this.buf.length; i++) {
      if (this.buf[i] === 13 && this.buf[i + 1] === 10) return i;
    }
    return -1;
  }

  greeted(info) {
    if (this.connected) return; // an async INFO (cluster change, lame duck)
    const connect = Object.assign({
      verbose: false, pedantic: false, lang: "eventsvc-console", version: "1", protocol: 1,
      headers: true, no_responders: true, name: "eventsvc console",
    }, this.credentials);
    let text = "CONNECT " + JSON.stringify(connect) + "\r\n";
    for (const [sid, subject] of this.subs) text += "SUB " + subject + " " + sid + "\r\n";
    this.send(text + "PING\r\n");
    this.connected = true;
    this.info = info;
    this.on.state("connected", true);
  }
}
