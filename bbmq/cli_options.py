"""What every client command of the CLI shares: where the broker is and how to reach it,
and the one way a message is described (``bbmq consume -v``, ``peek``, ``dlq list``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from bbmq import protocol
from bbmq.defaults import DEFAULT_HOST, DEFAULT_PORT


def name_type(kind: str) -> Callable[[str], str]:
    """An argparse type that checks a topic or group name before anything is sent."""
    def check(text: str) -> str:
        try:
            return protocol.check_name(kind, text)
        except protocol.ProtocolError as error:
            raise argparse.ArgumentTypeError(error.text) from None
    return check


def add_client_arguments(parser: argparse.ArgumentParser, *,
                         name_help: str = "this client's name, in the broker's log") -> None:
    """--brokers (or --host and --port), --token, --tls, --ca-file and --name (``name_help``
    says where the name shows: a producer's goes with its messages)."""
    parser.add_argument("--brokers", default=None, metavar="HOST:PORT,...",
                        help="the brokers of a cluster, e.g. h1:15333,h2:15333 (env "
                             "BBMQ_BROKERS); the client finds the one that serves the topic. "
                             "Instead of --host/--port")
    parser.add_argument("--host", default=None,
                        help=f"broker host (env BBMQ_HOST, default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=None,
                        help=f"broker port (env BBMQ_PORT, default {DEFAULT_PORT})")
    parser.add_argument("--token", default=None,
                        help="authentication token, when the broker requires one (env BBMQ_TOKEN)")
    parser.add_argument("--tls", action="store_true",
                        default=os.environ.get("BBMQ_TLS", "").lower() in ("1", "true", "yes"),
                        help="connect with TLS (env BBMQ_TLS=1)")
    parser.add_argument("--ca-file", default=os.environ.get("BBMQ_CA_FILE"),
                        help="CA certificate to verify the broker (with --tls; env BBMQ_CA_FILE)")
    parser.add_argument("--name", default=None, help=name_help)


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for Producer, Consumer and Admin from those flags."""
    return {"host": args.host, "port": args.port, "brokers": args.brokers, "name": args.name,
            "token": args.token, "tls": args.tls, "ca_file": args.ca_file}


def utc_time(ms: int) -> str:
    """A broker timestamp (ms since the epoch) as every tool shows it: ISO 8601, UTC, ms."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def message_header(message_id: int, attempt: int, meta: Mapping[str, Any], *,
                   published_ms: int | None = None, sender: str | None = None,
                   deliver_at_ms: int | None = None) -> str:
    """``# id=… attempt=… published=… from=… due=… key=value…``, the same in every tool.

    ``attempt`` is the delivery's number (1 for the first); ``published_ms``
    and ``sender`` default to the MESSAGE's ``ts`` and ``from`` meta keys.
    """
    extra = dict(meta)
    stamp, sent_by = str(extra.pop("ts", "")), extra.pop("from", None)
    if published_ms is None and stamp.isdigit():
        published_ms = int(stamp)
    sender = sender or sent_by
    parts = [f"id={message_id}", f"attempt={attempt}"]
    if published_ms is not None:
        parts.append(f"published={utc_time(published_ms)}")
    if sender:
        parts.append(f"from={sender}")
    if deliver_at_ms and published_ms is not None and deliver_at_ms > published_ms:
        parts.append(f"due={utc_time(deliver_at_ms)}")
    parts += [f"{key}={_shown(key, value)}" for key, value in extra.items()]
    return "# " + " ".join(parts)


def _shown(key: str, value: Any) -> Any:
    """A metadata value as shown: the times a dead letter carries (``original_ts``) in the
    one time format, everything else as it is."""
    if key.endswith("_ts") and str(value).isdigit():
        return utc_time(int(value))
    return value
