"""DLQ replay: the dead letters of ``<topic>.dlq`` re-published to ``<topic>``.

:func:`replay_dead_letters` is what ``bbmq dlq replay`` does and what the
broker's dashboard runs for its replay button (on a thread, against its own
port).  It is an ordinary consumer of ``<topic>.dlq`` and producer of
``<topic>``, so a replayed message is safe at every step: its DLQ copy is acked
only once the re-publish has been acked (an interruption in between can
duplicate a message, never lose one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from bbmq.client import Admin, Consumer, Message, Producer
from bbmq.defaults import DLQ_SUFFIX

#: Messages fetched, re-published and acked together by a replay.
REPLAY_BATCH: Final = 100


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """How a replay ended: how many messages went back, and a sentence saying so."""

    replayed: int
    summary: str
    #: True if nothing was tried: the DLQ has groups and the one named is not among them.
    refused: bool = False


def replay_dead_letters(topic: str, group: str = "default", *, count: int = 0,
                        timeout: float = 1.0,
                        progress: Callable[[int], None] | None = None,
                        **options: Any) -> ReplayOutcome:
    """Re-publish the messages of ``<topic>.dlq`` (consumer group ``group``) to ``topic``,
    each to the group that gave up on it, then ack them; at most ``count`` (0: all), until
    none came for ``timeout`` seconds.  ``options`` are the clients' (host, port, token,
    tls, ca_file, name: the producer's defaults to bbmq-dlq-replay); ``progress`` hears
    the running total about once a second."""
    dlq = topic + DLQ_SUFFIX
    with Admin(**options).connect() as admin:
        if dlq not in admin.topics():
            return ReplayOutcome(0, f"nothing to replay: {topic} has no dead letters "
                                    f"(no topic {dlq})")
        groups = sorted(admin.stats()["topics"][dlq]["groups"])
    if groups and group not in groups:  # subscribing would create it: refuse instead
        return ReplayOutcome(0, f"{dlq} has no group {group!r} (groups: {', '.join(groups)}); "
                                "pick one with --group", refused=True)
    replayed = 0
    progress_at = time.monotonic() + 1.0
    producer_options = {**options, "name": options.get("name") or "bbmq-dlq-replay"}
    with Consumer(dlq, group, **options) as consumer, \
            Producer(topic, **producer_options) as producer:
        for batch in _dead_letters(consumer, count, timeout):
            # Back to the group that gave up on each, not to every group of the topic.
            by_group: dict[str | None, list[Message]] = {}
            for message in batch:
                by_group.setdefault(message.meta.get("original_group"), []).append(message)
            for original_group, messages in by_group.items():
                producer.publish_many([message.body for message in messages],
                                      group=original_group)
            consumer.ack_many(batch)  # only now: the re-publish was acked above
            replayed += len(batch)
            if progress is not None and time.monotonic() >= progress_at:
                progress(replayed)
                progress_at = time.monotonic() + 1.0
    if replayed:
        return ReplayOutcome(replayed, f"replayed {replayed} messages from {dlq} to the groups "
                                       f"of {topic} that gave up on them")
    return ReplayOutcome(0, f"nothing to replay: {dlq} has no queued messages for group "
                            f"{group} ('bbmq stats' shows which groups hold them; pick one "
                            "with --group)")


def _dead_letters(consumer: Consumer, limit: int, timeout: float) -> Iterator[list[Message]]:
    """Batches of DLQ messages until ``limit`` (0: no limit) or none came for ``timeout`` s."""
    taken = 0
    while not limit or taken < limit:
        batch: list[Message] = []
        while len(batch) < REPLAY_BATCH and (not limit or taken + len(batch) < limit):
            message = consumer.fetch(timeout=timeout if not batch else 0)
            if message is None:
                break
            batch.append(message)
        if not batch:
            return
        taken += len(batch)
        yield batch
