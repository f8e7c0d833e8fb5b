"""Run a measurement in child processes, bounded in time, with a live progress line.

Every measurement runs in forked children rather than in the benchmark's own
process, for three reasons: a producer and a consumer in separate processes
do not share a GIL (one Python client would otherwise throttle the other);
a client that blocks (bbmq's consumer iterator has no timeout) can be killed
at the phase's time limit, so no phase can hang the benchmark; and each run
starts from clean client state.

Children meet at a start line: each calls :meth:`Shared.ready` when its
connections are up, and the parent lets them all go at once.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

_FORK = multiprocessing.get_context("fork")
#: Seconds past the time limit the parent waits for children that stop on their own.
GRACE = 10.0


class Shared:
    """What the parent and the children of one measurement share."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # monotonic; children stop their loops at it
        self.progress = _FORK.Value("q", 0)  # messages done, for the progress line
        self.arrived = _FORK.Value("i", 0)
        self.go = _FORK.Event()

    def ready(self) -> None:
        """Connected: wait until every child is, so timing starts together."""
        with self.arrived.get_lock():
            self.arrived.value += 1
        self.go.wait(max(0.0, self.deadline - time.monotonic()))

    def add(self, count: int) -> None:
        """Count ``count`` more messages done (children add; several may share the line)."""
        with self.progress.get_lock():
            self.progress.value += count

    def reset(self) -> None:
        with self.progress.get_lock():
            self.progress.value = 0


@dataclass
class Outcome:
    """What the children returned (None for one that was killed or failed), and why."""

    results: list[dict[str, Any] | None]
    killed: bool = False
    errors: list[str] = field(default_factory=list)
    progress: int = 0
    seconds: float = 0.0


#: A child's body and its keyword arguments; it is called with ``shared=`` added.
Target = tuple[Callable[..., dict[str, Any]], dict[str, Any]]


def _child(function: Callable[..., dict[str, Any]], kwargs: dict[str, Any], shared: Shared,
           pipe: Connection) -> None:
    try:
        pipe.send(("ok", function(**kwargs, shared=shared)))
    except BaseException as error:
        pipe.send(("error", f"{type(error).__name__}: {error}"))


class Progress:
    """One line per measurement: redrawn in place on a terminal, printed once when done."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.live = sys.stdout.isatty()

    def update(self, done: int) -> None:
        if self.live:
            width = 24
            filled = min(width, width * done // max(1, self.total))
            bar = "#" * filled + "." * (width - filled)
            print(f"\r{self.label} [{bar}] {done:,}/{self.total:,}", end="", flush=True)

    def finish(self, text: str) -> None:
        print(("\r\033[K" if self.live else "") + f"{self.label} ... {text}", flush=True)


def run_children(targets: list[Target], time_limit: float, progress: Progress) -> Outcome:
    """Start one child per target, release them together, wait at most ``time_limit`` s."""
    started = time.monotonic()
    shared = Shared(started + time_limit)
    pipes, processes = [], []
    for function, kwargs in targets:
        receiver, sender = _FORK.Pipe(duplex=False)
        process = _FORK.Process(target=_child, args=(function, kwargs, shared, sender),
                                daemon=True)
        process.start()
        sender.close()
        pipes.append(receiver)
        processes.append(process)
    outcome = Outcome(results=[None] * len(targets))
    pending = set(range(len(targets)))
    while pending:
        if not shared.go.is_set() and shared.arrived.value >= len(targets):
            shared.go.set()
        for index in list(pending):
            if pipes[index].poll():
                try:
                    status, value = pipes[index].recv()
                except EOFError:
                    status, value = "error", "child exited without a result"
                if status == "ok":
                    outcome.results[index] = value
                else:
                    outcome.errors.append(str(value))
                pending.discard(index)
            elif not processes[index].is_alive() and not pipes[index].poll():
                outcome.errors.append(f"child exited with {processes[index].exitcode}")
                pending.discard(index)
        if outcome.errors:
            break  # one side failed: the other would wait for ever
        if time.monotonic() - started > time_limit + GRACE:
            outcome.killed = True
            break
        progress.update(shared.progress.value)
        time.sleep(0.05)
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join(5)
    outcome.progress = shared.progress.value
    outcome.seconds = time.monotonic() - started
    return outcome
