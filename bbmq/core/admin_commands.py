"""The broker's answers to ADMIN commands: stats, topics, purge, group_delete, peek.

This is the server side of what ``bbmq stats`` / ``bbmq purge`` ... ask (the
client side is bbmq/admin.py).  Reading commands answer from what the core
already keeps (``stats`` from the same :mod:`~bbmq.core.snapshot` the
Prometheus page reads); changing ones go through the queue engine, so a purged
or deleted message reaches the store like any other finished one.  Parameters
arrive as JSON and are checked here, each error naming what to send instead.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any, Final

from bbmq import protocol
from bbmq.core.engine import QueueEngine
from bbmq.core.outbox import Outboxes
from bbmq.core.records import Group, QueuedMessage, Topic
from bbmq.core.snapshot import BrokerSnapshot
from bbmq.defaults import lease_topic
from bbmq.protocol import ErrorCode, ProtocolError

#: Most messages one ADMIN peek returns (its answer is one frame, bodies included).
MAX_PEEK: Final = 1000


class AdminCommands:
    """Answers one ADMIN command at a time against the queue engine."""

    def __init__(self, engine: QueueEngine, outboxes: Outboxes,
                 snapshot: Callable[[], BrokerSnapshot]) -> None:
        self.engine = engine
        self.outboxes = outboxes
        #: The broker's one snapshot (Broker.snapshot), cluster counters included.
        self.snapshot = snapshot
        #: Server-level facts (uptime, store, connections) for ``stats``; set by the server.
        self.status_provider: Callable[[], dict[str, Any]] = dict
        #: Commands answered outside the core (the cluster's ``drain`` and ``cluster``, from
        #: bbmq/cluster/member.py), by name; set by the composition root.
        self.commands: dict[str, Callable[[dict[str, Any]], Any]] = {}

    def answer(self, command: str, params: dict[str, Any], now_ms: int) -> Any:
        """The JSON-ready result of one command; a bad one raises ProtocolError."""
        match command:
            case "stats":
                return self.stats(self.snapshot())
            case "topics":
                return sorted(self.engine.topics)
            case "purge":
                topic = self._param_topic(params)
                group = self._param_group(topic, params).name if "group" in params else None
                return {"purged": self.purge(topic.name, group, now_ms)}
            case "group_delete":
                topic = self._param_topic(params)
                self.delete_group(topic.name, self._param_group(topic, params).name, now_ms)
                return {"deleted": True}
            case "peek":
                count = params.get("n", 10)
                if isinstance(count, bool) or not isinstance(count, int) or not (
                        0 <= count <= MAX_PEEK):
                    raise ProtocolError(ErrorCode.INVALID_PROTOCOL,
                                        f"peek: 'n' must be a whole number from 0 to {MAX_PEEK}")
                topic = self._param_topic(params)
                group = self._param_group(topic, params).name if "group" in params else None
                return self.peek(topic.name, group, count)
        if (extra := self.commands.get(command)) is not None:
            return extra(params)
        known = ", ".join(["stats", "topics", "purge", "group_delete", "peek", *self.commands])
        raise ProtocolError(ErrorCode.INVALID_PROTOCOL,
                            f"unknown admin command {command[:40]!r} (known: {known})")

    def stats(self, snapshot: BrokerSnapshot) -> dict[str, Any]:
        """The ``stats`` answer: the server's status, then the snapshot, topics and groups
        sorted by name (the CLI and the tests read this shape); a cluster broker's answer
        has ``cluster`` too (redirects sent, topics served and waited for)."""
        answer: dict[str, Any] = {"server": self.status_provider(),
                                  "queued_bytes": snapshot.queued_bytes}
        if snapshot.cluster is not None:
            answer["cluster"] = asdict(snapshot.cluster)
        answer["topics"] = {topic.name: {
            **asdict(topic.counters),
            "publishers": topic.publishers,
            "backlog": topic.backlog,
            "groups": {group.name: {"ready": group.ready, "delayed": group.delayed,
                                    "inflight": group.inflight,
                                    "consumers": group.consumers,
                                    **asdict(group.counters)}
                       for group in topic.groups},
        } for topic in snapshot.topics}
        return answer

    @staticmethod
    def _param_text(params: dict[str, Any], key: str) -> str:
        value = params.get(key, "")
        if not isinstance(value, str):
            raise ProtocolError(ErrorCode.BAD_NAME, f"admin parameter {key!r} must be a string")
        return value

    def _param_topic(self, params: dict[str, Any]) -> Topic:
        name = protocol.check_name("topic", self._param_text(params, "topic"))
        topic = self.engine.topics.get(name)
        if topic is None:
            here = (" served here (in a cluster each topic is served by one broker: 'bbmq "
                    "cluster status' shows which)") if self.engine.config.cluster else ""
            raise ProtocolError(ErrorCode.INVALID_PROTOCOL,
                                f"no topic {name!r}{here}; 'bbmq topics' lists them")
        return topic

    @classmethod
    def _param_group(cls, topic: Topic, params: dict[str, Any]) -> Group:
        name = protocol.check_name("group", cls._param_text(params, "group"))
        group = topic.groups.get(name)
        if group is None:
            known = ", ".join(sorted(topic.groups)) or "none yet"
            raise ProtocolError(ErrorCode.INVALID_PROTOCOL,
                                f"topic {topic.name!r} has no group {name!r} (groups: {known})")
        return group

    def purge(self, topic_name: str, group_name: str | None, now_ms: int) -> int:
        """Drop queued (not in-flight) messages of one group, or of every group and the backlog.

        Returns how many distinct messages were dropped from at least one queue.
        """
        engine = self.engine
        topic = engine.topics[topic_name]
        groups = ([self._param_group(topic, {"group": group_name})] if group_name
                  else list(topic.groups.values()))
        purged: set[int] = set()
        for group in groups:
            entries = list(group.entries())
            group.fresh.clear()
            group.retry.clear()
            group.delayed.clear()
            for message, _ in entries:
                engine.finish(group, message, now_ms)
                purged.add(message.id)
        if not group_name:
            for message in topic.backlog:
                purged.add(message.id)
                engine.batch.done.append(message.id)
                engine.let_go(message.topic, message.body)
            if topic.backlog:
                engine.batch.topics.add(lease_topic(topic_name))
            topic.backlog.clear()
        return len(purged)

    def delete_group(self, topic_name: str, group_name: str, now_ms: int) -> None:
        """Remove a group with everything it owes; its consumers are disconnected."""
        engine = self.engine
        topic = engine.topics[topic_name]
        group = topic.groups[group_name]
        for session in list(group.consumers):
            self.outboxes.send(session, protocol.Error(
                ErrorCode.NOT_ALLOWED, f"group {group_name!r} was deleted by an administrator"))
            self.outboxes.close(session)
            session.closed = True
            session.leases.clear()
        for message, _ in list(group.entries()):
            engine.finish(group, message, now_ms)
        for lease in group.inflight.values():
            engine.finish(group, lease.message, now_ms)
        # Nothing is left for a timer (ack deadline, delayed message) to find later, and
        # finish a second time: the other groups may still owe those messages.
        for queue in (group.fresh, group.retry, group.delayed, group.inflight, group.waiting,
                      group.consumers):
            queue.clear()
        del topic.groups[group_name]
        engine.batch.deleted_groups.append((topic_name, group_name))
        engine.batch.topics.add(group.lease)

    def peek(self, topic_name: str, group_name: str | None, count: int) -> list[dict[str, Any]]:
        """The next ``count`` messages a group (or the backlog) would deliver; changes nothing."""
        topic = self.engine.topics[topic_name]
        if group_name is None and not topic.groups:
            entries: Iterable[tuple[QueuedMessage, int]] = ((m, 0) for m in topic.backlog)
        else:
            if group_name is None:
                group_name = "default" if "default" in topic.groups else min(topic.groups)
            entries = self._param_group(topic, {"group": group_name}).entries()
        result = []
        for message, attempts in itertools.islice(entries, max(0, count)):
            try:
                body, encoding = message.body.decode(), "utf-8"
            except UnicodeDecodeError:
                body, encoding = base64.b64encode(message.body).decode(), "base64"
            result.append({"id": message.id, "attempts": attempts, "body": body,
                           "encoding": encoding, "published_ms": message.published_ms,
                           "deliver_at_ms": message.deliver_at_ms,
                           "expires_at_ms": message.expires_at_ms,
                           "sender": message.sender, "meta": message.meta or {}})
        return result
