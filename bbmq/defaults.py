"""The defaults that more than one part of bbmq must agree on, each defined once.

This module sits at the bottom of the import graph: it imports nothing from
bbmq, and the protocol, the core, the server, the clients and the CLI all
import from it.
"""

from __future__ import annotations

from typing import Final

#: Where a broker listens, and where clients look for one, unless told otherwise.
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 15333
#: The dashboard, its JSON API and the Prometheus metrics, on the broker's host.
DEFAULT_HTTP_PORT: Final = 15334
#: A topic's dead letters go to the topic of its name plus this suffix.
DLQ_SUFFIX: Final = ".dlq"


def lease_topic(topic: str) -> str:
    """The topic whose cluster lease covers ``topic``: the topic itself, or for a dead-letter
    topic (``<t>.dlq``) its parent ``<t>``.

    A topic's dead letters are written in the same transaction as the acks that retire the
    originals, so the broker serving ``<t>`` must be able to write ``<t>.dlq`` under the
    same fence: the dead-letter topic travels with its parent and has no lease of its own
    (the broker core, the store thread's fencing and the membership all use this rule).
    """
    while topic.endswith(DLQ_SUFFIX) and len(topic) > len(DLQ_SUFFIX):
        topic = topic[:-len(DLQ_SUFFIX)]
    return topic
