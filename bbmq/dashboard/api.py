"""The JSON API under ``/api/``: what the dashboard shows and does, for scripts too.

Reads answer from the core's snapshot, the transport's connections and the
rates sampled once a second; the event stream (``/api/events``,
server-sent events) pushes the same state once a second so pages update without
a reload.  Changes run the core's own ADMIN commands (peek, purge,
group_delete) or the DLQ replay of ``bbmq dlq replay``; every one of them needs
``{"confirm": true}`` in its JSON body, besides the session and CSRF checks of
:mod:`bbmq.dashboard.security`.  Errors are ``{"error": text}`` with a status
that says whose fault it was.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any, Final

from aiohttp import web

from bbmq.core import BrokerSnapshot, TopicSnapshot
from bbmq.dashboard.rates import CommitTimes, RateHistory
from bbmq.dashboard.security import Sessions, WebSession, refusal, set_cookie
from bbmq.dashboard.sources import DashboardSources
from bbmq.defaults import DLQ_SUFFIX
from bbmq.protocol import ProtocolError

log = logging.getLogger("bbmq.dashboard")

#: Most connections one answer or event lists (the count is always exact).
MAX_LISTED_CONNECTIONS: Final = 500
#: Messages a peek shows unless asked for more (the core allows up to 1000).
DEFAULT_PEEK: Final = 20
#: Events queued for a slow browser before it misses some (it gets the next one).
EVENT_BACKLOG: Final = 4


def _json_body_error(text: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": text}), content_type="application/json")


class Api:
    """The handlers of ``/api/``, over what the broker handed in."""

    def __init__(self, sources: DashboardSources, sessions: Sessions, history: RateHistory,
                 commit_times: CommitTimes) -> None:
        self.sources = sources
        self.sessions = sessions
        self.history = history
        self.commit_times = commit_times
        #: One queue per open event stream; None in it ends the stream (the server stops).
        self.listeners: set[asyncio.Queue[str | None]] = set()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/session", self.session),
            web.post("/api/login", self.login),
            web.post("/api/logout", self.logout),
            web.get("/api/overview", self.overview),
            web.get("/api/topics", self.topics),
            web.get("/api/topics/{topic}", self.topic),
            web.get("/api/topics/{topic}/peek", self.peek),
            web.post("/api/topics/{topic}/purge", self.purge),
            web.post("/api/topics/{topic}/groups/{group}/delete", self.delete_group),
            web.post("/api/topics/{topic}/dlq/replay", self.replay),
            web.get("/api/connections", self.connections),
            web.get("/api/events", self.events),
        ]

    # ------------------------------------------------------------------ session

    def _session_answer(self, session: WebSession | None) -> dict[str, Any]:
        return {"auth_required": self.sessions.auth_required,
                "logged_in": session is not None and (
                    session.token is not None or not self.sessions.auth_required),
                "read_only": self.sessions.read_only, "version": self.sources.version,
                "csrf": None if session is None else session.csrf}

    async def session(self, request: web.Request) -> web.Response:
        """Who the browser is; with no auth configured, an anonymous session is opened."""
        session = self.sessions.of(request)
        if session is None and not self.sessions.auth_required:
            session = self.sessions.open(None)
            response = web.json_response(self._session_answer(session))
            set_cookie(response, session)
            return response
        return web.json_response(self._session_answer(session))

    async def login(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        token = body.get("token")
        if not self.sessions.auth_required:
            return refusal(400, "this broker has no auth tokens: there is nothing to log in to")
        if not isinstance(token, str) or not token or not self.sessions.admits(token):
            log.warning("dashboard login refused from %s", request.remote)
            return refusal(401, "that is not an admin token of this broker")
        old = self.sessions.of(request)
        if old is not None:
            self.sessions.close(old.id)
        session = self.sessions.open(token)
        response = web.json_response(self._session_answer(session))
        set_cookie(response, session)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        session = self.sessions.of(request)
        if session is not None:
            self.sessions.close(session.id)
        response = web.json_response({"logged_in": False})
        response.del_cookie("bbmq_session", path="/")
        return response

    # ------------------------------------------------------------------ reads

    def overview_state(self, snapshot: BrokerSnapshot) -> dict[str, Any]:
        status = self.sources.status()
        groups = [group for topic in snapshot.topics for group in topic.groups]
        return {"version": self.sources.version, "server": status,
                "commit": self.commit_times.summary(), "queued_bytes": snapshot.queued_bytes,
                "totals": {"topics": len(snapshot.topics),
                           "ready": sum(t.backlog for t in snapshot.topics)
                           + sum(g.ready for g in groups),
                           "inflight": sum(g.inflight for g in groups),
                           "delayed": sum(g.delayed for g in groups),
                           "dead_letters": sum(_queued(t) for t in snapshot.topics
                                               if t.name.endswith(DLQ_SUFFIX))},
                "rates": self.history.latest()}

    def topics_state(self, snapshot: BrokerSnapshot) -> list[dict[str, Any]]:
        names = {topic.name for topic in snapshot.topics}
        rows = []
        for topic in snapshot.topics:
            dlq = topic.name + DLQ_SUFFIX
            rows.append({
                "name": topic.name, "is_dlq": topic.name.endswith(DLQ_SUFFIX),
                "ready": topic.backlog + sum(g.ready for g in topic.groups),
                "inflight": sum(g.inflight for g in topic.groups),
                "delayed": sum(g.delayed for g in topic.groups),
                "dead_letters": _queued(snapshot.topic(dlq)) if dlq in names else 0,
                "groups": len(topic.groups),
                "consumers": sum(g.consumers for g in topic.groups),
                "publishers": topic.publishers, "backlog": topic.backlog,
                "counters": _counters(topic),
                "rates": self.history.topic_rates.get(topic.name, {})})
        return rows

    def connections_state(self) -> dict[str, Any]:
        rows = self.sources.connections()
        return {"count": len(rows), "connections": rows[:MAX_LISTED_CONNECTIONS]}

    def state(self) -> dict[str, Any]:
        """Everything the pages show, as one event of the stream."""
        snapshot = self.sources.snapshot()
        return {"overview": self.overview_state(snapshot), "topics": self.topics_state(snapshot),
                "connections": self.connections_state()}

    async def overview(self, request: web.Request) -> web.Response:
        return web.json_response({**self.overview_state(self.sources.snapshot()),
                                  "history": list(self.history.points)})

    async def topics(self, request: web.Request) -> web.Response:
        return web.json_response(self.topics_state(self.sources.snapshot()))

    async def topic(self, request: web.Request) -> web.Response:
        snapshot = self.sources.snapshot()
        topic = self._topic(snapshot, request)
        consumers = [row for row in self.sources.connections()
                     if row["role"] == "subscriber" and row["topic"] == topic.name]
        dlq_name = topic.name + DLQ_SUFFIX
        dlq = next((t for t in snapshot.topics if t.name == dlq_name), None)
        return web.json_response({
            **next(row for row in self.topics_state(snapshot) if row["name"] == topic.name),
            "groups": [{"name": group.name, "ready": group.ready, "inflight": group.inflight,
                        "delayed": group.delayed,
                        "lag": group.ready + group.inflight + group.delayed,
                        "counters": {name: getattr(group.counters, name)
                                     for name in ("delivered", "acked", "redelivered")},
                        "consumers": [row for row in consumers if row["group"] == group.name]}
                       for group in topic.groups],
            "dlq": None if dlq is None else {
                "name": dlq.name, "queued": _queued(dlq),
                "groups": [group.name for group in dlq.groups]}})

    async def peek(self, request: web.Request) -> web.Response:
        topic = self._topic(self.sources.snapshot(), request)
        params: dict[str, Any] = {"topic": topic.name}
        try:
            params["n"] = int(request.query.get("n", DEFAULT_PEEK))
        except ValueError:
            return refusal(400, "n must be a whole number")
        if request.query.get("group"):
            params["group"] = request.query["group"]
        messages = self._run("peek", params)
        for message in messages:
            raw = (base64.b64decode(message["body"]) if message["encoding"] == "base64"
                   else message["body"].encode())
            message["size"] = len(raw)
            if message["encoding"] == "base64":
                message["hex"] = raw.hex(" ")
        return web.json_response(messages)

    async def connections(self, request: web.Request) -> web.Response:
        return web.json_response(self.connections_state())

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the whole state once a second, until the browser leaves or
        its session ends."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store"})
        await response.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue(EVENT_BACKLOG)
        self.listeners.add(queue)
        session = self.sessions.of(request)
        try:
            await response.write(f"data: {json.dumps(self.state())}\n\n".encode())
            while True:
                data = await queue.get()
                if data is None:
                    break
                if self.sessions.auth_required and self.sessions.of(request) is not session:
                    await response.write(b"event: logged_out\ndata: {}\n\n")
                    break
                await response.write(f"data: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the browser went away
        finally:
            self.listeners.discard(queue)
        return response

    def publish_state(self) -> None:
        """Send the state to every open event stream (a full queue skips this one)."""
        if not self.listeners:
            return
        data = json.dumps(self.state())
        for queue in self.listeners:
            if not queue.full():
                queue.put_nowait(data)

    def end_streams(self) -> None:
        """End every open event stream now (the server is stopping)."""
        for queue in self.listeners:
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    # ------------------------------------------------------------------ changes

    async def purge(self, request: web.Request) -> web.Response:
        body = await self._confirmed(request)
        params = {"topic": request.match_info["topic"]}
        if body.get("group"):
            params["group"] = body["group"]
        result = self._run("purge", params)
        log.info("dashboard: purged %d messages from %s", result["purged"], params)
        return web.json_response(result)

    async def delete_group(self, request: web.Request) -> web.Response:
        await self._confirmed(request)
        params = {"topic": request.match_info["topic"], "group": request.match_info["group"]}
        result = self._run("group_delete", params)
        log.info("dashboard: deleted group %s", params)
        return web.json_response(result)

    async def replay(self, request: web.Request) -> web.Response:
        body = await self._confirmed(request)
        topic = request.match_info["topic"]
        group = body.get("group") or "default"
        session = self.sessions.of(request)
        try:
            outcome = await asyncio.to_thread(self.sources.replay, topic, str(group),
                                              None if session is None else session.token)
        except Exception as error:  # the broker's refusal (a token without publish ...)
            return refusal(409, f"replay failed: {error}")
        if outcome.refused:
            return refusal(409, outcome.summary)
        log.info("dashboard: %s", outcome.summary)
        return web.json_response({"replayed": outcome.replayed, "summary": outcome.summary})

    # ------------------------------------------------------------------ helpers

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise _json_body_error("send a JSON object") from None
        if not isinstance(body, dict):
            raise _json_body_error("send a JSON object")
        return body

    async def _confirmed(self, request: web.Request) -> dict[str, Any]:
        body = await self._json(request)
        if body.get("confirm") is not True:
            raise _json_body_error('changes need {"confirm": true}: the dashboard asks first')
        return body

    @staticmethod
    def _topic(snapshot: BrokerSnapshot, request: web.Request) -> TopicSnapshot:
        name = request.match_info["topic"]
        try:
            return snapshot.topic(name)
        except KeyError:
            raise web.HTTPNotFound(text=json.dumps({"error": f"no topic {name!r}"}),
                                   content_type="application/json") from None

    def _run(self, command: str, params: dict[str, Any]) -> Any:
        try:
            return self.sources.admin_command(command, params)
        except ProtocolError as error:
            raise _json_body_error(error.text) from None


def _queued(topic: TopicSnapshot) -> int:
    """Messages a topic still holds for someone: backlog, ready, delayed and in flight."""
    return topic.backlog + sum(g.ready + g.delayed + g.inflight for g in topic.groups)


def _counters(topic: TopicSnapshot) -> dict[str, int]:
    counters = topic.counters
    return {"published": counters.published, "delivered": counters.delivered,
            "acked": counters.acked, "redelivered": counters.redelivered,
            "dead_lettered": counters.dead_lettered}
