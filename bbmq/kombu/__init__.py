"""bbmq as a kombu transport, so Celery (and any kombu user) can run on bbmq.

``import bbmq.kombu`` registers the ``bbmq://`` scheme with kombu::

    import bbmq.kombu
    from celery import Celery

    app = Celery("tasks", broker="bbmq://127.0.0.1:15333")

kombu and Celery are an optional extra (``pip install 'bbmq[celery]'``); the rest
of bbmq never imports this package.  See docs/celery.md.
"""

from kombu.transport import TRANSPORT_ALIASES

from bbmq.kombu.transport import Transport

TRANSPORT_ALIASES["bbmq"] = "bbmq.kombu.transport:Transport"

__all__ = ["Transport"]
