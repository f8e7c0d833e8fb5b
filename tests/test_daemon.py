"""``bbmq server start|stop|status|restart|config`` driven as a user would, as subprocesses.

Every test gets its own port and data dir, and its daemon is stopped (killed
if need be) in the fixture's teardown, whatever the test did.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bbmq import config as settings
from bbmq.client import BrokerError, Consumer, Producer
from bbmq.testing import BrokerProcess, answers_ping, free_port, wait_for

from .broker_process import process_alive, run_bbmq


@dataclass
class Daemon:
    """Where one test's daemon lives; ``server(...)`` runs ``bbmq server ...`` against it."""

    data_dir: Path
    port: int

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "bbmq.pid"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "bbmq.log"

    def pid(self) -> int:
        return int(self.pid_path.read_text())

    def server(self, command: str, *args: str, module: str = "bbmq",
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        prefix = ("server",) if module == "bbmq" else ()
        return run_bbmq(*prefix, command, "--host", "127.0.0.1", "--port", str(self.port),
                        "--data-dir", str(self.data_dir), *args, module=module, env=env)

    def start(self) -> int:
        result = self.server("start")
        assert result.returncode == 0, result.stderr
        return self.pid()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    under_test = Daemon(tmp_path / "data", free_port())
    try:
        yield under_test
    finally:
        under_test.server("stop", "--force", "--wait", "20")


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.slow
def test_start_detaches_and_returns_once_the_port_answers(daemon: Daemon) -> None:
    result = daemon.server("start")

    assert result.returncode == 0, result.stderr
    pid = daemon.pid()
    assert f"bbmq started: pid {pid}, listening on 127.0.0.1:{daemon.port}" in result.stdout
    assert process_alive(pid)
    assert parent_pid(pid) != os.getpid()  # not our child: it was re-parented away
    assert os.getsid(pid) != os.getsid(0)  # and lives in a session of its own
    assert answers_ping(daemon.port)  # at once: start returned only when it was ready


@pytest.mark.slow
def test_a_second_start_says_already_running(daemon: Daemon) -> None:
    pid = daemon.start()

    again = daemon.server("start")

    assert again.returncode == 1
    assert f"already running, pid {pid}" in again.stderr
    assert daemon.pid() == pid and process_alive(pid)


@pytest.mark.slow
def test_status_and_stop_follow_lsb(daemon: Daemon) -> None:
    before = daemon.server("status")
    assert before.returncode == 3 and "not running" in before.stdout

    pid = daemon.start()
    with Producer("orders", "127.0.0.1", daemon.port) as producer:
        producer.publish_many([b"one", b"two", b"three"])
    running = daemon.server("status")
    assert running.returncode == 0, running.stderr
    assert f"running, pid {pid}" in running.stdout
    assert f"127.0.0.1:{daemon.port}" in running.stdout
    assert "sqlite" in running.stdout
    assert any(line.split()[:2] == ["orders", "3"] for line in running.stdout.splitlines())
    as_json = json.loads(daemon.server("status", "--json").stdout)
    assert as_json["pid"] == pid and as_json["answering"]
    assert as_json["stats"]["topics"]["orders"]["backlog"] == 3
    assert as_json["stats"]["server"]["pid"] == pid

    stopped = daemon.server("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    assert not process_alive(pid)
    assert not daemon.pid_path.exists()
    after = daemon.server("status")
    assert after.returncode == 3 and "not running" in after.stdout
    idempotent = daemon.server("stop")
    assert idempotent.returncode == 0 and "not running" in idempotent.stdout


@pytest.mark.slow
def test_stop_says_when_it_gives_up_and_force_kills(daemon: Daemon) -> None:
    pid = daemon.start()
    os.kill(pid, signal.SIGSTOP)  # a broker that cannot drain: SIGTERM stays pending

    gave_up = daemon.server("stop", "--wait", "0.5")

    assert gave_up.returncode == 1
    assert f"gave up waiting: pid {pid} is still running" in gave_up.stderr
    assert "--force" in gave_up.stderr
    assert process_alive(pid)
    forced = daemon.server("stop", "--wait", "0.5", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "killed" in forced.stdout
    wait_for(lambda: not process_alive(pid), "the killed broker to be gone")
    assert not daemon.pid_path.exists()
    assert daemon.server("status").returncode == 3


@pytest.mark.slow
def test_a_stale_pidfile_is_reported_and_replaced(daemon: Daemon) -> None:
    gone = dead_pid()
    daemon.data_dir.mkdir(parents=True)
    daemon.pid_path.write_text(f"{gone}\n")

    status = daemon.server("status")
    assert status.returncode == 1
    assert "dead but pidfile" in status.stdout

    started = daemon.server("start")
    assert started.returncode == 0, started.stderr
    assert f"replacing stale pidfile {daemon.pid_path} (pid {gone} is gone)" in started.stderr
    assert daemon.pid() != gone and process_alive(daemon.pid())


@pytest.mark.slow
def test_a_busy_port_makes_start_fail_with_the_reason(daemon: Daemon) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", daemon.port))
        squatter.listen()

        result = daemon.server("start")

    assert result.returncode == 1
    assert f"127.0.0.1:{daemon.port} is already in use" in result.stderr
    assert "choose another --port" in result.stderr
    assert not daemon.pid_path.exists()


@pytest.mark.slow
def test_an_unreachable_store_makes_start_fail_with_the_reason(daemon: Daemon) -> None:
    nobody_there = free_port()

    result = daemon.server("start", "--store", f"mysql://bbmq@127.0.0.1:{nobody_there}/bbmq")

    assert result.returncode == 1
    assert "could not start" in result.stderr and "unreachable" in result.stderr
    assert not daemon.pid_path.exists()


@pytest.mark.slow
def test_stop_under_load_loses_nothing_acked(daemon: Daemon) -> None:
    daemon.start()
    published: list[int] = []  # ids the broker acked to the publisher
    consumed: list[int] = []  # ids delivered to the consumer before the stop
    halt = threading.Event()

    def publish() -> None:
        with Producer("load", "127.0.0.1", daemon.port, retry_for=1.0) as producer:
            count = 0
            while not halt.is_set():
                try:
                    published.append(producer.publish(f"message {count}"))
                except BrokerError:
                    return  # the broker went away: what was acked is in `published`
                count += 1

    def consume() -> None:
        with Consumer("load", "workers", "127.0.0.1", daemon.port) as consumer:
            while not halt.is_set():
                try:
                    message = consumer.fetch(timeout=0.5)
                    if message is not None:
                        consumed.append(message.id)
                        consumer.ack(message)
                except BrokerError:
                    return

    # The group exists before the first publish, so it owes every message.
    with Consumer("load", "workers", "127.0.0.1", daemon.port):
        pass
    threads = [threading.Thread(target=publish), threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(published) >= 200 and len(consumed) >= 50,
                 "publishing and consuming to be under way")
        stopped = daemon.server("stop")
    finally:
        halt.set()
        for thread in threads:
            thread.join(30)
    assert stopped.returncode == 0, stopped.stderr

    daemon.start()
    after_restart = []
    with Consumer("load", "workers", "127.0.0.1", daemon.port) as consumer:
        while (message := consumer.fetch(timeout=1.0)) is not None:
            after_restart.append(message.id)
            consumer.ack(message)

    missing = set(published) - set(consumed) - set(after_restart)
    assert not missing, f"{len(missing)} acked messages lost, e.g. {sorted(missing)[:5]}"


@pytest.mark.slow
def test_sighup_reopens_the_log_file(daemon: Daemon) -> None:
    pid = daemon.start()
    rotated = daemon.log_path.with_name("bbmq.log.1")
    daemon.log_path.rename(rotated)

    os.kill(pid, signal.SIGHUP)

    wait_for(lambda: daemon.log_path.exists() and "reopened" in daemon.log_path.read_text(),
             "a new log file with the reopen line")
    assert "reopened" not in rotated.read_text()
    assert "listening on" in rotated.read_text()
    assert process_alive(pid) and answers_ping(daemon.port)


@pytest.mark.slow
def test_config_precedence_flag_env_file_default(tmp_path: Path) -> None:
    config_file = tmp_path / "bbmq.toml"
    config_file.write_text('port = 1111\nack_timeout = 11\nmax_batch = 77\n'
                           'store = "mysql://bbmq:hunter2@db:3306/bbmq"\n')
    env = {"BBMQ_PORT": "2222", "BBMQ_ACK_TIMEOUT": "22"}

    result = run_bbmq("server", "config", "--json", "--config", str(config_file),
                      "--port", "3333", env=env)

    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["port"] == {"value": "3333", "source": "flag --port"}
    assert settings["ack_timeout"] == {"value": "22.0", "source": "env BBMQ_ACK_TIMEOUT"}
    assert settings["max_batch"] == {"value": "77", "source": f"file {config_file}"}
    assert settings["idle_timeout"] == {"value": "300.0", "source": "default"}
    assert settings["store"]["value"] == "mysql://bbmq:***@db:3306/bbmq"
    table = run_bbmq("server", "config", "--config", str(config_file), env=env)
    assert "hunter2" not in table.stdout
    assert any(line.split() == ["port", "2222", "env", "BBMQ_PORT"]
               for line in table.stdout.splitlines())


def test_secrets_are_masked_whatever_they_hold_and_an_empty_env_is_unset(
        tmp_path: Path) -> None:
    config_file = tmp_path / "bbmq.toml"
    config_file.write_text('auth_tokens = "s3cret:admin:*"\n')
    # Compose passes "${BBMQ_AUTH_TOKENS:-}" as an empty string: that must not switch off
    # the tokens of the file.
    config = settings.load({"store": "mysql://bbmq:pa#ss/w?rd@db:3306/bbmq",
                            "store_password": "p@ss:/#?"},
                           environ={"BBMQ_AUTH_TOKENS": ""}, config_file=config_file)
    shown = {name: value for name, value, _ in config.describe()}
    assert shown["store"] == "mysql://bbmq:***@db:3306/bbmq"
    assert shown["store_password"] == "***"
    assert shown["auth_tokens"] == "***:admin:*"
    assert config.sources["auth_tokens"] == f"file {config_file}"


@pytest.mark.slow
def test_sigterm_while_the_store_hangs_ends_the_start_at_once(tmp_path: Path) -> None:
    """A database that accepts the connection and never answers: SIGTERM must not wait
    for its 30 s timeout, nor be ignored (as it would be by PID 1 in a container)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # completes TCP handshakes, never says a word
        store = f"mysql://bbmq@127.0.0.1:{silent.getsockname()[1]}/bbmq"
        broker = BrokerProcess(tmp_path / "data", store=store).launch()
        try:
            wait_for(lambda: "opening store" in broker.log(), "the start")
            assert broker.stop(timeout=10) == 0, broker.log()
        finally:
            broker.kill()
    assert "stop requested while starting" in broker.log()


@pytest.mark.slow
def test_restart_keeps_the_messages(daemon: Daemon) -> None:
    first = daemon.start()
    with Producer("kept", "127.0.0.1", daemon.port) as producer:
        producer.publish("survives a restart")

    restarted = daemon.server("restart")

    assert restarted.returncode == 0, restarted.stderr
    assert "stopped" in restarted.stdout and "started" in restarted.stdout
    assert daemon.pid() != first and not process_alive(first)
    with Consumer("kept", "default", "127.0.0.1", daemon.port) as consumer:
        message = consumer.fetch(timeout=5)
    assert message is not None and message.body == b"survives a restart"


@pytest.mark.slow
def test_the_old_python_m_bbmq_server_way_still_works(daemon: Daemon) -> None:
    started = daemon.server("start", module="bbmq.server")
    assert started.returncode == 0, started.stderr
    assert "bbmq started" in started.stdout, "bbmq/server.py needs its __main__ block"

    status = daemon.server("status", module="bbmq.server")

    assert status.returncode == 0, status.stderr
    assert f"running, pid {daemon.pid()}" in status.stdout
    stopped = daemon.server("stop", module="bbmq.server")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert daemon.server("status", module="bbmq.server").returncode == 3
