"""docker-compose.cluster.yml on a real Docker engine: three brokers and MariaDB come up,
a cluster client publishes through the published ports, ``bbmq cluster status`` inside a
container sees three brokers, the topic's owner is killed, publishing goes on, and every
message comes back.  Images are built on the local base as in tests/test_docker_engine.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from bbmq.client import Consumer, Producer
from bbmq.testing import answers_ping, wait_for

from ..test_docker_engine import (  # noqa: F401 (base_image is a fixture)
    MESSAGES,
    REPO,
    base_image,
    compose_command,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

OVERRIDE = REPO / "tests" / "docker" / "compose.cluster.local-base.yml"
PORTS = (15341, 15342, 15343)
BROKERS = [f"127.0.0.1:{port}" for port in PORTS]
TOPIC = "compose.cluster"


@pytest.mark.timeout(1800)
def test_the_cluster_compose_file_serves_and_survives_a_killed_broker(
    base_image: str,  # noqa: F811 (the fixture imported above)
) -> None:
    project = f"bbmqcluster{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BBMQ_BASE_IMAGE": base_image}
    compose = [*compose_command(), "-f", "docker-compose.cluster.yml", "-f", str(OVERRIDE),
               "-p", project]

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*compose, *args], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=timeout, check=False)
        assert result.returncode == 0, (
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-2000:]}"
            f"{result.stderr[-4000:]}")
        return result

    bodies = [b"cluster %d" % n for n in range(MESSAGES)]
    try:
        run("up", "-d", "--build", timeout=1200)
        for port in PORTS:
            wait_for(lambda port=port: answers_ping(port), f"a broker on port {port}", 180,
                     interval=0.2)
        with Producer(TOPIC, brokers=BROKERS, timeout=10, retry_for=60) as producer:
            producer.publish_many(bodies[:MESSAGES // 2])
            status = json.loads(run("exec", "-T", "bbmq1", "bbmq", "cluster", "status",
                                    "--json").stdout)
            assert len(status["brokers"]) == 3, status
            [lease] = [lease for lease in status["leases"] if lease["topic"] == TOPIC]
            owner = next(b["address"] for b in status["brokers"] if b["id"] == lease["owner"])
            run("kill", f"bbmq{BROKERS.index(owner) + 1}")
            producer.publish_many(bodies[MESSAGES // 2:])  # to the owner that takes over
        received: list[bytes] = []
        with Consumer(TOPIC, brokers=BROKERS, timeout=30) as consumer:
            while len(received) < MESSAGES and (message := consumer.fetch(timeout=30)):
                received.append(message.body)
                consumer.ack(message)
        assert sorted(set(received)) == sorted(bodies)
    finally:
        subprocess.run([*compose, "down", "-v", "--remove-orphans"], cwd=REPO, env=env,
                       capture_output=True, timeout=300, check=False)
