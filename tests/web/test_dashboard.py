"""The dashboard in headless Debian Chromium (selenium + chromedriver from Debian's packages),
over a real daemon process fed by the real hook. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import load_fixture, replay_fixture, run_hook

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

webdriver = pytest.importorskip("selenium.webdriver")
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("needs Debian's chromium and chromium-driver (make test-deps)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="ct-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1440,900",
        "--force-color-profile=srgb",
    ):
        opts.add_argument(flag)
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    drv.set_page_load_timeout(20)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(drv, cond, timeout=10.0, what="condition"):
    from selenium.common.exceptions import StaleElementReferenceException

    return WebDriverWait(drv, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: cond(d), message=what
    )


def js(drv, script, *args):
    return drv.execute_script(script, *args)


def shot(drv, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    drv.save_screenshot(str(path))
    return path


def test_dashboard_tree_live_filter_detail_reconnect(daemon, home, browser):
    d = daemon()
    # Two fixture sessions through the real hook, one on a second machine.
    replay_fixture(home, "session-with-subagent")
    replay_fixture(home, "older-claude-code-task-tool", {"HOSTNAME": "build-box"})
    parent = load_fixture("session-with-subagent")[0]["stdin"]["session_id"]

    browser.get(f"http://127.0.0.1:{d.port}/")
    wait(browser, lambda b: "live" in b.find_element(By.ID, "conn").text, what="connected")
    # The tree: the parent, and its sub-agent nested under it.
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, f'.node[data-id="{parent}"]'), what="parent node")
    kids = wait(
        browser,
        lambda b: b.find_elements(By.XPATH, f'//li[div[@data-id="{parent}"]]/ul/li/div[contains(@class,"node")]'),
        what="child node",
    )
    assert kids and "Explore" in kids[0].text
    machines = browser.find_element(By.ID, "machines").text
    assert "laptop-a" in machines and "build-box" in machines

    # A hook run appears live within a second.
    before = js(browser, "return window.__contextuate.events.length")
    t0 = time.monotonic()
    r = run_hook(
        home,
        {
            "session_id": parent,
            "hook_event_name": "PreToolUse",
            "tool_name": "Bash",
            "cwd": "/home/dev/projects/shop-api",
            "tool_use_id": "toolu_live_1",
            "tool_input": {"command": "pytest -q tests/test_live_marker.py"},
        },
        {"HOSTNAME": "laptop-a"},
    )
    assert r.returncode == 0
    wait(browser, lambda b: "test_live_marker" in b.find_element(By.ID, "stream").text, what="live row")
    assert time.monotonic() - t0 < 1.5
    assert js(browser, "return window.__contextuate.events.length") == before + 1

    # A filter narrows the stream.
    all_rows = js(browser, "return document.querySelectorAll('#stream .row').length")
    browser.find_element(By.ID, "q").send_keys("test_live_marker")
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#stream .row")) == 1, what="one row")
    assert all_rows > 1
    browser.find_element(By.ID, "clear").click()
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "f-machine")).select_by_value("build-box")
    shown = js(browser, "return window.__contextuate.events.filter(e => e.machineId === 'build-box').length")
    total = js(browser, "return window.__contextuate.events.length")
    assert 0 < shown < total
    wait(
        browser,
        lambda b: js(b, "return document.querySelector('#stream-count').textContent").startswith(f"{shown} of"),
        what="the stream narrowed to build-box",
    )
    browser.find_element(By.ID, "clear").click()

    # Expanding an event shows its detail: the Read call joined to its result.
    browser.find_element(By.ID, "q").send_keys("Read /home/dev/projects/shop-api/tests/test_checkout")

    def click_read_call(b):
        for r in b.find_elements(By.CSS_SELECTOR, "#stream .row"):
            if "tool call" in r.text and "Read" in r.text:
                r.click()
                return True
        return False

    wait(browser, click_read_call, what="Read row")
    detail = wait(
        browser, lambda b: b.find_element(By.ID, "detail").is_displayed() and b.find_element(By.ID, "detail-body")
    )
    try:
        wait(browser, lambda b: "assert total() == 42" in detail.text, what="joined output")
    finally:
        shot(browser, "dashboard")
    assert "test_checkout.py" in detail.text and "Output" in detail.text
    shot(browser, "dashboard")

    # Keyboard: Escape closes the detail; / focuses search.
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait(browser, lambda b: not b.find_element(By.ID, "detail").is_displayed())
    browser.find_element(By.TAG_NAME, "body").send_keys("/")
    assert browser.switch_to.active_element.get_attribute("id") == "q"
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    browser.find_element(By.ID, "clear").click()

    # Reconnect: restart the daemon; the page comes back by itself and shows new events.
    d.stop()
    wait(browser, lambda b: "live" not in b.find_element(By.ID, "conn").text, what="disconnected")
    d.start()
    r = run_hook(
        home,
        {
            "session_id": parent,
            "hook_event_name": "UserPromptSubmit",
            "cwd": "/home/dev/projects/shop-api",
            "prompt": "after the restart marker",
        },
        {"HOSTNAME": "laptop-a"},
    )
    wait(browser, lambda b: "live" in b.find_element(By.ID, "conn").text, timeout=15, what="reconnected")
    wait(
        browser,
        lambda b: "after the restart marker" in b.find_element(By.ID, "stream").text,
        timeout=10,
        what="event after reconnect",
    )
    errors = [
        e
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and "WebSocket" not in e["message"] and "ERR_CONNECTION_REFUSED" not in e["message"]
    ]
    assert not errors, errors


def test_dashboard_stays_smooth_with_50000_events(daemon, home, browser):
    d = daemon()
    replay_fixture(home, "session-with-subagent")
    browser.get(f"http://127.0.0.1:{d.port}/")
    wait(browser, lambda b: "live" in b.find_element(By.ID, "conn").text)
    # 50,000 events through the page's own message path, in batches like the server's.
    took = js(
        browser,
        """
      const base = window.__contextuate.events[0];
      const t0 = performance.now();
      const now = Date.now();
      for (let b = 0; b < 100; b++) {
        const events = [];
        for (let i = 0; i < 500; i++) {
          const n = b * 500 + i;
          events.push({...base, id: 'bulk-' + n, timestamp: now - 3600000 + n * 70, eventType: 'tool_call',
                       toolName: ['Bash', 'Read', 'Edit', 'Grep'][n % 4], summary: 'Bash echo ' + n});
        }
        window.__contextuate_push({type: 'events', seq: 1000 + b, events});
      }
      return performance.now() - t0;""",
    )
    rows = js(browser, "return document.querySelectorAll('#stream .row').length")
    assert js(browser, "return window.__contextuate.events.length") >= 50000
    assert rows < 200, f"{rows} rows in the DOM: not virtualised"
    assert took < 5000, f"adding 50,000 events took {took:.0f} ms"
    # Filtering and scrolling 50k stays quick.
    t = js(
        browser,
        """
      const t0 = performance.now();
      const q = document.querySelector('#q'); q.value = 'echo 4999'; q.dispatchEvent(new Event('input'));
      return performance.now() - t0;""",
    )
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#stream .row")) >= 1)
    assert t < 1000
    shot(browser, "dashboard-50k")
