"""Answering Claude Code from the dashboard, in headless Debian Chromium: a real daemon
with decisions on and named tokens, the real hook waiting on it (``HookRun``). The
waiting PermissionRequest shows in "Needs you" with its buttons and a countdown; the
confirmation dialog shows the whole tool input; a page whose token lacks ``decide``
explains how to get one and answers nothing; a page with a decide token denies with a
message, the hook prints Claude Code's deny with it, and the item leaves the queue.
Screenshots go to tests/artifacts/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))
dash = pytest.importorskip("test_dashboard")  # skips without chromium/chromium-driver
browser = dash.browser  # the fixture
By, Keys, wait, js, shot = dash.By, dash.Keys, dash.wait, dash.js, dash.shot
from decision_client import HookRun  # noqa: E402 (after the skip)
from test_decisions import DECIDER, READER, config, permission  # noqa: E402

# A long input: the dialog must show all of it, not the queue's one-line summary.
LONG = "echo " + " ".join(f"part{n:03d}" for n in range(120)) + " > /tmp/ct-decide-out"
INPUT = {"command": LONG, "description": "write every part", "timeout": 12000}


def need_row(drv, sid: str):
    rows = drv.find_elements(By.CSS_SELECTOR, f'#needs-list li.answerable .need[data-session-id="{sid}"]')
    return rows[0].find_element(By.XPATH, "..") if rows else None


def open_page(drv, d, token: str) -> None:
    # `contextuate-trio open` carries the token in the fragment; the page keeps it in
    # the tab's sessionStorage (a new tab: a new token).
    drv.get(f"http://127.0.0.1:{d.port}/#token={token}")
    wait(drv, lambda b: "live" in b.find_element(By.ID, "conn").text, what="connected")


def open_deny(drv, sid: str) -> None:
    li = wait(drv, lambda b: need_row(b, sid), what="the answerable request listed")
    li.find_element(By.CSS_SELECTOR, 'button[data-choice="deny"]').click()
    wait(drv, lambda b: js(b, "return document.getElementById('decide').open"), what="the dialog open")
    wait(drv, lambda b: b.find_elements(By.ID, "decide-message"), what="the request loaded")


def dialog_text(drv) -> str:
    return js(drv, "return document.getElementById('decide').textContent")


def outcome(browser) -> str:
    """The dialog's outcome once there is one ("Sending…" shows while the answer is
    on its way: read too early, it failed the checks below now and then)."""
    text = browser.find_element(By.ID, "decide-outcome").text
    return "" if text.startswith("Sending") else text


def test_answer_a_permission_prompt_from_the_dashboard(daemon, home, browser):
    d = daemon(config(wait_ms=25_000))
    sid = "s-dash-dec"
    hook = HookRun(home, permission(sid, tool_input=INPUT))

    # --- a page whose token may read but not decide ---------------------------------------
    open_page(browser, d, READER)
    li = wait(browser, lambda b: need_row(b, sid), what="the answerable request listed")
    labels = [b.text for b in li.find_elements(By.CSS_SELECTOR, ".decide-bar button")]
    assert labels == ["Allow once", "Allow always", "Deny…"]
    left = li.find_element(By.CSS_SELECTOR, ".decide-bar .left")
    first = left.text
    assert first.endswith(" left"), first
    wait(browser, lambda b: need_row(b, sid).find_element(By.CSS_SELECTOR, ".left").text != first, what="the countdown")
    shot(browser, "dashboard-decisions-queue")

    open_deny(browser, sid)
    text = dialog_text(browser)
    assert "Bash" in text
    # The whole input, as JSON (the queue row shows only the start of it).
    shown = js(browser, "return document.querySelector('#decide-body pre.code').textContent")
    assert json.loads(shown) == INPUT
    assert "part119 > /tmp/ct-decide-out" in shown
    browser.find_element(By.ID, "decide-message").send_keys("no, not from this page")
    browser.find_element(By.ID, "decide-ok").click()
    out = wait(browser, lambda b: outcome(b), what="the outcome")
    assert "token cannot answer" in out and "decide scope" in out, out
    assert "contextuate-trio token add NAME --scopes read,decide" in out, out
    assert f"http://127.0.0.1:{d.port}/#token=" in out, out
    assert not browser.find_element(By.ID, "decide-ok").is_enabled()
    shot(browser, "dashboard-decisions-403")
    # Nothing was answered: the hook still waits, no decision event, still in the queue.
    assert hook.proc.poll() is None
    assert not [e for e in d.events(sid) if e["eventType"] == "decision"]
    items = d.get("/api/attention", headers={"Authorization": f"Bearer {READER}"})["items"]
    assert [i for i in items if i["sessionId"] == sid and i.get("decision")]
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)  # Esc closes it, like Close
    wait(browser, lambda b: not js(b, "return document.getElementById('decide').open"), what="the dialog closed")
    assert js(browser, "return window.__contextuate.filters.session") is None  # the page's own keys untouched

    # --- a page opened with a decide token ------------------------------------------------
    browser.switch_to.new_window("tab")
    open_page(browser, d, DECIDER)
    open_deny(browser, sid)
    assert json.loads(js(browser, "return document.querySelector('#decide-body pre.code').textContent")) == INPUT
    assert "Deny" in browser.find_element(By.ID, "decide-ok").text
    browser.find_element(By.ID, "decide-message").send_keys("not on main, use a branch")
    shot(browser, "dashboard-decisions-dialog")
    browser.find_element(By.ID, "decide-ok").click()
    out = hook.result(timeout=15)
    assert out == {
        "hookSpecificOutput": {
            "hookEventName": "PermissionRequest",
            "decision": {"behavior": "deny", "message": "not on main, use a branch"},
        }
    }
    wait(browser, lambda b: not js(b, "return document.getElementById('decide').open"), what="the dialog closed")
    wait(
        browser,
        lambda b: not b.find_elements(By.CSS_SELECTOR, f'#needs-list .need[data-session-id="{sid}"]'),
        what="gone",
    )

    # The answer is an event of the session: who denied what, shown in its detail.
    audit = wait_for(lambda: [e for e in d.events(sid) if e["eventType"] == "decision"], what="the audit event")
    assert audit[0]["data"]["by"] == "phone" and audit[0]["data"]["message"] == "not on main, use a branch"

    def decision_row(b):
        rows = b.find_elements(By.CSS_SELECTOR, '#stream .row[data-type="decision"]')
        return rows[0] if rows else None

    wait(browser, decision_row, what="the decision in the stream").click()
    wait(browser, lambda b: "Decision" in b.find_element(By.ID, "detail-body").text, what="the decision's detail")
    detail = browser.find_element(By.ID, "detail-body").text
    assert "Bash denied by phone" in detail and "not on main, use a branch" in detail, detail
    assert browser.find_element(By.ID, "detail-title").text.startswith("answered from the dashboard")
    shot(browser, "dashboard-decisions-detail")

    # The one refusal asked for (the read-only page's 403) is the only error logged.
    errors = [
        e
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and not ("/api/decisions" in e["message"] and "status of 403" in e["message"])
    ]
    assert not errors, errors


def test_accept_an_mcp_question_with_the_form(daemon, home, browser):
    d = daemon(config(wait_ms=20_000))
    sid = "s-dash-el"
    ask = {
        "session_id": sid,
        "hook_event_name": "Elicitation",
        "cwd": "/w",
        "prompt_id": "p1",
        "mcp_server_name": "paint",
        "message": "Pick a <b>color</b>",
        "mode": "form",
        "requested_schema": {
            "type": "object",
            "properties": {"color": {"type": "string", "title": "Colour"}, "coats": {"type": "integer"}},
            "required": ["color"],
        },
    }
    hook = HookRun(home, ask)
    open_page(browser, d, DECIDER)
    li = wait(browser, lambda b: need_row(b, sid), what="the question listed")
    labels = [b.text for b in li.find_elements(By.CSS_SELECTOR, ".decide-bar button")]
    assert labels == ["Accept…", "Decline", "Cancel"]
    li.find_element(By.CSS_SELECTOR, 'button[data-choice="accept"]').click()
    field = wait(
        browser, lambda b: b.find_elements(By.CSS_SELECTOR, '#decide-body input[name="color"]'), what="the form"
    )
    # The server's text is shown as text, never as markup.
    assert "Pick a <b>color</b>" in browser.find_element(By.ID, "decide-body").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#decide-body b")
    browser.find_element(By.ID, "decide-ok").click()  # the required field is empty: refused here
    assert "required" in wait(browser, lambda b: outcome(b), what="refused")
    assert hook.proc.poll() is None
    field[0].send_keys("blue")
    browser.find_element(By.CSS_SELECTOR, '#decide-body input[name="coats"]').send_keys("2")
    shot(browser, "dashboard-decisions-elicitation")
    field[0].send_keys(Keys.ENTER)  # Enter in the form confirms
    out = hook.result(timeout=15)
    assert out == {
        "hookSpecificOutput": {
            "hookEventName": "Elicitation",
            "action": "accept",
            "content": {"color": "blue", "coats": 2},
        }
    }
    wait(
        browser,
        lambda b: not b.find_elements(By.CSS_SELECTOR, f'#needs-list .need[data-session-id="{sid}"]'),
        what="gone",
    )
