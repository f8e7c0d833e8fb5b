"""docker-compose.cluster.yml, checked without a Docker engine: it is valid Compose, and
its three brokers fit together (each advertises the port it listens on, published on the
host; they share one network namespace, so that address means the same to the other
brokers' probes as to the host's clients; no two listen on one port; one store)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..mysql_support import missing
from ..test_docker import (
    _compose_cli,
    _compose_validator,
    _yaml,
    interpolate_tree,
    service_environment,
)

REPO = Path(__file__).resolve().parents[2]
CLUSTER_COMPOSE = REPO / "docker-compose.cluster.yml"
BROKERS = ("bbmq1", "bbmq2", "bbmq3")


def load_cluster_compose() -> dict[str, Any]:
    document = _yaml().safe_load(CLUSTER_COMPOSE.read_text())
    assert isinstance(document, dict)
    return interpolate_tree(document, {})  # type: ignore[no-any-return]


@pytest.mark.slow  # about a second: the specification's schema is large
def test_the_cluster_compose_file_matches_the_compose_specification() -> None:
    errors = sorted(_compose_validator().iter_errors(load_cluster_compose()),
                    key=lambda e: list(e.path))
    assert [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors] == []


def test_the_three_brokers_advertise_what_they_listen_on_and_the_host_reaches() -> None:
    services = load_cluster_compose()["services"]
    published = {str(port).rsplit(":", 1)[-1] for port in services["net"]["ports"]}
    listening: list[str] = []
    for name in BROKERS:
        broker = services[name]
        environment = service_environment(broker)
        assert broker["network_mode"] == "service:net", name
        assert environment["BBMQ_CLUSTER"] == "true"
        assert environment["BBMQ_STORE"].startswith("mysql://") \
            and "@mariadb:3306/" in environment["BBMQ_STORE"]
        port, http_port = environment["BBMQ_PORT"], environment["BBMQ_HTTP_PORT"]
        assert environment["BBMQ_ADVERTISE"] == f"127.0.0.1:{port}", name
        assert {port, http_port} <= published, (name, published)
        listening += [port, http_port]
        assert broker["depends_on"]["mariadb"]["condition"] == "service_healthy"
    assert len(set(listening)) == len(listening), f"two brokers on one port: {listening}"
    brokers = {f"127.0.0.1:{service_environment(services[n])['BBMQ_PORT']}" for n in BROKERS}
    for tool in ("producer", "consumer"):
        environment = service_environment(services[tool])
        assert set(environment["BBMQ_BROKERS"].split(",")) == brokers, tool
        assert services[tool]["network_mode"] == "service:net"


@pytest.mark.slow
def test_docker_compose_config_accepts_the_cluster_file() -> None:
    command = _compose_cli()
    if command is None:
        missing("no Compose client here; .ci/docker-engine installs one")
    result = subprocess.run([*command, "-f", str(CLUSTER_COMPOSE), "config", "-q"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
