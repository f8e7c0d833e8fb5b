"""Is the broker at an address gone?  One TCP connect, told apart into three answers.

Fast failover rests on this: a lease owner whose advertised port REFUSES a
connection has no process listening (it crashed, or was killed), so its lease
may be taken at once; fencing keeps that safe even if the probe is wrong.  A
connect that times out proves nothing (a paused process, a cut-off network
still hold the port open, or a firewall drops packets): such an owner keeps its
lease until it expires.
"""

from __future__ import annotations

import enum
import errno
import socket
from typing import Final

#: How long a connect may take before the owner counts as "not known to be gone".
DEFAULT_PROBE_TIMEOUT_S: Final = 0.3


class ProbeResult(enum.Enum):
    #: Nothing listens there: the owner's process is gone.
    REFUSED = "refused"
    #: Something listens: the owner is alive (or its port was reused; fencing decides then).
    ACCEPTED = "accepted"
    #: No answer in time, or an error that is not a refusal (unreachable, unknown host).
    NO_ANSWER = "no answer"


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) as a (host, port) pair; ValueError if it is not one."""
    host, separator, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not separator or not host or not port.isdigit():
        raise ValueError(f"not a HOST:PORT address: {address!r}")
    return host, int(port)


def probe(address: str, timeout_s: float = DEFAULT_PROBE_TIMEOUT_S) -> ProbeResult:
    """Try one TCP connect to ``address`` and close it at once."""
    try:
        host, port = split_address(address)
    except ValueError:
        return ProbeResult.NO_ANSWER
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return ProbeResult.ACCEPTED
    except ConnectionRefusedError:
        return ProbeResult.REFUSED
    except OSError as error:
        # create_connection raises the last address's error; a refusal may arrive wrapped.
        if error.errno == errno.ECONNREFUSED:
            return ProbeResult.REFUSED
        return ProbeResult.NO_ANSWER
