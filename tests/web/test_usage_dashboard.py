"""The dashboard shows tokens and cost: tree badges (own and with sub-agents), the
per-machine totals, the cost-over-time chart and the selected session's breakdown."""

from __future__ import annotations

import os
import time

import pytest
from conftest import run_hook, wait_for
from transcripts_data import SID, SUB_LINES, TURN, dump, payload, write

dash = pytest.importorskip("test_dashboard")  # skips without chromium/chromium-driver
browser = dash.browser  # the fixture
By = dash.By


def test_dashboard_shows_cost_per_session_sub_agent_and_machine(home, daemon, browser):
    d = daemon()
    main = os.path.join(home, "t", SID + ".jsonl")
    sub = os.path.join(home, "t", SID, "subagents", "agent-a1.jsonl")
    # Stamped now, so they fall in the chart's last 24 hours.
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    stamp = lambda lines: [dict(x, timestamp=now) for x in lines]  # noqa: E731
    write(main, dump(stamp(TURN)))
    write(sub, dump(stamp(SUB_LINES)))
    run_hook(home, payload("SubagentStop", main, agent_id="a1", agent_type="Explore", agent_transcript_path=sub))
    run_hook(home, payload("Stop", main))
    wait_for(
        lambda: (d.sessions().get(SID) or {}).get("usageTotal", {}) and d.sessions()[SID]["usageTotal"]["calls"] == 4,
        what="usage",
    )
    logs = []
    browser.get(f"http://127.0.0.1:{d.port}/")
    badge = dash.wait(
        browser,
        lambda b: (
            [e.text for e in b.find_elements(By.CSS_SELECTOR, "#tree .usage-badge")]
            if len(b.find_elements(By.CSS_SELECTOR, "#tree .usage-badge")) >= 2
            else None
        ),
        what="cost badges in the tree",
    )
    # Parent: $0.030645 + $0.002652 with its sub-agent; the sub-agent alone $0.002652.
    assert "$0.033 Σ" in badge and "$0.0027" in badge, badge
    chips = dash.wait(
        browser, lambda b: b.find_element(By.CSS_SELECTOR, ".usage-machines").text or None, what="machine totals"
    )
    assert "all machines" in chips and "$0.033" in chips and "45.7k tok" in chips
    dash.wait(
        browser,
        lambda b: (
            dash.js(b, "return document.querySelector('.usage-legend').textContent").find("claude-sonnet-4-5") >= 0
        ),
        what="chart legend",
    )
    browser.find_element(By.CSS_SELECTOR, f'#tree .node[data-id="{SID}"] .title').click()
    table = dash.wait(
        browser,
        lambda b: b.find_element(By.CSS_SELECTOR, ".usage-breakdown").text or None,
        what="the selected session's breakdown",
    )
    assert "Explore" in table and "total" in table and "$0.033" in table
    for entry in browser.get_log("browser") if hasattr(browser, "get_log") else []:
        if entry.get("level") == "SEVERE":
            logs.append(entry)
    assert not logs, logs
    dash.shot(browser, "usage")
