"""
What a spoke is sent per message of a busy hub, in one process: a hub
(JetStream, domain hub) and a spoke (JetStream, domain edge) joined by a
leaf link in memory, a client of the hub that publishes to a stream of
the hub and consumes it with a durable pull consumer and explicit acks
(a fetch of 100, then one read with the 100 acks), and a push consumer
too.  Nobody on the spoke wants any of it: what crosses is overhead.

    python bench/leafacks.py [--messages N]

It imports eventsvc from the running interpreter (PYTHONPATH picks the
tree), so running it on two trees compares them.  It prints figures; it
never passes or fails.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any, List

_REPLY = re.compile(rb"MSG \S+ 2 (\$JS\.ACK\.\S+) ")


def main() -> None:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from eventsvc.jetstream.engine import JetStream, JetStreamSettings
    from eventsvc.nats.limits import Limits
    from eventsvc.nats.links.leaf import LeafManager, LeafSettings
    from eventsvc.nats.listener import ClientFactory
    from eventsvc.nats.server import Broker
    from eventsvc.nats.settings import ClientSettings
    from eventsvc.test.test_leaf import leaf

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    options = parser.parse_args()

    class Node:
        def __init__(self, name: str, domain: str) -> None:
            self.clock = MemoryReactorClock()
            self.broker = Broker(server_id="N" + name, server_name=name)
            self.leafs = LeafManager(self.broker, self.clock, LeafSettings(
                host="127.0.0.1", port=0, limits=Limits(), jetstream=True, jetstream_domain=domain))
            self.leafs.startService()
            # (As app.py builds it on a server with [leafnodes]; an older tree has no such setting.)
            fields = getattr(JetStreamSettings, "_fields", ())
            extra = {"per_consumer_acks": True} if "per_consumer_acks" in fields else {}
            self.js = JetStream(self.broker, JetStreamSettings(domain=domain, **extra), self.clock)
            self.js.start()
            self.factory = ClientFactory(self.broker, ClientSettings(), self.clock)

    hub, spoke = Node("H", "hub"), Node("S", "edge")
    pump, _, downleaf = leaf(spoke, hub)
    sent: List[bytes] = []
    write = downleaf.transport.write

    def spy(data: bytes) -> None:
        sent.append(data)
        write(data)
    downleaf.transport.write = spy

    client = hub.factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    client.makeConnection(transport)

    def feed(data: bytes) -> bytes:
        transport.clear()
        client.dataReceived(data)
        hub.clock.advance(0)
        pump.flush()
        return transport.value()

    def api(subject: str, body: Any) -> None:
        payload = json.dumps(body).encode()
        feed(b"PUB %s _R.1 %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))

    feed(b'CONNECT {"verbose":false,"headers":true}\r\nSUB _R.> 1\r\nSUB _F.* 2\r\nSUB deliver.p 3\r\n')
    api("$JS.API.STREAM.CREATE.S", {"name": "S", "subjects": ["orders.>"], "storage": "memory"})
    api("$JS.API.CONSUMER.DURABLE.CREATE.S.c", {"stream_name": "S", "config": {"durable_name": "c", "ack_policy": "explicit"}})
    api("$JS.API.CONSUMER.DURABLE.CREATE.S.p", {"stream_name": "S", "config": {
        "durable_name": "p", "ack_policy": "explicit", "deliver_subject": "deliver.p"}})
    del sent[:]
    messages, batch, k = options.messages, 100, 0
    for start in range(0, messages, batch):
        pushed = feed(b"".join(b"PUB orders.%d 16\r\n0123456789abcdef\r\n" % i for i in range(start, start + batch)))
        k += 1
        fetch = b'{"batch":%d,"expires":10000000000}' % batch
        fetched = feed(b"PUB $JS.API.CONSUMER.MSG.NEXT.S.c _F.%d %d\r\n%s\r\n" % (k, len(fetch), fetch))
        replies = _REPLY.findall(fetched) + re.findall(rb"MSG \S+ 3 (\$JS\.ACK\.\S+) ", pushed)
        feed(b"".join(b"PUB %s 4\r\n+ACK\r\n" % r for r in replies))
    crossed = b"".join(sent)
    print("hub messages {}, acks {}: the spoke was sent {} bytes, {:.1f} bytes per hub message, {} of them in {} ack LMSGs".format(
        messages, 2 * messages, len(crossed), len(crossed) / messages,
        sum(len(line) for line in re.findall(rb"LMSG \$JS\.ACK\.[^\r]*\r\n[^\r]*\r\n", crossed)),
        crossed.count(b"LMSG $JS.ACK.")))


if __name__ == "__main__":
    main()
