"""The HTTP side of the dashboard: static files, search, export, metrics, session actions."""

from __future__ import annotations

import json
import time

import httpx
from helpers import ev

NOW = int(time.time() * 1000) - 60_000


async def test_static_dashboard_is_served_with_a_strict_policy(live_daemon):
    d = await live_daemon({"server": {"token": "s3cr3t-zz"}})
    async with httpx.AsyncClient(base_url=d.http_url) as c:
        r = await c.get("/")  # the dashboard's files need no token
        assert r.status_code == 200
        assert f'name="contextuate-ws-port" content="{d.ws_port}"' in r.text
        assert 'name="contextuate-auth" content="token"' in r.text and "s3cr3t-zz" not in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and f"ws://127.0.0.1:{d.ws_port}" in csp
        for f in ("app.js", "conn.js", "stream.js", "tree.js", "charts.js", "detail.js", "util.js", "style.css"):
            r = await c.get(f"/static/{f}")
            assert r.status_code == 200 and len(r.content) > 500, f
            assert "http://" not in r.text and "https://" not in r.text, f"{f} must work offline"
        assert (await c.get("/api/search")).status_code == 401


async def test_search_export_metrics_and_actions(live_daemon):
    d = await live_daemon()
    await d.submit(ev(0, session="a", machine="m1", data={"tool_input": {"command": "pytest -q"}}))
    await d.submit(ev(1, session="a", machine="m1", tool="Read", data={"tool_input": {"file_path": "/src/app.py"}}))
    await d.submit(
        ev(2, session="b", machine="m2", etype="user_prompt", tool=None, data={"prompt": "fix the BUG please"})
    )
    async with httpx.AsyncClient(base_url=d.http_url) as c:
        r = (await c.get("/api/search", params={"q": "bug"})).json()
        assert [e["sessionId"] for e in r["events"]] == ["b"]
        r = (await c.get("/api/search", params={"q": r"py(test)?\b", "regex": "1", "machine": "m1"})).json()
        assert len(r["events"]) == 2
        r = (await c.get("/api/search", params={"tool": "Read"})).json()
        assert [e["toolName"] for e in r["events"]] == ["Read"]
        r = (await c.get("/api/search", params={"type": "user_prompt,tool_call", "limit": 1})).json()
        assert r["count"] == 1 and r["truncated"]
        r = (await c.get("/api/search", params={"from": NOW + 10**7})).json()
        assert r["events"] == []
        assert (await c.get("/api/search", params={"q": "(", "regex": "1"})).status_code == 400

        r = await c.get("/api/sessions/a/export")
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert [e["timestamp"] for e in lines] == sorted(e["timestamp"] for e in lines) and len(lines) == 2
        assert (await c.get("/api/sessions/nope/export")).status_code == 404

        # Actions over HTTP: JSON only, and never from another site's page.
        url = "/api/sessions/a/actions"
        assert (await c.post(url, content="action=pin")).status_code == 415
        r = await c.post(url, json={"action": "pin"}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = await c.post(url, json={"action": "rename", "value": "Mine"})
        assert r.status_code == 200 and r.json()["session"]["name"] == "Mine"
        assert (await c.post(url, json={"action": "fly"})).status_code == 400
        assert (await c.post("/api/sessions/zzz/actions", json={"action": "pin"})).status_code == 404

        m = (await c.get("/metrics")).text
        for name in (
            "contextuate_ws_clients ",
            "contextuate_ws_dropped_clients_total ",
            "contextuate_ws_queue_depth_max ",
            "contextuate_events_in_total",
            "contextuate_store_bytes",
            'contextuate_ws_refused_total{status="403"}',
        ):
            assert name in m, name
