"""The README's examples, run as a new user would run them, against a real broker.

The Python blocks run twice (a user tries an example again), each in its own
interpreter; then the administration block runs, command by command, against
the broker the examples filled.  An example that rots or hangs fails here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bbmq.testing import BrokerController, clean_environment

README = Path(__file__).resolve().parent.parent / "README.md"
#: Long enough for any example on a loaded machine; an example that waits for ever fails.
EXAMPLE_TIMEOUT_S = 60


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def admin_commands() -> list[list[str]]:
    """The indented ``bbmq …`` lines of 'Watching and administering it', comments dropped."""
    section = README.read_text().split("## Watching and administering it", 1)[1].split("\n## ")[0]
    return [shlex.split(line.partition("#")[0])[1:]
            for line in section.splitlines() if line.startswith("    bbmq ")]


@pytest.fixture
def readme_broker(tmp_path: Path) -> Iterator[BrokerController]:
    with BrokerController(data_dir=tmp_path / "data") as broker:
        yield broker


def _run(argv: list[str], port: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**clean_environment(), "BBMQ_PORT": str(port)}
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=EXAMPLE_TIMEOUT_S, check=False)


def test_the_readme_has_the_examples_this_file_runs() -> None:
    assert len(python_blocks()) == 2
    assert ["dlq", "list", "orders"] in admin_commands()
    assert len(admin_commands()) >= 8


@pytest.mark.slow
def test_the_python_examples_run_and_run_again(readme_broker: BrokerController,
                                                tmp_path: Path) -> None:
    stream_example, run_example = python_blocks()
    for attempt in (1, 2):  # the second run is where a group made too late used to hang
        streamed = _run([sys.executable, "-c", stream_example], readme_broker.port, tmp_path)
        assert streamed.returncode == 0, (attempt, streamed.stderr)
        printed = streamed.stdout.splitlines()
        assert printed[-1].endswith("b'stop'"), (attempt, printed)
        assert any(line.endswith("b'a'") for line in printed), (attempt, printed)
        ran = _run([sys.executable, "-c", run_example], readme_broker.port, tmp_path)
        assert ran.returncode == 0, (attempt, ran.stderr)
        assert "handled b'done'" in ran.stdout, (attempt, ran.stdout)  # lines of 8 threads


@pytest.mark.slow
def test_the_administration_commands_run(readme_broker: BrokerController,
                                         tmp_path: Path) -> None:
    stream_example, _ = python_blocks()
    assert _run([sys.executable, "-c", stream_example], readme_broker.port,
                tmp_path).returncode == 0
    for command in admin_commands():
        result = _run([sys.executable, "-m", "bbmq", *command], readme_broker.port, tmp_path)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, command
