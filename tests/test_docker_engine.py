"""The image and the compose stack, run for real on a Docker engine.

Images cannot be pulled here, so every image is built on a local base:
``.ci/docker-engine`` starts dockerd and makes that base from Debian's mirror with
debootstrap (Python 3.11 and pip, like the official image the Dockerfile defaults
to), and MariaDB is Debian's mariadb-server on the same base
(tests/docker/mariadb/). Where dockerd is installed and we are root, the fixture
runs that script itself; elsewhere the tests skip, and on CI (``CI=true``) they fail.

``BBMQ_DOCKER_MESSAGES`` (default 300) sets how many messages go through each test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from bbmq.client import Consumer, Producer
from bbmq.store.mysql import DEFAULT_TABLE_PREFIX
from bbmq.testing import answers_ping, free_port, wait_for

from .chaos.harness import acked_at_least, drain, missing_acked, storm
from .mysql_support import in_ci, missing

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ENGINE_SCRIPT = REPO / ".ci" / "docker-engine"
COMPOSE_OVERRIDE = REPO / "tests" / "docker" / "compose.local-base.yml"
CONTAINER_PORT = "15333/tcp"
MESSAGES = int(os.environ.get("BBMQ_DOCKER_MESSAGES") or 300)
#: The image's HEALTHCHECK runs every 15 s: healthy takes up to about that long.
HEALTHY_TIMEOUT_S = 90.0


def docker(*args: str, timeout: float = 600, check: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True,
                            timeout=timeout, check=False, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return result


def _engine_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=60, check=False).returncode == 0


@pytest.fixture(scope="module")
def base_image() -> str:
    """The local base image's name; starts the engine and builds the base if need be."""
    wanted = os.environ.get("BBMQ_DOCKER_BASE_IMAGE") or "bbmq-ci/python-base:bookworm"
    have_base = _engine_answers() and subprocess.run(
        ["docker", "image", "inspect", wanted], capture_output=True, timeout=60,
        check=False).returncode == 0
    if not have_base:
        if os.geteuid() != 0 and not in_ci():
            missing("no Docker engine with the local base image; run .ci/docker-engine as root")
        result = subprocess.run([str(ENGINE_SCRIPT)], capture_output=True, text=True,
                                timeout=1800, check=False)
        if result.returncode != 0:
            missing(f".ci/docker-engine could not start dockerd or build the base image:\n"
                    f"{result.stderr[-3000:]}")
        wanted = result.stdout.strip().splitlines()[-1]
    return wanted


@pytest.fixture(scope="module")
def image(base_image: str) -> Iterator[str]:
    """The project's Dockerfile built on the local base."""
    tag = f"bbmq:test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    docker("build", "--network", "host", "--build-arg", f"BASE_IMAGE={base_image}",
           "-t", tag, str(REPO))
    print(f"docker build of the bbmq image: {time.monotonic() - started:.1f} s")
    yield tag
    docker("image", "rm", "-f", tag, check=False)


def inspect(container: str) -> dict[str, object]:
    [info] = json.loads(docker("inspect", container).stdout)
    assert isinstance(info, dict)
    return info


def health(container: str) -> str:
    state = inspect(container)["State"]
    assert isinstance(state, dict)
    if not state.get("Running"):
        logs = docker("logs", "--tail", "40", container, check=False)
        raise AssertionError(f"{container} stopped ({state.get('Status')}):\n"
                             f"{logs.stdout}{logs.stderr}")
    return str((state.get("Health") or {}).get("Status"))


def mapped_port(container: str) -> int:
    """The host port on 127.0.0.1 that the container's 15333 is published on."""
    output = docker("port", container, CONTAINER_PORT).stdout
    return int(output.splitlines()[0].rsplit(":", 1)[1])


def run_broker(image: str, name: str, volume: str) -> int:
    docker("run", "-d", "--name", name, "-p", f"127.0.0.1::{CONTAINER_PORT}",
           "-v", f"{volume}:/data", image)
    port = mapped_port(name)
    wait_for(lambda: answers_ping(port), f"{name} to answer PING on port {port}", 60,
             interval=0.2)
    return port


def consume(port: int, topic: str, count: int, *, rest: bool = False) -> list[bytes]:
    """``count`` messages of ``topic``, acked as they come; ``rest``: and no more."""
    bodies: list[bytes] = []
    with Consumer(topic, port=port, timeout=30) as consumer:
        for _ in range(count):
            message = consumer.fetch(timeout=10)
            assert message is not None, f"only {len(bodies)} of {count} messages came"
            bodies.append(message.body)
            consumer.ack(message)
        if rest:
            assert consumer.fetch(timeout=0.5) is None, "more messages than were published"
    return bodies


def stop_and_exit_code(container: str) -> tuple[int, float]:
    """``docker stop`` (SIGTERM, then SIGKILL after 30 s): the exit code and the time taken."""
    started = time.monotonic()
    docker("stop", "-t", "30", container)
    state = inspect(container)["State"]
    assert isinstance(state, dict)
    return int(state["ExitCode"]), time.monotonic() - started


def test_image_serves_turns_healthy_stops_cleanly_and_keeps_messages_on_its_volume(
    image: str,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    volume, first, second = (f"bbmq-test-{suffix}-data", f"bbmq-test-{suffix}-a",
                             f"bbmq-test-{suffix}-b")
    bodies = [b"message %d" % n for n in range(MESSAGES)]
    docker("volume", "create", volume)
    try:
        started = time.monotonic()
        port = run_broker(image, first, volume)
        with Producer("docker.test", port=port) as producer:
            producer.publish_many(bodies)
        half = MESSAGES // 2
        assert consume(port, "docker.test", half) == bodies[:half]
        wait_for(lambda: health(first) == "healthy", f"{first} to turn healthy",
                 HEALTHY_TIMEOUT_S, interval=0.5)
        healthy_s = time.monotonic() - started
        # Stopped during a publish storm: the broker drains (every publish it took is
        # stored and answered), says goodbye to the connections and exits 0.
        with storm(port, "docker.storm", threads=2, timeout_s=30) as publishers:
            wait_for(partial(acked_at_least, publishers, 100), "the storm to get going", 60)
            exit_code, stop_s = stop_and_exit_code(first)
        logs = docker("logs", first).stderr
        assert exit_code == 0, f"the broker exited with {exit_code} on docker stop:\n{logs}"
        assert re.search(r"shutting down: [1-9]\d* connections", logs), logs
        assert logs.rstrip().endswith("stopped"), logs
        assert stop_s < 25, f"docker stop took {stop_s:.1f} s: did SIGTERM reach the broker?"

        # The same container started again, then a new one on the same volume.
        docker("start", first)
        port = mapped_port(first)
        wait_for(lambda: answers_ping(port), "the restarted container to answer", 60,
                 interval=0.2)
        quarter = (MESSAGES - half) // 2
        assert consume(port, "docker.test", quarter) == bodies[half:half + quarter]
        stored = drain(port, "docker.storm")
        lost = missing_acked(publishers.figures, stored)
        assert lost == [], f"{len(lost)} publishes acked before docker stop are missing"
        exit_code, _ = stop_and_exit_code(first)
        assert exit_code == 0
        docker("rm", first)
        port = run_broker(image, second, volume)
        assert consume(port, "docker.test", MESSAGES - half - quarter,
                       rest=True) == bodies[half + quarter:]
        print(f"docker image: healthy after {healthy_s:.1f} s, docker stop during a storm "
              f"took {stop_s:.1f} s ({len(publishers.figures.acked)} acked, 0 lost), "
              f"{MESSAGES} messages through the mapped port")
    finally:
        docker("rm", "-f", first, second, check=False)
        docker("volume", "rm", "-f", volume, check=False)


def compose_command() -> list[str]:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) and subprocess.run(
                [*command, "version"], capture_output=True, timeout=60,
                check=False).returncode == 0:
            return command
    missing("no Compose client (docker compose or docker-compose); .ci/docker-engine "
            "installs docker-compose")


def test_compose_brings_up_bbmq_storing_into_mariadb(base_image: str) -> None:
    """docker-compose.yml as it is, its images built on the local base (the override file
    changes only where images come from): bbmq waits for MariaDB, answers on the
    published port, the compose producer tool publishes, the rows are in MariaDB, the
    messages come back through the port after bbmq restarts, and it stops with 0."""
    project = f"bbmqtest{uuid.uuid4().hex[:8]}"
    host_port = free_port()
    env = {**os.environ, "BBMQ_BASE_IMAGE": base_image, "BBMQ_HOST_PORT": str(host_port),
           "BBMQ_HTTP_HOST_PORT": str(free_port())}  # the dashboard's, off the default too
    compose = [*compose_command(), "-f", "docker-compose.yml", "-f", str(COMPOSE_OVERRIDE),
               "-p", project]

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*compose, *args], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=timeout, check=False)
        assert result.returncode == 0, (
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-2000:]}"
            f"{result.stderr[-4000:]}")
        return result

    def container(service: str) -> str:
        return run("ps", "-q", service).stdout.strip()

    def messages_in_mariadb() -> int:
        query = (f"SELECT COUNT(*) FROM {DEFAULT_TABLE_PREFIX}messages "
                 "WHERE topic = 'compose.test'")
        output = run("exec", "-T", "mysql", "mariadb", "-N", "-ubbmq", "-pbbmq", "bbmq",
                     "-e", query).stdout
        return int(output.split()[-1])

    bodies = [f"compose {n}" for n in range(MESSAGES)]
    started = time.monotonic()
    try:
        run("up", "-d", "--build", timeout=1200)
        wait_for(lambda: answers_ping(host_port), "bbmq to answer on the published port", 120,
                 interval=0.2)
        up_s = time.monotonic() - started
        wait_for(lambda: health(container("bbmq")) == "healthy", "bbmq to turn healthy",
                 HEALTHY_TIMEOUT_S, interval=0.5)
        # The compose file's producer tool, on the stack's network, messages as arguments.
        produced = run("run", "--rm", "-T", "producer", "compose.test", *bodies[:3]).stdout
        assert len(produced.split()) == 3, produced
        with Producer("compose.test", port=host_port) as producer:
            producer.publish_many(bodies[3:])
        assert messages_in_mariadb() == MESSAGES

        run("restart", "bbmq")
        wait_for(lambda: answers_ping(host_port), "bbmq to answer after its restart", 120,
                 interval=0.2)
        received = consume(host_port, "compose.test", MESSAGES, rest=True)
        assert [body.decode() for body in received] == bodies

        broker = container("bbmq")
        run("stop", "bbmq")
        state = inspect(broker)["State"]
        assert isinstance(state, dict)
        assert state["ExitCode"] == 0, docker("logs", broker).stderr
        print(f"compose: bbmq answering {up_s:.1f} s after up, {MESSAGES} messages stored "
              f"in MariaDB and consumed after a restart")
    finally:
        subprocess.run([*compose, "down", "-v", "--remove-orphans"], cwd=REPO, env=env,
                       capture_output=True, timeout=300, check=False)
