"""A batch target on twisted.web: python3 twisted_target.py [port] (or twist web --class=twisted_target.Events)."""

import json
import sys

from twisted.web import resource, server


class Events(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        body = json.loads(request.content.read())
        events = body if isinstance(body, list) else [body]  # batch_max > 1: a list
        for event in events:  # in acceptance order; event_id is the idempotency key
            print(event["event_id"], event["type"]["name"], flush=True)
        return b""  # 200: all delivered (request.setResponseCode(503): all retried)


if __name__ == "__main__":
    from twisted.internet import endpoints, reactor

    port = sys.argv[1] if len(sys.argv) > 1 else "8080"
    endpoints.serverFromString(reactor, "tcp:%s:interface=127.0.0.1" % port).listen(server.Site(Events()))
    reactor.run()
