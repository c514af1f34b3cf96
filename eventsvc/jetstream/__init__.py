"""
JetStream on one node: streams that keep messages, consumers that resume
where they stopped, and the C{$JS.API} that every NATS client's JetStream
API speaks (nats-server 2.9's wire API).

The package sits above L{eventsvc.nats}: it talks to the broker only
through its in-process publish and subscribe API, as the event layer does,
and C{nats/} learns nothing of streams.  Its rooms, bottom up:

  - C{errors}: nats-server's API errors, by name;
  - C{wire}: times, durations and header blocks as the API writes them;
  - C{store}: what a store gives (interfaces and values); C{memstore} and
    C{filestore} give it;
  - C{stream}: one stream's rules (subjects, limits, retention, dedupe,
    expectations, rollups) over a store;
  - C{sourcing}: a stream's mirror and sources, each a consumer asked of
    its origin's API (this server's or another's across a link);
  - C{consumer}: one consumer's rules (pull and push, acks, redelivery);
  - C{api}: the C{$JS.API} subjects, their requests and answers;
  - C{engine}: the streams of a server, their files and limits, started
    and stopped with the service.
"""
