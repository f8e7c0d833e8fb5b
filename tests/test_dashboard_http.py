"""The dashboard's HTTP side without a browser: settings, rates, the API, and its refusals.

A real broker runs on a thread (:class:`bbmq.testing.BrokerController` with
``http=True``) and real clients talk to it; these tests speak HTTP to its
dashboard port the way a script using the JSON API would.  What only a browser
can show (escaping, the pages) is in test_dashboard_browser.py.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bbmq import config as settings
from bbmq.client import Admin, Consumer, Producer
from bbmq.core import BrokerSnapshot, CounterSnapshot, TopicSnapshot
from bbmq.dashboard.rates import CommitTimes, RateHistory
from bbmq.testing import BrokerController, answers_ping, clean_environment, free_port, wait_for

REPO = Path(__file__).resolve().parent.parent

ADMIN_TOKEN = "adm1n"
TOKENS = f"{ADMIN_TOKEN}:admin+publish+subscribe:*,app:publish+subscribe:*,ops:admin:*"


class HttpClient:
    """A cookie-keeping HTTP client of the dashboard's API (what a script would write)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))
        self.csrf: str | None = None

    def call(self, method: str, path: str, body: Any = None,
             csrf: bool = True) -> tuple[int, Any, Any]:
        """(status, decoded JSON or text, headers) of one request; errors are answers too."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if csrf and self.csrf:
            request.add_header("X-CSRF-Token", self.csrf)
        try:
            with self.opener.open(request, timeout=10) as response:
                status, raw, headers = response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            status, raw, headers = error.code, error.read(), error.headers
        is_json = headers.get("Content-Type", "").startswith("application/json")
        return status, json.loads(raw) if is_json else raw.decode(), headers

    def open_session(self) -> dict[str, Any]:
        status, session, _ = self.call("GET", "/api/session")
        assert status == 200
        self.csrf = session["csrf"]
        return dict(session)

    def login(self, token: str) -> tuple[int, Any, Any]:
        answer = self.call("POST", "/api/login", {"token": token}, csrf=False)
        if answer[0] == 200:
            self.csrf = answer[1]["csrf"]
        return answer


@pytest.fixture
def broker() -> Iterator[BrokerController]:
    with BrokerController(http=True, store="memory://", max_attempts=1) as running:
        yield running


@pytest.fixture
def secured() -> Iterator[BrokerController]:
    with BrokerController(http=True, store="memory://", auth_tokens=TOKENS) as running:
        yield running


def queued(port: int, topic: str, token: str | None = None) -> int:
    """Messages of ``topic`` waiting for delivery (0 while the topic does not exist yet)."""
    with Admin("127.0.0.1", port, token=token) as admin:
        stats = admin.stats()["topics"].get(topic)
    if stats is None:
        return 0
    return int(stats["backlog"] + sum(g["ready"] for g in stats["groups"].values()))


# ---------------------------------------------------------------------- settings


def test_the_http_port_is_on_by_default_and_metrics_port_is_its_alias() -> None:
    assert settings.load({}, environ={}).effective_http_port == 15334
    aliased = settings.load({}, environ={"BBMQ_METRICS_PORT": "9108"})
    assert aliased.effective_http_port == 9108
    assert ("http_port", "9108", "metrics_port (its former name)") in aliased.describe()
    both = settings.load({"metrics_port": "9108", "http_port": "8080"}, environ={})
    assert both.effective_http_port == 8080  # the new name wins when both are given
    assert settings.load({}, environ={"BBMQ_HTTP_PORT": "0"}).effective_http_port == 0
    with pytest.raises(settings.ConfigError, match=r"http_port .* TCP port"):
        settings.load({"http_port": "70000"}, environ={})


@pytest.mark.slow  # starts a broker process
def test_a_busy_http_port_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "bbmq", "server", "run", "--store", "memory://",
             "--port", "0", "--http-port", str(port), "--data-dir", str(tmp_path / "data")],
            env=clean_environment(), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert f"cannot serve HTTP (dashboard, /metrics) on 127.0.0.1:{port}" in last_line
    assert "choose another --http-port (0 turns it off)" in last_line


# ---------------------------------------------------------------------- rates


def _snapshot(published: int, acked: int) -> BrokerSnapshot:
    counters = CounterSnapshot(published, 0, 0, acked, 0, 0)
    return BrokerSnapshot(0, (TopicSnapshot("t", counters, 0, 0, ()),))


def test_rates_are_counter_differences_over_time() -> None:
    samples = iter([_snapshot(100, 0), _snapshot(300, 50), _snapshot(10, 0)])
    history = RateHistory(lambda: next(samples))
    history.sample(10.0, 1000)
    assert history.latest() is None  # one sample has no rate yet
    history.sample(12.0, 3000)
    assert history.latest() == {"t": 3000, "published": 100.0, "delivered": 0.0,
                                "acked": 25.0, "redelivered": 0.0}
    assert history.topic_rates["t"]["published"] == 100.0
    history.sample(13.0, 4000)  # the topic was recreated: its counters went down
    assert history.topic_rates["t"]["published"] == 0.0
    assert len(history.points) == 2


def test_commit_times_summarise_the_recent_commits() -> None:
    times = CommitTimes()
    assert times.summary()["p50_ms"] is None
    for seconds in [0.001] * 98 + [0.5, 0.002]:
        times.observe(seconds)
    summary = times.summary()
    assert summary["commits"] == 100 and summary["p50_ms"] == 1.0
    assert summary["p99_ms"] == 500.0 and summary["last_ms"] == 2.0


# ---------------------------------------------------------------------- pages and reads


def test_pages_static_files_and_metrics_are_served(broker: BrokerController) -> None:
    client = HttpClient(broker.http_port)
    with Producer("metered", "127.0.0.1", broker.port) as producer:
        producer.publish_many(["a", "b"])
    status, page, headers = client.call("GET", "/")
    assert status == 200 and '<script src="/static/dashboard.js"' in page
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert client.call("GET", "/static/dashboard.js")[0] == 200
    for missing in ("/static/nosuch.js", "/static/..%2Fapp.py", "/static/__init__.py",
                    "/elsewhere"):
        assert client.call("GET", missing)[0] == 404, missing
    status, metrics, _ = client.call("GET", "/metrics")
    assert status == 200 and 'bbmq_messages_published_total{topic="metered"} 2.0' in metrics


def test_the_api_lists_topics_groups_consumers_and_connections(broker: BrokerController) -> None:
    client = HttpClient(broker.http_port)
    with Consumer("orders", "billing", "127.0.0.1", broker.port, name="biller"), \
            Producer("orders", "127.0.0.1", broker.port) as producer:
        producer.publish_many(["1", "2", "3"])
        wait_for(lambda: queued(broker.port, "orders") == 3, "three ready")
        status, topics, _ = client.call("GET", "/api/topics")
        assert status == 200
        [orders] = [row for row in topics if row["name"] == "orders"]
        assert (orders["ready"], orders["groups"], orders["consumers"]) == (3, 1, 1)
        status, detail, _ = client.call("GET", "/api/topics/orders")
        [group] = detail["groups"]
        assert (group["name"], group["ready"], group["lag"]) == ("billing", 3, 3)
        [consumer] = group["consumers"]
        assert consumer["name"] == "biller" and consumer["peer"].startswith("127.0.0.1:")
        status, connections, _ = client.call("GET", "/api/connections")
        roles = {row["name"]: row for row in connections["connections"]}
        assert roles["biller"]["role"] == "subscriber" and roles["biller"]["group"] == "billing"
        assert roles["biller"]["bytes_in"] > 0 and roles["biller"]["bytes_out"] > 0
        assert connections["count"] == len(connections["connections"])
        assert client.call("GET", "/api/topics/nosuch")[0] == 404


def test_peek_answers_and_its_bad_requests(broker: BrokerController) -> None:
    client = HttpClient(broker.http_port)
    with Consumer("mail", "out", "127.0.0.1", broker.port), \
            Producer("mail", "127.0.0.1", broker.port) as producer:
        producer.publish_many(["héllo", b"\xff\x00"])
        status, messages, _ = client.call("GET", "/api/topics/mail/peek?n=5")
        assert status == 200
        assert [(m["body"], m["size"]) for m in messages][:1] == [("héllo", 6)]
        assert messages[1]["hex"] == "ff 00" and messages[1]["encoding"] == "base64"
        status, error, _ = client.call("GET", "/api/topics/mail/peek?n=lots")
        assert status == 400 and "whole number" in error["error"]
        status, error, _ = client.call("GET", "/api/topics/mail/peek?n=5000")
        assert status == 400 and "from 0 to 1000" in error["error"]
        status, error, _ = client.call("GET", "/api/topics/mail/peek?group=nosuch")
        assert status == 400 and "has no group 'nosuch'" in error["error"]


def test_the_event_stream_sends_the_state(broker: BrokerController) -> None:
    with Producer("streamed", "127.0.0.1", broker.port) as producer:
        producer.publish("x")
    request = urllib.request.Request(f"http://127.0.0.1:{broker.http_port}/api/events")
    with urllib.request.urlopen(request, timeout=10) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        line = stream.readline().decode()
    assert line.startswith("data: ")
    state = json.loads(line[len("data: "):])
    assert [row["name"] for row in state["topics"]] == ["streamed"]
    assert state["overview"]["totals"]["ready"] == 1


# ---------------------------------------------------------------------- changes


def test_purge_needs_csrf_and_confirmation(broker: BrokerController) -> None:
    client = HttpClient(broker.http_port)
    with Consumer("jobs", "workers", "127.0.0.1", broker.port), \
            Producer("jobs", "127.0.0.1", broker.port) as producer:
        producer.publish_many(["1", "2"])
        wait_for(lambda: queued(broker.port, "jobs") == 2, "two ready")
        status, error, _ = client.call("POST", "/api/topics/jobs/purge", {"confirm": True})
        assert status == 403 and "CSRF" in error["error"]  # no session, no CSRF token
        client.open_session()
        status, error, _ = client.call("POST", "/api/topics/jobs/purge", {"confirm": True},
                                       csrf=False)
        assert status == 403 and "CSRF" in error["error"]
        status, error, _ = client.call("POST", "/api/topics/jobs/purge", {})
        assert status == 400 and "confirm" in error["error"]
        status, error, _ = client.call("POST", "/api/topics/jobs/purge", "not an object")
        assert status == 400 and "JSON object" in error["error"]
        assert queued(broker.port, "jobs") == 2  # nothing was purged so far
        status, result, _ = client.call("POST", "/api/topics/jobs/purge", {"confirm": True})
        assert (status, result) == (200, {"purged": 2})
        assert queued(broker.port, "jobs") == 0


def test_group_delete_disconnects_its_consumers(broker: BrokerController) -> None:
    client = HttpClient(broker.http_port)
    client.open_session()
    with Consumer("jobs", "doomed", "127.0.0.1", broker.port), \
            Consumer("jobs", "kept", "127.0.0.1", broker.port):
        status, error, _ = client.call("POST", "/api/topics/jobs/groups/nosuch/delete",
                                       {"confirm": True})
        assert status == 400 and "no group 'nosuch'" in error["error"]
        status, result, _ = client.call("POST", "/api/topics/jobs/groups/doomed/delete",
                                        {"confirm": True})
        assert (status, result) == (200, {"deleted": True})
        with Admin("127.0.0.1", broker.port) as admin:
            assert sorted(admin.stats()["topics"]["jobs"]["groups"]) == ["kept"]


@pytest.mark.slow  # a replay ends when no dead letter came for a second
def test_replay_from_the_api_moves_dead_letters_back(broker: BrokerController) -> None:
    client = HttpClient(broker.http_port)
    client.open_session()
    status, result, _ = client.call("POST", "/api/topics/jobs/dlq/replay", {"confirm": True})
    assert status == 200 and "no topic jobs.dlq" in result["summary"]
    with Consumer("jobs", "default", "127.0.0.1", broker.port) as consumer, \
            Producer("jobs", "127.0.0.1", broker.port) as producer:
        producer.publish("poison")
        message = consumer.fetch(timeout=5)
        assert message is not None
        consumer.nack(message)  # max_attempts=1: to jobs.dlq
        wait_for(lambda: queued(broker.port, "jobs.dlq") == 1, "the dead letter")
        status, result, _ = client.call("POST", "/api/topics/jobs/dlq/replay", {"confirm": True})
        assert (status, result["replayed"]) == (200, 1)
        again = consumer.fetch(timeout=5)
        assert again is not None and again.body == b"poison"
        assert queued(broker.port, "jobs.dlq") == 0
        # jobs.dlq has a group now ("default", made by the replay): another name is refused.
        status, error, _ = client.call("POST", "/api/topics/jobs/dlq/replay",
                                       {"confirm": True, "group": "nosuch"})
        assert status == 409 and "no group 'nosuch'" in error["error"]


def test_read_only_refuses_every_change() -> None:
    with BrokerController(http=True, store="memory://", dashboard_read_only="true") as broker, \
            Consumer("jobs", "g", "127.0.0.1", broker.port):
        client = HttpClient(broker.http_port)
        assert client.open_session()["read_only"] is True
        for path in ("/api/topics/jobs/purge", "/api/topics/jobs/groups/g/delete",
                     "/api/topics/jobs/dlq/replay"):
            status, error, _ = client.call("POST", path, {"confirm": True})
            assert status == 403 and "read-only" in error["error"], path
        assert client.call("GET", "/api/topics/jobs")[0] == 200  # reading still works


# ---------------------------------------------------------------------- auth


def _status_as(port: int, host_header: str, path: str = "/api/session") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host_header})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_an_open_broker_answers_its_api_only_by_address(broker: BrokerController) -> None:
    """No tokens: a page that rebound its own name to 127.0.0.1 gets nothing from the API."""
    port = broker.http_port
    for named in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert _status_as(port, named)[0] == 200, named
    status, text = _status_as(port, f"attacker.example:{port}")
    assert status == 403 and "DNS rebinding" in text and "--auth-tokens" in text
    assert _status_as(port, f"attacker.example:{port}", "/api/topics")[0] == 403
    assert _status_as(port, f"attacker.example:{port}", "/")[0] == 200  # the page says why


def test_with_tokens_any_host_name_may_log_in(secured: BrokerController) -> None:
    port = secured.http_port
    status, text = _status_as(port, f"broker.internal:{port}")
    assert status == 200 and json.loads(text)["auth_required"] is True


def test_with_auth_the_api_needs_an_admin_login(secured: BrokerController) -> None:
    client = HttpClient(secured.http_port)
    session = client.open_session()
    assert session["auth_required"] is True and session["logged_in"] is False
    status, error, _ = client.call("GET", "/api/topics")
    assert status == 401 and "admin token" in error["error"]
    assert client.call("POST", "/api/topics/x/purge", {"confirm": True})[0] == 401
    assert client.login("wrong")[0] == 401
    assert client.login("app")[0] == 401  # publish+subscribe is not admin
    status, session, headers = client.login(ADMIN_TOKEN)
    assert status == 200 and session["logged_in"] is True
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and ADMIN_TOKEN not in cookie
    assert client.call("GET", "/api/topics")[0] == 200
    assert client.call("POST", "/api/logout", {})[0] == 200
    assert client.call("GET", "/api/topics")[0] == 401  # the session is gone on the server


def test_replay_with_a_token_that_may_not_publish_is_refused(secured: BrokerController) -> None:
    with Consumer("jobs", "default", "127.0.0.1", secured.port, token="app") as consumer, \
            Producer("jobs", "127.0.0.1", secured.port, token="app") as producer:
        producer.publish("poison")
        message = consumer.fetch(timeout=5)
        assert message is not None
        consumer.nack(message, reason="boom")
        for _ in range(4):  # max_attempts is 5 here
            message = consumer.fetch(timeout=5)
            assert message is not None
            consumer.nack(message)
        wait_for(lambda: queued(secured.port, "jobs.dlq", ADMIN_TOKEN) == 1, "the dead letter")
    client = HttpClient(secured.http_port)
    client.login("ops")  # admin only: it may not consume jobs.dlq nor publish to jobs
    status, error, _ = client.call("POST", "/api/topics/jobs/dlq/replay", {"confirm": True})
    assert status == 409 and "replay failed" in error["error"]
    assert queued(secured.port, "jobs.dlq", ADMIN_TOKEN) == 1  # nothing lost


@pytest.mark.slow  # builds the package and starts a broker process from it
def test_an_installed_broker_serves_the_dashboard_with_no_extra_step(tmp_path: Path) -> None:
    """The static files are package data: a broker run from what pip installs (build_py's
    layout, not this source tree) serves the pages on its default HTTP port setting."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    shutil.copytree(REPO / "bbmq", source / "bbmq", ignore=shutil.ignore_patterns("__pycache__"))
    installed = tmp_path / "installed"
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q",
                    "build_py", "--build-lib", str(installed)], cwd=source,
                   check=True, capture_output=True, timeout=120)
    assert (installed / "bbmq" / "dashboard" / "static" / "dashboard.js").is_file()
    port, http_port = free_port(), free_port()
    environment = {**clean_environment(), "PYTHONPATH": str(installed)}
    broker = subprocess.Popen(
        [sys.executable, "-m", "bbmq", "server", "run", "--port", str(port),
         "--http-port", str(http_port), "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: answers_ping(port) or broker.poll() is not None, "the broker")
        assert broker.poll() is None, broker.stderr.read() if broker.stderr else ""
        client = HttpClient(http_port)
        status, page, _ = client.call("GET", "/")
        assert status == 200 and "bbmq dashboard" in page
        for name in ("common.js", "charts.js", "dashboard.js", "dashboard.css", "favicon.svg"):
            assert client.call("GET", f"/static/{name}")[0] == 200, name
    finally:
        broker.terminate()
        broker.wait(30)
