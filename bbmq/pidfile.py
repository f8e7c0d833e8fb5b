"""The broker's pidfile: which process it is, and whether that process is alive.

The pidfile is our own, locked with ``flock``, rather than
``daemon.pidfile.TimeoutPIDLockFile``.  That one (from the deprecated
``lockfile`` package) takes the lock by creating the file with ``O_EXCL``, so
after a ``kill -9`` the leftover file blocks every start until someone
deletes it, and the pid inside may by then belong to an unrelated process
that ``stop`` would signal.  An flock is released by the kernel when the
process dies, however it dies: "the lock is held" is exactly "the broker is
alive", a stale file is simply locked again and rewritten, and ``stop`` and
``status`` never mistake a recycled pid for the broker.  The daemon and the
foreground ``bbmq server run`` both hold it.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

#: How long a starting broker waits for a pidfile lock that someone else (say ``status``
#: probing it) holds for an instant.
PIDFILE_LOCK_WAIT_S: Final = 2.0
POLL_S: Final = 0.05


class AlreadyRunning(Exception):
    """Another broker holds the pidfile's lock."""


@dataclass(frozen=True, slots=True)
class DaemonState:
    """What the pidfile says: is a broker holding it, and which pid is written in it."""

    pidfile_exists: bool
    running: bool
    pid: int | None


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def probe(pid_path: Path) -> DaemonState:
    """Whether a broker holds ``pid_path``'s lock (the broker is alive) and its pid."""
    try:
        fd = os.open(pid_path, os.O_RDONLY)
    except FileNotFoundError:
        return DaemonState(pidfile_exists=False, running=False, pid=None)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            # Held: the broker writes its pid right after locking, so wait for it briefly.
            deadline = time.monotonic() + 1.0
            while (pid := _read_pid(fd)) is None and time.monotonic() < deadline:
                time.sleep(POLL_S)
            return DaemonState(pidfile_exists=True, running=True, pid=pid)
        return DaemonState(pidfile_exists=True, running=False, pid=_read_pid(fd))
    finally:
        os.close(fd)  # also drops our shared lock, if we took it


class PidFile:
    """The daemon's pidfile, flock-ed for as long as the daemon lives (a DaemonContext pidfile).

    Entered by DaemonContext after it detached, so the pid written is the
    daemon's own and the descriptor survives the context's close-everything.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> PidFile:
        deadline = time.monotonic() + PIDFILE_LOCK_WAIT_S
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise AlreadyRunning(f"already running, pid {pid} (pidfile {self.path}); "
                                         "'bbmq server stop' it first") from None
                time.sleep(POLL_S)
                continue
            if self._is_current(fd):
                break
            os.close(fd)  # an exiting broker removed the file we locked: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def _is_current(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is None:
            return
        if self._is_current(self._fd):
            os.unlink(self.path)
        os.close(self._fd)  # releases the lock
        self._fd = None


def wait_until_stopped(pid_path: Path, seconds: float, pid: int | None) -> bool:
    """Poll the pidfile lock until the broker released it (exited) or ``seconds`` passed."""
    started = time.monotonic()
    deadline = started + seconds
    next_note = started + 5.0
    while probe(pid_path).running:
        now = time.monotonic()
        if now >= deadline:
            return False
        if now >= next_note:
            print(f"bbmq: pid {pid} still draining after {now - started:.0f} s",
                  file=sys.stderr, flush=True)
            next_note = now + 5.0
        time.sleep(POLL_S)
    return True
