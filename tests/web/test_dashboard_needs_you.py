"""The dashboard's "Needs you" panel, its browser notifications, and the readable stream
(assistant words, agent reports, denied / interrupted calls, turns folded), in headless
Debian Chromium over a real daemon process fed by the real hook. Screenshots go to
tests/artifacts/."""

from __future__ import annotations

import time

import pytest
from conftest import run_hook

dash = pytest.importorskip("test_dashboard")  # skips without chromium/chromium-driver
browser = dash.browser  # the fixture
By, wait, js, shot = dash.By, dash.wait, dash.js, dash.shot
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402 (after the skip)


def hook(home, payload: dict) -> None:
    r = run_hook(home, {"cwd": "/w", **payload}, {"HOSTNAME": "laptop-a"})
    assert r.returncode == 0 and r.stdout == b"", r


def need_rows(drv, session_id: str):
    return drv.find_elements(By.CSS_SELECTOR, f'#needs-list .need[data-session-id="{session_id}"]')


def queue_item(d, session_id: str) -> dict:
    return next(i for i in d.get("/api/attention")["items"] if i["sessionId"] == session_id)


def key_of(item: dict) -> str:
    return f"{item['sessionId']}|{item['reason']}|{item['since']}"


def stream_rows(drv, kind: str | None = None):
    """The stream's rows as (type, outcome, text) read in one go (rows are virtualised)."""
    return js(
        drv,
        """return [...document.querySelectorAll('#stream .row')]
             .filter(r => !arguments[0] || r.dataset.type === arguments[0])
             .map(r => [r.dataset.type, r.dataset.outcome || null, r.textContent]);""",
        kind,
    )


def test_needs_you_panel_and_notifications(daemon, home, browser):
    d = daemon()
    # Waiting before the page loads: listed, never notified.
    hook(
        home,
        {
            "session_id": "s-early",
            "hook_event_name": "Notification",
            "cwd": "/w/early",
            "notification_type": "idle_prompt",
            "message": "Claude is waiting for your input",
            "prompt_id": "p0",
        },
    )
    browser.get(f"http://127.0.0.1:{d.port}/")
    wait(browser, lambda b: "live" in b.find_element(By.ID, "conn").text, what="connected")
    wait(browser, lambda b: need_rows(b, "s-early"), what="the early wait listed")
    # The panel comes first: above the sessions and the stream.
    assert js(
        browser,
        "return document.querySelector('#needs').getBoundingClientRect().bottom"
        " <= document.querySelector('.layout').getBoundingClientRect().top + 1",
    )

    # A permission request is listed within 2 s, with the tool and its command.
    t0 = time.monotonic()
    hook(
        home,
        {
            "session_id": "s-perm",
            "hook_event_name": "PermissionRequest",
            "cwd": "/w",
            "tool_name": "Bash",
            "tool_input": {"command": "npm test"},
            "prompt_id": "p1",
        },
    )
    row = wait(browser, lambda b: need_rows(b, "s-perm"), timeout=5.0, what="the permission request listed")[0]
    assert time.monotonic() - t0 < 5.0  # the hook process included; the API's own bound is in test_needs_you
    assert "Bash npm test" in row.text and "permission" in row.text.lower()
    assert "laptop-a" in row.text
    # Longest wait first; the wait ticks every second.
    order = js(browser, "return [...document.querySelectorAll('#needs-list .need')].map(b => b.dataset.sessionId)")
    assert order == ["s-early", "s-perm"]
    first = row.find_element(By.CSS_SELECTOR, ".wait").text
    wait(
        browser,
        lambda b: need_rows(b, "s-perm")[0].find_element(By.CSS_SELECTOR, ".wait").text != first,
        timeout=6.0,
        what="the wait ticking",
    )
    shot(browser, "dashboard-needs-you")

    # The tool's result answers it: it leaves the panel.
    hook(
        home,
        {
            "session_id": "s-perm",
            "hook_event_name": "PostToolUse",
            "tool_name": "Bash",
            "tool_use_id": "toolu_perm_1",
            "tool_input": {"command": "npm test"},
            "tool_response": {"stdout": "ok", "stderr": ""},
            "prompt_id": "p1",
        },
    )
    wait(browser, lambda b: not need_rows(b, "s-perm"), timeout=6.0, what="the answered request gone")
    assert need_rows(browser, "s-early")

    # Notifications: granted through CDP, switched on with "Notify me".
    browser.execute_cdp_cmd(
        "Browser.grantPermissions", {"permissions": ["notifications"], "origin": f"http://127.0.0.1:{d.port}"}
    )
    button = browser.find_element(By.ID, "notify")
    assert button.text == "Notify me"
    button.click()
    wait(browser, lambda b: b.find_element(By.ID, "notify").get_attribute("aria-pressed") == "true", what="notify on")
    idle = {
        "session_id": "s-idle",
        "hook_event_name": "Notification",
        "cwd": "/w/idle",
        "notification_type": "idle_prompt",
        "message": "Claude is waiting for your input",
        "prompt_id": "p2",
    }
    hook(home, idle)
    key = key_of(queue_item(d, "s-idle"))
    wait(browser, lambda b: key in (js(b, "return window.__ctNotified") or []), timeout=5.0, what="notified")
    notified = js(browser, "return window.__ctNotified")
    assert notified.count(key) == 1
    assert key_of(queue_item(d, "s-early")) not in notified  # present at page load
    assert not any(k.startswith("s-perm|") for k in notified)  # came and went before "Notify me"
    # A refresh after the same wait said again never notifies the same key twice.
    before = js(browser, "return window.__contextuate.needs.fetchedAt")
    hook(home, idle)
    wait(browser, lambda b: js(b, "return window.__contextuate.needs.fetchedAt") > before, what="a refresh")
    assert js(browser, "return window.__ctNotified").count(key) == 1

    # Clicking an item selects its session in the rest of the page.
    need_rows(browser, "s-idle")[0].click()
    wait(browser, lambda b: js(b, "return window.__contextuate.filters.session") == "s-idle", what="selected")
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, '#tree .node.sel[data-id="s-idle"]'), what="tree sel")
    shot(browser, "dashboard-needs-you-notified")

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_readable_events_outcomes_and_turns(daemon, home, browser):
    d = daemon()
    browser.get(f"http://127.0.0.1:{d.port}/")
    wait(browser, lambda b: "live" in b.find_element(By.ID, "conn").text, what="connected")
    wait(browser, lambda b: b.find_element(By.ID, "needs-empty").is_displayed(), what="the empty line")
    assert browser.find_element(By.ID, "needs-empty").text == "Nobody is waiting for you"

    sid = "s-read"
    # An earlier turn, then the current one.
    hook(home, {"session_id": sid, "hook_event_name": "UserPromptSubmit", "prompt": "first turn", "prompt_id": "t1"})
    for n in range(3):
        hook(
            home,
            {
                "session_id": sid,
                "hook_event_name": "PreToolUse",
                "tool_name": "Read",
                "tool_use_id": f"toolu_r{n}",
                "tool_input": {"file_path": f"/w/f{n}.py"},
                "prompt_id": "t1",
            },
        )
        hook(
            home,
            {
                "session_id": sid,
                "hook_event_name": "PostToolUse",
                "tool_name": "Read",
                "tool_use_id": f"toolu_r{n}",
                "tool_input": {"file_path": f"/w/f{n}.py"},
                "tool_response": {"file": {"content": "x"}},
                "prompt_id": "t1",
            },
        )
    hook(home, {"session_id": sid, "hook_event_name": "UserPromptSubmit", "prompt": "second turn", "prompt_id": "t2"})
    # A denied call (PermissionDenied) and one left open when the turn ends (interrupted).
    for tid, cmd in (("toolu_deny", "rm -rf build"), ("toolu_esc", "sleep 100")):
        hook(
            home,
            {
                "session_id": sid,
                "hook_event_name": "PreToolUse",
                "tool_name": "Bash",
                "tool_use_id": tid,
                "tool_input": {"command": cmd},
                "prompt_id": "t2",
            },
        )
        if tid == "toolu_deny":
            hook(
                home,
                {
                    "session_id": sid,
                    "hook_event_name": "PermissionDenied",
                    "tool_name": "Bash",
                    "tool_use_id": tid,
                    "tool_input": {"command": cmd},
                    "reason": "blocked by a rule",
                    "prompt_id": "t2",
                },
            )
    hook(
        home,
        {
            "session_id": sid,
            "hook_event_name": "MessageDisplay",
            "turn_id": "u1",
            "message_id": "m1",
            "index": 0,
            "final": True,
            "delta": "All 42 tests pass, the build is clean.",
            "prompt_id": "t2",
        },
    )
    hook(
        home,
        {
            "session_id": sid,
            "hook_event_name": "Stop",
            "stop_hook_active": False,
            "last_assistant_message": "All 42 tests pass, the build is clean.",
            "prompt_id": "t2",
        },
    )
    hook(
        home,
        {
            "session_id": sid,
            "hook_event_name": "UserPromptSubmit",
            "prompt": (
                "<task-notification>\n<task-id>a1b2c3</task-id>\n<status>completed</status>\n"
                '<summary>Agent "Scan the logs" finished</summary>\n<result>no errors found</result>\n'
                "</task-notification>"
            ),
            "prompt_id": "t3",
        },
    )

    # The assistant's words and the agent's report, readable in the stream.
    def has_row(kind, text):
        return lambda b: any(text in r[2] for r in stream_rows(b, kind))

    wait(
        browser,
        lambda b: any(
            "All 42 tests pass, the build is clean." in r[2] and "assistant" in r[2]
            for r in stream_rows(b, "message_display")
        ),
        what="the assistant's words, said to be its",
    )
    wait(browser, has_row("agent_report", 'report from agent "Scan the logs": no errors found'), what="agent report")
    # Denied and interrupted calls say so (not running forever).
    wait(
        browser,
        lambda b: {r[1] for r in stream_rows(b, "tool_call") if "Bash" in r[2]} == {"denied", "interrupted"},
        what="denied and interrupted calls",
    )
    outcomes = {r[2].split("Bash", 1)[-1].strip(): r[1] for r in stream_rows(browser, "tool_call") if "Bash" in r[2]}
    assert any("rm -rf build" in k and v == "denied" for k, v in outcomes.items()), outcomes
    assert any("sleep 100" in k and v == "interrupted" for k, v in outcomes.items()), outcomes

    # The session list: the assistant's last words.
    def tree_node(b):
        return b.find_elements(By.CSS_SELECTOR, f'#tree .node[data-id="{sid}"]')

    wait(browser, lambda b: any("All 42 tests pass" in n.text for n in tree_node(b)), what="lastMessage in the tree")

    # Selecting the session folds its turns under their prompts: the newest open, older ones folded.
    # (The tree re-renders as events arrive: the node is found again at the click.)
    def click_node(b):
        try:
            tree_node(b)[0].click()
            return True
        except (IndexError, StaleElementReferenceException):
            return False

    wait(browser, click_node, what="the session clicked")
    wait(browser, lambda b: js(b, "return window.__contextuate.filters.session") == sid)
    heads = wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#stream .row.turn-head"), what="turn heads")
    assert len(heads) == 3
    texts = [r[2] for r in stream_rows(browser)]
    assert not any("/w/f1.py" in t or "rm -rf build" in t for t in texts), texts  # folded
    assert "▸ 7" in next(t for t in texts if "first turn" in t)  # the prompt and its six tool events
    assert "▸ 6" in next(t for t in texts if "second turn" in t)
    assert "▾ 1" in next(t for t in texts if "report from agent" in t)  # the newest turn, open

    def unfold(text):
        def go(b):
            for h in b.find_elements(By.CSS_SELECTOR, "#stream .row.turn-head"):
                if text in h.text:
                    h.find_element(By.CSS_SELECTOR, ".fold").click()
                    return True
            return False

        wait(browser, go, what=f"unfold {text}")

    unfold("first turn")
    wait(browser, lambda b: any("/w/f1.py" in r[2] for r in stream_rows(b)), what="the first turn unfolded")
    unfold("second turn")
    wait(browser, lambda b: any("rm -rf build" in r[2] for r in stream_rows(b)), what="the second turn unfolded")

    # The denied call's detail says why.
    def click_denied(b):
        for r in b.find_elements(By.CSS_SELECTOR, '#stream .row[data-outcome="denied"]'):
            r.click()
            return True
        return False

    if browser.find_element(By.ID, "follow").get_attribute("aria-pressed") != "true":
        browser.find_element(By.ID, "follow").click()  # back to the newest rows
    wait(browser, click_denied, what="the denied call")
    body = wait(
        browser, lambda b: b.find_element(By.ID, "detail").is_displayed() and b.find_element(By.ID, "detail-body")
    )
    wait(browser, lambda b: "blocked by a rule" in body.text, what="the denial's reason")
    shot(browser, "dashboard-turns")

    # A background agent still running: "waiting on 1 background agent", not "turn ended".
    hook(
        home,
        {
            "session_id": "s-bg",
            "hook_event_name": "Stop",
            "stop_hook_active": False,
            "last_assistant_message": "Launched it.",
            "background_tasks": [{"id": "agent9", "type": "subagent", "status": "running", "agent_type": "Explore"}],
            "prompt_id": "b1",
        },
    )
    wait(
        browser,
        lambda b: any(
            "waiting on 1 background agent" in n.text
            for n in b.find_elements(By.CSS_SELECTOR, '#tree .node[data-id="s-bg"]')
        ),
        what="waiting on background agents",
    )
    assert "turn ended" not in browser.find_element(By.CSS_SELECTOR, '#tree .node[data-id="s-bg"]').text
    shot(browser, "dashboard-background-agents")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
