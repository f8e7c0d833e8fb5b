"""What every client command of the CLI shares: where the broker is and how to reach it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from bbmq import protocol as p
from bbmq.defaults import DEFAULT_HOST, DEFAULT_PORT


def name_type(kind: str) -> Callable[[str], str]:
    """An argparse type that checks a topic or group name before anything is sent."""
    def check(text: str) -> str:
        try:
            return p.check_name(kind, text)
        except p.ProtocolError as error:
            raise argparse.ArgumentTypeError(error.text) from None
    return check


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """--host, --port, --token, --tls, --ca-file and --name."""
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
    parser.add_argument("--name", default=None, help="this client's name, shown to consumers")


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for Producer, Consumer and Admin from those flags."""
    return {"host": args.host, "port": args.port, "name": args.name, "token": args.token,
            "tls": args.tls, "ca_file": args.ca_file}
