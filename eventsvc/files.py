"""
Files the process owns: locks held for its life, and atomic writes.

Two eventsvc processes must never share a spool, a dead-letter file or a
health-check token: the second would replace what the first still writes
to, and an acknowledged event would be lost.  A L{FileLock} is an
C{fcntl.flock} on a lock file that holds the holder's PID, so the refusal
can say who has it.  L{write_atomic} writes a whole file or nothing, and
never through a symbolic link someone left at the path.

L{Disk} holds the few writing operations of an append-only store (the
event spool, JetStream's file store) so that a test can put a full or
failing disk in their place.

This module knows nothing of configuration keys: callers name them.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Optional, Tuple


class Locked(Exception):
    """
    Another process holds the lock.

    @ivar pid: its PID as the lock file says it, or None when unreadable.
    """

    def __init__(self, path: str, pid: Optional[int]) -> None:
        super().__init__("{} is held by {}".format(path, "PID {}".format(pid) if pid else "another process"))
        self.path = path
        self.pid = pid

    @property
    def holder(self) -> str:
        """Who holds the lock, for an error line: "PID 123", or "its PID unknown"."""
        return "PID {}".format(self.pid) if self.pid else "its PID unknown"


def _open_no_follow(path: str, flags: int, mode: int = 0o600) -> int:
    """os.open that refuses a symbolic link at C{path} (ELOOP) with a clear error."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link; refusing to follow it", path)
        raise


class FileLock:
    """
    An exclusive lock on C{path}, held from L{acquire} to L{release} (or the
    process's end: the kernel lets go of it even after C{kill -9}).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """
        Take the lock and write our PID into it.

        @raise Locked: another process holds it.
        @raise OSError: the lock file cannot be opened.
        """
        if self._fd is not None:
            return
        fd = _open_no_follow(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                text = os.read(fd, 64).decode("ascii", "replace").strip()
            finally:
                os.close(fd)
            raise Locked(self.path, int(text) if text.isdigit() else None)
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, b"%d\n" % os.getpid())
        except OSError:
            # A full disk: the lock is held all the same; only the PID that
            # a refused second process would name is missing.
            pass
        self._fd = fd

    def release(self) -> None:
        """Let go (the file stays: removing it would race a process taking it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o600, disk: Optional["Disk"] = None) -> None:
    """
    Replace C{path} with C{data}, whole or not at all: a temporary file made
    with O_EXCL beside it (never through a link), fsynced, then renamed over
    C{path}.  A symbolic link at C{path} is replaced, not followed.

    @param disk: writes and fsyncs through it (a test's failing disk).
    """
    folder = os.path.dirname(os.path.abspath(path))
    temporary = "{}.tmp-{}".format(path, os.getpid())
    try:
        os.unlink(temporary)  # left by a crash of a process with our PID
    except FileNotFoundError:
        pass
    fd = _open_no_follow(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        if disk is not None:
            disk.write(fd, data)
            disk.fsync(fd)
        else:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temporary)
        raise
    os.close(fd)
    os.replace(temporary, path)
    sync_folder(folder)


def sync_folder(folder: str) -> None:
    """fsync a folder, so that a rename or a new file in it survives a crash."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def append_locked(path: str, data: bytes, mode: int = 0o600) -> None:
    """
    Append C{data} to C{path} under an exclusive lock, never through a link:
    two processes appending lines to one file interleave whole lines, and a
    process that rewrites the file under the lock loses none of them.
    """
    while True:
        fd = _open_no_follow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Whoever held the lock may have replaced the file (a replay
        # rewrites it): then append to the new one, not the old inode.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


#: Write failures that space can mend; any other is a store that cannot be written.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class Disk:
    """
    The few writing operations of an append-only store, in one place, so
    that a test can put a full or failing disk in their place.  Reading is
    not here: a store that cannot be read is not one to serve from.
    """

    def create(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o600)

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def space(self, directory: str) -> Tuple[int, int]:
        """Bytes free for us in C{directory}, and the size of its file system."""
        st = os.statvfs(directory)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
