"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against a real broker.

The broker runs as its own process (``bbmq server run``) with its HTTP port
on, real producers and consumers talk to it over TCP, and every check reads
what the page shows.  The browser is the system's chromium (Playwright is only
the driver: no browser is downloaded); CI installs it (.ci/run), so there these
tests fail rather than skip when it is missing.

Screenshots of each page are written to the test's directory, and to
docs/screenshots/ when ``BBMQ_UPDATE_SCREENSHOTS=1`` (how the README's are made).
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from playwright import sync_api as playwright_sync

from bbmq.client import Admin, Consumer, Producer
from bbmq.testing import BrokerProcess, free_port, wait_for

pytestmark = pytest.mark.slow

ADMIN_TOKEN: Final = "adm1n-s3cret"
CLIENT_TOKEN: Final = "app-token"
TOKENS: Final = f"{ADMIN_TOKEN}:admin+publish+subscribe:*,{CLIENT_TOKEN}:publish+subscribe:*"
CHROMIUM_ARGS: Final = ["--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run"]
SCREENSHOTS: Final = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
UPDATING_SCREENSHOTS: Final = os.environ.get("BBMQ_UPDATE_SCREENSHOTS") == "1"
#: Seconds of traffic charted before the overview's screenshot for docs/ is taken.
SCREENSHOT_HISTORY_S: Final = 75.0
#: Milliseconds the browser waits for a page to show what a test expects.
SHOWN_MS: Final = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    data = tmp_path_factory.mktemp("dashboard") / "data"
    with BrokerProcess(data, http_port=free_port(), auth_tokens=TOKENS, max_attempts=1) as running:
        yield running


def dashboard_url(broker: BrokerProcess) -> str:
    return f"http://127.0.0.1:{broker.settings['http_port']}/"


def client(broker: BrokerProcess) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": broker.port, "token": CLIENT_TOKEN}


def screenshot(page: Any, name: str, tmp_path: Path) -> None:
    """Save the page as PNG beside the test (and into docs/ when asked); check it is one."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if UPDATING_SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / f"{name}.png")


@pytest.fixture
def page(browser: Any, broker: BrokerProcess) -> Iterator[Any]:
    """A fresh browser context (no cookies), logged in with the admin token."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    logged_in = context.new_page()
    logged_in.set_default_timeout(SHOWN_MS)
    logged_in.dialogs = []  # every alert/confirm the page opened, by its text

    def on_dialog(dialog: Any) -> None:
        logged_in.dialogs.append(dialog.message)
        dialog.accept()

    logged_in.on("dialog", on_dialog)
    logged_in.goto(dashboard_url(broker))
    logged_in.fill("#token", ADMIN_TOKEN)
    logged_in.click("#login-form button[type=submit]")
    logged_in.wait_for_selector("#view-overview")
    try:
        yield logged_in
    finally:
        context.close()


def number_in(page: Any, selector: str) -> float:
    return float(page.text_content(selector).replace(",", "").strip() or 0)


def queued(admin: Admin, topic: str) -> int:
    stats = admin.stats()["topics"].get(topic)
    if stats is None:
        return 0
    return int(stats["backlog"] + sum(g["ready"] + g["delayed"] for g in stats["groups"].values()))


def test_login_refuses_a_token_without_admin(browser: Any, broker: BrokerProcess) -> None:
    context = browser.new_context()
    try:
        login = context.new_page()
        login.goto(dashboard_url(broker))
        login.fill("#token", CLIENT_TOKEN)  # publish+subscribe, not admin
        login.click("#login-form button[type=submit]")
        login.wait_for_selector("#login-error:has-text('401')", timeout=SHOWN_MS)
        assert "not an admin token" in login.text_content("#login-error")
        answer = login.request.get(dashboard_url(broker) + "api/topics")
        assert answer.status == 401 and "log in" in answer.json()["error"]
    finally:
        context.close()


def test_the_overview_charts_the_publish_rate_while_a_producer_runs(
        page: Any, broker: BrokerProcess, tmp_path: Path) -> None:
    stop = threading.Event()
    started = time.monotonic()

    def produce() -> None:
        with Producer("clicks", **client(broker)) as producer:
            while not stop.is_set():
                # A batch size that swells and ebbs, so the chart of the screenshot shows a
                # shape; the test itself only needs messages to flow.
                phase = math.sin((time.monotonic() - started) / 6)
                producer.publish_many([b"click"] * int(30 + 25 * phase))
                stop.wait(0.02)  # pacing, not synchronisation

    def consume() -> None:
        with Consumer("clicks", "analytics", **client(broker)) as consumer:
            while not stop.is_set():
                message = consumer.fetch(timeout=0.2)
                if message is not None:
                    consumer.ack(message)

    page.wait_for_selector("#rate-published:text-is('0')")  # nothing published yet
    workers = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: number_in(page, "#rate-published") > 0,
                 "a publish rate above zero on the overview")
        wait_for(lambda: number_in(page, "#rate-acked") > 0, "an ack rate above zero")
        page.wait_for_selector("#chart-published path[data-series=published]")
        assert page.text_content("#ov-version").strip()
        assert "sqlite" in page.text_content("#ov-store")
        wait_for(lambda: page.text_content("#ov-commit").endswith(" ms"),
                 "the store's commit latency on the overview")
        if UPDATING_SCREENSHOTS:  # the README's picture: a minute of history in the chart
            stop.wait(SCREENSHOT_HISTORY_S)
        screenshot(page, "overview", tmp_path)
    finally:
        stop.set()
        for worker in workers:
            worker.join()


def test_topics_table_shows_the_ready_count(page: Any, broker: BrokerProcess,
                                            tmp_path: Path) -> None:
    with Consumer("orders", "billing", **client(broker)), \
            Producer("orders", **client(broker)) as producer:
        producer.publish_many([f"order {n}" for n in range(7)])
        page.click("nav a[data-view=topics]")
        page.fill("#topic-filter", "ord")
        page.wait_for_selector("tr[data-topic=orders] td[data-col=ready]:text-is('7')")
        assert page.locator("tr[data-topic=clicks]").count() == 0  # filtered out
        page.fill("#topic-filter", "")
        page.click("th[data-key=ready]")  # sort by ready, most first
        page.wait_for_selector("th.sorted[data-key=ready]")
        screenshot(page, "topics", tmp_path)


def test_peek_shows_bodies_as_text_and_runs_no_script(page: Any, broker: BrokerProcess,
                                                      tmp_path: Path) -> None:
    with Consumer("mail", "sender", **client(broker)), \
            Producer("mail", **client(broker)) as producer:
        producer.publish_many(["hello from the dashboard test", "<script>alert(1)</script>",
                               '<img src=x onerror="alert(2)">', b"\x00\xff\x10binary"])
        page.goto(dashboard_url(broker) + "#/topic/mail")
        page.wait_for_selector("#groups-body tr[data-group=sender]")
        page.click("#peek")
        page.wait_for_selector("#peek-results .message")
        bodies = page.locator("#peek-results pre.body").all_text_contents()
        assert bodies[:3] == ["hello from the dashboard test", "<script>alert(1)</script>",
                              '<img src=x onerror="alert(2)">']
        assert bodies[3] == "00 ff 10 62 69 6e 61 72 79"  # binary: shown as hex
        assert page.locator("#peek-results script, #peek-results img").count() == 0
        assert page.dialogs == []  # no alert ran
        screenshot(page, "topic", tmp_path)


def test_purge_with_the_token_empties_the_topic(page: Any, broker: BrokerProcess) -> None:
    with Consumer("purgeable", "workers", **client(broker)), \
            Producer("purgeable", **client(broker)) as producer, \
            Admin(**{**client(broker), "token": ADMIN_TOKEN}) as admin:
        producer.publish_many([f"job {n}" for n in range(5)])
        assert queued(admin, "purgeable") == 5
        page.goto(dashboard_url(broker) + "#/topic/purgeable")
        page.wait_for_selector("#groups-body tr[data-group=workers]")
        page.click("#purge")
        page.wait_for_selector("#purge-result:has-text('purged 5 messages')")
        assert any("Purge every queued message of purgeable" in text for text in page.dialogs)
        assert queued(admin, "purgeable") == 0


def test_replay_moves_dead_letters_back(page: Any, broker: BrokerProcess) -> None:
    with Consumer("jobs", "default", **client(broker)) as consumer, \
            Producer("jobs", **client(broker)) as producer, \
            Admin(**{**client(broker), "token": ADMIN_TOKEN}) as admin:
        producer.publish_many(["poison 1", "poison 2"])
        for _ in range(2):
            message = consumer.fetch(timeout=5)
            assert message is not None
            consumer.nack(message, reason="boom")  # max_attempts=1: straight to jobs.dlq
        wait_for(lambda: queued(admin, "jobs.dlq") == 2, "two dead letters")
        page.goto(dashboard_url(broker) + "#/topic/jobs")
        page.wait_for_selector("#dlq-line:has-text('2 messages in jobs.dlq')")
        page.click("#replay")
        page.wait_for_selector("#replay-result:has-text('replayed 2 messages')")
        assert queued(admin, "jobs.dlq") == 0
        replayed = sorted((consumer.fetch(timeout=5) or pytest.fail("no replay")).body
                          for _ in range(2))
        assert replayed == [b"poison 1", b"poison 2"]


def test_connections_page_lists_who_is_connected(page: Any, broker: BrokerProcess,
                                                 tmp_path: Path) -> None:
    with Consumer("audit", "auditors", name="auditor-7", **client(broker)), \
            Producer("audit", name="web-frontend", **client(broker)) as producer:
        producer.publish("seen")
        page.click("nav a[data-view=connections]")
        row = page.locator("#connections-body tr", has_text="auditor-7")
        row.wait_for()
        text = row.text_content()
        assert "subscriber" in text and "audit" in text and "auditors" in text
        publisher = page.locator("#connections-body tr", has_text="web-frontend")
        assert "publisher" in publisher.text_content()
        screenshot(page, "connections", tmp_path)


def test_actions_without_the_token_are_refused_and_the_page_says_why(
        page: Any, browser: Any, broker: BrokerProcess) -> None:
    with Consumer("kept", "workers", **client(broker)), \
            Producer("kept", **client(broker)) as producer, \
            Admin(**{**client(broker), "token": ADMIN_TOKEN}) as admin:
        producer.publish_many(["keep me"] * 3)
        page.goto(dashboard_url(broker) + "#/topic/kept")
        page.wait_for_selector("#groups-body tr[data-group=workers]")
        # Without the CSRF token (what another site's page could send): 403.
        forged = page.request.post(dashboard_url(broker) + "api/topics/kept/purge",
                                   data={"confirm": True})
        assert forged.status == 403 and "CSRF" in forged.json()["error"]
        # A browser that never logged in: 401.
        stranger = browser.new_context()
        try:
            refused = stranger.request.post(dashboard_url(broker) + "api/topics/kept/purge",
                                            data={"confirm": True})
            assert refused.status == 401
        finally:
            stranger.close()
        # The session ends (logged out elsewhere); the purge button is refused, and said so.
        csrf = page.evaluate("state.session.csrf")
        ended = page.request.post(dashboard_url(broker) + "api/logout",
                                  headers={"X-CSRF-Token": csrf}, data={})
        assert ended.ok
        page.click("#purge")
        page.wait_for_selector("#notice:has-text('Refused (HTTP 401)')")
        assert "log in with an admin token" in page.text_content("#notice")
        page.wait_for_selector("#login-form")
        assert queued(admin, "kept") == 3


def test_read_only_dashboard_refuses_changes(browser: Any, tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", http_port=free_port(),
                       dashboard_read_only="true") as broker, \
            Consumer("ro", "g", "127.0.0.1", broker.port), \
            Producer("ro", "127.0.0.1", broker.port) as producer:
        producer.publish("stays")
        context = browser.new_context()
        try:
            read_only = context.new_page()
            read_only.set_default_timeout(SHOWN_MS)
            read_only.goto(dashboard_url(broker) + "#/topic/ro")  # no auth: no login
            read_only.wait_for_selector("#groups-body tr[data-group=g]")
            assert read_only.is_visible("#mode")
            assert read_only.is_disabled("#purge") and read_only.is_disabled("#replay")
            answer = read_only.evaluate("""async () => {
                const r = await fetch('/api/topics/ro/purge', {method: 'POST',
                    headers: {'Content-Type': 'application/json',
                              'X-CSRF-Token': state.session.csrf},
                    body: JSON.stringify({confirm: true})});
                return [r.status, (await r.json()).error];
            }""")
            assert answer[0] == 403 and "read-only" in answer[1]
        finally:
            context.close()
