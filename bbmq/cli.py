"""The ``bbmq`` command: thin argument parsing over the server and the client library."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

from bbmq import config as settings
from bbmq._version import __version__
from bbmq.admin import add_admin_commands
from bbmq.app import serve
from bbmq.cli_options import add_client_arguments, client_options, name_type
from bbmq.client import (
    BrokerError,
    Consumer,
    Message,
    Producer,
    default_address,
    ping,
)
from bbmq.client.retry import Backoff, comes_back
from bbmq.daemon import add_server_commands, describe_failure, load_config
from bbmq.pidfile import AlreadyRunning, PidFile
from bbmq.store import SchemaVersionError, StoreUnavailable


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


def _consume(args: argparse.Namespace) -> int:
    """Print and ack messages; once connected, come back when the broker restarts."""
    received = 0
    reconnect = Backoff.reconnect()
    connected = False  # not reaching the broker at all is an error to report, not to retry
    while True:
        wanted = args.count - received if args.count else 0
        consumer = Consumer(args.topic, args.group, prefetch=min(args.prefetch, wanted)
                            if wanted else args.prefetch, **client_options(args))
        try:
            consumer.connect()
            connected = True
            for _ in _print_messages(consumer, args):
                received += 1
                if args.count and received >= args.count:
                    return 0
            return 0  # --timeout passed without a message
        except BrokerError as error:
            if not connected or not comes_back(error):
                raise
            pause = reconnect.next()
            print(f"bbmq: {error.text}; reconnecting in {pause:.1f} s", file=sys.stderr)
        finally:
            consumer.close()
        time.sleep(pause)  # back off while the broker restarts


def _print_messages(consumer: Consumer, args: argparse.Namespace) -> Iterator[Message]:
    """Print and ack each message as it comes (after --timeout seconds without one, stop)."""
    if args.timeout is None:
        messages: Iterable[Message | None] = consumer
    else:
        messages = iter(lambda: consumer.fetch(args.timeout), None)
    for message in messages:
        assert message is not None
        if args.verbose:
            meta = " ".join(f"{k}={v}" for k, v in message.meta.items())
            print(f"id={message.id} attempt={message.attempt} {meta}", flush=True)
        sys.stdout.buffer.write(message.body + b"\n")
        sys.stdout.flush()
        consumer.ack(message)
        yield message


def _ping(args: argparse.Namespace) -> int:
    try:
        rtt = ping(args.host, args.port, timeout=args.timeout, tls=args.tls,
                   ca_file=args.ca_file)
    except BrokerError as error:
        print(f"bbmq: no answer: {error.text}", file=sys.stderr)
        return 1
    host, port = default_address()
    print(f"PONG from {args.host or host}:{args.port or port} in {rtt * 1000:.2f} ms")
    return 0


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

    publish = commands.add_parser(
        "publish", help="publish messages (arguments, or stdin lines); prints their ids")
    publish.add_argument("topic", type=name_type("topic"))
    publish.add_argument("messages", nargs="*", help="messages (default: one per stdin line)")
    publish.add_argument("--delay", type=float, default=None,
                         help="seconds before the messages may be delivered")
    publish.add_argument("--ttl", type=float, default=None,
                         help="seconds after which undelivered messages are dropped")
    add_client_arguments(publish)
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
    consume.add_argument("-v", "--verbose", action="store_true",
                         help="print id, attempt and metadata before each body")
    add_client_arguments(consume)
    consume.set_defaults(func=_consume)

    ping_parser = commands.add_parser("ping", help="check that a broker answers (exit 0 if so)")
    add_client_arguments(ping_parser)
    ping_parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    ping_parser.set_defaults(func=_ping)
    add_admin_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
