"""A three-node MariaDB Galera cluster on loopback, for tests that need a replicated database.

Every node is a private ``mariadbd`` with the galera-4 provider: its own data directory
(``mariadb-install-db``), socket, pid file, and four ports on 127.0.0.1 (SQL, group
communication "gmcast", incremental state transfer "IST", full state transfer "SST").
The first node bootstraps the cluster (``--wsrep-new-cluster``); the others join it and
receive a copy of its data by rsync.  Run as root, the nodes drop to the ``mysql`` user and
their directories belong to it: the rsync state transfer fails ("Permission denied (13)")
when the files it copies belong to root.

``kill(n)`` is ``kill -9`` of one node: the two others keep a quorum (2 of 3) and go on
accepting writes.  Every wait polls a condition under a deadline.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pymysql

from bbmq.testing import free_port

from ..mysql_support import missing

PROVIDER_CANDIDATES = ("/usr/lib/galera/libgalera_smm.so", "/usr/lib/libgalera_smm.so",
                       "/usr/lib64/galera-4/libgalera_smm.so")
SERVER = "/usr/sbin/mariadbd"
INSTALL = "mariadb-install-db"
DATABASE = "bbmq_test"
POLL_S = 0.1
#: Debian packages that provide what this needs (the CI installs them).
PACKAGES = "galera-4 rsync"


@dataclass
class GaleraNode:
    """One member: where it lives and how to reach it."""

    number: int
    base_dir: Path
    port: int
    gmcast_port: int
    ist_port: int
    sst_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log(self) -> Path:
        return self.base_dir / "error.log"

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def connect(self, database: str | None = DATABASE) -> pymysql.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", database=database,
                               connect_timeout=2, read_timeout=10, autocommit=True)

    def status(self, name: str) -> str | None:
        """A ``SHOW STATUS`` value of this node, or None if it does not answer."""
        try:
            conn = self.connect(database=None)
        except pymysql.err.Error:
            return None
        try:
            with conn.cursor() as cursor:
                cursor.execute("SHOW STATUS LIKE %s", (name,))
                row = cursor.fetchone()
                return None if row is None else str(row[1])
        except pymysql.err.Error:
            return None
        finally:
            conn.close()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no error log)"


class GaleraCluster:
    """Three nodes under ``base_dir``; see the module docstring."""

    def __init__(self, base_dir: Path, provider: str, size: int = 3) -> None:
        self.base_dir = base_dir
        self.provider = provider
        self.user = "mysql" if os.geteuid() == 0 else getpass.getuser()
        self.nodes = [
            GaleraNode(n, base_dir / f"node{n}", free_port(), free_port(), free_port(),
                       free_port())
            for n in range(1, size + 1)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def _give_to_user(self, path: Path) -> None:
        if os.geteuid() != 0:
            return
        entry = pwd.getpwnam(self.user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)

    def install(self) -> None:
        """Create every node's data directory with its system tables, owned by the user."""
        self._give_to_user(self.base_dir)
        for node in self.nodes:
            node.base_dir.mkdir()
            self._give_to_user(node.base_dir)
            result = subprocess.run(
                [INSTALL, "--no-defaults", f"--user={self.user}", f"--datadir={node.data_dir}",
                 f"--tmpdir={node.base_dir}", "--auth-root-authentication-method=normal",
                 "--skip-test-db"],
                capture_output=True, check=False, timeout=120,
            )
            if result.returncode != 0:
                raise RuntimeError(f"{INSTALL} failed ({result.returncode}):\n"
                                   + (result.stdout + result.stderr).decode(errors="replace"))
            self._give_to_user(node.base_dir)

    def _arguments(self, node: GaleraNode) -> list[str]:
        members = ",".join(f"127.0.0.1:{n.gmcast_port}" for n in self.nodes)
        options = (f"gmcast.listen_addr=tcp://127.0.0.1:{node.gmcast_port};"
                   f"ist.recv_addr=127.0.0.1:{node.ist_port};gcache.size=32M;"
                   "evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S")
        return [
            SERVER, "--no-defaults", f"--user={self.user}", f"--datadir={node.data_dir}",
            f"--tmpdir={node.base_dir}", f"--socket={node.base_dir / 'mariadbd.sock'}",
            f"--pid-file={node.base_dir / 'mariadbd.pid'}", f"--log-error={node.log}",
            f"--port={node.port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M", "--max-connections=300",
            "--binlog-format=ROW", "--innodb-autoinc-lock-mode=2",
            "--default-storage-engine=InnoDB", "--wsrep-on=ON",
            f"--wsrep-provider={self.provider}", f"--wsrep-cluster-address=gcomm://{members}",
            "--wsrep-cluster-name=bbmq_test", f"--wsrep-node-name=node{node.number}",
            f"--wsrep-node-address=127.0.0.1:{node.gmcast_port}",
            f"--wsrep-provider-options={options}", "--wsrep-sst-method=rsync",
            f"--wsrep-sst-receive-address=127.0.0.1:{node.sst_port}",
        ]

    def _launch(self, node: GaleraNode, *, bootstrap: bool) -> None:
        args = self._arguments(node) + (["--wsrep-new-cluster"] if bootstrap else [])
        node.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait(self, condition: Callable[[], bool], what: str, timeout_s: float) -> None:
        """Poll ``condition()`` until true; a node that exits ends the wait with its log."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None \
                        and node.process.returncode not in (-signal.SIGKILL,):
                    raise RuntimeError(f"galera node{node.number} exited with "
                                       f"{node.process.returncode}:\n{node.log_tail()}")
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- node{n.number}:\n{n.log_tail(1500)}" for n in self.nodes)
                raise TimeoutError(f"galera: timed out after {timeout_s:g} s waiting for "
                                   f"{what}\n{logs}")
            time.sleep(POLL_S)

    def start(self, timeout_s: float = 120.0) -> None:
        """Bootstrap node 1, join the others one by one, wait for a synced cluster of 3."""
        first, *others = self.nodes
        self._launch(first, bootstrap=True)
        self._wait(lambda: first.status("wsrep_ready") == "ON", "node1 to bootstrap", timeout_s)
        conn = first.connect(database=None)
        with conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        for joined, node in enumerate(others, start=2):
            self._launch(node, bootstrap=False)
            self._wait(lambda node=node, size=str(joined):
                       node.status("wsrep_local_state_comment") == "Synced"
                       and first.status("wsrep_cluster_size") == size,
                       f"node{node.number} to join and sync", timeout_s)

    def live_nodes(self) -> list[GaleraNode]:
        return [node for node in self.nodes if node.running]

    def kill(self, number: int) -> None:
        """``kill -9`` node ``number`` (1-based); wait until the others see a cluster without it."""
        node = self.nodes[number - 1]
        assert node.process is not None
        node.process.kill()
        node.process.wait(30)
        node.process = None
        expected = str(len(self.live_nodes()))
        self._wait(lambda: all(n.status("wsrep_cluster_size") == expected
                               and n.status("wsrep_ready") == "ON" for n in self.live_nodes()),
                   f"the surviving nodes to form a cluster of {expected}", 60.0)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a grace period)."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(30)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(30)
            node.process = None


def galera_provider() -> str | None:
    return next((path for path in PROVIDER_CANDIDATES if Path(path).exists()), None)


@contextmanager
def galera_cluster() -> Iterator[GaleraCluster]:
    """A started three-node cluster on fresh data directories, removed afterwards.

    Skips the test (fails it on CI) when MariaDB, galera-4 or rsync is missing.
    """
    provider = galera_provider()
    if provider is None or shutil.which(INSTALL) is None or not Path(SERVER).exists() \
            or shutil.which("rsync") is None:
        missing(f"MariaDB Galera needs mariadbd, {INSTALL} and the packages {PACKAGES} "
                f"(apt-get install -y {PACKAGES})")
    # Not pytest's tmp_path: socket paths must stay short, and the mysql user must reach it.
    base_dir = Path(tempfile.mkdtemp(prefix="bbmq-galera-"))
    base_dir.chmod(0o755)
    cluster = GaleraCluster(base_dir, provider)
    try:
        cluster.install()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(base_dir)
