"""The rules of bbmq's shape that a machine can check, read from the source with ``ast``.

Every import counts: at module level, inside functions (the lazy ones), under
``if TYPE_CHECKING:`` and in ``if __name__ == "__main__":`` blocks, since each
is a dependency a reader has to follow.  The rules: imports never go round in
a circle; the store never reaches up into the broker; the protocol and the
defaults stand on nothing above them; and no module grows past what one can
read in a sitting.  Last, the typed Config and the SETTINGS that make the
flags describe the same settings.
"""

from __future__ import annotations

import ast
import typing
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import pytest

import bbmq
from bbmq.config import SETTINGS, Config

PACKAGE_DIR: Final = Path(bbmq.__file__).resolve().parent
MAX_LINES: Final = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Final = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _known(name: str) -> str | None:
    """The bbmq module that importing ``name`` loads (a name inside it: the module)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported(module: str, tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{module}: bbmq imports absolutely (from bbmq...)"
            base = node.module or ""
            # "from bbmq import protocol" imports the module bbmq.protocol.
            names.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                         for alias in node.names)
    return {known for name in names if (known := _known(name)) not in (None, module)}


IMPORTS: Final = {module: _imported(module, ast.parse(path.read_text(), str(path)))
                  for module, path in MODULES.items()}


def _cycle_through(module: str) -> list[str] | None:
    """The shortest import path from ``module`` back to itself, if there is one."""
    came_from: dict[str, str] = {}
    queue = deque([module])
    while queue:
        current = queue.popleft()
        for target in sorted(IMPORTS[current]):
            if target == module:
                path = [current]
                while path[-1] != module:
                    path.append(came_from[path[-1]])
                return [*reversed(path), module]
            if target not in came_from:
                came_from[target] = current
                queue.append(target)
    return None


def _known_offenders(offenders: dict[str, str], candidates: Iterable[str]) -> list[Any]:
    """One parameter per candidate; those the refactor has not reached yet are strict xfails,
    so each xfail has to go as soon as its module is fixed."""
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=offenders[name]))
            if name in offenders else name for name in candidates]


#: Modules still over MAX_LINES: their split is another part of issue 12 ("reshape").
TOO_LONG: Final[dict[str, str]] = {}


def test_the_import_graph_is_read() -> None:
    """The checks below look at something: the graph holds imports we know are there."""
    assert "bbmq.store.base" in IMPORTS["bbmq.store.worker"]
    assert "bbmq.protocol" in IMPORTS["bbmq.core.broker"]  # from bbmq import protocol
    assert "bbmq.core" in IMPORTS["bbmq.metrics"]  # from bbmq.core import BrokerSnapshot
    assert "bbmq.metrics" in IMPORTS["bbmq.app"]  # inside a function


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_cycle_goes_through(module: str) -> None:
    cycle = _cycle_through(module)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


STORE_MODULES: Final = sorted(name for name in MODULES if name.startswith("bbmq.store"))
#: What the store may stand on besides itself: nothing of the broker above it.
BELOW_THE_STORE: Final = {"bbmq.defaults", "bbmq._version"}


@pytest.mark.parametrize("module", STORE_MODULES)
def test_the_store_imports_nothing_above_it(module: str) -> None:
    """Not the core, the server or the app above all: the store serves them, never the reverse."""
    above = {name for name in IMPORTS[module]
             if not name.startswith("bbmq.store") and name not in BELOW_THE_STORE}
    assert not above, f"{module} imports {sorted(above)}"


@pytest.mark.parametrize("module", sorted(name for name in MODULES
                                          if name.split(".")[:2] == ["bbmq", "protocol"]))
def test_the_protocol_stands_on_the_defaults_only(module: str) -> None:
    """Sans-IO and shared by server and client: nothing of either may leak into it."""
    above = {name for name in IMPORTS[module]
             if name.split(".")[:2] != ["bbmq", "protocol"] and name != "bbmq.defaults"}
    assert not above, f"{module} imports {sorted(above)}"


def test_the_metrics_page_is_handed_what_it_reads() -> None:
    """bbmq.metrics reads the core's snapshot and the sources it is given (MetricsSources),
    never the server or the app that run it."""
    assert not {"bbmq.server", "bbmq.app"} & IMPORTS["bbmq.metrics"]


@pytest.mark.parametrize("module", sorted(name for name in MODULES
                                          if name.startswith("bbmq.dashboard")))
def test_the_dashboard_reads_the_core_through_its_facade_only(module: str) -> None:
    """The HTTP side is handed what it reads (DashboardSources): never the server or the
    app that run it, and of the core only the package's exports (the snapshot types)."""
    reached = {name for name in IMPORTS[module]
               if name in ("bbmq.server", "bbmq.app") or name.startswith("bbmq.core.")}
    assert not reached, f"{module} imports {sorted(reached)}"


def test_the_dashboard_modules_are_checked() -> None:
    assert {"bbmq.dashboard.app", "bbmq.dashboard.api", "bbmq.dashboard.security"} <= set(MODULES)


def test_the_defaults_import_nothing_of_bbmq() -> None:
    assert IMPORTS["bbmq.defaults"] == set()


@pytest.mark.parametrize("module", _known_offenders(TOO_LONG, sorted(MODULES)))
def test_no_module_is_over_the_line_limit(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines (limit {MAX_LINES})"


def test_the_config_has_one_typed_field_per_setting() -> None:
    """SETTINGS makes the flags and the rows of 'bbmq server config'; Config gives them types."""
    types = typing.get_type_hints(Config)
    assert list(types) == [setting.name for setting in SETTINGS] + ["sources"]
    for setting in SETTINGS:
        assert isinstance(setting.default, types[setting.name]), setting.name


#: What bbmq.aio may take from the blocking client: the sans-IO decisions (checked to do
#: no I/O by tests/test_client.py), the connection settings (address, token, TLS choice:
#: no socket), and the channel's two tunables of how bytes are batched, which both
#: transports share.
AIO_MAY_SHARE: Final = {f"bbmq.client.{name}" for name in (
    "arguments", "cluster", "consuming", "errors", "inbox", "message", "publishing", "retry",
    "settings", "channel")}


@pytest.mark.parametrize("module", sorted(name for name in MODULES
                                          if name.split(".")[:2] == ["bbmq", "aio"]))
def test_the_asyncio_client_shares_the_decisions_not_the_blocking_calls(module: str) -> None:
    """bbmq.aio adds the asyncio socket calls and nothing else: a second copy of a decision
    would drift, and the blocking Producer/Consumer would drag threads into the loop."""
    taken = {name for name in IMPORTS[module] if name.startswith("bbmq.client")}
    assert taken <= AIO_MAY_SHARE, f"{module} imports {sorted(taken - AIO_MAY_SHARE)}"
    assert "bbmq.client" not in IMPORTS[module]  # the package itself loads the blocking clients
