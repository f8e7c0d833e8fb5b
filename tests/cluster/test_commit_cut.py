"""The ambiguous COMMIT: the database committed a publish, the broker's connection broke
before it heard so.  The broker must not confirm it; the publisher's resend with the same
msgid must be confirmed with the stored copy's id, and the store must hold one copy."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from bbmq import protocol
from bbmq.testing import wait_for

from ..mysql_support import isolated_mysql_url
from .commit_cut_proxy import CommitCutProxy
from .harness import LeaseView, RawPublisher, report, running_cluster

pytestmark = [pytest.mark.slow, pytest.mark.mysql]

TOPIC = "cluster.commit-cut"


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


def publish_until_confirmed(port: int, body: bytes, msgid: str) -> tuple[int, int]:
    """Send ``body`` with ``msgid`` until a confirm comes, as the client's retry does;
    return the confirmed id and how many answers were refusals."""
    refusals = 0

    def attempt() -> int | None:
        nonlocal refusals
        publisher = RawPublisher(port, TOPIC)
        try:
            publisher.send(protocol.Publish(body, msgid=msgid))
            [answer] = publisher.receive(1, timeout=15)
        finally:
            publisher.close()
        if isinstance(answer, protocol.ProducerAckMessage):
            return answer.id
        refusals += 1
        return None

    confirmed = wait_for(attempt, "the resend to be confirmed", 30, interval=0.2)
    return confirmed, refusals


@pytest.mark.timeout(180)
def test_a_commit_cut_after_it_was_sent_is_not_confirmed_and_the_resend_keeps_one_copy(
    tmp_path: Path,
) -> None:
    with isolated_mysql_url() as url:
        leases = LeaseView(url)
        upstream = ("127.0.0.1", urlsplit(url).port or 3306)
        with CommitCutProxy(upstream) as proxy, \
                running_cluster(tmp_path, [with_port(url, proxy.port)], size=1) as cluster:
            port = cluster.brokers[0].port
            publisher = RawPublisher(port, TOPIC)
            publisher.send(protocol.Publish(b"before the cut", msgid="warm-up"))
            [warm] = publisher.receive(1)
            assert isinstance(warm, protocol.ProducerAckMessage), warm

            proxy.cut_next_commit()
            publisher.send(protocol.Publish(b"cut at commit", msgid="cut-1"))
            assert proxy.wait_for_cut(1, timeout=30), "no COMMIT after a message insert came"
            answers = publisher.read_until_closed(30) if publisher.closed else \
                publisher.receive(1, timeout=30)
            publisher.close()
            assert not any(isinstance(a, protocol.ProducerAckMessage) for a in answers), (
                f"the broker confirmed a publish whose COMMIT it never heard back: {answers}")
            # The database did commit it: the proxy let the COMMIT through.
            assert leases.stored_copies(TOPIC)[b"cut at commit"] == 1

            confirmed_id, refusals = publish_until_confirmed(port, b"cut at commit", "cut-1")
        stored = leases.stored_ids(TOPIC)
    report("commit cut", first_answer=type(answers[0]).__name__ if answers else "closed",
           refusals_before_confirm=refusals, stored_copies=len(stored[b"cut at commit"]))
    assert stored[b"cut at commit"] == [confirmed_id]
    assert len(stored[b"before the cut"]) == 1
