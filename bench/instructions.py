"""Instructions the broker executes per message, counted by valgrind: a figure a busy machine
cannot blur.

On a shared 2-core machine the throughput phases of ``python -m bench`` swing by
10-20% between identical runs, which hides a change of a few percent.
Callgrind counts the instructions the broker process executes instead; for
the same code and workload the count repeats within about 0.1%.  One run per
tree and workload: the broker (memory store, so the database is not counted)
runs under ``valgrind --tool=callgrind``, a client from the same tree publishes
N messages with a window of 1,000 (and, in the second workload, consumes and
acks them one by one), and the broker is stopped.  A third run with no
traffic gives the start-up and shutdown cost, which is subtracted.

    python -m bench.instructions                     # this tree
    python -m bench.instructions --tree ../old-tree  # this tree and another, side by side

Prints instructions per message for publish and for consume + ack, per tree.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.systems.base import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]

#: Run in the tree under test, with that tree's client (public API only, so old trees work).
WORKLOAD = """
import sys
from bbmq import Consumer, Producer
port, count, consume = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
with Producer("bench", port=port) as producer:
    producer.publish_many([b"x" * 100] * count, window=1000)
if consume:
    with Consumer("bench", port=port) as consumer:
        for seen, message in enumerate(consumer, 1):
            consumer.ack(message)
            if seen == count:
                break
"""


def count_instructions(tree: Path, messages: int, workload: str) -> int:
    """Instructions the broker of ``tree`` executed for ``workload`` (idle, publish, both)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(tree))
    env = {key: value for key, value in env.items() if not key.startswith("BBMQ_")}
    # The dashboard (on by default) on a port of its own; a tree without it ignores this.
    env["BBMQ_HTTP_PORT"] = str(free_port())
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        broker = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, "-m", "bbmq", "server", "run", "--store", "memory://",
             "--port", str(port), "--data-dir", scratch, "--log-level", "WARNING"],
            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            probe = [sys.executable, "-c",
                     f"from bbmq.client import ping; ping('127.0.0.1', {port}, timeout=2)"]
            wait_until(lambda: subprocess.run(probe, check=False, cwd=tree, env=env,
                                              capture_output=True).returncode == 0,
                       timeout=120, what="the broker under valgrind to answer")
            if workload != "idle":
                subprocess.run([sys.executable, "-c", WORKLOAD, str(port), str(messages),
                                "1" if workload == "both" else "0"],
                               cwd=tree, env=env, check=True, timeout=600)
        finally:
            broker.send_signal(signal.SIGTERM)
            broker.wait(timeout=120)
        totals = re.search(rb"^(?:summary|totals): (\d+)", out.read_bytes(), re.M)
        if totals is None:
            raise RuntimeError(f"no totals in the callgrind output of {tree}")
        return int(totals[1])


def measure(tree: Path, messages: int) -> tuple[float, float]:
    """Instructions per message: (publish, consume + ack)."""
    idle = count_instructions(tree, messages, "idle")
    publish = count_instructions(tree, messages, "publish")
    both = count_instructions(tree, messages, "both")
    return (publish - idle) / messages, (both - publish) / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="another checkout to measure beside this one (repeatable)")
    parser.add_argument("--messages", type=int, default=5000, help="messages per run (5,000)")
    args = parser.parse_args()
    trees = [*args.tree, ROOT]
    print(f"{'tree':<40} {'publish instr/msg':>18} {'consume+ack instr/msg':>22}")
    results = []
    for tree in trees:
        print(f"measuring {tree} ({args.messages} messages, 3 runs under valgrind) ...",
              file=sys.stderr, flush=True)
        results.append(measure(tree.resolve(), args.messages))
        publish, consume = results[-1]
        print(f"{tree!s:<40} {publish:>18,.0f} {consume:>22,.0f}", flush=True)
    if len(results) > 1:
        (base_publish, base_consume), (publish, consume) = results[0], results[-1]
        print(f"{'change, last over first':<40} {publish / base_publish - 1:>+18.1%} "
              f"{consume / base_consume - 1:>+22.1%}")


if __name__ == "__main__":
    main()
