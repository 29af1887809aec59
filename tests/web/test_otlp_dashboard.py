"""The dashboard shows Claude Code's own OpenTelemetry of the selected session: where
its cost comes from, its figures, and each turn's spans as a timeline (otel.js)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from conftest import FIXTURES, wait_for
from test_otlp import post

dash = pytest.importorskip("test_dashboard")  # skips without chromium/chromium-driver
browser = dash.browser  # the fixture
By = dash.By


def test_selected_session_shows_usage_source_figures_and_turn_timeline(daemon, browser):
    d = daemon()
    for f in sorted((FIXTURES / "otel" / "subagent").glob("*.json")):
        signal = f.stem.split("-", 1)[1]
        status, _, answer = post(
            d, f"/v1/{signal}", gzip.compress(f.read_bytes()), headers={"Content-Encoding": "gzip"}
        )
        assert status == 200, answer
    sessions = wait_for(lambda: len(d.sessions()) == 2 and d.sessions(), what="the OTel sessions")
    (sid,) = [s for s, v in sessions.items() if not v.get("parentSessionId")]
    browser.get(f"http://127.0.0.1:{d.port}/")
    dash.wait(
        browser, lambda b: b.find_elements(By.CSS_SELECTOR, f'#tree .node[data-id="{sid}"] .title'), what="the tree"
    )
    browser.find_element(By.CSS_SELECTOR, f'#tree .node[data-id="{sid}"] .title').click()
    table = dash.wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, ".usage-breakdown").text or None, what="costs")
    assert "OTel" in table and "$0.0043" in table, table  # the sum of the four api_request records
    figures = dash.wait(
        browser, lambda b: b.find_element(By.CSS_SELECTOR, ".otel-panel .otel-figures").text or None, what="figures"
    )
    assert "Claude Code's own" in figures and "2 API requests" in figures and "1 allowed by config" in figures

    def spans(b):
        rows = dash.js(
            b, "return [...document.querySelectorAll('.otel-timeline .otel-name')].map((e) => e.textContent)"
        )
        return rows if sum(r.startswith("llm_request") for r in rows) == 4 else None

    rows = dash.wait(browser, spans, what="the turn's spans (both exports of its trace)")
    assert rows[0] == "interaction"
    assert any("(sub-agent)" in r for r in rows) and any(r.startswith("tool Agent") for r in rows)
    assert "turn 1" in browser.find_element(By.CSS_SELECTOR, ".otel-turns").text
    severe = [
        e for e in (browser.get_log("browser") if hasattr(browser, "get_log") else []) if e.get("level") == "SEVERE"
    ]
    assert not severe, severe
    Path(dash.shot(browser, "otel"))
