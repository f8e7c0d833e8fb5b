"""Authentication with tokens, and TLS with certificates made for the test."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from bbmq import BrokerError, protocol
from bbmq.auth import Authorizer, Permission
from bbmq.config import ConfigError, load
from bbmq.protocol import ErrorCode
from bbmq.testing import BrokerController

from .client_flavours import Flavour
from .conftest import RawClient

TOKENS = "pub-key:publish:orders.*,sub-key:subscribe:orders.eu,ops-key:admin+publish:*"


def test_authorizer_rules() -> None:
    auth = Authorizer.parse(TOKENS)
    assert auth.allows("pub-key", Permission.PUBLISH, "orders.eu")
    assert not auth.allows("pub-key", Permission.PUBLISH, "billing")
    assert not auth.allows("pub-key", Permission.SUBSCRIBE, "orders.eu")
    assert auth.allows("sub-key", Permission.SUBSCRIBE, "orders.eu")
    assert not auth.allows("sub-key", Permission.SUBSCRIBE, "orders.us")
    assert auth.allows("ops-key", Permission.ADMIN, None)
    assert not auth.allows(None, Permission.PUBLISH, "orders.eu")
    assert not auth.allows("pub-ke", Permission.PUBLISH, "orders.eu")
    assert Authorizer.parse("").allows(None, Permission.ADMIN, None)


def test_malformed_token_list_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="TOKEN:PERMISSIONS:PATTERNS"):
        load({"auth_tokens": "just-a-token"}, environ={})
    with pytest.raises(ConfigError, match="unknown permission"):
        load({"auth_tokens": "k:write:*"}, environ={})


def test_wrong_or_missing_token_is_unauthorized_and_closed(
        tmp_path: Path, clients: Flavour, monkeypatch: pytest.MonkeyPatch) -> None:
    with BrokerController(data_dir=tmp_path, auth_tokens=TOKENS) as broker:
        for options in ({}, {"token": "nope"}, {"token": "sub-key"}):
            raw = RawClient(broker.port)
            raw.send(protocol.ClientPublisher("orders.eu", options))
            [error] = raw.receive()
            assert isinstance(error, protocol.Error) and error.code == ErrorCode.UNAUTHORIZED
            assert raw.closed_by_server()
            raw.close()
        with clients.Producer("orders.eu", port=broker.port, token="pub-key") as producer:
            mid = producer.publish(b"paid")
        with pytest.raises(BrokerError) as info:
            clients.Consumer("orders.eu", port=broker.port, token="pub-key").connect()
        assert info.value.code == ErrorCode.UNAUTHORIZED
        with clients.Consumer("orders.eu", port=broker.port, token="sub-key") as consumer:
            message = consumer.fetch(timeout=5)
            assert message is not None and message.id == mid
            consumer.ack(message)
        admin = RawClient(broker.port)
        admin.handshake(protocol.ClientAdmin({"token": "ops-key"}))
        admin.send(protocol.AdminCommand("topics"))
        assert admin.receive() == [protocol.AdminResult(["orders.eu"])]
        admin.close()
        # The defaults come from the environment, as for the command line.
        monkeypatch.setenv("BBMQ_PORT", str(broker.port))
        monkeypatch.setenv("BBMQ_TOKEN", "sub-key")
        with clients.Consumer("orders.eu") as consumer:
            assert consumer.fetch(timeout=0) is None  # authorized: acked above, none left
        monkeypatch.setenv("BBMQ_TOKEN", "pub-key")
        with pytest.raises(BrokerError) as info:
            clients.Consumer("orders.eu").connect()
        assert info.value.code == ErrorCode.UNAUTHORIZED


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.mark.slow
def test_tls_end_to_end(tmp_path: Path, authority: trustme.CA, clients: Flavour) -> None:
    cert = authority.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = (tmp_path / "cert.pem", tmp_path / "key.pem",
                                    tmp_path / "ca.pem")
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    authority.cert_pem.write_to_path(str(ca_file))
    with BrokerController(data_dir=tmp_path / "data", tls_cert=cert_file,
                          tls_key=key_file) as broker:
        with clients.Producer("secure", "127.0.0.1", broker.port, tls=True,
                      ca_file=str(ca_file)) as producer:
            mid = producer.publish(b"over tls")
        with clients.Consumer("secure", host="127.0.0.1", port=broker.port, tls=True,
                      ca_file=str(ca_file)) as consumer:
            message = consumer.fetch(timeout=5)
            assert message is not None and (message.id, message.body) == (mid, b"over tls")
            consumer.ack(message)
        untrusted = ssl.create_default_context()  # does not know the test CA
        with pytest.raises(BrokerError):
            clients.Producer("secure", "127.0.0.1", broker.port, tls=untrusted).connect()
        plain = RawClient(broker.port)  # a client speaking plain text to a TLS port
        plain.send(protocol.Ping())
        assert plain.closed_by_server()
        plain.close()
        # The command line too, flags or environment (the image's healthcheck is 'bbmq ping').
        by_flag = subprocess.run([sys.executable, "-m", "bbmq", "ping", "--port", str(broker.port),
                                  "--tls", "--ca-file", str(ca_file)],
                                 capture_output=True, text=True, timeout=30, check=False)
        assert by_flag.returncode == 0 and "PONG" in by_flag.stdout, by_flag.stderr
        by_env = subprocess.run([sys.executable, "-m", "bbmq", "ping", "--port", str(broker.port)],
                                env={**os.environ, "BBMQ_TLS": "1", "BBMQ_CA_FILE": str(ca_file)},
                                capture_output=True, text=True, timeout=30, check=False)
        assert by_env.returncode == 0 and "PONG" in by_env.stdout, by_env.stderr
