"""The wire protocol module alone: bytes in, frames out; frames in, bytes out; no sockets.

Covers the framing grammar (limits, malformed headers, bodies that look like
markers, chunking at every byte boundary), the typed frames (round trips and
argument errors), hypothesis properties over valid and hostile streams, and
the example sessions in docs/PROTOCOL.md, so that the document stays true.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bbmq import protocol
from bbmq.protocol import ErrorCode, Frame, FrameDecoder, ProtocolError

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"

# --------------------------------------------------------------------------- helpers


def decode_all(data: bytes, chunks: list[int] | None = None, **limits: int) -> list[Frame]:
    """Feed ``data`` cut at the offsets in ``chunks`` (all of it at once by default)."""
    decoder = FrameDecoder(**limits)
    frames: list[Frame] = []
    start = 0
    for cut in [*(chunks or []), len(data)]:
        frames += decoder.feed(data[start:cut])
        start = cut
    assert decoder.buffered == 0, "whole frames must leave nothing buffered"
    return frames


def fatal(data: bytes, code: ErrorCode = ErrorCode.INVALID_PROTOCOL, **limits: int) -> str:
    """Assert that feeding ``data`` raises a fatal ``code``; return the error text."""
    decoder = FrameDecoder(**limits)
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(data)
    assert caught.value.code is code
    assert caught.value.fatal
    assert decoder.buffered == 0
    return caught.value.text


def refused(frame: Frame, code: ErrorCode = ErrorCode.INVALID_PROTOCOL,
            table: dict[str, type[protocol.TypedFrame]] = protocol.CLIENT_FRAMES) -> str:
    """Assert that parsing ``frame`` raises a non-fatal ``code``; return the error text."""
    with pytest.raises(ProtocolError) as caught:
        protocol.parse(frame, table)
    assert caught.value.code is code
    assert not caught.value.fatal
    return caught.value.text


def short(value: object) -> str:
    """A test id that stays readable for huge parameters."""
    text = repr(value)
    return text if len(text) <= 70 else f"{text[:60]}...({len(text)} chars)"


def header_of(length: int) -> bytes:
    """A header line (CRLF not counted) of exactly ``length`` bytes: HEAD X aaa...a 0."""
    line = b"HEAD X " + b"a" * (length - len(b"HEAD X  0")) + b" 0"
    assert len(line) == length
    return line


# --------------------------------------------------------------------------- encode


def test_encode_is_byte_exact() -> None:
    assert protocol.encode("PUBLISH", (), b"hello") == b"HEAD PUBLISH 5\r\nhelloTAIL\r\n"
    assert protocol.encode("PING") == b"HEAD PING 0\r\nTAIL\r\n"
    assert protocol.encode("ACK", ["1", "2"]) == b"HEAD ACK 1 2 0\r\nTAIL\r\n"
    assert protocol.encode("X", ("a=b",), b"\r\n") == b"HEAD X a=b 2\r\n\r\nTAIL\r\n"


def test_producer_ack_fast_path_matches_the_generic_encoder() -> None:
    for message_id in (1, 42, 2**53):
        assert protocol.ProducerAckMessage(message_id).encode() == protocol.encode(
            "PRODUCER_ACK_MESSAGE", (str(message_id),))


# --------------------------------------------------------------------------- typed frames

BINARY = bytes(range(256))
CLIENT_EXAMPLES: list[protocol.TypedFrame] = [
    protocol.ClientPublisher("orders"),
    protocol.ClientPublisher("a.b-c_9", {"name": "shop 1", "token": "s3cret"}),
    protocol.ClientSubscriber("orders"),
    protocol.ClientSubscriber("orders", "billing", {"name": "worker-7"}),
    protocol.ClientAdmin(),
    protocol.ClientAdmin({"token": "ops-key"}),
    protocol.Publish(b"hello"),
    protocol.Publish(b""),
    protocol.Publish(b"x", msgid="shop-1-17"),
    protocol.Publish(b"x", msgid="a=b=c"),
    protocol.Publish(b"x", msgid="m" * protocol.MAX_MSGID_CHARS),
    protocol.Publish(b"x", delay_ms=1500),
    protocol.Publish(b"x", ttl_ms=60_000),
    protocol.Publish(b"TAIL\r\nHEAD PUBLISH 0\r\n", "id-1", 5, 7),
    protocol.Publish(b"x", msgid="r-1", group="billing"),
    protocol.Publish(BINARY),
    protocol.Fetch(),
    protocol.Fetch(5),
    protocol.Fetch(2, 1000),
    protocol.Fetch(1, 0),
    protocol.Ack((1,)),
    protocol.Ack((101, 102, 2**40)),
    protocol.Nack(7),
    protocol.Nack(7, delay_ms=500),
    protocol.Nack(7, reason="bad_input"),
    protocol.Nack(7, 500, "timeout"),
    protocol.Ping(),
    protocol.ClientShutdownSignal(),
    protocol.AdminCommand("stats"),
    protocol.AdminCommand("topics", {}),
    protocol.AdminCommand("purge", {"topic": "orders", "group": "billing"}),
    protocol.AdminCommand("peek", {"topic": "orders", "n": 3}),
]
SERVER_EXAMPLES: list[protocol.TypedFrame] = [
    protocol.ServerAcknowledgement({}),
    protocol.ServerAcknowledgement({"server": "bbmq", "version": "0.1.0",
                             "max_message_bytes": protocol.DEFAULT_MAX_MESSAGE_BYTES}),
    protocol.ProducerAckMessage(1),
    protocol.ProducerAckMessage(2**53),
    protocol.Message(1, 1, b"hi"),
    protocol.Message(5, 3, BINARY, "shop-1", 1718000000000),
    protocol.Message(9, 1, b"TAIL\r\n", "p", 1, {"original_topic": "orders",
                                         "original_group": "billing", "original_id": "4",
                                         "attempts": "5", "reason": "bad_input", "future": ""}),
    protocol.QueueEmpty(0),
    protocol.QueueEmpty(3),
    protocol.Error(ErrorCode.INVALID_PROTOCOL, "PUBLISH: unknown option 'x'"),
    protocol.Error(ErrorCode.SERVER_BUSY, ""),
    protocol.Error("SOME_FUTURE_CODE", "caf\u00e9 \u2713\r\nTAIL\r\n"),
    protocol.AdminResult({"purged": 3}),
    protocol.AdminResult(["orders", "orders.dlq"]),
    protocol.AdminResult(None),
    protocol.AdminResult({"nested": {"a": [1, 2.5, "x", True]}}),
    protocol.Pong(),
    protocol.CloseConnectionSignal(),
    protocol.Redirect("orders", "10.0.0.2:15333", 7, None, ("10.0.0.1:15333", "10.0.0.2:15333"),
                      "orders is served by 10.0.0.2:15333"),
    protocol.Redirect("orders", None, None, 250, (), "no broker serves orders yet"),
]


def test_every_typed_frame_has_an_example() -> None:
    covered = {type(frame) for frame in CLIENT_EXAMPLES + SERVER_EXAMPLES}
    assert covered == set(protocol.CLIENT_FRAMES.values()) | set(protocol.SERVER_FRAMES.values())
    assert not set(protocol.CLIENT_FRAMES) & set(protocol.SERVER_FRAMES), "a verb has one direction"


@pytest.mark.parametrize(
    ("typed", "table"),
    [(frame, protocol.CLIENT_FRAMES) for frame in CLIENT_EXAMPLES]
    + [(frame, protocol.SERVER_FRAMES) for frame in SERVER_EXAMPLES],
    ids=short,
)
def test_typed_frame_round_trip(
    typed: protocol.TypedFrame, table: dict[str, type[protocol.TypedFrame]]
) -> None:
    data = typed.encode()
    frames = decode_all(data)
    assert len(frames) == 1
    assert frames[0].verb == typed.VERB
    back = protocol.parse(frames[0], table)
    assert back == typed
    assert back.encode() == data, "encoding is canonical"
    # Byte by byte gives the same frame.
    assert decode_all(data, list(range(1, len(data)))) == frames


def test_parse_defaults() -> None:
    assert protocol.parse(Frame("FETCH")) == protocol.Fetch(1, None)
    assert protocol.parse(Frame("CLIENT_SUBSCRIBER", ("t",))) == protocol.ClientSubscriber(
        "t", "default"
    )
    assert protocol.parse(Frame("CLIENT_PUBLISHER", ("t",))) == protocol.ClientPublisher("t", {})
    assert protocol.parse(Frame("PUBLISH", ("delay=0",), b"x")) == protocol.Publish(b"x")
    assert protocol.parse(Frame("PUBLISH", ("msgid=a", "msgid=b"), b"")) == protocol.Publish(
        b"", "b"
    )  # last


def test_numbers_past_their_bounds_and_bad_group_names_are_refused() -> None:
    too_long = str(protocol.MAX_DURATION_MS + 1)
    for frame in (
        Frame("PUBLISH", (f"delay={too_long}",), b"x"),
        Frame("PUBLISH", (f"ttl={too_long}",), b"x"),
        Frame("FETCH", ("1", too_long)),
        Frame("NACK", ("1", f"delay={too_long}")),
        Frame("ACK", ("9" * 20,)),
        Frame("PING", ("x",)),
        Frame("CLIENT_SHUTDOWN_SIGNAL", ("a=b",)),
    ):
        with pytest.raises(ProtocolError) as refused:
            protocol.parse(frame)
        assert refused.value.code is ErrorCode.INVALID_PROTOCOL and not refused.value.fatal
    with pytest.raises(ProtocolError) as bad_name:
        protocol.parse(Frame("PUBLISH", ("group=no spaces",), b"x"))
    assert bad_name.value.code is ErrorCode.BAD_NAME
    assert protocol.parse(
        Frame("PUBLISH", (f"delay={protocol.MAX_DURATION_MS}",), b"x")
    ) == protocol.Publish(b"x", delay_ms=protocol.MAX_DURATION_MS)


def test_message_keeps_unknown_meta_keys_in_order() -> None:
    frame = Frame("MESSAGE", ("3", "2", "ts=5", "zz=1", "flag", "a=b=c"), b"x")
    message = protocol.parse(frame, protocol.SERVER_FRAMES)
    assert isinstance(message, protocol.Message)
    assert (message.id, message.attempt, message.body) == (3, 2, b"x")
    assert list(message.meta.items()) == [("ts", "5"), ("zz", "1"), ("flag", ""), ("a", "b=c")]


def test_error_text_survives_invalid_utf8() -> None:
    error = protocol.parse(Frame("ERROR", ("X",), b"bad \xff byte"), protocol.SERVER_FRAMES)
    assert isinstance(error, protocol.Error)
    assert error.text == "bad \ufffd byte"


# --------------------------------------------------------------------------- chunking

STREAM_FRAMES: list[protocol.TypedFrame] = [
    protocol.ClientPublisher("orders", {"name": "x"}),
    protocol.Publish(b"TAIL\r\n"),
    protocol.Publish(b"HEAD PUBLISH 5\r\nhelloTAIL\r\n", msgid="m1"),
    protocol.Publish(b"\x00\x00\r\n\x00"),
    protocol.Publish(b"\xff\xfe\x80 not utf-8 \xc3("),
    protocol.Publish(b""),
    protocol.Ping(),
    protocol.Ack((1, 2, 3)),
]
STREAM = b"".join(frame.encode() for frame in STREAM_FRAMES)
EXPECTED = [
    Frame(*_f)
    for _f in (
        ("CLIENT_PUBLISHER", ("orders",), b'{"name":"x"}'),
        ("PUBLISH", (), b"TAIL\r\n"),
        ("PUBLISH", ("msgid=m1",), b"HEAD PUBLISH 5\r\nhelloTAIL\r\n"),
        ("PUBLISH", (), b"\x00\x00\r\n\x00"),
        ("PUBLISH", (), b"\xff\xfe\x80 not utf-8 \xc3("),
        ("PUBLISH", (), b""),
        ("PING", (), b""),
        ("ACK", ("1", "2", "3"), b""),
    )
]


def test_stream_in_one_piece() -> None:
    assert decode_all(STREAM) == EXPECTED
    assert [protocol.parse(frame) for frame in EXPECTED] == STREAM_FRAMES


def test_stream_byte_by_byte() -> None:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for index in range(len(STREAM)):
        frames += decoder.feed(STREAM[index : index + 1])
        assert decoder.buffered <= protocol.MAX_HEADER_BYTES + 64
    assert frames == EXPECTED
    assert decoder.buffered == 0


def test_stream_split_at_every_point() -> None:
    for cut in range(len(STREAM) + 1):
        assert decode_all(STREAM, [cut]) == EXPECTED, f"split at byte {cut}"


def test_partial_input_waits() -> None:
    decoder = FrameDecoder()
    data = protocol.Publish(b"hello").encode()
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered == len(b"helloTAIL\r")  # the header is consumed once whole
    assert decoder.feed(b"") == []
    assert decoder.feed(data[-1:]) == [Frame("PUBLISH", (), b"hello")]


# --------------------------------------------------------------------------- limits


def test_header_of_exactly_the_limit_is_accepted() -> None:
    line = header_of(protocol.MAX_HEADER_BYTES)
    data = line + b"\r\nTAIL\r\n"
    frames = decode_all(data)
    assert len(frames) == 1
    assert len(frames[0].args[0]) == protocol.MAX_HEADER_BYTES - len(b"HEAD X  0")
    # Byte by byte too: 1024 bytes and a CR are not yet an error.
    assert decode_all(data, list(range(1, len(data)))) == frames
    assert decode_all(data, [protocol.MAX_HEADER_BYTES + 1]) == frames


def test_header_over_the_limit_is_refused_without_waiting_for_crlf() -> None:
    line = header_of(protocol.MAX_HEADER_BYTES + 1)
    text = fatal(line + b"\r\nTAIL\r\n", ErrorCode.FRAME_TOO_LARGE)
    assert str(protocol.MAX_HEADER_BYTES) in text
    # No CRLF at all: refused as soon as the line cannot end within the limit.
    decoder = FrameDecoder()
    assert decoder.feed(line) == []
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(b"a")
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    assert caught.value.fatal
    # A megabyte without CRLF is refused at once and not kept.
    fatal(b"HEAD " + b"A" * 1024 * 1024, ErrorCode.FRAME_TOO_LARGE)


def test_custom_header_limit() -> None:
    assert decode_all(b"HEAD PING 0\r\nTAIL\r\n", max_header_bytes=11) == [Frame("PING")]
    fatal(b"HEAD PING 0\r\nTAIL\r\n", ErrorCode.FRAME_TOO_LARGE, max_header_bytes=10)


def test_size_over_the_limit_is_refused_before_the_body() -> None:
    text = fatal(b"HEAD PUBLISH 101\r\n", ErrorCode.FRAME_TOO_LARGE, max_body_bytes=100)
    assert "101" in text
    assert "100" in text
    size = protocol.DEFAULT_MAX_MESSAGE_BYTES
    fatal(b"HEAD PUBLISH %d\r\n" % (size + 1), ErrorCode.FRAME_TOO_LARGE)
    fatal(b"HEAD PUBLISH 104857600\r\n", ErrorCode.FRAME_TOO_LARGE)
    fatal(b"HEAD PUBLISH " + b"9" * 1000 + b"\r\n", ErrorCode.FRAME_TOO_LARGE)
    decoder = FrameDecoder()
    assert decoder.feed(b"HEAD PUBLISH %d\r\n" % size) == []  # exactly the limit: waits
    assert decoder.feed(b"x" * size + b"TAIL\r\n") == [Frame("PUBLISH", (), b"x" * size)]


def test_size_with_more_digits_than_int_converts() -> None:
    # Only reachable with a header limit above Python's 4300-digit int() limit.
    fatal(b"HEAD PING " + b"9" * 5000 + b"\r\n", ErrorCode.FRAME_TOO_LARGE, max_header_bytes=10_000)


# --------------------------------------------------------------------------- framing errors


def test_missing_tail_is_fatal() -> None:
    assert "TAIL" in fatal(b"HEAD PUBLISH 3\r\nabcXXXX\r\n")
    fatal(b"HEAD PUBLISH 3\r\nabcdTAIL\r\n")  # SIZE too small
    fatal(b"HEAD PUBLISH 5\r\nabcTAIL\r\n\r\n")  # SIZE too large
    fatal(b"HEAD PUBLISH 3\r\nabc\r\n\r\n\r\n")
    fatal(b"HEAD PUBLISH 3\r\nabctail\r\n")
    # Detected as soon as the six bytes after the body are in, no later.
    decoder = FrameDecoder()
    assert decoder.feed(b"HEAD PUBLISH 3\r\nabcTAIL\r") == []
    with pytest.raises(ProtocolError):
        decoder.feed(b"?")


def test_a_body_not_followed_by_tail_is_refused_at_the_first_wrong_byte() -> None:
    """Defect 8: the byte after the body that cannot start TAIL is enough; no waiting for six."""
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(b"HEAD PUBLISH 3\r\nabcd")
    assert caught.value.fatal and "TAIL" in caught.value.text
    decoder = FrameDecoder()
    assert decoder.feed(b"HEAD PUBLISH 3\r\nabcTA") == []  # a prefix of TAIL: wait
    with pytest.raises(ProtocolError):
        decoder.feed(b"X")


@pytest.mark.parametrize("line", [b"HEAD PING 0\n", b"HEAD PUBLISH 3\nabc", b"\n"])
def test_a_header_line_ending_in_a_bare_lf_is_refused_at_once(line: bytes) -> None:
    """Defect 8: no CRLF can end a line before its LF, so the header is known wrong already."""
    assert "bare LF" in fatal(line)


@pytest.mark.parametrize(
    "line",
    [
        b"HEAD publish 0",  # lowercase verb
        b"HEAD Publish 0",
        b"HEAD PUB1 0",  # digit in verb
        b"HEAD PUB-LISH 0",
        b"HEAD PING abc",  # non-numeric size
        b"HEAD PING -1",
        b"HEAD PING +1",
        b"HEAD PING 1.0",
        b"HEAD PING 0x10",
        b"HEAD PING",  # no size
        b"HEAD 0",  # no verb
        b"HEAD ",
        b"HEAD",
        b"",
        b"HEAD  PING 0",  # double spaces
        b"HEAD PING  0",
        b"HEAD ACK 1  2 0",
        b"HEAD PING 0 ",  # trailing space
        b" HEAD PING 0",
        b"HEAD\tPING 0",
        b"HEAD PING\t0",
        b"HEAD ACK 1\t2 0",
        b"HEAD PING \xc3\xa9 0",  # non-ASCII
        b"HEAD PING \xff 0",
        b"HEAD P\xc3\x89NG 0",
        b"HEAD PING \x00 0",  # control bytes
        b"HEAD PI\rNG 0",
        b"HEAD PI\nNG 0",
        b"HEAD PING \x7f 0",
        b"head PING 0",  # not HEAD
        b"HEADPING 0",
        b"PING 0",
        b"GET / HTTP/1.1",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    ],
    ids=short,
)
def test_malformed_header_is_fatal(line: bytes) -> None:
    fatal(line + b"\r\nTAIL\r\n")


def test_decoder_keeps_raising_after_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as first:
        decoder.feed(b"HEAD nope 0\r\n")
    for data in (b"HEAD PING 0\r\nTAIL\r\n", b"", b"x"):
        with pytest.raises(ProtocolError) as again:
            decoder.feed(data)
        assert again.value is first.value
        assert decoder.buffered == 0


def test_frames_before_an_error_are_returned_and_the_error_follows() -> None:
    decoder = FrameDecoder()
    good = protocol.Ping().encode() + protocol.Publish(b"x").encode()
    frames = decoder.feed(good + b"HEAD bad 0\r\n" + protocol.Ping().encode())
    assert frames == [Frame("PING"), Frame("PUBLISH", (), b"x")]
    assert decoder.buffered == 0
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(b"")
    assert caught.value.code is ErrorCode.INVALID_PROTOCOL
    assert caught.value.fatal
    # The same holds for a limit error after good frames.
    decoder = FrameDecoder(max_body_bytes=10)
    assert decoder.feed(good + b"HEAD PUBLISH 11\r\n") == [
        Frame("PING"),
        Frame("PUBLISH", (), b"x"),
    ]
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(b"")
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


def test_protocol_error_carries_code_text_and_fatality() -> None:
    error = ProtocolError(ErrorCode.BAD_NAME, "nope")
    assert (error.code, error.text, error.fatal, str(error)) == (
        ErrorCode.BAD_NAME,
        "nope",
        False,
        "nope",
    )
    assert ProtocolError(ErrorCode.TIMEOUT, "t", fatal=True).fatal


# --------------------------------------------------------------------------- parse errors


def test_unknown_verb_is_not_fatal() -> None:
    assert "'FOO'" in refused(Frame("FOO"))
    refused(Frame("MESSAGE", ("1", "1")))  # a server verb sent by a client
    refused(Frame("PUBLISH"), table=protocol.SERVER_FRAMES)  # a client verb sent by a server
    refused(Frame("PONG", (), b""))


@pytest.mark.parametrize(
    "frame",
    [
        Frame("CLIENT_PUBLISHER"),
        Frame("CLIENT_PUBLISHER", ("a", "b")),
        Frame("CLIENT_PUBLISHER", ("t",), b"not json"),
        Frame("CLIENT_PUBLISHER", ("t",), b"[1, 2]"),
        Frame("CLIENT_PUBLISHER", ("t",), b'"name"'),
        Frame("CLIENT_PUBLISHER", ("t",), b"\xff{}"),
        Frame("CLIENT_PUBLISHER", ("t",), b"[" * 100_000),  # deeper than json can recurse
        Frame("CLIENT_SUBSCRIBER"),
        Frame("CLIENT_SUBSCRIBER", ("t", "g", "x")),
        Frame("CLIENT_SUBSCRIBER", ("t",), b"null"),
        Frame("CLIENT_ADMIN", ("x",)),
        Frame("CLIENT_ADMIN", (), b"{" * 100_000),
        Frame("PUBLISH", ("ttl=0",), b"x"),
        Frame("PUBLISH", ("ttl=",), b"x"),
        Frame("PUBLISH", ("ttl=-5",), b"x"),
        Frame("PUBLISH", ("delay=abc",), b"x"),
        Frame("PUBLISH", ("delay=1.5",), b"x"),
        Frame("PUBLISH", ("delay=\u00b2",), b"x"),  # str.isdigit() is true for superscripts
        Frame("PUBLISH", ("msgid",), b"x"),
        Frame("PUBLISH", ("=x",), b"x"),
        Frame("FETCH", ("0",)),
        Frame("FETCH", ("x",)),
        Frame("FETCH", ("1", "-1")),
        Frame("FETCH", ("1", "2", "3")),
        Frame("FETCH", (), b"x"),
        Frame("FETCH", ("9" * 5000,)),
        Frame("ACK"),
        Frame("ACK", ("0",)),
        Frame("ACK", ("1", "x")),
        Frame("ACK", ("1",), b"x"),
        Frame("NACK"),
        Frame("NACK", ("x",)),
        Frame("NACK", ("0",)),
        Frame("NACK", ("5", "delay=x")),
        Frame("NACK", ("5", "bogus")),
        Frame("NACK", ("5",), b"x"),
        Frame("PING", (), b"x"),
        Frame("CLIENT_SHUTDOWN_SIGNAL", (), b"x"),
        Frame("ADMIN"),
        Frame("ADMIN", ("a", "b")),
        Frame("ADMIN", ("stats",), b"[]"),
    ],
    ids=short,
)
def test_bad_client_frame_is_not_fatal(frame: Frame) -> None:
    refused(frame)


@pytest.mark.parametrize(
    "frame",
    [
        Frame("PRODUCER_ACK_MESSAGE"),
        Frame("PRODUCER_ACK_MESSAGE", ("0",)),
        Frame("PRODUCER_ACK_MESSAGE", ("1",), b"x"),
        Frame("MESSAGE", ("1",)),
        Frame("MESSAGE", ("1", "0")),
        Frame("MESSAGE", ("x", "1")),
        Frame("QUEUE_EMPTY"),
        Frame("QUEUE_EMPTY", ("x",)),
        Frame("ERROR"),
        Frame("ERROR", ("A", "B")),
        Frame("ADMIN_RESULT", (), b""),
        Frame("ADMIN_RESULT", (), b"{"),
        Frame("ADMIN_RESULT", (), b"[" * 100_000),
        Frame("SERVER_ACKNOWLEDGEMENT", (), b"[]"),
    ],
    ids=short,
)
def test_bad_server_frame_is_not_fatal(frame: Frame) -> None:
    refused(frame, table=protocol.SERVER_FRAMES)


def test_unknown_option_is_named() -> None:
    text = refused(Frame("PUBLISH", ("priority=9",), b"x"))
    assert "'priority'" in text
    assert "msgid" in text  # and the known ones are listed
    assert "'colour'" in refused(Frame("NACK", ("5", "colour=red")))
    assert "'msgid'" in refused(Frame("NACK", ("5", "msgid=x")))
    assert "'reason'" in refused(Frame("PUBLISH", ("reason=x",), b""))


def test_msgid_length_limit() -> None:
    longest = "m" * protocol.MAX_MSGID_CHARS
    publish = protocol.parse(Frame("PUBLISH", (f"msgid={longest}",), b""))
    assert isinstance(publish, protocol.Publish)
    assert publish.msgid == longest
    assert str(protocol.MAX_MSGID_CHARS) in refused(Frame("PUBLISH", (f"msgid={longest}m",), b""))
    refused(Frame("PUBLISH", ("msgid=",), b""))


# --------------------------------------------------------------------------- names

GOOD_NAMES = ["a", "orders", "A-z_0.9", "orders.dlq", "-", ".", "x" * 200]
BAD_NAMES = ["", "x" * 201, "a/b", "a b", "a:b", "tópico", "a*", "a\x00", "a\n"]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names(name: str) -> None:
    assert protocol.check_name("topic", name) == name
    assert protocol.parse(Frame("CLIENT_PUBLISHER", (name,))) == protocol.ClientPublisher(name)
    assert protocol.parse(Frame("CLIENT_SUBSCRIBER", ("t", name))) == protocol.ClientSubscriber(
        "t", name
    )


@pytest.mark.parametrize("name", BAD_NAMES, ids=short)
def test_bad_names(name: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.check_name("group", name)
    assert caught.value.code is ErrorCode.BAD_NAME
    assert "group" in caught.value.text
    assert "BAD_NAME" not in caught.value.text  # the code is separate from the text
    refused(Frame("CLIENT_PUBLISHER", (name,)), ErrorCode.BAD_NAME)
    refused(Frame("CLIENT_SUBSCRIBER", (name,)), ErrorCode.BAD_NAME)
    refused(Frame("CLIENT_SUBSCRIBER", ("ok", name)), ErrorCode.BAD_NAME)


def test_bad_name_text_is_bounded() -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.check_name("topic", "/" * 10_000)
    assert len(caught.value.text) < 200


# --------------------------------------------------------------------------- properties

VERBS = st.from_regex(r"[A-Z_]{1,24}", fullmatch=True)
ARG = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
FRAMES = st.builds(Frame, VERBS, st.lists(ARG, max_size=8).map(tuple), st.binary(max_size=3000))
FRAGMENTS = st.one_of(
    st.binary(max_size=48),
    st.sampled_from(
        [
            b"HEAD ",
            b"TAIL\r\n",
            b"\r\n",
            b"\r",
            b"\n",
            b" ",
            b"  ",
            b"0",
            b"7",
            b"16",
            b"99999999999",
            b"PUBLISH",
            b"PING",
            b"msgid=x",
            b"\xff",
            b"\x00",
            b"HEAD PING 0\r\nTAIL\r\n",
            b"HEAD PUBLISH 3\r\nabcTAIL\r\n",
            b"HEAD PUBLISH 12\r\n",
            b"HEAD FETCH 2 1000 0\r\n",
        ]
    ),
)
LIMITS = [{}, {"max_body_bytes": 16, "max_header_bytes": 24}, {"max_body_bytes": 0}]


def cut_points(data: st.DataObject, length: int) -> list[int]:
    return sorted(set(data.draw(st.lists(st.integers(0, length), max_size=24), label="cuts")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(FRAMES, max_size=8), data=st.data())
def test_any_valid_stream_decodes_the_same_however_split(
    frames: list[Frame], data: st.DataObject
) -> None:
    stream = b"".join(protocol.encode(frame.verb, frame.args, frame.body) for frame in frames)
    assert decode_all(stream, cut_points(data, len(stream))) == frames


@pytest.mark.parametrize("limits", LIMITS, ids=str)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fragments=st.lists(FRAGMENTS, max_size=40), data=st.data())
def test_arbitrary_bytes_give_frames_or_protocol_errors(
    limits: dict[str, int], fragments: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(fragments)
    decoder = FrameDecoder(**limits)
    bound = decoder.max_header_bytes + decoder.max_body_bytes + 8
    failed: ProtocolError | None = None
    start = 0
    for cut in [*cut_points(data, len(stream)), len(stream)]:
        chunk, start = stream[start:cut], cut
        try:
            frames = decoder.feed(chunk)
        except ProtocolError as error:
            assert error.fatal
            assert error.code in (ErrorCode.INVALID_PROTOCOL, ErrorCode.FRAME_TOO_LARGE)
            assert failed is None or error is failed, "a dead decoder repeats its error"
            failed = error
            assert decoder.buffered == 0
            continue
        assert failed is None, "no frames after an error"
        assert decoder.buffered <= bound
        for frame in frames:
            check_decoded(frame, decoder.max_body_bytes)
    if failed is None:  # whatever is buffered is an honest prefix of a frame
        assert decoder.buffered <= bound
    else:
        with pytest.raises(ProtocolError):
            decoder.feed(b"")


def check_decoded(frame: Frame, max_body: int) -> None:
    """A decoded frame obeys the grammar, re-encodes to itself, and parses or says why not."""
    assert isinstance(frame, Frame)
    assert re.fullmatch(r"[A-Z_]+", frame.verb)
    assert all(re.fullmatch(r"[!-~]+", arg) for arg in frame.args)
    assert len(frame.body) <= max_body
    assert decode_all(
        protocol.encode(frame.verb, frame.args, frame.body), max_body_bytes=max_body
    ) == [frame]
    for table in (protocol.CLIENT_FRAMES, protocol.SERVER_FRAMES):
        try:
            protocol.parse(frame, table)
        except ProtocolError as error:
            assert not error.fatal


@settings(max_examples=150, deadline=None)
@given(
    verb=st.sampled_from(sorted(protocol.CLIENT_FRAMES)),
    args=st.lists(
        st.one_of(
            ARG, st.from_regex(r"(msgid|delay|ttl|reason)=[!-~]{0,8}|[0-9]{1,4}", fullmatch=True)
        ),
        max_size=4,
    ),
    body=st.one_of(st.binary(max_size=64), st.just(b"{}"), st.just(b'{"name":"x"}')),
)
def test_parse_of_any_wellformed_client_frame_only_raises_protocol_error(
    verb: str, args: list[str], body: bytes
) -> None:
    try:
        typed = protocol.parse(Frame(verb, tuple(args), body))
    except ProtocolError as error:
        assert not error.fatal
        assert error.code in (ErrorCode.INVALID_PROTOCOL, ErrorCode.BAD_NAME)
    else:
        assert verb == typed.VERB


# --------------------------------------------------------------------------- docs/PROTOCOL.md


def doc_blocks(kind: str) -> list[list[tuple[str, bytes]]]:
    """The ```<kind> fenced blocks of the protocol document as (direction, bytes) lines.

    Each line is ``C: `` (client to server) or ``S: `` (server to client) and
    one frame with ``\\r``, ``\\n``, ``\\\\`` and ``\\xNN`` escapes.
    """
    text = DOC.read_text(encoding="utf-8")
    blocks = []
    for body in re.findall(rf"^```{re.escape(kind)}\n(.*?)^```$", text, re.M | re.S):
        lines = []
        for line in body.splitlines():
            direction, sep, wire = line.partition(": ")
            assert direction in ("C", "S") and sep, f"bad line in a {kind} block: {line!r}"
            raw = wire.encode("ascii").decode("unicode_escape").encode("latin-1")
            lines.append((direction, raw))
        blocks.append(lines)
    return blocks


def test_doc_examples_decode_and_match_the_encoders() -> None:
    blocks = doc_blocks("bbmq-wire")
    assert len(blocks) >= 2, "the worked example sessions are missing from docs/PROTOCOL.md"
    verbs: set[str] = set()
    for block in blocks:
        streams: dict[str, list[bytes]] = {"C": [], "S": []}
        refusals: list[ErrorCode] = []  # client frames shown being refused
        for direction, raw in block:
            frames = decode_all(raw, max_body_bytes=protocol.DEFAULT_MAX_MESSAGE_BYTES)
            assert len(frames) == 1, f"one frame per line: {raw!r}"
            frame = frames[0]
            assert protocol.encode(frame.verb, frame.args, frame.body) == raw, (
                f"not canonical: {raw!r}"
            )
            table = protocol.CLIENT_FRAMES if direction == "C" else protocol.SERVER_FRAMES
            assert frame.verb in table, f"{frame.verb} sent the wrong way: {raw!r}"
            try:
                typed = protocol.parse(frame, table)
            except ProtocolError as error:  # an example of a bad command
                assert direction == "C"
                refusals.append(error.code)
            else:
                assert typed.encode() == raw, f"not what the encoder makes: {raw!r}"
                if isinstance(typed, protocol.Error) and typed.code in refusals:
                    refusals.remove(ErrorCode(typed.code))
            streams[direction].append(raw)
            verbs.add(frame.verb)
        assert not refusals, "a bad frame in an example must be answered by its ERROR"
        for pieces in streams.values():  # each direction is one valid byte stream
            stream = b"".join(pieces)
            assert len(decode_all(stream, list(range(1, len(stream))))) == len(pieces)
    worked = {
        "CLIENT_PUBLISHER",
        "CLIENT_SUBSCRIBER",
        "SERVER_ACKNOWLEDGEMENT",
        "PUBLISH",
        "PRODUCER_ACK_MESSAGE",
        "FETCH",
        "MESSAGE",
        "ACK",
        "QUEUE_EMPTY",
        "CLIENT_SHUTDOWN_SIGNAL",
        "CLOSE_CONNECTION_SIGNAL",
    }
    assert worked <= verbs


def test_doc_error_examples_are_refused_as_shown() -> None:
    blocks = doc_blocks("bbmq-wire-error")
    assert blocks
    for block in blocks:
        assert [direction for direction, _ in block] == ["C", "S"] * (len(block) // 2)
        for (_, sent), (_, answer) in zip(block[::2], block[1::2], strict=True):
            with pytest.raises(ProtocolError) as caught:
                FrameDecoder().feed(sent)
            error = protocol.parse(decode_all(answer)[0], protocol.SERVER_FRAMES)
            assert isinstance(error, protocol.Error)
            assert error.code == caught.value.code
            assert caught.value.fatal


def test_doc_names_every_verb_code_and_limit() -> None:
    text = DOC.read_text(encoding="utf-8")
    for word in [*protocol.CLIENT_FRAMES, *protocol.SERVER_FRAMES, *ErrorCode]:
        assert re.search(rf"\b{word}\b", text), f"{word} is not documented"
    for number in (
        protocol.MAX_HEADER_BYTES,
        protocol.DEFAULT_MAX_MESSAGE_BYTES,
        protocol.MAX_MSGID_CHARS,
    ):
        assert str(number) in text
    assert protocol.NAME_RE.pattern in text
