"""``bbmq server status``: is a broker running, and what does it say about itself.

Whether it runs is the pidfile's lock (:mod:`bbmq.pidfile`); what it says is
the admin ``STATS`` answer, asked over the same address, TLS and token the
broker was configured with.
"""

from __future__ import annotations

import ssl
from typing import Any

from bbmq.admin import format_duration, stats_table
from bbmq.auth import Authorizer
from bbmq.client import BrokerError, CannotConnect
from bbmq.client.admin import Admin
from bbmq.config import Config
from bbmq.pidfile import probe


def daemon_status(config: Config, timeout: float) -> tuple[int, dict[str, Any]]:
    """(LSB exit code, facts): 0 running, 1 dead with a pidfile left, 3 not running."""
    state = probe(config.pid_path)
    facts: dict[str, Any] = {"running": state.running, "pid": state.pid,
                             "pid_file": str(config.pid_path), "log_file": str(config.log_path)}
    if not state.running:
        return (1 if state.pidfile_exists else 3), facts
    host, port = _client_host(config.host), config.port
    try:
        with Admin(host, port, tls=_status_tls(config), timeout=timeout,
                   token=Authorizer.parse(config.auth_tokens).admin_token()) as admin:
            facts["stats"] = admin.stats()
    except BrokerError as error:
        facts["answering"] = False
        facts["listening"] = not isinstance(error, CannotConnect)
        facts["address"] = f"{host}:{port}"
        facts["error"] = error.text
    else:
        facts["answering"] = True
    return 0, facts


def _status_tls(config: Config) -> bool | ssl.SSLContext:
    """For a TLS broker: trust exactly its own certificate (whatever names it carries)."""
    if not config.tls_cert:
        return False
    context = ssl.create_default_context(cafile=config.tls_cert)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = False  # pinned to the certificate itself
    return context


def print_status(code: int, facts: dict[str, Any]) -> None:
    if code == 3:
        print(f"bbmq is not running (no broker holds {facts['pid_file']}); 'bbmq server start' "
              "starts one. A broker started with another --data-dir or --pid-file is not "
              "seen here: give the same options as to start")
        return
    if code == 1:
        print(f"bbmq is dead but pidfile {facts['pid_file']} exists (pid {facts['pid']} is "
              "gone); 'bbmq server start' replaces it")
        return
    if not facts["answering"] and not facts["listening"]:
        print(f"bbmq is running, pid {facts['pid']}, but nothing accepts connections at "
              f"{facts['address']}: it may still be starting (recovering its store; see "
              f"{facts['log_file']}), or it listens elsewhere (give the same --host, --port or "
              "--config as to start)")
        return
    if not facts["answering"]:
        print(f"bbmq is running, pid {facts['pid']}, but does not answer at {facts['address']}: "
              f"{facts['error']}; see {facts['log_file']}")
        return
    stats = facts["stats"]
    server = stats.get("server", {})
    store = server.get("store", "?") + ("" if server.get("store_available", True)
                                        else " (UNAVAILABLE: see the log)")
    print(f"bbmq is running, pid {facts['pid']}, up {format_duration(server.get('uptime_s', 0))}")
    print(f"  address      {server.get('address')}")
    print(f"  store        {store}")
    print(f"  connections  {server.get('connections')}")
    print(f"  log          {server.get('log') or facts['log_file']}")
    print(stats_table(stats))


def _client_host(host: str) -> str:
    """Where to reach a broker listening on ``host`` from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
