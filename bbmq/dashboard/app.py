"""The HTTP server: aiohttp on the broker's event loop, one port for everything.

``/`` is the dashboard (one page, its views chosen by the URL's fragment),
``/static/`` its files from the package, ``/metrics`` the Prometheus page,
``/api/`` the JSON API (:mod:`bbmq.dashboard.api`).  A sampler wakes once a
second to turn the core's counters into rates and push the state to open event
streams; it reads the core on the loop thread like every handler here, so
nothing races the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bbmq.dashboard.api import Api
from bbmq.dashboard.rates import CommitTimes, RateHistory
from bbmq.dashboard.security import Sessions, middleware
from bbmq.dashboard.sources import DashboardSources
from bbmq.metrics import build_registry

log = logging.getLogger("bbmq.dashboard")

#: Seconds between two samples of the counters (and two events to the browsers).
SAMPLE_PERIOD_S: Final = 1.0
#: Files the dashboard is made of, shipped inside the package.
STATIC: Final = resources.files("bbmq.dashboard") / "static"


class HttpPortError(OSError):
    """The HTTP port could not be opened; the message names it and says what to do."""


class HttpServer:
    """The running HTTP side of one broker; :meth:`close` stops it."""

    def __init__(self, sources: DashboardSources,
                 wall_clock_ms: Callable[[], int]) -> None:
        self.commit_times = CommitTimes()
        self.registry = build_registry(sources.metrics, also_observe=self.commit_times.observe)
        self.history = RateHistory(sources.snapshot)
        self.sessions = Sessions(sources.authorizer, sources.read_only)
        self.api = Api(sources, self.sessions, self.history, self.commit_times)
        self.wall_clock_ms = wall_clock_ms
        self.app = web.Application(middlewares=[middleware(self.sessions)])
        self.app.add_routes([web.get("/", self.index), web.get("/metrics", self.metrics),
                             web.get("/static/{name}", self.static), *self.api.routes()])
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                    shutdown_timeout=1.0)
        self.port = 0
        self._sampler: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            await self.runner.cleanup()
            raise HttpPortError(error.errno or errno.EADDRINUSE,
                                f"cannot serve HTTP (dashboard, /metrics) on {host}:{port}: "
                                f"{error.strerror or error}; choose another --http-port "
                                "(0 turns it off)") from None
        self.port = int(self.runner.addresses[0][1])
        self._sampler = asyncio.ensure_future(self._sample())
        log.info("dashboard on http://%s:%d/ (Prometheus metrics at /metrics)", host, self.port)
        if not self.sessions.auth_required and not self.sessions.read_only and not _is_loopback(
                host):
            log.warning("dashboard on %s WITHOUT authentication: anyone who can reach port %d "
                        "can purge topics; set --auth-tokens or --dashboard-read-only",
                        host, self.port)

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        self.api.end_streams()
        await self.runner.cleanup()

    async def _sample(self) -> None:
        while True:
            try:
                self.history.sample(time.monotonic(), self.wall_clock_ms())
                self.api.publish_state()
            except Exception:  # a bug: log it, keep the dashboard (and the broker) up
                log.exception("dashboard: sampling the broker's state failed")
            await asyncio.sleep(SAMPLE_PERIOD_S)  # the sampling period, not a wait for a state

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(body=(STATIC / "index.html").read_bytes(),
                            content_type="text/html", charset="utf-8")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kinds = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        suffix = name[name.rfind("."):] if "." in name else ""
        file = STATIC / name
        if "/" in name or name.startswith(".") or suffix not in kinds or not file.is_file():
            raise web.HTTPNotFound(text="no such file")
        return web.Response(body=file.read_bytes(), content_type=kinds[suffix],
                            charset="utf-8")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def start_http(sources: DashboardSources, host: str, port: int,
                     wall_clock_ms: Callable[[], int]) -> HttpServer:
    """Serve the dashboard, its API and /metrics on ``host:port`` from the running loop."""
    server = HttpServer(sources, wall_clock_ms)
    await server.start(host, port)
    return server
