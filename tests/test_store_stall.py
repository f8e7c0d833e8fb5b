"""A MySQL store that stops answering without closing its connection (issue 16, defect 2).

The database sits behind a :class:`BlackHoleProxy`: the broker's connection
stays open while nothing comes back, as in a partition or a frozen server.
Publishers must hear STORE_UNAVAILABLE within the configured I/O timeout for
the publish already being written, within about 2 s for every publish behind
it, and normal service must resume once the database answers again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bbmq import protocol
from bbmq.protocol import ErrorCode
from bbmq.store.mysql import parse_mysql_url
from bbmq.testing import BrokerController, wait_for

from .blackhole_proxy import BlackHoleProxy
from .conftest import RawClient
from .mysql_support import isolated_mysql_url

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

#: The io_timeout given in the URL: far from the watchdog's 2 s, so the two are told apart.
IO_TIMEOUT_S = 8


@pytest.fixture
def proxied_url() -> Iterator[tuple[str, BlackHoleProxy]]:
    with isolated_mysql_url() as url:
        params = parse_mysql_url(url)
        with BlackHoleProxy((params.host, params.port)) as proxy:
            proxied = url.replace(f"@{params.host}:{params.port}/", f"@127.0.0.1:{proxy.port}/")
            yield f"{proxied}&io_timeout={IO_TIMEOUT_S}", proxy


def publish_reply(client: RawClient, body: bytes,
                  timeout: float = 30) -> tuple[protocol.TypedFrame, float]:
    started = time.monotonic()
    client.send(protocol.Publish(body))
    [reply] = client.receive(timeout=timeout)
    return reply, time.monotonic() - started


def is_unavailable(reply: protocol.TypedFrame) -> bool:
    return isinstance(reply, protocol.Error) and reply.code == ErrorCode.STORE_UNAVAILABLE


def test_a_silent_database_fails_publishes_fast_and_service_resumes(
        proxied_url: tuple[str, BlackHoleProxy]) -> None:
    url, proxy = proxied_url
    with BrokerController(store=url, store_connect_timeout=1) as broker:
        assert broker.server is not None
        worker = broker.server.worker
        first, second = RawClient(broker.port), RawClient(broker.port)
        first.handshake(protocol.ClientPublisher("stall"))
        second.handshake(protocol.ClientPublisher("stall"))
        reply, _ = publish_reply(first, b"before")
        assert isinstance(reply, protocol.ProducerAckMessage), reply

        proxy.black_hole()
        started = time.monotonic()
        first.send(protocol.Publish(b"in flight"))
        wait_for(lambda: not worker.idle() and worker.backlog == 0,
                 "the store thread to be writing the first publish")
        # Queued behind a write that hangs: refused by the watchdog, not after the I/O timeout.
        reply, waited = publish_reply(second, b"behind it")
        assert is_unavailable(reply), reply
        assert waited < 3, f"a publish behind a silent database waited {waited:.1f} s"
        # The one being written waits out the io_timeout from the URL, no longer.
        [reply] = first.receive(timeout=IO_TIMEOUT_S + 5)
        in_flight_waited = time.monotonic() - started
        assert is_unavailable(reply), reply
        assert in_flight_waited < IO_TIMEOUT_S + 3, in_flight_waited
        # Still silent (reconnects hang too): every publish is refused fast.
        for attempt in range(5):
            reply, waited = publish_reply(second, b"while down %d" % attempt)
            assert is_unavailable(reply), reply
            assert waited < 2.5, f"publish {attempt} while down waited {waited:.1f} s"
        assert not broker.call(lambda: worker.available)

        proxy.restore()

        def accepted() -> bool:
            reply, _ = publish_reply(second, b"after")
            return isinstance(reply, protocol.ProducerAckMessage)

        wait_for(accepted, "publishes to be stored again once the database answers", 30)
        first.close()
        second.close()
