"""Administering a running broker as a client: ``bbmq stats|topics|purge|group|peek|dlq``.

The broker answers administrative requests on a ``CLIENT_ADMIN`` connection
(the :class:`~bbmq.client.Admin` client), so these commands need nothing
but the address and, when the broker requires one, a token: they work against a
local daemon, a container or a remote host alike.  ``dlq replay`` runs
:func:`~bbmq.dlq_replay.replay_dead_letters`, which the broker's dashboard
runs too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from bbmq.cli_options import add_client_arguments, client_options, message_header, name_type
from bbmq.client.admin import Admin
from bbmq.defaults import DLQ_SUFFIX
from bbmq.dlq_replay import replay_dead_letters

# --------------------------------------------------------------------------- rates and tables


def with_rates(previous: Mapping[str, Any] | None, current: dict[str, Any],
               seconds: float) -> dict[str, Any]:
    """``current`` stats with per-second rates from ``previous`` (None where unknown)."""
    def rate(before: Mapping[str, Any] | None, after: Mapping[str, Any], key: str) -> float | None:
        if before is None or seconds <= 0:
            return None
        return round(float(after[key] - before[key]) / seconds, 1)

    old_topics = (previous or {}).get("topics", {})
    for name, topic in current["topics"].items():
        old_topic = old_topics.get(name)
        topic["published_per_s"] = rate(old_topic, topic, "published")
        topic["acked_per_s"] = rate(old_topic, topic, "acked")
        old_groups = (old_topic or {}).get("groups", {})
        for group_name, group in topic["groups"].items():
            old_group = old_groups.get(group_name)
            group["delivered_per_s"] = rate(old_group, group, "delivered")
            group["acked_per_s"] = rate(old_group, group, "acked")
    current["interval_s"] = round(seconds, 3) if previous is not None else None
    return current


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return " ".join(shown) or "0s"


def server_line(server: Mapping[str, Any]) -> str:
    """One line about the broker process, from the ``server`` part of ``ADMIN stats``."""
    if not server:
        return "bbmq"
    store = server.get("store", "?")
    if not server.get("store_available", True):
        store += " (UNAVAILABLE)"
    return (f"bbmq pid {server.get('pid')} on {server.get('address')}, "
            f"up {format_duration(server.get('uptime_s', 0))}, "
            f"connections {server.get('connections', 0)}, store {store}")


def stats_table(stats: Mapping[str, Any]) -> str:
    """A topic row (totals over its groups) followed by one row per group."""
    header = ("TOPIC / GROUP", "READY", "INFLIGHT", "DELAYED", "CONSUMERS", "PUBLISHED",
              "PUB/S", "ACKED", "ACK/S")
    rows: list[tuple[str, ...]] = [header]

    def shown_rate(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    for name, topic in stats["topics"].items():
        groups = topic["groups"]
        rows.append((
            name,
            str(topic["backlog"] + sum(g["ready"] for g in groups.values())),
            str(sum(g["inflight"] for g in groups.values())),
            str(sum(g["delayed"] for g in groups.values())),
            str(sum(g["consumers"] for g in groups.values())),
            str(topic["published"]), shown_rate(topic.get("published_per_s")),
            str(topic["acked"]), shown_rate(topic.get("acked_per_s")),
        ))
        for group_name, group in groups.items():
            rows.append((
                "  " + group_name, str(group["ready"]), str(group["inflight"]),
                str(group["delayed"]), str(group["consumers"]), "", "",
                str(group["acked"]), shown_rate(group.get("acked_per_s")),
            ))
    if len(rows) == 1:
        return "no topics yet"
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                  for i, cell in enumerate(row)).rstrip()
        for row in rows)


# --------------------------------------------------------------------------- commands


def _connect(args: argparse.Namespace) -> Admin:
    return Admin(**client_options(args)).connect()


def _stats(args: argparse.Namespace) -> int:
    with _connect(args) as admin:
        if args.watch is not None:
            _watch(admin, max(0.1, args.watch), args.json)
            return 0
        previous, started = None, time.monotonic()
        if args.interval > 0:
            previous = admin.stats()
            time.sleep(args.interval)  # the sampling interval of the rates
        current = with_rates(previous, admin.stats(), time.monotonic() - started)
    if args.json:
        print(json.dumps(current, indent=2))
    else:
        print(server_line(current.get("server", {})))
        print(stats_table(current))
    return 0


def _watch(admin: Admin, seconds: float, as_json: bool) -> None:
    """Print a fresh sample every ``seconds`` until interrupted (Ctrl-C)."""
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() and not as_json else ""
    previous: dict[str, Any] | None = None
    sampled_at = time.monotonic()
    while True:
        current = admin.stats()
        now = time.monotonic()
        current = with_rates(previous, current, now - sampled_at)
        if as_json:
            print(json.dumps(current), flush=True)
        else:
            print(f"{clear}{server_line(current.get('server', {}))}  "
                  f"(every {seconds:g} s, Ctrl-C to stop)\n{stats_table(current)}\n", flush=True)
        previous, sampled_at = current, now
        time.sleep(seconds)  # the refresh period the user asked for


def _topics(args: argparse.Namespace) -> int:
    with _connect(args) as admin:
        names = admin.topics()
    if names:
        print("\n".join(names))
    else:
        print("no topics yet", file=sys.stderr)
    return 0


def _purge(args: argparse.Namespace) -> int:
    with _connect(args) as admin:
        purged = admin.purge(args.topic, args.group)
    where = args.topic if args.group is None else f"{args.topic} (group {args.group})"
    print(f"purged {purged} queued messages from {where}; messages in flight were kept")
    return 0


def _group_delete(args: argparse.Namespace) -> int:
    with _connect(args) as admin:
        admin.delete_group(args.topic, args.group)
    print(f"deleted group {args.group} of {args.topic}")
    return 0


def _peek(args: argparse.Namespace) -> int:
    with _connect(args) as admin:
        messages = admin.peek(args.topic, args.group, args.count)
    if not messages and not args.json:
        print(f"no messages queued in {args.topic}"
              + (f" for group {args.group}" if args.group else ""), file=sys.stderr)
    _print_peeked(messages, as_json=args.json)
    return 0


def _print_peeked(messages: list[dict[str, Any]], *, as_json: bool) -> None:
    """What ``peek`` and ``dlq list`` show: a header line and the body, per message."""
    if as_json:
        print(json.dumps(messages, indent=2))
        return
    for message in messages:
        print(_peek_header(message))
        body = message["body"]
        print(body if message["encoding"] == "utf-8" else f"(base64) {body}")


def _dlq_list(args: argparse.Namespace) -> int:
    """The dead letters of a topic, oldest first: why each died, where it came from."""
    dlq = args.topic + DLQ_SUFFIX
    with _connect(args) as admin:
        if dlq not in admin.topics():
            print(f"no dead letters: {args.topic} has none (no topic {dlq})", file=sys.stderr)
            messages = []
        else:
            messages = admin.peek(dlq, args.group, args.count)
            if not messages:
                print(f"no dead letters queued in {dlq}", file=sys.stderr)
    _print_peeked(messages, as_json=args.json)
    return 0


def _peek_header(message: Mapping[str, Any]) -> str:
    """The header ``bbmq consume -v`` would print for the message's next delivery."""
    return message_header(message["id"], message["attempts"] + 1, message.get("meta", {}),
                          published_ms=message["published_ms"], sender=message.get("sender"),
                          deliver_at_ms=message.get("deliver_at_ms"))


def _dlq_replay(args: argparse.Namespace) -> int:
    def report(replayed: int) -> None:
        print(f"replayed {replayed} so far", file=sys.stderr, flush=True)

    outcome = replay_dead_letters(args.topic, args.group, count=args.count,
                                  timeout=args.timeout, progress=report,
                                  **client_options(args))
    if outcome.refused:
        print(f"bbmq: {outcome.summary}", file=sys.stderr)
        return 1
    print(outcome.summary)
    return 0


def _dlq_purge(args: argparse.Namespace) -> int:
    dlq = args.topic + DLQ_SUFFIX
    with _connect(args) as admin:
        if dlq not in admin.topics():
            print(f"nothing to purge: {args.topic} has no dead letters (no topic {dlq})")
            return 0
        purged = admin.purge(dlq)
    print(f"purged {purged} dead letters from {dlq}")
    return 0


# --------------------------------------------------------------------------- argparse


def add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register stats, topics, purge, group, peek and dlq on the top-level ``bbmq`` command."""

    topic, group = name_type("topic"), name_type("group")

    stats = commands.add_parser("stats", help="per topic and group: queues, totals and rates")
    stats.add_argument("--json", action="store_true", help="print JSON for scripts")
    stats.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                       help="seconds between the two samples rates are computed from "
                            "(default 1; 0: one sample, no rates)")
    stats.add_argument("--watch", type=float, nargs="?", const=2.0, default=None,
                       metavar="SECONDS",
                       help="refresh every SECONDS (default 2) until Ctrl-C; with --json, "
                            "one JSON line per sample")
    add_client_arguments(stats)
    stats.set_defaults(func=_stats)

    topics = commands.add_parser("topics", help="list the broker's topics")
    add_client_arguments(topics)
    topics.set_defaults(func=_topics)

    purge = commands.add_parser(
        "purge", help="drop the queued messages of a topic, or of one of its groups")
    purge.add_argument("topic", type=topic)
    purge.add_argument("group", type=group, nargs="?", default=None,
                       help="only this group (default: every group and the backlog)")
    add_client_arguments(purge)
    purge.set_defaults(func=_purge)

    group_parser = commands.add_parser("group", help="manage consumer groups")
    group_commands = group_parser.add_subparsers(dest="group_command", required=True)
    delete = group_commands.add_parser(
        "delete", help="delete a group and what it owes; its consumers are disconnected")
    delete.add_argument("topic", type=topic)
    delete.add_argument("group", type=group)
    add_client_arguments(delete)
    delete.set_defaults(func=_group_delete)

    peek = commands.add_parser("peek", help="show the next messages without consuming them")
    peek.add_argument("topic", type=topic)
    peek.add_argument("--group", type=group, default=None,
                      help="whose queue (default: 'default', else the first group)")
    peek.add_argument("-n", "--count", type=int, default=10, help="how many (default 10)")
    peek.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_client_arguments(peek)
    peek.set_defaults(func=_peek)

    dlq = commands.add_parser("dlq", help="list, replay or purge a topic's dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    list_help = ("show the dead letters of TOPIC (in TOPIC.dlq) without consuming them: the "
                 "group that gave up, after how many attempts, and why")
    dlq_list = dlq_commands.add_parser("list", help=list_help, description=list_help)
    dlq_list.add_argument("topic", type=topic)
    dlq_list.add_argument("--group", type=group, default=None,
                          help="whose queue of TOPIC.dlq (only once 'dlq replay' made groups; "
                               "default: 'default', else the first)")
    dlq_list.add_argument("-n", "--count", type=int, default=10, help="how many (default 10)")
    dlq_list.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_client_arguments(dlq_list)
    dlq_list.set_defaults(func=_dlq_list)
    replay_help = ("give each message of TOPIC.dlq back to the group of TOPIC that gave up on "
                   "it (re-published to that group only), then ack it in TOPIC.dlq")
    replay = dlq_commands.add_parser("replay", help=replay_help, description=replay_help)
    replay.add_argument("topic", type=topic)
    replay.add_argument("--group", type=group, default="default",
                        help="the consumer group of TOPIC.dlq to take them from; it must "
                             "exist, unless TOPIC.dlq has no group yet (default: default)")
    replay.add_argument("-n", "--count", type=int, default=0,
                        help="replay at most this many (default: all)")
    replay.add_argument("--timeout", type=float, default=1.0, metavar="SECONDS",
                        help="stop when no dead letter came for this long (default 1)")
    add_client_arguments(replay)
    replay.set_defaults(func=_dlq_replay)
    dlq_purge = dlq_commands.add_parser("purge", help="drop every queued message of TOPIC.dlq")
    dlq_purge.add_argument("topic", type=topic)
    add_client_arguments(dlq_purge)
    dlq_purge.set_defaults(func=_dlq_purge)
