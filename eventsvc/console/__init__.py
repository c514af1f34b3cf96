"""
The live console's page (static/): HTML, a small NATS-over-WebSocket
client of its own and uPlot (vendored, MIT).  Served by the monitor at /
when [console] is configured (L{eventsvc.ops.console}).
"""
