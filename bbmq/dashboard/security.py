"""Who may see and change what: the admin-token login, the session cookie, CSRF, read-only.

With ``--auth-tokens`` set, everything under ``/api/`` needs a session opened
by logging in with a token that has the admin permission (the same check an
``ADMIN`` connection gets).  The session lives in this process only; the
browser holds a random id in a cookie marked HttpOnly (scripts cannot read it)
and SameSite=Strict (other sites' pages do not send it).  The token itself
never goes back to the browser.  With no tokens configured the broker is open,
and a visitor gets an anonymous session all the same, for its CSRF token.

Every change (purge, group delete, replay) is a POST that must carry the
session's CSRF token in the ``X-CSRF-Token`` header, which a page of another
site can neither read nor send; the read-only mode refuses them all.  Every
answer carries a Content-Security-Policy that runs no inline script, so a
message body that slipped into the page as markup still could not run.  With
no tokens at all, the API answers only requests that name the host by address
or as localhost, which a DNS-rebinding page of another site cannot do.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from bbmq.auth import Authorizer, Permission

COOKIE: Final = "bbmq_session"
CSRF_HEADER: Final = "X-CSRF-Token"
#: A session ends this long after its login.
SESSION_SECONDS: Final = 12 * 3600
#: Sessions kept; past this the oldest is forgotten (its browser logs in again).
MAX_SESSIONS: Final = 1000
#: Paths under /api/ that answer without a session.
OPEN_PATHS: Final = frozenset({"/api/session", "/api/login"})
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class WebSession:
    """One browser's session: the token it logged in with (None: the broker is open)."""

    id: str
    token: str | None
    csrf: str
    expires_at: float


class Sessions:
    """The open sessions of this process, by cookie value."""

    def __init__(self, authorizer: Authorizer, read_only: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.authorizer = authorizer
        self.read_only = read_only
        self._clock = clock
        self._sessions: OrderedDict[str, WebSession] = OrderedDict()

    @property
    def auth_required(self) -> bool:
        return self.authorizer.enabled

    def open(self, token: str | None) -> WebSession:
        session = WebSession(secrets.token_urlsafe(32), token, secrets.token_urlsafe(32),
                             self._clock() + SESSION_SECONDS)
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def of(self, request: web.Request) -> WebSession | None:
        """The request's live session, if its cookie names one."""
        session = self._sessions.get(request.cookies.get(COOKIE, ""))
        if session is None:
            return None
        if session.expires_at <= self._clock():
            self.close(session.id)
            return None
        return session

    def admits(self, token: str) -> bool:
        """Whether ``token`` may log in: it has the admin permission."""
        return self.authorizer.allows(token, Permission.ADMIN, None)


def _named_directly(host_header: str) -> bool:
    """Whether the Host header names this machine by address or as localhost.

    A page of another site can make its own name resolve to 127.0.0.1 (DNS
    rebinding) and then read and POST as if it were this dashboard; with no token
    to ask for, only the Host header it cannot fake tells the two apart.
    """
    try:
        host = urlsplit("//" + host_header).hostname or ""
    except ValueError:  # a malformed Host header
        return False
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def set_cookie(response: web.StreamResponse, session: WebSession) -> None:
    response.set_cookie(COOKIE, session.id, max_age=SESSION_SECONDS, path="/", httponly=True,
                        samesite="Strict")


def refusal(status: int, text: str) -> web.Response:
    """An error answer the dashboard shows as it is: ``{"error": text}``."""
    return web.json_response({"error": text}, status=status)


def middleware(sessions: Sessions) -> Middleware:
    """Check the session, CSRF and read-only mode before an /api/ handler runs; add the
    security headers to every answer."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await _checked(request, handler)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def _checked(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/api/"):
            return await handler(request)
        if not sessions.auth_required and not _named_directly(request.host):
            return refusal(403, f"this broker has no auth tokens, so its API answers only "
                                f"when asked by IP address or as localhost, not as "
                                f"{request.host!r} (DNS rebinding); use the IP address, or "
                                "set --auth-tokens")
        if path in OPEN_PATHS:
            return await handler(request)
        session = sessions.of(request)
        if session is None and sessions.auth_required:
            return refusal(401, "not logged in: log in with an admin token of this broker")
        if request.method == "POST":
            if session is None or not secrets.compare_digest(
                    request.headers.get(CSRF_HEADER, ""), session.csrf):
                return refusal(403, "missing or wrong CSRF token: reload the page and retry")
            if sessions.read_only:
                return refusal(403, "the dashboard is read-only (--dashboard-read-only): "
                                    "use the bbmq command line to change anything")
        return await handler(request)

    return check
