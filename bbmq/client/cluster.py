"""What a client knows of a cluster of brokers and where it connects next, sans-IO: the
broker list (``brokers=``, BBMQ_BROKERS, ``--brokers``), the owner of each topic with its
epoch, and the walk of one connect through refusals and REDIRECTs (PROTOCOL.md 4.7).

No sockets and no clock (``now`` is passed in): the blocking client (base.py) and
the asyncio one (bbmq/aio/base.py) run the same :class:`ConnectPlan` and differ
only in how they open a connection and sleep.  A single broker is a list of one.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from bbmq.client.arguments import default_address
from bbmq.client.errors import BrokerError, CannotConnect, InvalidArgument, Redirected
from bbmq.client.retry import Backoff, comes_back
from bbmq.protocol import ErrorCode, Redirect

#: ``(host, port)`` of one broker.
Address = tuple[str, int]

#: The longest wait for a TCP connection to one broker when there are others to try (a
#: machine that is gone drops the connection attempts: no refusal comes, and on a LAN a
#: connection takes milliseconds); a single broker is given the client's whole timeout.
CLUSTER_CONNECT_TIMEOUT_S: Final = 3.0

#: REDIRECTs one connect follows before it gives up: brokers that keep sending the client
#: round in circles disagree on the owner, which takes a human to look at.
MAX_REDIRECTS: Final = 16


def format_address(address: Address) -> str:
    """``host:port`` (``[v6]:port`` for an IPv6 host), as REDIRECT and the CLI write it."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str, *, source: str = "brokers") -> Address:
    """``host:port``, ``[v6]:port`` or ``host`` (the default port) as an Address."""
    default_port = default_address()[1]
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        port = -1
    if not host or not 0 < port < 65536:
        raise InvalidArgument(ErrorCode.INVALID_PROTOCOL,
                              f"{source}: {text!r} is not a broker address; write host:port "
                              "(e.g. 10.0.0.5:15333), several separated by commas")
    return host, port


def parse_brokers(brokers: str | Iterable[str], *, source: str = "brokers") -> tuple[
        Address, ...]:
    """A broker list: ``"h1:p1,h2:p2"`` or ``["h1:p1", "h2:p2"]``, in order, without repeats."""
    items = brokers.split(",") if isinstance(brokers, str) else list(brokers)
    addresses = tuple(dict.fromkeys(parse_address(item, source=source)
                                    for item in items if item.strip()))
    if not addresses:
        raise InvalidArgument(ErrorCode.INVALID_PROTOCOL,
                              f"{source} is empty; give at least one host:port")
    return addresses


def seed_brokers(brokers: str | Iterable[str] | None, host: str | None,
                 port: int | None) -> tuple[Address, ...]:
    """The brokers a client starts from: ``brokers``, else ``host``/``port``, else
    BBMQ_BROKERS, else BBMQ_HOST/BBMQ_PORT, else 127.0.0.1:15333."""
    if brokers is not None:
        if host or port:
            raise InvalidArgument(ErrorCode.INVALID_PROTOCOL,
                                  "give the brokers (brokers=, --brokers) or host/port, not "
                                  "both (a single broker is a list of one)")
        return parse_brokers(brokers)
    if not host and not port and (listed := os.environ.get("BBMQ_BROKERS", "").strip()):
        return parse_brokers(listed, source="BBMQ_BROKERS")
    default_host, default_port = default_address()
    return ((host or default_host, port or default_port),)


@dataclass(frozen=True, slots=True)
class Owner:
    """The broker that serves a topic, as far as the client knows, and its lease epoch."""

    address: Address
    epoch: int | None


class Cluster:
    """What one client knows of the brokers: the list it was given and the addresses the
    brokers told it of (handshake answers and REDIRECTs list the live ones), and the owner
    of each topic, a higher epoch replacing a lower one."""

    __slots__ = ("brokers", "last", "owners", "seeds")

    def __init__(self, seeds: tuple[Address, ...]) -> None:
        self.seeds = seeds
        #: Every broker known: the seeds first, then those learned, in the order learned.
        self.brokers: list[Address] = list(seeds)
        self.owners: dict[str, Owner] = {}
        #: The broker of the last connection that worked.
        self.last: Address | None = None

    def learn_brokers(self, addresses: Iterable[str]) -> None:
        """Add the brokers a broker listed (addresses that do not parse are skipped: a
        broker's list is a hint, not the user's configuration)."""
        for text in addresses:
            try:
                address = parse_address(text)
            except InvalidArgument:
                continue
            if address not in self.brokers:
                self.brokers.append(address)

    def learn_owner(self, topic: str, address: Address, epoch: int | None) -> bool:
        """``address`` serves ``topic`` under ``epoch``, unless a higher epoch is known
        (then this news is older, and ignored: False)."""
        known = self.owners.get(topic)
        if known is not None and known.epoch is not None and (epoch is None
                                                               or epoch < known.epoch):
            return False
        self.owners[topic] = Owner(address, epoch)
        return True

    def order(self, topic: str | None) -> list[Address]:
        """Where to try, in turn: the topic's owner, the broker of the last connection,
        then every other known broker in list order."""
        owner = self.owners.get(topic) if topic is not None else None
        first = [owner.address] if owner is not None else []
        if self.last is not None:
            first.append(self.last)
        return list(dict.fromkeys([*first, *self.brokers]))

    def acknowledged(self, topic: str | None, address: Address, info: Mapping[str, Any]) -> None:
        """A handshake at ``address`` was granted; its answer lists the brokers (and, in a
        cluster, the epoch under which ``address`` serves ``topic``)."""
        self.last = address
        brokers = info.get("brokers")
        if isinstance(brokers, list):
            self.learn_brokers(item for item in brokers if isinstance(item, str))
        epoch = info.get("epoch")
        if topic is not None and (type(epoch) is int or topic in self.owners):
            self.learn_owner(topic, address, epoch if type(epoch) is int else None)

    def redirected(self, topic: str | None, redirect: Redirect) -> Address | None:
        """Take what a REDIRECT says; the owner to go to now, or None (none is named, it
        is older news than the client has, or it names an address that does not parse)."""
        self.learn_brokers(redirect.brokers)
        if redirect.owner is None or topic is None or redirect.topic != topic:
            return None
        try:
            owner = parse_address(redirect.owner)
        except InvalidArgument:
            return None
        if owner not in self.brokers:
            self.brokers.append(owner)
        return owner if self.learn_owner(topic, owner, redirect.epoch) else None


class ConnectPlan:
    """One connect: which broker to try next, how long to wait before it, and the error
    to raise once there is nothing left to try.

    A broker that refuses the connection (or closes it, or answers the handshake
    with an error that passes) is followed by the next one at once: a broker
    that is gone costs nothing.  The broker whose connection was just lost
    (``lost``), and those that failed in this connect, are tried last: the
    next broker of the list is the one likely to take the topic over.  A
    REDIRECT naming the owner sends the client there next; one with
    ``retry_ms`` (no broker serves the topic yet) ends the round: after that
    pause every known broker is tried again, the last owner first.  A round in
    which some broker answered but none granted the handshake (an owner just
    gone, say) is tried again with a short backoff while ``patience`` lasts; a
    round in which none answered at all ends the connect at once, with an
    error that names every broker tried.
    """

    __slots__ = ("_answered", "_backoff", "_cluster", "_deadline", "_failures", "_last_redirect",
                 "_lost", "_pause", "_queue", "_redirects", "_topic", "patience")

    def __init__(self, cluster: Cluster, topic: str | None, *, now: float, patience: float,
                 ended_by: Redirect | None = None, lost: Address | None = None) -> None:
        self._cluster = cluster
        self._topic = topic
        self.patience = patience
        self._deadline = now + patience
        self._lost = lost
        #: The last failure of each broker tried, in the order first tried.
        self._failures: dict[Address, BrokerError] = {}
        self._queue = deque(self._order())
        self._pause = 0.0
        self._backoff = Backoff.reconnect(1.0)
        self._answered = False
        self._redirects = 0
        self._last_redirect: Redirect | None = None
        if ended_by is not None:  # the last connection ended with a REDIRECT: follow it
            self.redirected(ended_by)
            self._redirects = 0

    def next(self, now: float) -> tuple[Address, float] | None:
        """The broker to try next and the seconds to wait first; None: give up (raise
        :meth:`error`)."""
        if self._redirects > MAX_REDIRECTS:
            return None
        if not self._queue:
            if not self._answered:
                return None  # every broker refused: nothing will change by waiting here
            pause = self._pause or self._backoff.next()
            if now + pause > self._deadline:
                return None
            self._answered = False
            self._queue = deque(self._order())
            self._pause = pause
        pause, self._pause = self._pause, 0.0
        return self._queue.popleft(), pause

    def _order(self) -> list[Address]:
        """The cluster's order for the topic, then the brokers that failed in this connect,
        then the one whose connection was lost."""
        order = [address for address in self._cluster.order(self._topic)
                 if address != self._lost]
        failed = [address for address in order if address in self._failures]
        lost = [] if self._lost is None else [self._lost]
        return [address for address in order if address not in failed] + failed + lost

    def failed(self, address: Address, error: BrokerError) -> None:
        """``address`` could not be reached, or lost the connection before granting it."""
        self._failures[address] = error

    def attempt_ended(self, address: Address, error: BrokerError) -> None:
        """One try at ``address`` ended in ``error``: follow a REDIRECT, go on to the next
        broker at once from one that is gone or going, and raise any other error."""
        if isinstance(error, Redirected):
            self.redirected(error.redirect)
        elif comes_back(error):
            self.failed(address, error)
        else:
            raise error

    def redirected(self, redirect: Redirect) -> None:
        """A broker answered with ``redirect``: go to the owner it names, or wait its
        ``retry_ms`` and try every broker again."""
        self._answered = True
        self._redirects += 1
        self._last_redirect = redirect
        owner = self._cluster.redirected(self._topic, redirect)
        if redirect.owner is None and redirect.retry_ms is not None:
            self._queue.clear()
            self._pause = redirect.retry_ms / 1000
        elif owner is not None:
            if owner in self._queue:
                self._queue.remove(owner)
            self._queue.appendleft(owner)

    def connect_timeout(self, timeout: float) -> float:
        """How long to wait for one broker's TCP connection, of a client's ``timeout``."""
        if len(self._cluster.brokers) > 1:
            return min(timeout, CLUSTER_CONNECT_TIMEOUT_S)
        return timeout

    def connected(self, address: Address, info: Mapping[str, Any]) -> None:
        """The handshake at ``address`` was granted."""
        self._cluster.acknowledged(self._topic, address, info)

    def error(self) -> BrokerError:
        """Why the connect failed, naming every broker tried and what to do."""
        failures = self._failures
        if len(failures) == 1 and self._last_redirect is None:
            return next(iter(failures.values()))  # one broker: its own error says it best
        tried = "; ".join(f"{format_address(address)}: {error.text}"
                          for address, error in failures.items())
        listed = ", ".join(map(format_address, self._cluster.brokers))
        if self._redirects > MAX_REDIRECTS:
            return CannotConnect(f"redirected {self._redirects} times without reaching the "
                                 f"broker that serves topic {self._topic} (brokers {listed} "
                                 "disagree on its owner); run 'bbmq cluster status' and check "
                                 "that every broker uses the same database")
        if self._last_redirect is not None:
            redirect = self._last_redirect
            why = f": {redirect.reason}" if redirect.reason else ""
            more = f"; unreachable: {tried}" if tried else ""
            return CannotConnect(f"no broker of {listed} took topic {self._topic} within "
                                 f"{self.patience:g} s (last answer: REDIRECT to "
                                 f"{redirect.owner or 'none yet'}{why}){more}; check that the "
                                 "cluster's brokers are running ('bbmq cluster status')")
        return CannotConnect(f"no broker of {listed} could be reached ({tried}); start one, "
                             "or give the right addresses (--brokers / BBMQ_BROKERS, or "
                             "--host/--port)")
