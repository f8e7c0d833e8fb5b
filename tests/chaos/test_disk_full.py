"""The SQLite store's disk fills up during a publish storm, then space comes back.

The data directory is a small tmpfs of its own, nearly filled by a ballast file.
While it is full, publishes must fail fast with STORE_UNAVAILABLE saying the disk
is full (and must not be acknowledged); once the ballast is deleted, the same
broker process must accept publishes again, without a restart; and every
acknowledged message must be consumed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bbmq.testing import BrokerProcess, wait_for

from ..mysql_support import missing
from .harness import drain, long_run, missing_acked, percentile, report, storm, wait_summary

pytestmark = pytest.mark.slow

TOPIC = "chaos.disk-full"
DISK_BYTES = 16 * 1024 * 1024
#: Room left beside the ballast: enough to start the broker, soon full under the storm.
ROOM_BYTES = 768 * 1024
#: A publish refused for a full disk must be answered within this.
FAIL_FAST_S = 2.0
#: Refusals to collect while full (the long run stays full for much longer).
REFUSALS_WHILE_FULL = 5000 if long_run() else 300


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES mounted at tmp_path/disk (needs root: mount(2))."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        missing("the full-disk test mounts a tmpfs: run it as root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs",
                             str(mount_point)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        missing(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A ballast file taking all of ``disk`` but ``leave`` bytes."""
    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free
    with ballast.open("wb") as out:
        out.write(b"\0" * max(0, free - leave))
    return ballast


@pytest.mark.timeout(600)
def test_full_disk_fails_publishes_fast_and_recovers_without_restart(small_disk: Path) -> None:
    data_dir = small_disk / "data"
    broker = BrokerProcess(data_dir).start()  # the log is beside the tmpfs, not on it
    pid = broker.pid
    try:
        ballast = fill(small_disk, ROOM_BYTES)
        with storm(broker.port, TOPIC, timeout_s=30, body_size=1000) as publishers:
            wait_for(lambda: publishers.refused_count() > 0, "the disk to fill up", 120)
            acked_before_full = publishers.acked_count()
            wait_for(lambda: publishers.refused_count() >= REFUSALS_WHILE_FULL,
                     f"{REFUSALS_WHILE_FULL} refusals while the disk is full", 300)
            ballast.unlink()  # space is back
            floor = publishers.acked_count() + 200
            wait_for(lambda: publishers.acked_count() >= floor,
                     "publishes to be acknowledged again once space is free", 60)
        figures = publishers.figures
        assert broker.process is not None and broker.process.poll() is None, (
            "the broker died of the full disk:\n" + broker.log()[-3000:])
        assert broker.pid == pid
        consumed = drain(broker.port, TOPIC)
        assert broker.stop() == 0
    finally:
        broker.kill()
    lost = missing_acked(figures, consumed)
    refused_worst = max(figures.refused_waits_s, default=0.0)
    report("full disk (SQLite on a 16 MiB tmpfs)", acked=len(figures.acked),
           acked_before_full=acked_before_full, refused=dict(figures.refusals),
           consumed=len(consumed), lost=len(lost),
           refused_p99_ms=1000 * percentile(figures.refused_waits_s, 0.99),
           refused_worst_s=refused_worst, **wait_summary(figures.waits_s),
           error=repr(figures.error_texts.get("STORE_UNAVAILABLE")))
    assert set(figures.refusals) == {"STORE_UNAVAILABLE"}, figures.error_texts
    text = figures.error_texts["STORE_UNAVAILABLE"]
    assert "full" in text and "publish it again" in text, text
    assert refused_worst <= FAIL_FAST_S, f"a refused publish waited {refused_worst:.2f} s"
    assert lost == [], f"{len(lost)} acknowledged messages missing, e.g. {lost[:5]}"
