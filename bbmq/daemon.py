"""``bbmq server start|stop|status|restart|config``: the broker as a real daemon.

``start`` daemonizes with python-daemon's :class:`daemon.DaemonContext` and
returns only once the broker accepts connections, or prints why it could not
start.  The way there:

* Every path is resolved *before* detaching (the daemon's working directory is
  its data dir, and relative ``--data-dir``/``--log-file``/``--pid-file`` mean
  "relative to where you typed the command").
* The command forks; the child enters the DaemonContext (which forks twice
  more, so the broker ends up in its own session, re-parented away from the
  shell) with one descriptor kept open through the context's close-everything:
  the write end of a pipe.  The broker reports over it: ``progress`` lines
  (store opened, "recovering N messages: 35%"), then ``ready`` or ``error``
  with the reason (port taken, store unreachable, ...).  The command relays
  them and exits 0 or 1.  The log file, the sockets, the store and the event
  loop are all opened after detaching, since DaemonContext closes every
  descriptor it was not told to keep.
* The pidfile is our own, locked with ``flock``, rather than
  ``daemon.pidfile.TimeoutPIDLockFile``.  That one (from the deprecated
  ``lockfile`` package) takes the lock by creating the file with ``O_EXCL``, so
  after a ``kill -9`` the leftover file blocks every start until someone
  deletes it, and the pid inside may by then belong to an unrelated process
  that ``stop`` would signal.  An flock is released by the kernel when the
  process dies, however it dies: "the lock is held" is exactly "the broker is
  alive", a stale file is simply locked again and rewritten, and ``stop`` and
  ``status`` never mistake a recycled pid for the broker.
* The log is a :class:`logging.handlers.WatchedFileHandler` (it notices a
  logrotate rename by itself), and SIGHUP reopens it at once (installed by
  :func:`bbmq.app.serve`).  The daemon's stdout and stderr point at the log
  too, so a stray traceback is never lost.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import fcntl
import json
import logging
import logging.handlers
import os
import select
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import daemon

from bbmq import config as settings
from bbmq.admin import Admin, format_duration, stats_table
from bbmq.app import serve
from bbmq.auth import Authorizer
from bbmq.client import BrokerError
from bbmq.server import BrokerServer
from bbmq.store.base import StoreUnavailable

log = logging.getLogger("bbmq.daemon")

DEFAULT_WAIT_S: Final = 30.0
#: How long a starting daemon waits for a pidfile lock that someone else (say ``status``
#: probing it) holds for an instant.
PIDFILE_LOCK_WAIT_S: Final = 2.0
POLL_S: Final = 0.05


class AlreadyRunning(Exception):
    """Another broker holds the pidfile's lock."""


# --------------------------------------------------------------------------- the pidfile


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


def _wait_until_stopped(pid_path: Path, seconds: float, pid: int | None) -> bool:
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


# --------------------------------------------------------------------------- configuration


def load_config(args: argparse.Namespace) -> settings.Config:
    """The effective settings, with every path made absolute (the daemon runs elsewhere)."""
    flags = {setting.name: getattr(args, setting.name) for setting in settings.SETTINGS}
    config = settings.load(flags, config_file=args.config)
    level = str(config.log_level).upper()
    if not isinstance(logging.getLevelName(level), int):
        raise settings.ConfigError(f"log_level {config.log_level!r} from "
                                   f"{config.sources['log_level']}: use DEBUG, INFO, WARNING "
                                   "or ERROR")
    return dataclasses.replace(
        config, log_level=level, data_dir=str(config.data_path), log_file=str(config.log_path),
        pid_file=str(config.pid_path),
        tls_cert=config.tls_cert and str(Path(config.tls_cert).resolve()),
        tls_key=config.tls_key and str(Path(config.tls_key).resolve()))


def _client_host(host: str) -> str:
    """Where to reach a broker listening on ``host`` from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


# --------------------------------------------------------------------------- start


def start_daemon(config: settings.Config, wait: float) -> int:
    """Daemonize a broker; return once it accepts connections (0) or failed to start (1)."""
    state = probe(config.pid_path)
    if state.running:
        print(f"bbmq: already running, pid {state.pid} (pidfile {config.pid_path}); "
              "'bbmq server stop' it first, or give another --data-dir or --pid-file",
              file=sys.stderr)
        return 1
    if state.pidfile_exists:
        print(f"bbmq: replacing stale pidfile {config.pid_path} (pid {state.pid} is gone)",
              file=sys.stderr)
    for directory in (config.data_path, config.pid_path.parent, config.log_path.parent):
        try:
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as error:
            print(f"bbmq: cannot create {directory}: {error.strerror}; choose another "
                  "--data-dir (or --pid-file/--log-file) you can write to", file=sys.stderr)
            return 1
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:  # becomes the daemon; never returns into the command's code
        os.close(read_fd)
        code = 1
        try:
            code = _daemon_main(config, StartupReport(write_fd))
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(write_fd)
    try:
        return _await_readiness(read_fd, config, wait)
    finally:
        os.close(read_fd)
        os.waitpid(child, 0)  # it exited right after its own fork inside DaemonContext


def _await_readiness(read_fd: int, config: settings.Config, wait: float) -> int:
    """Relay the daemon's progress lines until it says ready or error, or goes quiet."""
    deadline = time.monotonic() + wait
    pending = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            state = probe(config.pid_path)
            print(f"bbmq: the broker (pid {state.pid}) did not report ready within "
                  f"{wait:g} s; it may still be starting: see 'bbmq server status' and "
                  f"{config.log_path}, or give more time with --wait", file=sys.stderr)
            return 1
        readable, _, _ = select.select([read_fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            print(f"bbmq: the broker exited while starting without saying why; see "
                  f"{config.log_path}", file=sys.stderr)
            return 1
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            kind, _, text = line.decode(errors="replace").partition(" ")
            if kind == "progress":
                print(f"bbmq: {text}", file=sys.stderr, flush=True)
                deadline = time.monotonic() + wait  # it is alive and getting somewhere
            elif kind == "ready":
                pid, address = text.split(" ", 1)
                print(f"bbmq started: pid {pid}, listening on {address}, log {config.log_path}")
                return 0
            elif kind == "error":
                print(f"bbmq: could not start: {text}", file=sys.stderr)
                return 1


class StartupReport(logging.Handler):
    """The daemon's side of the readiness pipe: progress lines, then ``ready`` or ``error``.

    Attached to the ``bbmq`` logger while starting, so whatever the broker logs
    at INFO or above (store opened, recovery progress) reaches the waiting
    ``bbmq server start``; closed once the outcome is known.
    """

    def __init__(self, fd: int) -> None:
        super().__init__(logging.INFO)
        self.fd: int | None = fd
        self._logger: logging.Logger | None = None

    def attach(self, logger: logging.Logger) -> None:
        self._logger = logger
        logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self._send("progress", record.getMessage())

    def ready(self, text: str) -> None:
        self._send("ready", text)
        self._finish()

    def fail(self, text: str) -> None:
        self._send("error", text)
        self._finish()

    def _send(self, kind: str, text: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, f"{kind} {' '.join(text.split())}\n".encode())
        except OSError:
            self._finish()  # the command stopped waiting: nobody left to tell

    def _finish(self) -> None:
        if self._logger is not None:
            self._logger.removeHandler(self)
            self._logger = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _daemon_main(config: settings.Config, report: StartupReport) -> int:
    """In the forked child: detach, then run the broker until it is told to stop."""
    # Imports that happen later (lazily, in libraries) must not depend on the old directory.
    sys.path[:] = [os.path.abspath(entry) for entry in sys.path]
    try:
        context = daemon.DaemonContext(
            working_directory=str(config.data_path),
            umask=0o027,
            pidfile=PidFile(config.pid_path),
            files_preserve=[report.fd],
            detach_process=True,
            # Ignored until serve() installs its own handlers: SIGHUP reopens the log there.
            signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None,
                        signal.SIGHUP: None, signal.SIGTERM: "terminate"},
        )
        with context:
            return _run_broker(config, report)
    except BaseException as error:  # whatever it is, the waiting command must hear it
        report.fail(describe_failure(error, config))
        return 1


def _run_broker(config: settings.Config, report: StartupReport) -> int:
    """In the daemon: log to the file, serve, report readiness or the reason for failure."""
    try:
        handler = DaemonLogHandler(config.log_path)
    except OSError as error:
        report.fail(f"cannot open the log file {config.log_path}: {error.strerror}; "
                    "give a writable --log-file")
        return 1

    handler.setFormatter(logging.Formatter(settings.LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)
    report.attach(logging.getLogger("bbmq"))
    log.info("daemon pid %d starting; settings: %s", os.getpid(),
             ", ".join(f"{name}={value} ({source})" for name, value, source in config.describe()
                       if source != "default"))
    try:
        clean = asyncio.run(_serve_and_report(config, report))
    except BaseException as error:
        report.fail(describe_failure(error, config))
        log.error("stopped on an error: %s", describe_failure(error, config),
                  exc_info=not isinstance(error, SystemExit))
        return 1
    log.info("daemon pid %d exited", os.getpid())
    return 0 if clean else 1


async def _serve_and_report(config: settings.Config, report: StartupReport) -> bool:
    ready: asyncio.Future[BrokerServer] = asyncio.get_running_loop().create_future()
    serving = asyncio.ensure_future(serve(config, ready))
    either: list[asyncio.Future[Any]] = [serving, ready]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if ready.done():
        host, port = ready.result().address
        report.ready(f"{os.getpid()} {host}:{port}")
    return await serving


def describe_failure(error: BaseException, config: settings.Config) -> str:
    """Why the broker could not start, and what to do about it, in one line."""
    from bbmq.metrics import MetricsPortError  # noqa: PLC0415 (prometheus_client is slow to import)

    if isinstance(error, AlreadyRunning):
        return str(error)
    if isinstance(error, MetricsPortError):
        return str(error.strerror)
    if isinstance(error, SystemExit):
        return "terminated by a signal while starting"
    if isinstance(error, StoreUnavailable):
        return (f"store {settings.mask('store', config.store) or 'sqlite'} unreachable: "
                f"{error}; check --store and that the database is up")
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        return (f"{config.host}:{config.port} is already in use; stop what listens there or "
                "choose another --port")
    if isinstance(error, ValueError):
        return str(error)
    if isinstance(error, OSError):
        return f"{error}; see {config.log_path}"
    return f"{type(error).__name__}: {error}; see {config.log_path}"


class DaemonLogHandler(logging.handlers.WatchedFileHandler):
    """The log file, reopened after rotation, with the process's stdout and stderr pointed at it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self._redirect_std_streams()

    def reopenIfNeeded(self) -> None:  # noqa: N802 (the stdlib's name)
        stream = self.stream
        super().reopenIfNeeded()
        if self.stream is not stream:
            self._redirect_std_streams()

    def _redirect_std_streams(self) -> None:
        if self.stream is not None:
            for fd in (1, 2):
                os.dup2(self.stream.fileno(), fd)


# --------------------------------------------------------------------------- stop / status


def stop_daemon(config: settings.Config, wait: float, force: bool) -> int:
    """SIGTERM the broker and wait for it to drain and exit; LSB: stopping a stopped one is 0."""
    state = probe(config.pid_path)
    if not state.running:
        stale = (f" (stale pidfile {config.pid_path}: pid {state.pid} is gone)"
                 if state.pidfile_exists else "")
        print(f"bbmq is not running{stale}")
        return 0
    pid = state.pid
    if pid is None:
        print(f"bbmq: {config.pid_path} is locked but holds no pid yet (a broker is starting?);"
              " try again in a moment", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # exited between the probe and now
    except PermissionError:
        print(f"bbmq: not allowed to signal pid {pid}; run this as the user who started it",
              file=sys.stderr)
        return 1
    print(f"bbmq: stopping pid {pid}, waiting up to {wait:g} s for it to drain",
          file=sys.stderr, flush=True)
    if _wait_until_stopped(config.pid_path, wait, pid):
        print("stopped")
        return 0
    if not force:
        print(f"bbmq: gave up waiting: pid {pid} is still running after {wait:g} s (still "
              "draining, or stuck). Wait and check 'bbmq server status', give more time with "
              "--wait, or use --force to kill it (acked messages are safe in the store; "
              "unacked deliveries are redelivered)", file=sys.stderr)
        return 1
    if probe(config.pid_path).running:
        os.kill(pid, signal.SIGKILL)
    if not _wait_until_stopped(config.pid_path, 10.0, pid):
        print(f"bbmq: pid {pid} survived SIGKILL; see 'ps -p {pid}'", file=sys.stderr)
        return 1
    config.pid_path.unlink(missing_ok=True)  # it had no chance to remove its own
    print(f"killed: pid {pid} did not drain within {wait:g} s (SIGKILL sent)")
    return 0


def daemon_status(config: settings.Config, timeout: float) -> tuple[int, dict[str, Any]]:
    """(LSB exit code, facts): 0 running, 1 dead with a pidfile left, 3 not running."""
    state = probe(config.pid_path)
    facts: dict[str, Any] = {"running": state.running, "pid": state.pid,
                             "pid_file": str(config.pid_path), "log_file": str(config.log_path)}
    if not state.running:
        return (1 if state.pidfile_exists else 3), facts
    host, port = _client_host(config.host), config.port
    try:
        with Admin(host, port, tls=_status_tls(config), timeout=timeout,
                   token=Authorizer.parse(config.auth_tokens).admin_token()) as admin:
            facts["stats"] = admin.stats()
    except BrokerError as error:
        facts["answering"] = False
        facts["error"] = f"{host}:{port}: {error.text}"
    else:
        facts["answering"] = True
    return 0, facts


def _status_tls(config: settings.Config) -> bool | ssl.SSLContext:
    """For a TLS broker: trust exactly its own certificate (whatever names it carries)."""
    if not config.tls_cert:
        return False
    context = ssl.create_default_context(cafile=config.tls_cert)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = False  # pinned to the certificate itself
    return context


def print_status(code: int, facts: dict[str, Any]) -> None:
    if code == 3:
        print("bbmq is not running")
        return
    if code == 1:
        print(f"bbmq is dead but pidfile {facts['pid_file']} exists (pid {facts['pid']} is "
              "gone); 'bbmq server start' replaces it")
        return
    if not facts["answering"]:
        print(f"bbmq is running, pid {facts['pid']}, but does not answer ({facts['error']}). "
              "If it was started with another --host/--port/--config, give the same ones here; "
              f"if it is still recovering its store, see {facts['log_file']}")
        return
    stats = facts["stats"]
    server = stats.get("server", {})
    store = server.get("store", "?") + ("" if server.get("store_available", True)
                                        else " (UNAVAILABLE: see the log)")
    print(f"bbmq is running, pid {facts['pid']}, up {format_duration(server.get('uptime_s', 0))}")
    print(f"  address      {server.get('address')}")
    print(f"  store        {store}")
    print(f"  connections  {server.get('connections')}")
    print(f"  log          {server.get('log') or facts['log_file']}")
    print(stats_table(stats))


# --------------------------------------------------------------------------- commands


def _start(args: argparse.Namespace) -> int:
    return start_daemon(load_config(args), args.wait)


def _stop(args: argparse.Namespace) -> int:
    return stop_daemon(load_config(args), args.wait, args.force)


def _restart(args: argparse.Namespace) -> int:
    config = load_config(args)
    code = stop_daemon(config, args.wait, args.force)
    return code if code else start_daemon(config, args.wait)


def _status(args: argparse.Namespace) -> int:
    code, facts = daemon_status(load_config(args), args.timeout)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print_status(code, facts)
    return code


def _show_config(args: argparse.Namespace) -> int:
    rows = load_config(args).describe()
    if args.json:
        print(json.dumps({name: {"value": value, "source": source}
                          for name, value, source in rows}, indent=2))
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, value, source in rows:
        print(f"{name.ljust(widths[0])}  {value.ljust(widths[1])}  {source}")
    return 0


def add_server_commands(server_commands: argparse._SubParsersAction[argparse.ArgumentParser],
                        ) -> None:
    """Register start, stop, status, restart and config next to ``bbmq server run``."""
    def add(name: str, help_text: str, func: Callable[[argparse.Namespace], int],
            ) -> argparse.ArgumentParser:
        parser = server_commands.add_parser(name, help=help_text)
        settings.add_arguments(parser)
        parser.set_defaults(func=func)
        return parser

    def add_wait(parser: argparse.ArgumentParser, what: str) -> None:
        parser.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                            help=f"{what} (default {DEFAULT_WAIT_S:g})")

    start = add("start", "start the broker as a daemon; returns once it accepts connections",
                _start)
    add_wait(start, "seconds to wait for the broker to accept connections, counted from its "
                    "last progress message")
    stop = add("stop", "stop the daemon: SIGTERM, then wait for it to drain and exit", _stop)
    add_wait(stop, "seconds to wait for the broker to exit")
    stop.add_argument("--force", action="store_true",
                      help="SIGKILL the broker if it has not exited after --wait")
    restart = add("restart", "stop the daemon (if running), then start it", _restart)
    add_wait(restart, "seconds to wait for the stop, then for the start")
    restart.add_argument("--force", action="store_true",
                         help="SIGKILL the broker if it has not exited after --wait")
    status = add("status", "is the daemon running (exit 0; 3 stopped, 1 dead with a pidfile); "
                           "pid, uptime, address, store, topics", _status)
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="seconds to wait for the broker's answer (default 5)")
    show = add("config", "print the effective settings and where each came from (secrets "
                         "masked)", _show_config)
    show.add_argument("--json", action="store_true", help="print JSON for scripts")
