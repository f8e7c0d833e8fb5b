"""A broker joining the brokers table at start, and leaving it at a clean stop.

Joining is where a broker is refused (another broker uses the database in a
way that cannot mix with it: ``LeaseTable.register`` says which and what to
do), before it recovers anything.  Leaving gives every lease back and deletes
the broker's row, so that the others take its topics at once instead of after
the TTL.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping

from bbmq.cluster.probe import ProbeResult
from bbmq.store.leases import BrokerConflict, LeaseTable

log = logging.getLogger("bbmq.cluster")


class JoinRefused(ValueError):
    """Another broker uses the database in a way that forbids this one to start; the message
    says which broker and what to do (a ValueError: the CLI prints it as the reason)."""


def new_broker_id() -> str:
    """A broker's id: fresh at every process start, so a restarted broker is a new member."""
    return uuid.uuid4().hex[:16]


def join(table: LeaseTable, broker_id: str, address: str, mode: str,
         probe: Callable[[str], ProbeResult]) -> None:
    """Register ``broker_id`` at ``address``; raises JoinRefused when another broker forbids
    it (a row of a killed earlier process at this address does not: it is removed)."""
    forget_killed_predecessor(table, broker_id, address, probe)
    try:
        table.register(broker_id, address, mode)
    except BrokerConflict as conflict:
        raise JoinRefused(str(conflict)) from None


def forget_killed_predecessor(table: LeaseTable, broker_id: str, address: str,
                              probe: Callable[[str], ProbeResult]) -> None:
    """Deregister an earlier process of this broker, killed without a clean stop.

    Its row still looks live for up to a TTL and would refuse this start (a single
    broker restarted by its supervisor after a crash); but it advertised this very
    address, where nothing listens now (the port refuses): it is gone.  Its
    leases, owned by no registered broker, are taken over at the first request.
    """
    if address.endswith(":0"):
        return  # a test's "any free port": the address names no one process
    for broker in table.brokers():
        if broker.address == address and broker.id != broker_id \
                and probe(address) is ProbeResult.REFUSED:
            log.warning("broker %s at %s (this address) was killed without a clean stop: "
                        "its row is removed", broker.id, broker.address)
            table.deregister(broker.id)


def leave(table: LeaseTable, broker_id: str, held: Mapping[str, int]) -> None:
    """Release every lease in ``held`` (topic -> epoch) and deregister; failures are logged
    (the leases expire, the row ages out)."""
    ttl_ms = table.ttl_ms
    for topic, epoch in held.items():
        try:
            table.release(topic, broker_id, epoch)
        except Exception as error:
            log.warning("could not release the lease of %r (%s); it expires in %d ms",
                        topic, error, ttl_ms)
    try:
        table.deregister(broker_id)
    except Exception as error:
        log.warning("could not deregister broker %s (%s); its row ages out in %d ms",
                    broker_id, error, ttl_ms)
