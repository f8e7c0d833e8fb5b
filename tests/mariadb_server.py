"""A throwaway MariaDB server that tests may stop and start at will.

Outage tests cannot stop the shared database, so this starts a private
``mariadbd``: its own data directory (made by ``mariadb-install-db``), its own
port on 127.0.0.1, its own socket and temporary directory (a shared /tmp lets
parallel test runs trip over each other), running as the current user.  stop()
and start() keep the data directory and the port, so a client that
reconnects by itself finds the same database again.  Every wait polls a
condition under a deadline; nothing relies on a fixed sleep.

Use it as ``with throwaway_mariadb() as server: ... server.url ...``.  Where
MariaDB is not installed the test skips, or fails on CI (see mysql_support).
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pymysql

from .mysql_support import missing

SERVER_CANDIDATES = ("/usr/sbin/mariadbd", "mariadbd", "/usr/sbin/mysqld", "mysqld")
INSTALL_CANDIDATES = ("mariadb-install-db", "mysql_install_db")
DATABASE = "bbmq_test"
#: Between two looks at a condition we are waiting for.
POLL_S = 0.05


def _find(candidates: tuple[str, ...]) -> str | None:
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class MariaDBServer:
    """One private server in ``base_dir``; see the module docstring."""

    def __init__(self, base_dir: Path, server: str, install: str) -> None:
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.socket = base_dir / "mariadbd.sock"
        self.log = base_dir / "error.log"
        self.port = _free_port()
        self.user = getpass.getuser()
        self._server = server
        self._install = install
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def install(self) -> None:
        """Create the data directory with its system tables."""
        result = subprocess.run(
            [self._install, "--no-defaults", f"--user={self.user}", f"--datadir={self.data_dir}",
             f"--tmpdir={self.base_dir}", "--auth-root-authentication-method=normal",
             "--skip-test-db"],
            capture_output=True, check=False, timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{self._install} failed ({result.returncode}):\n"
                + (result.stdout + result.stderr).decode(errors="replace")[-2000:]
            )

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server and wait until it accepts root; create the test database."""
        if self.running:
            raise RuntimeError("server already running")
        self._process = subprocess.Popen(
            [self._server, "--no-defaults", f"--user={self.user}",
             f"--datadir={self.data_dir}", f"--tmpdir={self.base_dir}", f"--socket={self.socket}",
             f"--pid-file={self.base_dir / 'mariadbd.pid'}", f"--log-error={self.log}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
             "--innodb-buffer-pool-size=32M"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root",
                                       connect_timeout=1, autocommit=True)
            except pymysql.err.OperationalError as error:
                self._wait_step(deadline, f"to accept connections (last error: {error})")
                continue
            try:
                with conn.cursor() as cursor:
                    cursor.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
            finally:
                conn.close()
            return

    def _wait_step(self, deadline: float, what: str) -> None:
        """Wait a moment (on the process, so its death ends the wait at once)."""
        assert self._process is not None
        try:
            self._process.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise TimeoutError(f"MariaDB did not manage {what}:\n{self.log_tail()}") from None
        else:
            raise RuntimeError(
                f"mariadbd exited with {self._process.returncode}:\n{self.log_tail()}"
            )

    def stop(self, *, kill: bool = False, timeout_s: float = 60.0) -> None:
        """Shut down (SIGTERM), or crash it (``kill=True``); return once the port is closed."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        deadline = time.monotonic() + timeout_s
        while _port_answers(self.port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {self.port} still answers after mariadbd exited")
            # Something else (a lingering child) still holds the port; look again.
            time.sleep(POLL_S)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no error log)"


@contextmanager
def throwaway_mariadb() -> Iterator[MariaDBServer]:
    """A started server on a fresh data directory, removed afterwards.

    Skips the test (fails it on CI) when MariaDB is not installed.
    """
    server_program = _find(SERVER_CANDIDATES)
    install_program = _find(INSTALL_CANDIDATES)
    if server_program is None or install_program is None:
        missing(
            "MariaDB server programs not found (need mariadbd and mariadb-install-db; "
            "e.g. apt-get install mariadb-server)"
        )
    # Not pytest's tmp_path: the socket path must stay under ~100 characters.
    base_dir = Path(tempfile.mkdtemp(prefix="bbmq-mariadb-"))
    server = MariaDBServer(base_dir, server_program, install_program)
    try:
        server.install()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base_dir, ignore_errors=True)
