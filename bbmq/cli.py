"""The ``bbmq`` command: thin argument parsing over the server and the client library."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from types import FrameType
from typing import Final

from bbmq import config as settings
from bbmq._version import __version__
from bbmq.admin import add_admin_commands
from bbmq.app import serve
from bbmq.cli_options import add_client_arguments, client_options, message_header, name_type
from bbmq.client import (
    BrokerError,
    Consumer,
    Message,
    Producer,
    ping,
)
from bbmq.client.cluster import format_address, seed_brokers
from bbmq.client.retry import Backoff, Reconnect, comes_back
from bbmq.cluster_cli import add_cluster_commands
from bbmq.daemon import add_server_commands, describe_failure, load_config
from bbmq.pidfile import AlreadyRunning, PidFile
from bbmq.store import SchemaVersionError, StoreUnavailable

#: The longest pause between ``bbmq consume``'s attempts to reach a broker that went away:
#: short enough to be back soon after a restart, long enough not to flood the terminal.
CONSUME_RECONNECT_CEILING_S: Final = 15.0


def _run(args: argparse.Namespace) -> int:
    code = _run_broker(args)
    # Leave without the interpreter's finalization, as the daemon does: a store thread
    # still stuck in a database that never answered (a start given up on SIGTERM, a drain
    # that timed out) can crash CPython's teardown. Everything of ours is closed by now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_broker(args: argparse.Namespace) -> int:
    config = load_config(args)
    to_file = config.sources["log_file"] != "default"  # the foreground logs to stderr
    handler: logging.Handler = (logging.handlers.WatchedFileHandler(config.log_path)
                                if to_file else logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=config.log_level.upper(), format=settings.LOG_FORMAT,
                        handlers=[handler])
    # The foreground broker holds the same locked pidfile as the daemon, so that
    # 'bbmq server status' and 'stop' find it and a second broker refuses the data dir.
    try:
        config.pid_path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        with PidFile(config.pid_path):
            clean = asyncio.run(serve(config))
    except AlreadyRunning as error:
        print(f"bbmq: {error}, or give another --data-dir or --pid-file", file=sys.stderr)
        return 1
    except (OSError, ValueError, StoreUnavailable, SchemaVersionError) as error:
        # What stops a start is said in one line (the cause, what to do), not a traceback.
        logging.getLogger("bbmq").debug("start failed", exc_info=True)
        print(f"bbmq: could not start: {describe_failure(error, config)}", file=sys.stderr)
        return 1
    return 0 if clean else 1


def _read_lines(fd: int) -> Iterator[list[bytes]]:
    """Lines from a file descriptor, in batches of whatever has arrived (no waiting for more)."""
    pending = b""
    while chunk := os.read(fd, 1 << 16):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if lines:
            yield [line.removesuffix(b"\r") for line in lines]
    if pending:
        yield [pending.removesuffix(b"\r")]


def _publish(args: argparse.Namespace) -> int:
    with Producer(args.topic, **client_options(args)) as producer:
        if args.messages:
            batches: Iterable[list[bytes]] = [[m.encode() for m in args.messages]]
        else:
            if sys.stdin.isatty():
                print(f"publishing to {args.topic!r}: type one message per line, "
                      "Ctrl-D to finish", file=sys.stderr)
            batches = _read_lines(sys.stdin.fileno())
        for batch in batches:
            ids = producer.publish_many(batch, delay=args.delay, ttl=args.ttl)
            print("\n".join(map(str, ids)), flush=True)
    return 0


class _Stopped(Exception):
    """SIGINT or SIGTERM came while ``bbmq consume`` was waiting for a message."""


class _GracefulStop:
    """SIGINT and SIGTERM end ``bbmq consume`` after the message in hand is printed and
    acked: while one is, the signal is only noted; while waiting, it ends the wait."""

    def __init__(self) -> None:
        self.requested = False
        self.busy = False

    def __enter__(self) -> _GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._on_signal)
                              for signum in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in getattr(self, "_previous", {}).items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if not self.busy:
            raise _Stopped


def _consume(args: argparse.Namespace) -> int:
    """Print and ack messages until done, or until SIGINT/SIGTERM (after the message in hand)."""
    with _GracefulStop() as stopping:
        try:
            return _consume_until_stopped(args, stopping)
        except _Stopped:
            return 0


def _consume_until_stopped(args: argparse.Namespace, stopping: _GracefulStop) -> int:
    """Once connected, come back when the broker restarts (until --give-up-after seconds
    pass without it)."""
    received = 0
    reconnect = Reconnect(Backoff.reconnect(CONSUME_RECONNECT_CEILING_S))
    connected = False  # not reaching the broker at all is an error to report, not to retry
    lost_at: float | None = None  # when the broker went away, while it is away
    while not stopping.requested:
        wanted = args.count - received if args.count else 0
        consumer = Consumer(args.topic, args.group, prefetch=min(args.prefetch, wanted)
                            if wanted else args.prefetch, **client_options(args))
        try:
            consumer.connect()
            connected, lost_at = True, None
            reconnect.reset()
            for _ in _print_messages(consumer, args, stopping):
                received += 1
                if args.count and received >= args.count:
                    return 0
            return 0  # --timeout passed without a message, or a signal
        except BrokerError as error:
            if not connected or not comes_back(error):
                raise
            lost_at = time.monotonic() if lost_at is None else lost_at
            away = time.monotonic() - lost_at
            if args.give_up_after and away >= args.give_up_after:
                print(f"bbmq: {error.text}; giving up after {away:.0f} s without the broker "
                      "(--give-up-after)", file=sys.stderr)
                return 1
            pause = reconnect.pause(error)  # the first at once: another broker may serve
            if args.give_up_after:
                pause = min(pause, args.give_up_after - away)
            print(f"bbmq: {error.text}; reconnecting in {pause:.1f} s", file=sys.stderr)
        finally:
            stopping.busy = True  # a signal now is noted: the goodbye is not cut short
            consumer.close()
            stopping.busy = False
        if not stopping.requested:
            time.sleep(pause)  # back off while the broker restarts (a signal ends it)
    return 0


def _print_messages(consumer: Consumer, args: argparse.Namespace,
                    stopping: _GracefulStop) -> Iterator[Message]:
    """Print and ack each message as it comes (after --timeout seconds without one, or
    once a stop signal came, stop)."""
    if args.timeout is None:
        messages: Iterable[Message | None] = consumer
    else:
        messages = iter(lambda: consumer.fetch(args.timeout), None)
    for message in messages:
        assert message is not None
        stopping.busy = True
        if args.verbose:
            print(message_header(message.id, message.attempt, message.meta), flush=True)
        sys.stdout.buffer.write(message.body + b"\n")
        sys.stdout.flush()
        consumer.ack(message)
        stopping.busy = False
        yield message
        if stopping.requested:
            return


def _ping(args: argparse.Namespace) -> int:
    """PING each broker (--brokers, or the one of --host/--port); exit 1 if any is silent."""
    silent = 0
    for host, port in seed_brokers(args.brokers, args.host, args.port):
        try:
            rtt = ping(host, port, timeout=args.timeout, tls=args.tls, ca_file=args.ca_file)
        except BrokerError as error:
            print(f"bbmq: no answer: {error.text}", file=sys.stderr)
            silent += 1
            continue
        print(f"PONG from {format_address((host, port))} in {rtt * 1000:.2f} ms")
    return 1 if silent else 0


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of the top-level subcommand ``name``."""
    for action in parser._actions:  # argparse keeps its subparsers nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise KeyError(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bbmq", description="bbmq message broker")
    parser.add_argument("--version", action="version", version=f"bbmq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    server = commands.add_parser("server", help="run or manage the broker")
    server_commands = server.add_subparsers(dest="server_command", required=True)
    run = server_commands.add_parser("run", help="run the broker in the foreground")
    settings.add_arguments(run)
    run.set_defaults(func=_run)
    add_server_commands(server_commands)
    add_cluster_commands(commands, server_commands)

    publish = commands.add_parser(
        "publish", help="publish messages (arguments, or stdin lines); prints their ids")
    publish.add_argument("topic", type=name_type("topic"))
    publish.add_argument("messages", nargs="*", default=[],
                         help="messages (default: one per stdin line)")
    publish.add_argument("--delay", type=float, default=None,
                         help="seconds before the messages may be delivered")
    publish.add_argument("--ttl", type=float, default=None,
                         help="seconds after which undelivered messages are dropped")
    add_client_arguments(publish, name_help="this client's name, shown to consumers "
                                            "(from=) with each message")
    publish.set_defaults(func=_publish)

    consume = commands.add_parser("consume", help="print messages as they arrive, acking each")
    consume.add_argument("topic", type=name_type("topic"))
    consume.add_argument("--group", default="default", type=name_type("group"),
                         help="consumer group (default: default)")
    consume.add_argument("-n", "--count", type=int, default=0,
                         help="exit after this many messages")
    consume.add_argument("--timeout", type=float, default=None,
                         help="exit when no message came for this many seconds")
    consume.add_argument("--prefetch", type=int, default=100,
                         help="messages requested ahead (default 100)")
    consume.add_argument("--give-up-after", type=float, default=0.0, metavar="SECONDS",
                         help="once connected, exit 1 when the broker stays unreachable this "
                              "long (default 0: keep reconnecting, backing off up to "
                              f"{CONSUME_RECONNECT_CEILING_S:g} s)")
    consume.add_argument("-v", "--verbose", action="store_true",
                         help="print '# id=… attempt=… published=… from=…' (the delivery's "
                              "number, UTC time, sender) before each body, as 'bbmq peek' does")
    add_client_arguments(consume)
    consume.set_defaults(func=_consume)

    ping_parser = commands.add_parser("ping", help="check that a broker answers (exit 0 if so)")
    add_client_arguments(ping_parser)
    ping_parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    ping_parser.set_defaults(func=_ping)
    add_admin_commands(commands)
    return parser


def script_main(command: str, script: str) -> int:
    """``python producer.py …`` and ``consumer.py …``: ``bbmq COMMAND …`` whose usage and
    errors name the script the user ran."""
    return main([command, *sys.argv[1:]], prog={command: script})


def main(argv: Sequence[str] | None = None, *, prog: dict[str, str] | None = None) -> int:
    """The ``bbmq`` command; ``prog`` renames subcommands in usage lines (see script_main)."""
    parser = build_parser()
    for command, name in (prog or {}).items():
        _subcommand(parser, command).prog = name
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "publish" and not any(e.startswith("-") for e in extra):
        args.messages += extra  # 'publish TOPIC --delay 3 a b': argparse leaves a b over
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args))
    except settings.ConfigError as error:
        print(f"bbmq: {error}", file=sys.stderr)
        return 2
    except BrokerError as error:
        print(f"bbmq: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away ('| head'): say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
