"""What a new user runs into first (issue 17): failing at once with a clear error, the
scripts' usage, error messages that say what to do, the tools agreeing with each other,
a config file in either spelling, and consumers that stop when told to."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bbmq import CannotConnect, Consumer, Message, Producer
from bbmq.cli import main
from bbmq.config import ConfigError, load
from bbmq.daemon import describe_failure
from bbmq.pidfile import PidFile
from bbmq.server_status import daemon_status, print_status
from bbmq.store import StoreUnavailable, open_store
from bbmq.testing import BrokerController, BrokerProcess, clean_environment, free_port, wait_for
from tests.mysql_support import require_mysql

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- 2: fail at once


def test_a_producer_that_never_reached_the_broker_fails_at_once_naming_the_address() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(CannotConnect, match=f"cannot connect to 127.0.0.1:{port}"):
        Producer("orders", port=port, retry_for=120).publish(b"lost?")
    # Not the retry_for wait: a refused first connection is reported, not retried.
    assert time.monotonic() - started < 60


def test_run_on_a_broker_that_is_not_there_raises_instead_of_reconnecting() -> None:
    consumer = Consumer("orders", port=free_port())
    with pytest.raises(CannotConnect):
        consumer.run(lambda message: None)


# --------------------------------------------------------------------------- 3: producer.py


def test_producer_script_usage_names_it_and_messages_are_optional(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["publish"], prog={"publish": "producer.py"})
    error = capsys.readouterr().err
    assert error.startswith("usage: producer.py ")
    assert "required: topic\n" in error  # not "topic, messages": they come from stdin


# --------------------------------------------------------------------------- 4: messages


def test_a_missing_token_tells_a_cli_user_about_token_and_its_variable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with BrokerController(data_dir=tmp_path, auth_tokens="s3cret:publish:*") as broker:
        assert main(["publish", "orders", "hi", "--port", str(broker.port)]) == 1
    error = capsys.readouterr().err
    assert "UNAUTHORIZED" in error and "--token" in error and "BBMQ_TOKEN" in error


def test_server_status_says_not_running_first(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = load({"data_dir": str(tmp_path), "port": str(free_port())}, environ={})
    code, facts = daemon_status(config, timeout=2)
    print_status(code, facts)
    assert code == 3
    assert capsys.readouterr().out.startswith("bbmq is not running")


def test_server_status_of_a_broker_not_listening_yet_says_so_before_the_address(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load({"data_dir": str(tmp_path), "port": str(free_port())}, environ={})
    with PidFile(config.pid_path):  # a broker that holds its pidfile but is still starting
        code, facts = daemon_status(config, timeout=2)
    print_status(code, facts)
    out = capsys.readouterr().out
    assert code == 0 and facts["listening"] is False
    assert f"nothing accepts connections at 127.0.0.1:{config.port}: it may still be" in out


# --------------------------------------------------------------------------- 5: dlq list


def test_dlq_list_shows_the_dead_letters_and_help_agrees(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with BrokerController(data_dir=tmp_path, max_attempts=1) as broker:
        with Consumer("orders", "billing", port=broker.port) as consumer, \
                Producer("orders", port=broker.port, name="shop") as producer:
            producer.publish(b"poison")
            message = consumer.fetch(timeout=10)
            assert message is not None
            consumer.nack(message, reason="bad input")
            wait_for(lambda: main(["dlq", "list", "orders", "--port", str(broker.port)]) == 0
                     and "poison" in capsys.readouterr().out, "the dead letter listed")
        assert main(["dlq", "list", "orders", "--port", str(broker.port)]) == 0
    header, body = capsys.readouterr().out.splitlines()[:2]
    assert body == "poison"
    assert header.startswith("# id=") and " attempt=1 published=" in header
    assert "from=shop" in header and "original_group=billing" in header
    assert "attempts=1" in header and "reason=bad_input" in header
    with pytest.raises(SystemExit):
        main(["dlq", "replay", "--help"])
    assert "back to the group of TOPIC that gave up on it" in " ".join(
        capsys.readouterr().out.split())


# --------------------------------------------------------------------------- 6: database errors


@pytest.mark.parametrize(("change", "expected"), [
    ("database", "database 'no_such_db_17' does not exist on the MySQL server at"),
    ("password", "check the user and password in --store"),
    ("port", "cannot reach the MySQL server at 127.0.0.1:1 ("),
])
def test_a_store_that_cannot_be_opened_says_which_problem_and_what_to_do(
        tmp_path: Path, change: str, expected: str) -> None:
    url = require_mysql().split("?")[0]
    user_at, _, database = url.removeprefix("mysql://").rpartition("/")
    user, _, host = user_at.rpartition("@")
    user = user.partition(":")[0]
    bad = {"database": f"mysql://{user_at}/no_such_db_17",
           "password": f"mysql://{user}:wrong-password@{host}/{database}",
           "port": f"mysql://{user}@127.0.0.1:1/{database}"}[change]
    config = load({"store": bad, "data_dir": str(tmp_path)}, environ={})
    store = open_store(bad, tmp_path)
    with pytest.raises(StoreUnavailable) as failure:
        store.open()
    said = describe_failure(failure.value, config)
    assert expected in said
    assert said.count("mysql://") <= 1  # the address once, not twice


# --------------------------------------------------------------------------- 7: one vocabulary


def test_consume_and_peek_describe_a_message_alike(
        broker: BrokerController, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    with Consumer("orders", "billing", port=broker.port).connect() as consumer, \
            Producer("orders", port=broker.port, name="shop") as producer:
        producer.publish(b"order 1")
        port = ["--port", str(broker.port)]
        assert main(["peek", "orders", "--group", "billing", *port]) == 0
        peeked = capsysbinary.readouterr().out.decode().splitlines()[0]
        assert main(["consume", "orders", "--group", "billing", "-n", "1", "-v", *port]) == 0
        consumed = capsysbinary.readouterr().out.decode().splitlines()[0]
        consumer.close()
    assert peeked == consumed  # peek shows the attempt its next delivery will be
    assert consumed.startswith("# id=1 attempt=1 published=20") and "+00:00 from=shop" in consumed
    assert "ts=" not in consumed


def test_help_says_each_default_once_and_where_a_name_shows(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["server", "run", "--help"])
    run_help = " ".join(capsys.readouterr().out.split())
    assert "(default: <data-dir>/bbmq.pid) (env BBMQ_PID_FILE)" in run_help
    assert "(default None" not in run_help
    with pytest.raises(SystemExit):
        main(["stats", "--help"])
    assert "shown to consumers" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["publish", "--help"])
    assert "shown to consumers" in capsys.readouterr().out


# --------------------------------------------------------------------------- 8: TOML keys


def test_toml_keys_may_be_spelled_like_the_flags(tmp_path: Path) -> None:
    config_file = tmp_path / "bbmq.toml"
    config_file.write_text('ack-timeout = 10\nmax_attempts = 3\n')
    config = load(config_file=config_file, environ={})
    assert (config.ack_timeout, config.max_attempts) == (10.0, 3)
    config_file.write_text('ack-timeout = 10\nack_timeout = 20\n')
    with pytest.raises(ConfigError, match="ack_timeout is given twice"):
        load(config_file=config_file, environ={})
    config_file.write_text('ack-timout = 10\n')
    with pytest.raises(ConfigError, match=r"ack-timout.*ack-timeout, or ack_timeout"):
        load(config_file=config_file, environ={})


# --------------------------------------------------------------------------- 9: stopping run()


def test_close_from_another_thread_stops_run_cleanly(
        broker: BrokerController, caplog: pytest.LogCaptureFixture) -> None:
    handled: list[bytes] = []
    consumer = Consumer("orders", "billing", port=broker.port).connect()
    runner = threading.Thread(target=consumer.run, args=(lambda m: handled.append(m.body),))
    with caplog.at_level(logging.WARNING, logger="bbmq.client"):
        runner.start()
        with Producer("orders", port=broker.port) as producer:
            producer.publish_many([b"1", b"2", b"3"])
        wait_for(lambda: len(handled) == 3, "three messages handled")
        consumer.close()
        runner.join(10)
    assert not runner.is_alive()
    assert consumer._channel is None or consumer._channel.closed
    assert not [r for r in caplog.records if "reconnect" in r.getMessage()]
    with Consumer("orders", "billing", port=broker.port) as again:
        assert again.fetch(timeout=0.2) is None  # all three were acked before it closed


def test_stop_from_a_handler_ends_run_after_the_running_handlers(
        broker: BrokerController) -> None:
    consumer = Consumer("orders", "billing", port=broker.port).connect()
    handled: list[Message] = []

    def handle(message: Message) -> None:
        handled.append(message)
        consumer.stop()

    with Producer("orders", port=broker.port) as producer:
        producer.publish(b"only")
    consumer.run(handle)  # returns: the test would time out otherwise
    consumer.close()
    assert [message.body for message in handled] == [b"only"]


def _consumer_script(*args: str, port: int, stdout: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(REPO / "consumer.py"), *args], cwd=REPO,
                            env={**clean_environment(), "BBMQ_PORT": str(port)},
                            stdout=stdout, stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_consumer_script_stops_gracefully_on_a_signal(broker: BrokerController, tmp_path: Path,
                                                      signum: int) -> None:
    out = tmp_path / "out"
    with out.open("wb") as sink:
        consumer = _consumer_script("orders", port=broker.port, stdout=sink)
        try:
            with Producer("orders", port=broker.port) as producer:
                wait_for(lambda: producer.publish(b"one") and out.read_bytes().startswith(b"one\n"),
                         "a message consumed", timeout=20)
            os.kill(consumer.pid, signum)
            _, stderr = consumer.communicate(timeout=20)
        finally:
            consumer.kill()
    assert consumer.returncode == 0, stderr
    assert b"Traceback" not in stderr


# --------------------------------------------------------------------------- 10: giving up


@pytest.mark.slow
def test_consumer_script_gives_up_after_the_broker_is_gone_that_long(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with BrokerProcess(tmp_path / "data") as broker, out.open("wb") as sink:
        with Producer("orders", port=broker.port) as producer:
            producer.publish(b"one")
        consumer = _consumer_script("orders", "--give-up-after", "2", port=broker.port,
                                    stdout=sink)
        try:
            wait_for(lambda: out.read_bytes() == b"one\n", "the first message consumed",
                     timeout=20)
            broker.kill()
            _, stderr = consumer.communicate(timeout=30)
        finally:
            consumer.kill()
    assert consumer.returncode == 1
    assert b"giving up after" in stderr and b"reconnecting in" in stderr
