"""Files the process owns: locks held for its life, atomic writes, no links followed."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from eventsvc.files import FileLock, Locked, append_locked, write_atomic
from eventsvc.security.auth import HealthToken


class FileLockTests(SynchronousTestCase):
    def test_second_holder_is_refused_with_the_pid(self):
        path = self.mktemp()
        first = FileLock(path)
        first.acquire()
        self.addCleanup(first.release)
        with open(path) as f:
            self.assertEqual(f.read(), "%d\n" % os.getpid())
        e = self.assertRaises(Locked, FileLock(path).acquire)
        self.assertEqual(e.pid, os.getpid())

    def test_released_lock_can_be_taken(self):
        path = self.mktemp()
        first = FileLock(path)
        first.acquire()
        first.release()
        second = FileLock(path)
        second.acquire()
        self.assertTrue(second.held)
        second.release()


class AtomicWriteTests(SynchronousTestCase):
    def test_replaces_a_link_instead_of_following_it(self):
        victim = self.mktemp()
        with open(victim, "w") as f:
            f.write("precious")
        path = self.mktemp()
        os.symlink(victim, path)
        write_atomic(path, b"token\n", 0o600)
        with open(victim) as f:
            self.assertEqual(f.read(), "precious")
        self.assertFalse(os.path.islink(path))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"token\n")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual([n for n in os.listdir(os.path.dirname(os.path.abspath(path))) if ".tmp-" in n], [])

    def test_append_refuses_a_link(self):
        victim = self.mktemp()
        with open(victim, "w") as f:
            f.write("precious")
        path = self.mktemp()
        os.symlink(victim, path)
        e = self.assertRaises(OSError, append_locked, path, b"line\n")
        self.assertIn("symbolic link", str(e))
        with open(victim) as f:
            self.assertEqual(f.read(), "precious")


class HealthTokenFileTests(SynchronousTestCase):
    def test_second_gateway_on_the_same_file_is_refused(self):
        path = self.mktemp()
        first = HealthToken(path)
        first.write()
        self.addCleanup(first.remove)
        second = HealthToken(path)
        self.assertRaises(Locked, second.write)
        # The refused one does not remove the token the first still uses.
        second.remove()
        with open(path) as f:
            self.assertEqual(f.read().strip(), first.token)
        first.remove()
        self.assertFalse(os.path.exists(path))

    def test_link_at_the_token_path_is_not_followed(self):
        victim = self.mktemp()
        with open(victim, "w") as f:
            f.write("precious")
        path = self.mktemp()
        os.symlink(victim, path)
        token = HealthToken(path)
        token.write()
        self.addCleanup(token.remove)
        with open(victim) as f:
            self.assertEqual(f.read(), "precious")
        with open(path) as f:
            self.assertEqual(f.read().strip(), token.token)
