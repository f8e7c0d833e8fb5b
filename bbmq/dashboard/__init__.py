"""The broker's HTTP side: the dashboard, its JSON API and the Prometheus page, on aiohttp.

One port (``--http-port``, default 15334) on the broker's own event loop, so
every read of the core happens on the thread that changes it.  One job per
module: ``app.py`` starts and stops the server and routes ``/``, ``/static/``
and ``/metrics``; ``api.py`` answers ``/api/`` (JSON, and the once-a-second
event stream); ``security.py`` the admin-token login, the session cookie, CSRF
and the read-only mode; ``rates.py`` the rates and commit times derived over
time from the core's counters; ``sources.py`` what the composition root
(bbmq/app.py) hands in.  The browser side is in ``static/`` (package data).
"""

from bbmq.dashboard.app import HttpPortError, HttpServer, start_http
from bbmq.dashboard.sources import DashboardSources

__all__ = ["DashboardSources", "HttpPortError", "HttpServer", "start_http"]
