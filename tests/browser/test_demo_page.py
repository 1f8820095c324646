"""The demo page in a real browser against the real demo server (see conftest.py)."""

from __future__ import annotations

import re
import shutil
import urllib.request
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DOCS_SCREENSHOT, SCREENSHOT, DemoServer, update_docs_screenshot

pytestmark = pytest.mark.browser

# Records every value each task's progress bar shows, from the first paint on, so a test
# can check what the page displayed over time without polling it.
RECORD_PROGRESS = """
(() => {
  window.__progress = {};
  const record = () => {
    for (const bar of document.querySelectorAll('[data-testid="task-progress"]')) {
      const id = bar.closest('[data-task-id]')?.getAttribute('data-task-id');
      const value = Number(bar.getAttribute('aria-valuenow'));
      if (!id) continue;
      const seen = (window.__progress[id] ??= []);
      if (seen[seen.length - 1] !== value) seen.push(value);
    }
  };
  const observe = () => {
    record();
    new MutationObserver(record).observe(document.body, {
      subtree: true, childList: true, attributes: true, attributeFilter: ['aria-valuenow'],
    });
  };
  if (document.body) observe(); else document.addEventListener('DOMContentLoaded', observe);
})();
"""

LONG = 25_000  # ms: a task that is still running whatever a test does meanwhile

# A browser without WebSocket: the page must use the event stream (SSE) from the start.
NO_WEBSOCKET = "delete window.WebSocket;"

# WebSockets that never open, as behind a proxy that drops the upgrade: every socket the page
# makes asks for a path the server has no WebSocket on, so the handshake is refused.
WEBSOCKET_BLOCKED = """
(() => {
  const Real = window.WebSocket;
  window.WebSocket = class extends Real {
    constructor(url, protocols) {
      super(String(url).replace(/\\/ws$/, '/no-websocket-here'), protocols);
    }
  };
})();
"""


# --- helpers --------------------------------------------------------------------------------


def status(page: Any) -> Any:
    return page.get_by_test_id("connection-status")


def wait_connected(page: Any) -> None:
    expect(status(page)).to_have_text("connected")
    expect(page.get_by_test_id("client-id")).not_to_have_text("—")


def wait_connected_over_event_stream(page: Any) -> None:
    expect(status(page)).to_have_text("connected (event stream)")
    expect(status(page)).to_have_attribute("data-transport", "eventsource")
    expect(page.get_by_test_id("client-id")).not_to_have_text("—")


def task_item(page: Any, name: str) -> Any:
    return page.get_by_test_id("task-item").filter(has=page.get_by_test_id("task-title").get_by_text(name, exact=True))


def start_task(page: Any, name: str, duration: int) -> str:
    """Fills the form as a person would, submits it and returns the new task's id."""
    page.get_by_label("Name").fill(name)
    page.get_by_label("Duration (ms)").fill(str(duration))
    page.get_by_role("button", name="Start task").click()
    item = task_item(page, name)
    expect(item).to_have_count(1)
    task_id = item.get_attribute("data-task-id")
    assert task_id
    return str(task_id)


def by_id(page: Any, task_id: str) -> Any:
    return page.locator(f'[data-testid="task-item"][data-task-id="{task_id}"]')


def progress_of(page: Any, task_id: str) -> float:
    value = by_id(page, task_id).get_by_role("progressbar").get_attribute("aria-valuenow")
    return float(value)


def wait_progress_above(page: Any, task_id: str, floor: float) -> None:
    page.wait_for_function(
        """([id, floor]) => {
          const bar = document.querySelector(`[data-task-id="${id}"] [role="progressbar"]`);
          return bar !== null && Number(bar.getAttribute('aria-valuenow')) > floor;
        }""",
        arg=[task_id, floor],
    )


def history(page: Any, task_id: str) -> list[float]:
    return list(page.evaluate("(id) => window.__progress[id] ?? []", task_id))


def recorded(page: Any) -> Any:
    page.context.add_init_script(RECORD_PROGRESS)
    page.reload()
    return page


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("demo_framework", ["starlette", "litestar"])
def test_task_progress_streams_live_to_completed(page: Any) -> None:
    recorded(page)
    wait_connected(page)
    task_id = start_task(page, "Resize photos", 3000)
    item = by_id(page, task_id)

    expect(item.get_by_test_id("task-status")).to_have_text("completed", timeout=30_000)
    expect(item.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    expect(item.get_by_test_id("task-percent")).to_have_text("100%")
    expect(item.get_by_test_id("cancel-button")).to_have_count(0)

    seen = history(page, task_id)
    assert seen[-1] == 100
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert len([v for v in seen if 0 < v < 100]) >= 3, f"no live progress between 0 and 100: {seen}"
    expect(page.get_by_test_id("event-log")).to_contain_text("Completed “Resize photos”")


@pytest.mark.parametrize("demo_framework", ["starlette", "litestar"])
def test_tasks_of_one_tab_never_appear_in_another(new_page: Any) -> None:
    alice, bob = new_page(), new_page()
    wait_connected(alice)
    wait_connected(bob)
    assert alice.get_by_test_id("client-id").inner_text() != bob.get_by_test_id("client-id").inner_text()

    alpha = start_task(alice, "Alpha job", 3000)
    beta = start_task(bob, "Beta job", 3000)
    expect(by_id(alice, alpha).get_by_test_id("task-status")).to_have_text("completed", timeout=30_000)
    expect(by_id(bob, beta).get_by_test_id("task-status")).to_have_text("completed", timeout=30_000)

    assert alice.get_by_test_id("task-title").all_inner_texts() == ["Alpha job"]
    assert bob.get_by_test_id("task-title").all_inner_texts() == ["Beta job"]
    assert "Alpha" not in bob.get_by_test_id("event-log").inner_text()
    assert "Beta" not in alice.get_by_test_id("event-log").inner_text()


@pytest.mark.parametrize("demo_framework", ["starlette", "litestar"])
def test_refresh_keeps_identity_and_task_progress_continues(page: Any) -> None:
    recorded(page)
    wait_connected(page)
    client_id = page.get_by_test_id("client-id").inner_text()
    socket_id = page.get_by_test_id("socket-id").inner_text()
    task_id = start_task(page, "Long upload", 10_000)
    wait_progress_above(page, task_id, 15)
    before = progress_of(page, task_id)

    page.reload()

    expect(by_id(page, task_id)).to_have_count(1)
    wait_connected(page)
    expect(page.get_by_test_id("client-id")).to_have_text(client_id)
    expect(page.get_by_test_id("socket-id")).not_to_have_text(socket_id)
    wait_progress_above(page, task_id, before + 10)
    expect(by_id(page, task_id).get_by_test_id("task-status")).to_have_text("completed", timeout=30_000)

    seen = history(page, task_id)
    assert min(seen) >= before, f"the reloaded page showed the task from scratch: {seen}"
    assert seen[-1] == 100
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert page.get_by_test_id("task-item").count() == 1


def test_page_reconnects_by_itself_when_the_server_comes_back(page: Any, demo_server: DemoServer) -> None:
    wait_connected(page)
    task_id = start_task(page, "Interrupted", LONG)
    wait_progress_above(page, task_id, 0)

    demo_server.stop(kill=True)
    expect(status(page)).to_have_text(re.compile(r"^(reconnecting|disconnected)$"))
    expect(page.get_by_test_id("socket-id")).to_have_text("—")

    demo_server.start()
    expect(status(page)).to_have_text("connected", timeout=45_000)
    expect(page.get_by_test_id("socket-id")).not_to_have_text("—")

    # The reconnected page works: a new task streams to completion.
    after = start_task(page, "After the restart", 2000)
    expect(by_id(page, after).get_by_test_id("task-status")).to_have_text("completed", timeout=30_000)
    log = page.get_by_test_id("event-log")
    expect(log).to_contain_text("Connection lost")
    expect(log).to_contain_text("Reconnecting in")


@pytest.mark.parametrize("demo_framework", ["starlette", "litestar"])
def test_without_websocket_the_page_streams_over_the_event_stream(new_page: Any) -> None:
    page = new_page(init_scripts=[NO_WEBSOCKET, RECORD_PROGRESS])
    assert page.evaluate("typeof WebSocket") == "undefined"
    wait_connected_over_event_stream(page)
    expect(page.get_by_test_id("event-log")).to_contain_text("using the event stream")

    task_id = start_task(page, "Over the event stream", 3000)
    item = by_id(page, task_id)
    expect(item.get_by_test_id("task-status")).to_have_text("completed", timeout=30_000)
    expect(item.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    expect(item.get_by_test_id("task-percent")).to_have_text("100%")
    seen = history(page, task_id)
    assert seen[-1] == 100
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert len([v for v in seen if 0 < v < 100]) >= 3, f"no live progress between 0 and 100: {seen}"

    # Ping has no socket to go over: it times a request to the server instead.
    page.get_by_role("button", name="Ping").click()
    expect(page.get_by_test_id("ping-result")).to_have_text(re.compile(r"round trip \d+(\.\d+)? (ms|s)"))


@pytest.mark.parametrize("demo_framework", ["starlette", "litestar"])
def test_event_stream_reload_keeps_identity_and_task_progress_continues(new_page: Any) -> None:
    page = new_page(init_scripts=[NO_WEBSOCKET, RECORD_PROGRESS])
    wait_connected_over_event_stream(page)
    client_id = page.get_by_test_id("client-id").inner_text()
    socket_id = page.get_by_test_id("socket-id").inner_text()
    task_id = start_task(page, "Long upload over SSE", 10_000)
    wait_progress_above(page, task_id, 15)
    before = progress_of(page, task_id)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    page.reload()

    expect(by_id(page, task_id)).to_have_count(1)
    wait_connected_over_event_stream(page)
    expect(page.get_by_test_id("client-id")).to_have_text(client_id)
    expect(page.get_by_test_id("socket-id")).not_to_have_text(socket_id)
    expect(page.get_by_test_id("event-log")).to_contain_text(f"resumed identity {client_id[:8]}")
    # The resumed stream named the identity by a cookie: no URL the page requested holds the
    # id (access logs write URLs down).
    streams = [url for url in requested if "/api/events" in url]
    assert any("stream=" in url for url in streams), streams
    assert not [url for url in requested if client_id in url], requested
    wait_progress_above(page, task_id, before + 10)
    expect(by_id(page, task_id).get_by_test_id("task-status")).to_have_text("completed", timeout=30_000)

    seen = history(page, task_id)
    assert min(seen) >= before, f"the reloaded page showed the task from scratch: {seen}"
    assert seen[-1] == 100
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert page.get_by_test_id("task-item").count() == 1


def test_websocket_that_never_opens_falls_back_to_the_event_stream(new_page: Any) -> None:
    page = new_page(init_scripts=[WEBSOCKET_BLOCKED])
    wait_connected_over_event_stream(page)
    expect(page.get_by_test_id("event-log")).to_contain_text("switched to the event stream")
    task_id = start_task(page, "After the fallback", 2000)
    expect(by_id(page, task_id).get_by_test_id("task-status")).to_have_text("completed", timeout=30_000)
    item = by_id(page, task_id)
    expect(item.get_by_test_id("task-percent")).to_have_text("100%")


def test_failing_task_shows_its_error(page: Any) -> None:
    wait_connected(page)
    task_id = start_task(page, "Please fail now", 2000)
    item = by_id(page, task_id)
    expect(item.get_by_test_id("task-status")).to_have_text("failed", timeout=30_000)
    error = item.get_by_test_id("task-error")
    expect(error).to_be_visible()
    expect(error).to_have_text(re.compile(r"\w{3,}"))
    assert progress_of(page, task_id) < 100
    expect(item.get_by_test_id("cancel-button")).to_have_count(0)
    expect(page.get_by_test_id("event-log")).to_contain_text("Failed “Please fail now”")


def test_cancel_shows_cancelled(page: Any) -> None:
    wait_connected(page)
    task_id = start_task(page, "Cancel me", LONG)
    item = by_id(page, task_id)
    expect(item.get_by_test_id("task-status")).to_have_text(re.compile(r"^(queued|running)$"))
    item.get_by_role("button", name="Cancel Cancel me").click()
    expect(item.get_by_test_id("task-status")).to_have_text("cancelled")
    expect(item.get_by_test_id("cancel-button")).to_have_count(0)
    assert progress_of(page, task_id) < 100


@pytest.mark.parametrize("duration", ["500", "999", "30001", "abc", "12.5", ""])
def test_invalid_duration_is_refused_and_nothing_is_sent(page: Any, duration: str) -> None:
    wait_connected(page)
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if "/api/task/start" in request.url else None)

    page.get_by_label("Name").fill("Never sent")
    field = page.get_by_label("Duration (ms)")
    field.fill(duration)
    page.get_by_role("button", name="Start task").click()

    message = page.get_by_test_id("duration-error")
    expect(message).to_be_visible()
    expect(message).to_have_text(re.compile(r"\S"))
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_be_focused()
    expect(page.get_by_test_id("task-item")).to_have_count(0)
    assert sent == []

    # The same form sends once the value is right (so the check above could have seen a request),
    # and the keyboard is enough to submit it.
    field.fill("1000")
    expect(message).to_have_count(0)
    field.press("Enter")
    expect(task_item(page, "Never sent")).to_have_count(1)
    assert len(sent) == 1


def test_empty_name_is_refused(page: Any) -> None:
    wait_connected(page)
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if "/api/task/start" in request.url else None)
    page.get_by_label("Name").fill("   ")
    page.get_by_role("button", name="Start task").click()
    expect(page.get_by_test_id("name-error")).to_be_visible()
    expect(page.get_by_label("Name")).to_be_focused()
    assert sent == []


def test_ping_shows_round_trip_time(page: Any) -> None:
    wait_connected(page)
    page.get_by_role("button", name="Ping").click()
    expect(page.get_by_test_id("ping-result")).to_have_text(re.compile(r"round trip \d+(\.\d+)? (ms|s)"))


def test_usable_at_phone_width(new_page: Any) -> None:
    page = new_page(width=375, height=740)
    wait_connected(page)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at phone width"
    task_id = start_task(page, "From a phone", 2000)
    expect(by_id(page, task_id).get_by_test_id("task-status")).to_have_text("completed", timeout=30_000)
    box = by_id(page, task_id).bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 375


def test_page_is_prerendered_with_real_content(browser: Any, demo_server: DemoServer) -> None:
    request = urllib.request.Request(demo_server.url + "/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        html = answer.read().decode()
    assert "<style" in html, "styles are not inlined: the first paint would be unstyled"
    assert 'data-testid="task-form"' in html
    assert '<label for="task-duration"' in html

    # Without JavaScript, the page still shows its whole layout, styled.
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(demo_server.url + "/")
        expect(page.get_by_role("heading", name="Start a task")).to_be_visible()
        expect(page.get_by_label("Duration (ms)")).to_be_visible()
        expect(page.get_by_test_id("tasks-empty")).to_have_text(re.compile(r"\S"))
        radius = page.locator(".card").first.evaluate("el => getComputedStyle(el).borderTopLeftRadius")
        assert radius != "0px", "the card is unstyled before hydration"
    finally:
        context.close()


def test_screenshot_with_tasks_in_flight(new_page: Any) -> None:
    page = new_page(width=1280, height=900)
    wait_connected(page)
    transcode = start_task(page, "Transcode video", LONG)
    resize = start_task(page, "Resize holiday photos", 15_000)
    failing = start_task(page, "Import that will fail", 3000)
    quick = start_task(page, "Send newsletter", 2000)
    expect(by_id(page, failing).get_by_test_id("task-status")).to_have_text("failed", timeout=30_000)
    expect(by_id(page, quick).get_by_test_id("task-status")).to_have_text("completed", timeout=30_000)
    wait_progress_above(page, resize, 30)
    page.get_by_role("button", name="Ping").click()
    expect(page.get_by_test_id("ping-result")).to_contain_text("round trip")
    for task_id in (transcode, resize):
        expect(by_id(page, task_id).get_by_test_id("task-status")).to_have_text("running")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True, animations="disabled")
    assert SCREENSHOT.stat().st_size > 10_000
    if update_docs_screenshot():
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCREENSHOT, DOCS_SCREENSHOT)
