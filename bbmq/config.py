"""Every server setting, its default and where its value came from, defined once.

A setting's value comes from, in order of precedence: a command-line flag,
a ``BBMQ_<NAME>`` environment variable (an empty one counts as unset), the
TOML file given by ``--config`` (keys as the setting names, spelled like the
flags or with underscores: ``ack-timeout = 30`` or ``ack_timeout = 30``), then
the default.
The CLI builds its flags from :data:`SETTINGS`, so a new setting is one line
there and its typed field in :class:`Config`, and nothing else.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bbmq.auth import Authorizer
from bbmq.defaults import DEFAULT_HOST, DEFAULT_HTTP_PORT, DEFAULT_PORT
from bbmq.store.mysql import redact_url

MIB: Final = 1024 * 1024
#: Every log line: time, level, logger (bbmq.server, bbmq.store ...), message.
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return "BBMQ_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _optional_positive_float(text: str) -> float | None:
    if not text:
        return None
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be > 0 seconds, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a TCP port from 0 to 65535, got {value}")
    return value


def _optional_port(text: str) -> int | None:
    return _port(text) if text else None


def _optional_str(text: str) -> str | None:
    return text or None


def _address(text: str) -> str | None:
    """``host:port`` (``[v6]:port`` for an IPv6 host), as a broker advertises itself."""
    if not text:
        return None
    host, separator, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not separator or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (the address clients reach this broker at), "
                         f"got {text!r}")
    return text


def _auth_tokens(text: str) -> str:
    Authorizer.parse(text)  # refuse a malformed list at start-up, not at the first client
    return text


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("host", DEFAULT_HOST, str, "address to listen on"),
    Setting("port", DEFAULT_PORT, int, "TCP port to listen on"),
    Setting("data_dir", "bbmq-data", str, "directory for the SQLite store, pidfile and log"),
    Setting("store", "", str, "sqlite (default, in the data dir), sqlite:///path.db, "
            "mysql://user:pass@host:3306/db, or memory:// (not durable)", secret=True),
    Setting("store_password", None, _optional_str,
            "password for a mysql:// store, as is (no URL encoding); overrides one in --store",
            secret=True),
    Setting("store_connect_timeout", None, _optional_positive_float,
            "seconds to connect to a mysql:// store (default: the URL's connect_timeout "
            "option, else 2)"),
    Setting("store_io_timeout", None, _optional_positive_float,
            "seconds a mysql:// store may take to answer one read or write before publishes "
            "get STORE_UNAVAILABLE (default: the URL's io_timeout option, else 5)"),
    Setting("max_message_size", MIB, _positive_int, "largest message body in bytes"),
    Setting("ack_timeout", 30.0, _non_negative_float,
            "seconds a delivered message may stay unacked before it is redelivered"),
    Setting("max_attempts", 5, int,
            "deliveries before a message goes to <topic>.dlq (0: retry for ever)"),
    Setting("dead_letter_expired", False, _bool, "send expired (TTL) messages to the DLQ"),
    Setting("retention", 0.0, _non_negative_float,
            "seconds to keep messages in the store after every group acked them"),
    Setting("dedup_window", 86400.0, _non_negative_float,
            "seconds a PUBLISH msgid is remembered for idempotent publish"),
    Setting("max_connections", 10000, _positive_int, "connections beyond this get SERVER_BUSY"),
    Setting("max_queued_bytes", 512 * MIB, _positive_int,
            "memory the queued messages may take (bodies plus ~200 B each) before "
            "publishers get SERVER_BUSY"),
    Setting("max_messages_per_topic", 0, _non_negative_int,
            "messages one topic may hold before its publishers get SERVER_BUSY (0: no limit)"),
    Setting("max_output_bytes", 4 * MIB, _positive_int,
            "unsent bytes per connection before deliveries to it pause"),
    Setting("handshake_timeout", 10.0, _non_negative_float,
            "seconds a new connection has to send its handshake"),
    Setting("idle_timeout", 300.0, _non_negative_float,
            "seconds of silence before a connection is closed (0: never; clients may PING)"),
    Setting("max_batch", 2000, _positive_int, "most messages written in one store transaction"),
    Setting("log_level", "INFO", str, "DEBUG, INFO, WARNING or ERROR"),
    Setting("log_file", None, _optional_str, "log file (default: <data-dir>/bbmq.log when "
            "daemonized, stderr in the foreground)"),
    Setting("pid_file", None, _optional_str, "pidfile (default: <data-dir>/bbmq.pid)"),
    Setting("http_port", DEFAULT_HTTP_PORT, _port,
            "HTTP port of the dashboard, its JSON API (/api/) and Prometheus metrics "
            "(/metrics), on --host (0: off)"),
    Setting("metrics_port", None, _optional_port,
            "the former name of --http-port; used when --http-port is left at its default"),
    Setting("dashboard_read_only", False, _bool,
            "the dashboard shows everything but refuses purge, group delete and DLQ replay"),
    Setting("auth_tokens", "", _auth_tokens,
            "TOKEN:PERMISSIONS:PATTERNS,... e.g. s3cret:publish+subscribe:orders.*|billing "
            "(permissions publish, subscribe, admin); empty: no authentication", secret=True),
    Setting("tls_cert", None, _optional_str, "PEM certificate to serve TLS"),
    Setting("tls_key", None, _optional_str, "PEM private key for --tls-cert"),
    Setting("cluster", False, _bool,
            "serve as one broker of a cluster sharing the mysql:// store: topics are leased, "
            "clients redirected to their owner (docs/CLUSTER.md)"),
    Setting("advertise", None, _address,
            "HOST:PORT clients and the other brokers reach this broker at (default: --host "
            "and the port listened on; required when --host is 0.0.0.0 or ::)"),
    Setting("lease_ttl_ms", 5000, _positive_int,
            "milliseconds a topic lease (and a broker's heartbeat) lasts without a renew; "
            "renewed every third of it"),
)
BY_NAME: Final = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True, slots=True)
class Config:
    """The effective settings, one typed field per :data:`SETTINGS` entry, and where each
    came from (``sources``: flag, env, file or default, by setting name)."""

    host: str
    port: int
    data_dir: str
    store: str
    store_password: str | None
    store_connect_timeout: float | None
    store_io_timeout: float | None
    max_message_size: int
    ack_timeout: float
    max_attempts: int
    dead_letter_expired: bool
    retention: float
    dedup_window: float
    max_connections: int
    max_queued_bytes: int
    max_messages_per_topic: int
    max_output_bytes: int
    handshake_timeout: float
    idle_timeout: float
    max_batch: int
    log_level: str
    log_file: str | None
    pid_file: str | None
    http_port: int
    metrics_port: int | None
    dashboard_read_only: bool
    auth_tokens: str
    tls_cert: str | None
    tls_key: str | None
    cluster: bool
    advertise: str | None
    lease_ttl_ms: int
    sources: Mapping[str, str]

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def effective_http_port(self) -> int:
        """The HTTP port to serve on (0: none): ``--http-port``, unless only its former name
        ``--metrics-port`` was given."""
        if self.metrics_port is not None and self.sources["http_port"] == "default":
            return self.metrics_port
        return self.http_port

    @property
    def uses_mysql(self) -> bool:
        """The store is a MySQL/MariaDB database, which other brokers may share."""
        return self.store.startswith("mysql://")

    def advertised_address(self, port: int) -> str:
        """Where clients and the other brokers reach this broker, once it listens on ``port``
        (``--advertise``, else ``--host`` and that port)."""
        if self.advertise:
            return self.advertise
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    @property
    def pid_path(self) -> Path:
        return Path(self.pid_file or self.data_path / "bbmq.pid").resolve()

    @property
    def log_path(self) -> Path:
        return Path(self.log_file or self.data_path / "bbmq.log").resolve()

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, shown value, source) rows with secrets masked, for ``bbmq server config``."""
        rows = []
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            shown = mask(setting.name, value) if setting.secret else value
            source = self.sources[setting.name]
            if setting.name == "http_port" and shown != self.effective_http_port:
                shown, source = self.effective_http_port, "metrics_port (its former name)"
            rows.append((setting.name, "" if shown is None else str(shown), source))
        return rows


def mask(name: str, value: Any) -> str:
    """A secret setting as it may be shown: URL passwords and tokens replaced by ***."""
    text = "" if value is None else str(value)
    if name == "store":
        return redact_url(text)
    if name == "store_password" and text:
        return "***"
    if name == "auth_tokens" and text:
        return ",".join("***" + entry[entry.find(":"):] for entry in text.split(","))
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per setting; unset flags stay None."""
    parser.add_argument("--config", metavar="FILE", default=os.environ.get("BBMQ_CONFIG"),
                        help="TOML file of settings (env BBMQ_CONFIG)")
    for setting in SETTINGS:
        parser.add_argument(setting.flag, dest=setting.name, default=None,
                            metavar=setting.name.upper(),
                            help=_flag_help(setting))


def _flag_help(setting: Setting) -> str:
    """The help line of a setting's flag: what it does, its default (unless its help says
    it better, as for paths under the data dir) and its environment variable."""
    if "(default" in setting.help or setting.default is None:
        return f"{setting.help} (env {setting.env})"
    return f"{setting.help} (default {setting.default!r}; env {setting.env})"


class ConfigError(Exception):
    """A setting has a value that cannot be used; the message says which and why."""


def _setting_keys(table: Mapping[str, Any], config_file: str | Path) -> dict[str, Any]:
    """A TOML table keyed by setting name: ``ack-timeout`` (as the flag) and ``ack_timeout``
    (as the setting and its variable) both name ``ack_timeout``; one given twice, or a key
    that names no setting, is refused."""
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    unknown = []
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in BY_NAME:
            unknown.append(key)
        elif name in values:
            raise ConfigError(f"{config_file}: {name} is given twice (as {spelled[name]!r} "
                              f"and {key!r}); keep one")
        else:
            values[name], spelled[name] = value, key
    if unknown:
        raise ConfigError(f"unknown setting(s) in {config_file}: {', '.join(sorted(unknown))}; "
                          "the keys are the flags of 'bbmq server run --help' without the "
                          "dashes in front (ack-timeout, or ack_timeout)")
    return values


def load(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
         config_file: str | Path | None = None) -> Config:
    """Resolve every setting from flags, environment, file and defaults, in that order."""
    flags = flags or {}
    environ = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as handle:
                file_values = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read config file {config_file}: {error}") from None
        file_values = _setting_keys(file_values, config_file)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        raw: Any
        if flags.get(setting.name) is not None:
            raw, source = flags[setting.name], "flag " + setting.flag
        elif environ.get(setting.env):  # set but empty counts as unset (compose's ${X:-})
            raw, source = environ[setting.env], "env " + setting.env
        elif setting.name in file_values:
            raw, source = file_values[setting.name], f"file {config_file}"
        else:
            values[setting.name], sources[setting.name] = setting.default, "default"
            continue
        try:
            values[setting.name] = setting.parse(str(raw))
        except ValueError as error:
            raise ConfigError(f"{setting.name} from {source}: {error}") from None
        sources[setting.name] = source
    config = Config(**values, sources=sources)
    check_cluster(config)
    return config


#: Listen addresses that name no one host, so they cannot be advertised to clients.
WILDCARD_HOSTS: Final = ("0.0.0.0", "::", "")


def check_cluster(config: Config) -> None:
    """Refuse cluster settings that cannot work, saying what to pass instead."""
    if not config.cluster:
        return
    if not config.uses_mysql:
        raise ConfigError(f"cluster from {config.sources['cluster']} needs a shared "
                          "mysql://user@host/db store (--store), where the brokers lease "
                          f"their topics; the store is {mask('store', config.store) or 'sqlite'}")
    if config.advertise is None and config.host in WILDCARD_HOSTS:
        raise ConfigError(f"cluster: --host {config.host or '(every address)'} is not an "
                          "address the other brokers and clients can reach; pass --advertise "
                          "HOST:PORT (e.g. this machine's name and --port)")
