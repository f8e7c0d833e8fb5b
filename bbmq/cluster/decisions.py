"""What a cluster member decides, as pure functions of what it last read from the database.

The member thread (member.py) does the I/O: it reads the brokers and lease rows,
probes addresses, writes leases, and calls the core.  Every choice in between
is made here, without a clock or a socket, so that each can be tested alone:
how long a lease may still be trusted, what to do with a client's request for a
topic, and which topics to take or give away to even out the load.

Times are the database's (``remaining_ms``, ``heartbeat_age_ms``: computed by
``NOW(6)`` inside the statement) or this process's monotonic clock; never a
wall clock of one broker compared with another's.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from bbmq.cluster.probe import ProbeResult
from bbmq.defaults import DLQ_SUFFIX

#: Whatever the TTL, a lease is trusted for at least this much less than it lasts in the
#: database: room for the renew's own trip and a scheduler hiccup.
MIN_SAFETY_MARGIN_S: Final = 0.25


class LeaseView(Protocol):
    """A lease row as decisions read it (bbmq.store.leases.LeaseRow)."""

    @property
    def topic(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def owner_address(self) -> str | None: ...
    @property
    def epoch(self) -> int: ...
    @property
    def remaining_ms(self) -> int: ...


class BrokerView(Protocol):
    """A brokers row as decisions read it (bbmq.store.leases.BrokerRow)."""

    @property
    def id(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def heartbeat_age_ms(self) -> int: ...
    @property
    def draining(self) -> bool: ...


def served_with(topic: str) -> tuple[str, ...]:
    """The topics a broker loads when it takes the lease of ``topic``: it and its dead letters
    (whose lease is the topic's: :func:`bbmq.defaults.lease_topic`)."""
    return (topic, topic + DLQ_SUFFIX)


def safety_margin_s(ttl_ms: int) -> float:
    """How much sooner than the database a broker stops trusting its lease."""
    return max(MIN_SAFETY_MARGIN_S, ttl_ms / 10_000)


def valid_until(sent_at: float, ttl_ms: int) -> float:
    """The monotonic time until which a lease renewed (or taken) by a statement SENT at
    ``sent_at`` may be trusted.

    The database set ``lease_until = NOW(6) + ttl`` at some moment after the
    send, so counting from the send errs on the safe side whatever the trip
    took; the margin covers the rest (clock rate differences, the time between
    a fence check and its commit).
    """
    return sent_at + ttl_ms / 1000 - safety_margin_s(ttl_ms)


def renew_interval_s(ttl_ms: int) -> float:
    """How often a member renews: three tries within one TTL."""
    return ttl_ms / 3000


class Verdict(enum.Enum):
    #: Nobody holds it (or the lease ran out): take it with a conditional write.
    ACQUIRE = "acquire"
    #: The lease is ours already (handed to us, or ours all along): load the topic.
    ADOPT = "adopt"
    #: Another broker holds it: ask whether its port still accepts connections.
    PROBE = "probe"
    #: The owner's port refused a connection: take its lease at once (fast failover).
    TAKE_OVER = "take over"
    #: Another broker holds it and may be alive: send the client there.
    ELSEWHERE = "elsewhere"
    #: Draining, and nobody holds it: the client tries again later (elsewhere).
    RETRY_LATER = "retry later"


def decide_request(lease: LeaseView | None, me: str, *, draining: bool,
                   probed: ProbeResult | None = None, my_address: str | None = None) -> Verdict:
    """What to do with a client's request for a topic, given its lease row.

    Called once without ``probed``; a PROBE verdict asks the caller to probe the
    owner's address and call again with the result.  An owner advertising
    ``my_address`` is an earlier process of this broker (killed, then restarted on
    the same port): gone for certain, though its port answers.
    """
    if lease is not None and lease.owner == me and lease.remaining_ms > 0:
        return Verdict.ADOPT
    if lease is None or not lease.owner or lease.remaining_ms <= 0 or lease.owner == me:
        return Verdict.RETRY_LATER if draining else Verdict.ACQUIRE
    if draining:
        return Verdict.ELSEWHERE
    if lease.owner_address is None or lease.owner_address == my_address:
        # The owner's brokers row is gone (it stopped, or was cleaned up as dead), or it was
        # this broker before a restart: no one answers for the topic; fencing keeps a
        # take-over safe.
        return Verdict.TAKE_OVER
    if probed is None:
        return Verdict.PROBE
    return Verdict.TAKE_OVER if probed is ProbeResult.REFUSED else Verdict.ELSEWHERE


def live_brokers(brokers: Iterable[BrokerView], ttl_ms: int) -> list[BrokerView]:
    """Brokers whose heartbeat is younger than one TTL (draining or not), by id."""
    return sorted((b for b in brokers if b.heartbeat_age_ms <= ttl_ms), key=lambda b: b.id)


@dataclass(frozen=True, slots=True)
class BalancePlan:
    """One renew cycle's moves: leases to take, and leases to give (topic -> target id)."""

    acquire: tuple[str, ...] = ()
    hand_off: tuple[tuple[str, str], ...] = ()


def plan_balance(me: str, brokers: Sequence[BrokerView], leases: Sequence[LeaseView],
                 ttl_ms: int, *, draining: bool) -> BalancePlan:
    """Even out the topics over the live brokers that are not draining.

    ``fair`` is the ceiling of topics per such broker.  A broker under it takes
    free or expired leases (ours first to come, by name); a broker over it gives
    one topic per cycle to the broker with the fewest, if that one is under it,
    so that no two brokers hand the same topic back and forth.  A draining
    broker takes nothing and gives everything away, round robin.
    """
    serving = [b for b in live_brokers(brokers, ttl_ms) if not b.draining and b.id != me]
    counts = {b.id: 0 for b in serving}
    mine: list[str] = []
    free: list[str] = []
    for lease in leases:
        if lease.owner == me and lease.remaining_ms > 0:
            mine.append(lease.topic)
        elif not lease.owner or lease.remaining_ms <= 0:
            free.append(lease.topic)
        elif lease.owner in counts:
            counts[lease.owner] += 1
    mine.sort()
    if draining:
        targets = sorted(counts, key=lambda broker: (counts[broker], broker))
        if not targets:
            return BalancePlan()
        return BalancePlan(hand_off=tuple(
            (topic, targets[index % len(targets)]) for index, topic in enumerate(mine)))
    fair = math.ceil(len(leases) / (len(serving) + 1))
    if len(mine) < fair:
        return BalancePlan(acquire=tuple(sorted(free)[: fair - len(mine)]))
    if len(mine) > fair and counts:
        target = min(counts, key=lambda broker: (counts[broker], broker))
        if counts[target] < fair:
            return BalancePlan(hand_off=((mine[-1], target),))
    return BalancePlan()


def lost_topics(held: Mapping[str, int], renewed: Mapping[str, int]) -> list[str]:
    """Leases this broker believed it held that the renew did not confirm (gone, or
    taken and given back under another epoch)."""
    return sorted(topic for topic, epoch in held.items() if renewed.get(topic) != epoch)


def assigned_topics(held: Mapping[str, int], renewed: Mapping[str, int]) -> list[str]:
    """Leases the renew says are ours that this broker does not serve yet (handed to it)."""
    return sorted(topic for topic in renewed if topic not in held)
