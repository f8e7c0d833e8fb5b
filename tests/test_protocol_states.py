"""The connection state machine (bbmq/protocol/states.py and connection.py), without sockets.

Both sides are driven with bytes and frames only: what each may send in each
state, how the handshake, the goodbye and framing errors move the state, and
that the table agrees with docs/PROTOCOL.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbmq import protocol
from bbmq.protocol import (
    NEED_DATA,
    PAUSED,
    ClientConnection,
    ErrorCode,
    LocalProtocolError,
    Rejected,
    Role,
    ServerConnection,
    State,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


def events(connection: ServerConnection) -> list[protocol.TypedFrame | Rejected]:
    """Every event the connection has now, up to NEED_DATA or PAUSED."""
    found: list[protocol.TypedFrame | Rejected] = []
    while not isinstance(event := connection.next_event(), protocol.Pending):
        found.append(event)
    return found


def accepted(role_frame: protocol.TypedFrame) -> ServerConnection:
    """A server connection whose handshake ``role_frame`` was granted."""
    server = ServerConnection()
    server.receive_data(role_frame.encode())
    assert events(server) == [role_frame]
    server.send(protocol.ServerAcknowledgement({"server": "bbmq"}))
    return server


def test_a_handshake_pauses_the_server_until_it_is_answered() -> None:
    server = ServerConnection()
    handshake = protocol.ClientPublisher("orders", {"name": "shop"})
    server.receive_data(handshake.encode() + protocol.Publish(b"one", "m1").encode())
    assert server.next_event() == handshake
    assert server.state is State.AWAITING_ACK
    assert server.next_event() is PAUSED  # the PUBLISH behind it waits for the answer
    server.send(protocol.ServerAcknowledgement({}))
    assert (server.role, server.state) == (Role.PUBLISHER, State.OPEN)
    assert server.next_event() == protocol.Publish(b"one", "m1")
    assert server.next_event() is NEED_DATA


def test_a_refused_handshake_leaves_the_connection_without_a_role() -> None:
    server = ServerConnection()
    server.receive_data(protocol.ClientSubscriber("orders").encode())
    events(server)
    server.send(protocol.Error(ErrorCode.BAD_NAME, "bad name"))
    assert (server.role, server.state) == (Role.NONE, State.OPEN)
    server.receive_data(protocol.ClientAdmin().encode())  # a corrected handshake is welcome
    assert events(server) == [protocol.ClientAdmin()]


@pytest.mark.parametrize(("role_frame", "refused"), [
    (None, protocol.Fetch(1)),
    (None, protocol.AdminCommand("stats")),
    (protocol.ClientPublisher("t"), protocol.Fetch(1)),
    (protocol.ClientSubscriber("t"), protocol.Publish(b"x")),
    (protocol.ClientAdmin(), protocol.Ack((1,))),
    (protocol.ClientSubscriber("t"), protocol.ClientPublisher("t")),
])
def test_a_frame_the_role_does_not_allow_is_rejected_in_place(
        role_frame: protocol.TypedFrame | None, refused: protocol.TypedFrame) -> None:
    server = ServerConnection() if role_frame is None else accepted(role_frame)
    server.receive_data(refused.encode() + protocol.Ping().encode())
    rejected, ping = events(server)
    assert isinstance(rejected, Rejected)
    assert (rejected.verb, rejected.error.code) == (refused.VERB, ErrorCode.NOT_ALLOWED)
    assert not rejected.error.fatal
    hint = "handshake already done" if refused.VERB in protocol.HANDSHAKES else refused.VERB
    assert hint in rejected.error.text
    assert ping == protocol.Ping()  # the connection goes on


def test_unknown_verbs_and_bad_values_are_rejected_without_closing() -> None:
    server = accepted(protocol.ClientSubscriber("t"))
    server.receive_data(protocol.encode("SHOUT") + protocol.encode("FETCH", ["zero"])
                        + protocol.Fetch(2).encode())
    unknown, bad, good = events(server)
    assert isinstance(unknown, Rejected) and unknown.error.code is ErrorCode.INVALID_PROTOCOL
    assert "unknown verb" in unknown.error.text
    assert isinstance(bad, Rejected) and bad.verb == "FETCH"
    assert good == protocol.Fetch(2)


def test_frames_before_a_framing_error_count_and_the_error_comes_once() -> None:
    server = accepted(protocol.ClientPublisher("t"))
    server.receive_data(protocol.Publish(b"a").encode() + protocol.Ping().encode()
                        + b"HEAD PUBLISH 3\r\nabcdTAIL\r\n")
    first, second, error = events(server)
    assert (first, second) == (protocol.Publish(b"a"), protocol.Ping())
    assert isinstance(error, Rejected) and error.verb is None and error.error.fatal
    server.receive_data(protocol.Ping().encode())
    assert server.next_event() is NEED_DATA  # nothing after the stream broke


def test_frames_after_the_goodbye_are_ignored_but_owed_replies_still_go_out() -> None:
    server = accepted(protocol.ClientPublisher("t"))
    server.receive_data(protocol.Publish(b"a").encode() + protocol.ClientShutdownSignal().encode()
                        + protocol.Publish(b"late").encode())
    assert events(server) == [protocol.Publish(b"a"), protocol.ClientShutdownSignal()]
    assert server.state is State.CLOSING
    assert server.send(protocol.ProducerAckMessage(7)) == protocol.ProducerAckMessage(7).encode()
    server.send(protocol.CloseConnectionSignal())
    assert server.state is State.CLOSED
    assert server.send(protocol.Error(ErrorCode.SERVER_CLOSING, "bye")) == b""


def test_the_server_may_not_send_what_the_role_cannot_receive() -> None:
    server = accepted(protocol.ClientPublisher("t"))
    with pytest.raises(LocalProtocolError, match="MESSAGE on a publisher"):
        server.send(protocol.Message(1, 1, b"x"))
    assert server.send(protocol.Pong()) == protocol.Pong().encode()


def test_the_client_refuses_to_send_what_its_state_does_not_allow() -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError, match="CLIENT_PUBLISHER, CLIENT_SUBSCRIBER"):
        client.send(protocol.Fetch(1))
    client.send(protocol.ClientSubscriber("t", "g"))
    client.send(protocol.Fetch(1))  # pipelined behind the handshake: allowed
    with pytest.raises(LocalProtocolError, match="subscriber connection"):
        client.send(protocol.Publish(b"x"))
    with pytest.raises(LocalProtocolError, match="awaiting ack"):
        client.send(protocol.ClientAdmin())


def test_the_client_follows_the_servers_answers() -> None:
    client = ClientConnection()
    client.send(protocol.ClientSubscriber("t"))
    client.receive_data(protocol.ServerAcknowledgement({"server": "bbmq"}).encode()
                        + protocol.Message(4, 1, b"hi", "p").encode())
    assert client.next_event() == protocol.ServerAcknowledgement({"server": "bbmq"})
    assert (client.role, client.state) == (Role.SUBSCRIBER, State.OPEN)
    assert client.next_event() == protocol.Message(4, 1, b"hi", "p")
    assert client.next_event() is NEED_DATA
    client.send(protocol.ClientShutdownSignal())
    client.receive_data(protocol.CloseConnectionSignal().encode())
    assert client.next_event() == protocol.CloseConnectionSignal()
    assert client.state is State.CLOSED


def test_the_client_refuses_a_frame_its_role_cannot_get() -> None:
    client = ClientConnection()
    client.send(protocol.ClientPublisher("t"))
    client.receive_data(protocol.ServerAcknowledgement({}).encode()
                        + protocol.Message(1, 1, b"x").encode())
    client.next_event()
    with pytest.raises(protocol.ProtocolError, match="MESSAGE on a publisher"):
        client.next_event()


def test_a_refused_handshake_lets_the_client_try_again() -> None:
    client = ClientConnection()
    client.send(protocol.ClientAdmin({"token": "wrong"}))
    client.receive_data(protocol.Error(ErrorCode.BAD_NAME, "no").encode())
    assert isinstance(client.next_event(), protocol.Error)
    assert (client.role, client.state) == (Role.NONE, State.OPEN)
    client.send(protocol.ClientAdmin())


def test_the_table_is_the_one_in_the_protocol_document() -> None:
    """docs/PROTOCOL.md 4.1 lists the frames allowed per role; the code's table says the same."""
    text = DOC.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| (publisher|subscriber|admin) \| (.+) \|$", text, re.M))
    assert set(rows) == {"publisher", "subscriber", "admin"}
    for name, frames in rows.items():
        documented = set(re.findall(r"`([A-Z_]+)`", frames))
        assert documented == protocol.CLIENT_MAY_SEND[Role[name.upper()]], name
    before = re.search(r"Before the handshake the server accepts only (.+?)\.", text, re.S)
    assert before is not None
    assert {"PING", "CLIENT_SHUTDOWN_SIGNAL"} <= protocol.CLIENT_MAY_SEND[Role.NONE]
    assert protocol.HANDSHAKES.keys() <= protocol.CLIENT_MAY_SEND[Role.NONE]


STREAM = b"".join(frame.encode() for frame in (
    protocol.Ping(),
    protocol.ClientPublisher("orders", {"name": "shop"}),
    protocol.Publish(b"TAIL\r\nHEAD PING 0\r\n", "m-1"),
    protocol.Publish(b"\x00\xff" * 40, None, 1000, 5000),
    protocol.Fetch(1),  # refused: a publisher
    protocol.ClientShutdownSignal(),
))


Seen = protocol.TypedFrame | tuple[str | None, ErrorCode, str]


def run_split(chunks: list[bytes]) -> list[Seen]:
    """Feed ``chunks`` one by one, answering the handshake as soon as it is seen.

    (A rejection is compared by what it says: exceptions are not equal to their copies.)
    """
    server = ServerConnection()
    seen: list[Seen] = []
    for chunk in chunks:
        server.receive_data(chunk)
        while (event := server.next_event()) is not NEED_DATA:
            if event is PAUSED:
                server.send(protocol.ServerAcknowledgement({}))
                continue
            assert not isinstance(event, protocol.Pending)
            seen.append((event.verb, event.error.code, event.error.text)
                        if isinstance(event, Rejected) else event)
    return seen


def test_every_split_point_gives_the_same_events() -> None:
    whole = run_split([STREAM])
    assert len(whole) == 6 and whole[4] == ("FETCH", ErrorCode.NOT_ALLOWED,
                                            "FETCH not allowed: this is a publisher connection")
    for cut in range(1, len(STREAM)):
        assert run_split([STREAM[:cut], STREAM[cut:]]) == whole, cut


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_number_of_splits_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert run_split(chunks) == run_split([STREAM])


@pytest.mark.parametrize("role_handshake", [protocol.ClientPublisher("orders"),
                                            protocol.ClientSubscriber("orders")])
def test_a_redirect_answers_a_handshake_and_closes_both_sides(
        role_handshake: protocol.TypedFrame) -> None:
    server, client = protocol.ServerConnection(), protocol.ClientConnection()
    server.receive_data(client.send(role_handshake))
    assert server.next_event() == role_handshake
    redirect = protocol.Redirect("orders", "10.0.0.2:15333", 3, None, ("10.0.0.2:15333",))
    client.receive_data(server.send(redirect))
    assert server.state is protocol.State.CLOSED
    assert client.next_event() == redirect
    assert client.state is protocol.State.CLOSED
    assert server.send(protocol.Pong()) == b"", "nothing may follow the REDIRECT"


def test_a_redirect_may_end_an_open_subscriber_connection_but_never_an_admin_one() -> None:
    server = protocol.ServerConnection()
    server.receive_data(protocol.ClientSubscriber("orders").encode())
    server.next_event()
    server.send(protocol.ServerAcknowledgement({}))
    server.send(protocol.Redirect("orders", None, None, 100))
    assert server.state is protocol.State.CLOSED
    admin = protocol.ServerConnection()
    admin.receive_data(protocol.ClientAdmin().encode())
    admin.next_event()
    admin.send(protocol.ServerAcknowledgement({}))
    with pytest.raises(protocol.LocalProtocolError):
        admin.send(protocol.Redirect("orders", None, None, 100))


def test_a_redirect_without_owner_or_retry_is_refused() -> None:
    frame = protocol.Frame("REDIRECT", ("orders",), b'{"owner": null, "retry_ms": null}')
    with pytest.raises(protocol.ProtocolError):
        protocol.Redirect.from_frame(frame)
