"""``bbmq server drain`` and ``bbmq cluster status``: a cluster seen from the command line.

Both speak to one broker over its admin connection (the ADMIN ``drain`` and
``cluster`` commands, answered by bbmq/cluster/member.py), so they need only its
address and, when it requires one, a token.  ``drain`` asks again until the
broker serves no topic, printing the progress; ``cluster status`` prints the
brokers and leases as that broker last read them from the database.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from bbmq.cli_options import add_client_arguments, client_options
from bbmq.client.admin import Admin

#: How often ``drain`` asks the broker how far it got.
DRAIN_POLL_S = 0.5


def _drain(args: argparse.Namespace) -> int:
    with Admin(**client_options(args)) as admin:
        answer = admin.command("drain")
        if not answer.get("draining"):
            print(f"bbmq: {answer.get('note', 'the broker did not start draining')}",
                  file=sys.stderr)
            return 1
        print(f"draining: {answer['topics']} topics to hand off to "
              f"{', '.join(answer['targets']) or '(no other live broker yet)'}", flush=True)
        deadline = time.monotonic() + args.wait
        shown = answer["topics"]
        while answer["topics"]:
            if time.monotonic() >= deadline:
                print(f"bbmq: still serving {answer['topics']} topics after {args.wait:g} s "
                      f"({', '.join(answer['held'][:5])}...); "
                      + ("start another broker to take them, or " if not answer["targets"]
                         else "") + "run 'bbmq server drain' again to keep waiting",
                      file=sys.stderr)
                return 1
            time.sleep(DRAIN_POLL_S)  # a poll of a remote broker, not a test's synchronisation
            answer = admin.command("drain")
            if answer["topics"] != shown:
                shown = answer["topics"]
                print(f"draining: {shown} topics left", flush=True)
    print("drained: the broker serves no topic; its clients were redirected. "
          "Stop it now ('bbmq server stop').")
    return 0


def status_lines(status: Mapping[str, Any]) -> list[str]:
    """The brokers, then the leases, as ``bbmq cluster status`` prints them."""
    owned = Counter(lease["owner"] for lease in status["leases"] if lease["remaining_ms"] > 0)
    lines = [f"asked broker {status['me']} at {status['address']} ({status['mode']} mode, "
             f"lease TTL {status['ttl_ms']} ms)", ""]
    rows: list[tuple[str, ...]] = [("BROKER", "ADDRESS", "MODE", "HEARTBEAT", "DRAINING",
                                    "TOPICS")]
    for broker in status["brokers"]:
        rows.append((broker["id"], broker["address"], broker["mode"],
                     f"{broker['heartbeat_age_ms'] / 1000:.1f}s ago",
                     "yes" if broker["draining"] else "no", str(owned.get(broker["id"], 0))))
    lines += _table(rows)
    if status["mode"] == "cluster":
        addresses = {broker["id"]: broker["address"] for broker in status["brokers"]}
        rows = [("TOPIC", "OWNER", "EPOCH", "LEASE LEFT")]
        for lease in sorted(status["leases"], key=lambda lease: lease["topic"]):
            owner = lease["owner"] or "-"
            left = (f"{lease['remaining_ms'] / 1000:.1f}s" if lease["remaining_ms"] > 0
                    else "expired")
            rows.append((lease["topic"], addresses.get(owner, owner), str(lease["epoch"]),
                         left if lease["owner"] else "-"))
        lines += ["", *_table(rows)]
    return lines


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def _cluster_status(args: argparse.Namespace) -> int:
    with Admin(**client_options(args)) as admin:
        status = admin.command("cluster")
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print("\n".join(status_lines(status)))
    return 0


def add_cluster_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                         server_commands: argparse._SubParsersAction[argparse.ArgumentParser],
                         ) -> None:
    """Register ``bbmq server drain`` and ``bbmq cluster status``."""
    drain = server_commands.add_parser(
        "drain", help="hand every topic of a cluster broker to the others (its clients are "
                      "redirected), then exit 0: stop it after, with no client seeing an error")
    drain.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                       help="give up (exit 1) if topics are left after this long (default 120)")
    add_client_arguments(drain)
    drain.set_defaults(func=_drain)
    cluster = commands.add_parser("cluster", help="a cluster of brokers sharing one database")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    status = cluster_commands.add_parser(
        "status", help="the brokers (heartbeat age, draining, topics) and each topic's owner "
                       "and epoch, as the broker asked last read them")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_client_arguments(status)
    status.set_defaults(func=_cluster_status)
