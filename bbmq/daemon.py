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
* The pidfile is our own, locked with ``flock`` (see :mod:`bbmq.pidfile`).
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
import json
import logging
import logging.handlers
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import daemon

from bbmq import config as settings
from bbmq.app import serve
from bbmq.pidfile import AlreadyRunning, PidFile, probe, wait_until_stopped
from bbmq.server import BrokerServer
from bbmq.server_status import daemon_status, print_status
from bbmq.store.base import StoreUnavailable
from bbmq.store.mysql import explain_open_failure

log = logging.getLogger("bbmq.daemon")

DEFAULT_WAIT_S: Final = 30.0


# --------------------------------------------------------------------------- configuration


def load_config(args: argparse.Namespace) -> settings.Config:
    """The effective settings, with every path made absolute (the daemon runs elsewhere)."""
    flags = {setting.name: getattr(args, setting.name) for setting in settings.SETTINGS}
    config = settings.load(flags, config_file=args.config)
    level = config.log_level.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise settings.ConfigError(f"log_level {config.log_level!r} from "
                                   f"{config.sources['log_level']}: use DEBUG, INFO, WARNING "
                                   "or ERROR")
    return dataclasses.replace(
        config, log_level=level, data_dir=str(config.data_path), log_file=str(config.log_path),
        pid_file=str(config.pid_path),
        tls_cert=config.tls_cert and str(Path(config.tls_cert).resolve()),
        tls_key=config.tls_key and str(Path(config.tls_key).resolve()))


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
    from bbmq.dashboard import HttpPortError  # noqa: PLC0415 (aiohttp is slow to import)

    if isinstance(error, AlreadyRunning):
        return str(error)
    if isinstance(error, HttpPortError):
        return str(error.strerror)
    if isinstance(error, SystemExit):
        return "terminated by a signal while starting"
    if isinstance(error, StoreUnavailable):
        explained = (explain_open_failure(error, config.store)
                     if config.store.startswith("mysql://") else None)
        # The error's text starts with the store's address (password left out).
        return explained or f"store unreachable: {error}; check --store and that the database is up"
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


# --------------------------------------------------------------------------- stop


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
    if wait_until_stopped(config.pid_path, wait, pid):
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
    if not wait_until_stopped(config.pid_path, 10.0, pid):
        print(f"bbmq: pid {pid} survived SIGKILL; see 'ps -p {pid}'", file=sys.stderr)
        return 1
    config.pid_path.unlink(missing_ok=True)  # it had no chance to remove its own
    print(f"killed: pid {pid} did not drain within {wait:g} s (SIGKILL sent)")
    return 0


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
