"""A batch target on the standard library: python3 stdlib_target.py [port]."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Events(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        events = body if isinstance(body, list) else [body]  # batch_max > 1: a list
        for event in events:  # in acceptance order; event_id is the idempotency key
            print(event["event_id"], event["type"]["name"], flush=True)
        self.send_response(200)  # 2xx: all delivered; 5xx: all retried; 4xx: split
        self.send_header("Content-Length", "0")
        self.end_headers()


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8080), Events).serve_forever()
