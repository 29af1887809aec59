"""The sans-IO side of Claude Code's OpenTelemetry (core/otel.py, the OTel parts of
core/usage.py and core/sessions.py), on the bodies the real CLI 2.1.332 posted
(tests/fixtures/otel/, recorded with tests/e2e's set-up)."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
from conftest import FIXTURES

from contextuate_trio.core import events, otel, usage
from contextuate_trio.core.sessions import IDLE, SessionManager

OTEL = FIXTURES / "otel"
PRICES = usage.DEFAULT_TABLE


def bodies(name: str) -> list[tuple[str, dict]]:
    out = []
    for f in sorted(glob.glob(str(OTEL / name / "*.json"))):
        out.append((Path(f).stem.split("-", 1)[1], json.loads(Path(f).read_text())))
    return out


def replay(name: str, m: SessionManager | None = None) -> SessionManager:
    m = m or SessionManager()
    for signal, doc in bodies(name):
        for ev in otel.to_events(signal, doc, machine="here", received_ms=1).events:
            m.apply(ev)
    return m


def api_requests(name: str) -> list[dict]:
    out = []
    for signal, doc in bodies(name):
        if signal == "logs":
            for rl in doc["resourceLogs"]:
                for sl in rl["scopeLogs"]:
                    for r in sl["logRecords"]:
                        a = otel.attributes(r["attributes"])
                        if a.get("event.name") == "api_request":
                            out.append(a)
    return out


def roots(m: SessionManager):
    return [s for s in m.sessions.values() if s.parent_session_id is None]


def test_any_value_shapes():
    kvs = [
        {"key": "s", "value": {"stringValue": "x"}},
        {"key": "i", "value": {"intValue": "9007199254740993"}},  # int64 as text in OTLP/JSON
        {"key": "j", "value": {"intValue": 3}},
        {"key": "d", "value": {"doubleValue": 0.5}},
        {"key": "b", "value": {"boolValue": True}},
        {"key": "a", "value": {"arrayValue": {"values": [{"stringValue": "p"}, {"intValue": "2"}]}}},
        {"key": "k", "value": {"kvlistValue": {"values": [{"key": "n", "value": {"boolValue": False}}]}}},
        {"key": "e", "value": {}},
        {"value": {"stringValue": "no key"}},
    ]
    assert otel.attributes(kvs) == {
        "s": "x",
        "i": 9007199254740993,
        "j": 3,
        "d": 0.5,
        "b": True,
        "a": ["p", 2],
        "k": {"n": False},
        "e": None,
    }
    assert otel.number("117") == 117 and otel.number("NaN") is None and otel.number(True) is None


def test_subagent_run_joined_by_session_prompt_and_agent():
    """The recorded run: a main agent and one sub-agent. Every record carries the
    hooks' session id; the sub-agent's its agent id: the cost of each session is the
    sum of its own api_request records, from Claude Code itself."""
    m = replay("subagent")
    (root,) = roots(m)
    (child,) = [m.sessions[c] for c in root.child_session_ids]
    records = api_requests("subagent")
    assert root.session_id == records[0]["session.id"]
    assert child.session_id == f"{root.session_id}:agent-{child.agent_id}"
    own = [r for r in records if not r.get("agent_id")]
    theirs = [r for r in records if r.get("agent_id") == child.agent_id]
    assert len(own) == 2 and len(theirs) == 2
    ru, cu = usage.render(root.usage, PRICES), usage.render(child.usage, PRICES)
    assert ru["source"] == cu["source"] == "otel" and ru["otelFrom"] == "logs"
    assert ru["costUsd"] == pytest.approx(sum(r["cost_usd"] for r in own))
    assert cu["costUsd"] == pytest.approx(sum(r["cost_usd"] for r in theirs))
    total = usage.render(m.usage_total(root), PRICES)
    assert total["costUsd"] == pytest.approx(sum(r["cost_usd"] for r in records))
    assert total["sources"] == {"otel": 2}
    assert ru["tokens"]["input"] == sum(r["input_tokens"] for r in own) and ru["calls"] == 2
    assert ru["models"]["claude-opus-5-5"]["pricedAs"] == "otel"
    # Tool decisions and durations, hook run times, on the session they ran in.
    ro, co = otel.public(root.otel), otel.public(child.otel)
    assert ro["decided"] == {"acceptedByConfig": 1, "acceptedByUser": 0, "rejected": 0}  # the Agent call
    assert ro["tools"]["Agent"]["totalMs"] == 641
    assert co["tools"]["Bash"] == {"count": 1, "failures": 0, "totalMs": 117, "maxMs": 117, "avgMs": 117}
    assert co["hooks"]["PreToolUse"]["totalMs"] == 59 and "SubagentStart" in co["hooks"]
    assert ro["hookMsTotal"] == 35 + 19 + 25 + 40 + 57 + 33
    assert co["agent"] == {"totalTokens": 150, "toolUses": 1, "durationMs": 520}
    assert ro["activeTimeS"] == {"cli": 1.182}
    # One turn (trace), found its prompt through an api_request's request id.
    (trace,) = root.otel["traces"].values()
    prompt = next(r["prompt.id"] for r in records)
    assert trace["promptId"] == prompt and trace["sequence"] == 1 and trace["spans"] == 11
    # Nothing says these sessions are working: made idle, counting no hook events.
    assert root.status == child.status == IDLE and root.event_count == 0


def test_hooks_then_otel_same_session_and_sub_agent():
    """With hooks: the same ids join. The hook's SessionStart makes the session; the
    OTel records add their figures to it and to the sub-agent the hooks made."""
    (_, logs), *_ = bodies("subagent")
    sid = otel.attributes(logs["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["attributes"])["session.id"]
    agent = next(r["agent_id"] for r in api_requests("subagent") if r.get("agent_id"))
    m = SessionManager()
    for i, p in enumerate(
        [
            {"hook_event_name": "SessionStart", "session_id": sid, "source": "startup"},
            {"hook_event_name": "SubagentStart", "session_id": sid, "agent_id": agent, "agent_type": "general-purpose"},
        ]
    ):
        m.apply(events.from_payload(p, event_id=f"h{i}", timestamp=1000 + i, machine_id="here"))
    replay("subagent", m)
    assert len(m.sessions) == 2
    root = m.sessions[sid]
    assert root.status == "active" and root.event_count == 1  # OTel counts no events, changes no status
    assert usage.render(m.sessions[f"{sid}:agent-{agent}"].usage, PRICES)["calls"] == 2


def test_events_are_small_and_resent_batches_are_the_same_events():
    signal, doc = bodies("subagent")[0]
    a = otel.to_events(signal, doc, machine="here", received_ms=1)
    b = otel.to_events(signal, doc, machine="there", received_ms=2)
    assert [e.id for e in a.events] == [e.id for e in b.events]  # the broker's dedupe drops a resend
    assert len({e.id for e in a.events}) == len(a.events)
    names = [e.data["name"] for e in a.events]
    assert "hook_registered" not in names and "hook_execution_start" not in names  # set-up noise dropped
    assert a.accepted == 50 and a.rejected == 0 and len(a.events) == 10
    for e in a.events:
        assert e.event_type == otel.OTEL_LOG and e.source == "otel" and e.machine_id == "e2e-host"
        assert not {"session.id", "user.id", "host.name", "prompt.id"} & set(e.data["attributes"])
        assert "<REDACTED>" not in json.dumps(e.data)
    req = next(e for e in a.events if e.data["name"] == "api_request")
    assert req.prompt_id and req.summary.startswith("api_request claude-opus-5-5: 150 tokens, $0.00108")
    tool = next(e for e in a.events if e.data["name"] == "tool_decision")
    assert tool.tool_use_id and tool.tool_name == "Agent"


def test_refused_records_and_documents():
    no_session = {
        "resourceLogs": [
            {
                "scopeLogs": [
                    {
                        "logRecords": [
                            {"attributes": [{"key": "event.name", "value": {"stringValue": "api_request"}}]},
                            {"attributes": [{"key": "session.id", "value": {"stringValue": "s"}}]},  # no name
                            "not a record",
                        ]
                    }
                ]
            }
        ]
    }
    b = otel.to_events("logs", no_session, machine="m", received_ms=5)
    assert b.events == [] and b.rejected == 3 and "session.id" in (b.why or "")
    for bad in ([], {"resourceLogs": {}}, {"resourceLogs": [3]}):
        with pytest.raises(otel.OtlpError):
            otel.to_events("logs", bad, machine="m", received_ms=5)
    assert otel.to_events("traces", {}, machine="m", received_ms=5) == otel.Batch([], 0, 0)


def point(name: str, value: float, sid: str = "s1", cumulative: bool = False, **attrs) -> dict:
    kvs = [{"key": "session.id", "value": {"stringValue": sid}}]
    kvs += [{"key": k, "value": {"stringValue": v}} for k, v in attrs.items()]
    return {
        "name": f"claude_code.{name}",
        "sum": {
            "aggregationTemporality": 2 if cumulative else 1,
            "dataPoints": [{"asDouble": value, "attributes": kvs, "timeUnixNano": "3600000000000"}],
        },
    }


def metrics_doc(*metrics: dict) -> dict:
    return {"resourceMetrics": [{"scopeMetrics": [{"metrics": list(metrics)}]}]}


def test_metrics_only_cost_then_records_win():
    """Without log records (OTEL_LOGS_EXPORTER unset), cost.usage is the figure; the
    first api_request record starts over from the records (they are the same calls)."""
    m = SessionManager()

    def feed(doc, signal="metrics"):
        for ev in otel.to_events(signal, doc, machine="m", received_ms=1).events:
            m.apply(ev)

    feed(
        metrics_doc(
            point("cost.usage", 0.25, model="claude-sonnet-4-5", query_source="main"),
            point("cost.usage", 0.5, model="claude-sonnet-4-5", query_source="subagent"),
            point("token.usage", 1000, model="claude-sonnet-4-5", query_source="main", type="input"),
        )
    )
    s = m.sessions["s1"]
    u = usage.render(s.usage, PRICES)
    assert u["source"] == "otel" and u["otelFrom"] == "metrics" and u["costUsd"] == pytest.approx(0.25)
    assert u["tokens"]["input"] == 1000 and s.otel["subagentCostUsd"] == 0.5
    record = {
        "resourceLogs": [
            {
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": "7200000000000",
                                "attributes": [
                                    {"key": k, "value": v}
                                    for k, v in {
                                        "session.id": {"stringValue": "s1"},
                                        "event.name": {"stringValue": "api_request"},
                                        "model": {"stringValue": "claude-sonnet-4-5"},
                                        "input_tokens": {"intValue": "10"},
                                        "cost_usd": {"doubleValue": 0.125},
                                    }.items()
                                ],
                            }
                        ]
                    }
                ]
            }
        ]
    }
    feed(record, "logs")
    feed(metrics_doc(point("cost.usage", 9.0, model="claude-sonnet-4-5", query_source="main")))
    u = usage.render(s.usage, PRICES)
    assert u["otelFrom"] == "logs" and u["costUsd"] == pytest.approx(0.125) and u["tokens"]["input"] == 10


def test_cumulative_and_delta_metric_series():
    m = SessionManager()
    for doc in (
        metrics_doc(point("lines_of_code.count", 3, cumulative=True, type="added")),
        metrics_doc(point("lines_of_code.count", 5, cumulative=True, type="added")),  # +2
        metrics_doc(point("commit.count", 1), point("active_time.total", 1.5, type="user")),
        metrics_doc(point("commit.count", 1), point("pull_request.count", 1)),
    ):
        for ev in otel.to_events("metrics", doc, machine="m", received_ms=1).events:
            m.apply(ev)
    o = m.sessions["s1"].otel
    assert o["linesAdded"] == 5 and o["commits"] == 2 and o["pullRequests"] == 1
    assert o["activeTimeS"] == {"user": 1.5}
    rows = otel.session_metrics([("m", o)])
    by = {name: samples for name, _, _, samples in rows}
    assert by["contextuate_otel_commits_total"] == [({"machine": "m"}, 2)]
    assert ({"machine": "m", "type": "added"}, 5) in by["contextuate_otel_lines_of_code_total"]


def test_api_errors_retries_and_rejections():
    m = replay("stop-failure")
    (root,) = roots(m)
    assert root.otel["apiErrors"] == 1 and root.otel["errorsByStatus"] == {"429": 1}
    (trace,) = root.otel["traces"].values()
    assert trace["promptId"]
    m = replay("denied")
    (root,) = roots(m)
    assert otel.public(root.otel)["decided"] == {"acceptedByConfig": 0, "acceptedByUser": 0, "rejected": 1}
    m = replay("extras")
    (root,) = roots(m)
    assert root.otel["linesAdded"] == 2 and len(root.otel["traces"]) == 3
    models = usage.render(root.usage, PRICES)["models"]
    assert set(models) == {"claude-opus-5-5", "claude-sonnet-4-5"}  # /model switched mid-session


def test_usage_otel_beside_transcript_and_roll_ups():
    """A session with both: OTel's cost is shown (Claude Code's own bill); the
    transcript's figures stay beside it. Roll-ups take each session's own source."""
    a = usage.empty()
    usage.add(a, "claude-sonnet-4-5", 0, [1_000_000, 0, 0, 0, 0, 0], True)  # $3 by the table
    b = usage.empty()
    usage.add(b, "claude-sonnet-4-5", 0, [1_000_000, 0, 0, 0, 0, 0], True)
    usage.add_otel(b, "claude-sonnet-4-5", 0, [1_000_000, 0, 0, 0, 0, 0], 3_300_000, calls=1, origin="logs")
    rb = usage.render(b, PRICES)
    assert rb["source"] == "otel" and rb["costUsd"] == pytest.approx(3.3)
    assert rb["transcript"] == {"costUsd": 3.0, "calls": 1, "tokens": 1_000_000}
    assert usage.render(a, PRICES)["source"] == "transcript"
    merged = usage.render(usage.merge([a, b]), PRICES)
    assert merged["costUsd"] == pytest.approx(6.3) and merged["source"] == "mixed"
    assert merged["tokens"]["input"] == 2_000_000
    g = usage.group([("a", "m1", a), ("b", "m1", b)], "session", PRICES)
    assert {r["key"]: r["costUsd"] for r in g["rows"]} == {"a": 3.0, "b": pytest.approx(3.3)}
    assert usage.group([("b", "m1", b)], "day", PRICES)["total"]["costUsd"] == pytest.approx(3.3)
    (cost,) = [
        s for n, _, _, s in usage.usage_metrics([("m1", a), ("m1", b)], PRICES) if n == "contextuate_cost_usd_total"
    ]
    assert cost == [({"machine": "m1", "model": "claude-sonnet-4-5"}, "6.300000")]
    # A model the table does not price: OTel's cost is known all the same.
    c = usage.empty()
    usage.add_otel(c, "my-gateway-model", 0, [500, 0, 0, 0, 0, 0], 1234, calls=1, origin="logs")
    rc = usage.render(c, PRICES)
    assert rc["costUsd"] == pytest.approx(0.001234) and rc["unpricedModels"] == []


def test_relayed_events_join_the_same_way():
    """Many machines: a relay stores the events (sub-agent records already moved to
    the sub-agent's session) and the central monitor reads them back as complete
    events: the same sessions and figures, nothing nested twice."""
    here = SessionManager()
    stored = []
    for signal, doc in bodies("subagent"):
        for ev in otel.to_events(signal, doc, machine="here", received_ms=1).events:
            here.apply(ev)
            stored.append(events.to_dict(ev))
    mint = events.Mint(new_id=lambda: "x", now_ms=lambda: 0)
    central = SessionManager()
    for d in stored:
        central.apply(events.from_object(json.loads(json.dumps(d)), "redis", mint=mint))
    assert sorted(central.sessions) == sorted(here.sessions)
    for sid, s in here.sessions.items():
        assert usage.render(central.sessions[sid].usage, PRICES) == usage.render(s.usage, PRICES)
        assert central.sessions[sid].otel["tools"] == s.otel["tools"]


def cumulative_point(name: str, value: float, start_ns: int, sid: str = "s1", **attrs) -> dict:
    p = point(name, value, sid=sid, cumulative=True, **attrs)
    p["sum"]["dataPoints"][0]["startTimeUnixNano"] = str(start_ns)
    return p


def test_cumulative_series_survive_a_daemon_restart_and_restart_with_the_exporter():
    """A cumulative counter's deltas are counted per series and start time, and the
    last values are kept with the session (persisted): a daemon restart does not count
    the series again; a new start time (Claude Code restarted) is a new series."""
    run1, run2 = 1_700_000_000_000_000_000, 1_700_000_100_000_000_000

    def feed(m: SessionManager, *docs: dict) -> None:
        for doc in docs:
            for ev in otel.to_events("metrics", doc, machine="m", received_ms=1).events:
                m.apply(ev)

    m = SessionManager()
    feed(
        m,
        metrics_doc(cumulative_point("lines_of_code.count", 3, run1, type="added")),
        metrics_doc(cumulative_point("lines_of_code.count", 5, run1, type="added")),  # +2
    )
    assert m.sessions["s1"].otel["linesAdded"] == 5
    # The daemon restarts: the session comes back from disk, the joins do not.
    stored = json.loads(json.dumps(m.sessions["s1"].to_dict()))
    again = SessionManager()
    again.restore(type(m.sessions["s1"]).from_dict(stored))
    feed(again, metrics_doc(cumulative_point("lines_of_code.count", 7, run1, type="added")))  # +2, not +7
    assert again.sessions["s1"].otel["linesAdded"] == 7
    # Claude Code restarts: a new start time, a new series from its value.
    feed(again, metrics_doc(cumulative_point("lines_of_code.count", 1, run2, type="added")))  # +1
    feed(again, metrics_doc(cumulative_point("lines_of_code.count", 4, run2, type="added")))  # +3
    assert again.sessions["s1"].otel["linesAdded"] == 11
    # A late point of the earlier run adds nothing and does not restart the series.
    feed(again, metrics_doc(cumulative_point("lines_of_code.count", 9, run1, type="added")))
    feed(again, metrics_doc(cumulative_point("lines_of_code.count", 6, run2, type="added")))  # +2
    assert again.sessions["s1"].otel["linesAdded"] == 13
    # The bookkeeping is not shown.
    assert "series" not in otel.public(again.sessions["s1"].otel)


def log_doc(sid: str, name: str, **attrs) -> dict:
    kvs = [
        {"key": "session.id", "value": {"stringValue": sid}},
        {"key": "event.name", "value": {"stringValue": name}},
    ]
    for k, v in attrs.items():
        kind = "doubleValue" if isinstance(v, float) else "intValue" if isinstance(v, int) else "stringValue"
        kvs.append({"key": k, "value": {kind: v}})
    return {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "3600000000000", "attributes": kvs}]}]}]}


def test_a_secret_across_the_cut_of_a_long_text_is_masked():
    secret = "ghp_" + "A1b2C3d4E5" * 4
    prompt = "x" * (otel.MAX_ATTR_TEXT - 10) + " " + secret + " and more"
    (ev,) = otel.to_events("logs", log_doc("s1", "user_prompt", prompt=prompt), machine="m", received_ms=1).events
    kept = ev.data["attributes"]["prompt"]
    assert len(kept) <= otel.MAX_ATTR_TEXT
    assert "ghp_A1b2" not in kept and "A1b2C3" not in kept
    # The config's own patterns too (the daemon passes its redactor).
    from contextuate_trio.core.redact import Redactor

    text = "y" * (otel.MAX_ATTR_TEXT - 5) + " internal-id-123456789"
    doc = log_doc("s1", "user_prompt", prompt=text)
    (ev,) = otel.to_events("logs", doc, machine="m", received_ms=1, redactor=Redactor([r"internal-id-\d+"])).events
    assert "internal-id" not in ev.data["attributes"]["prompt"] and "interna" not in ev.data["attributes"]["prompt"]


def test_api_requests_without_cost_are_priced_by_the_table():
    """Claude Code's cost is taken as the bill only for the records that carry it;
    a record without cost_usd has its tokens priced by the table (with the config's
    overrides), not counted as free."""
    m = SessionManager()
    model = "claude-sonnet-4-5"
    for doc in (
        log_doc("s1", "api_request", model=model, input_tokens=1_000_000, cost_usd=3.3),
        log_doc("s1", "api_request", model=model, input_tokens=1_000_000),  # no cost: $3 by the table
    ):
        for ev in otel.to_events("logs", doc, machine="m", received_ms=1).events:
            m.apply(ev)
    u = usage.render(m.sessions["s1"].usage, PRICES)
    assert u["source"] == "otel" and u["tokens"]["input"] == 2_000_000 and u["calls"] == 2
    assert u["costUsd"] == pytest.approx(6.3)
    assert u["models"][model]["pricedAs"] == "claude-sonnet-4-5"  # not all "otel": the table priced some
    overridden = usage.PriceTable.from_config({"claude-sonnet-4-5": {"input": 10.0, "output": 50.0}})
    assert usage.render(m.sessions["s1"].usage, overridden)["costUsd"] == pytest.approx(13.3)
    # Roll-ups and /metrics agree.
    merged = usage.render(usage.merge([m.sessions["s1"].usage]), PRICES)
    assert merged["costUsd"] == pytest.approx(6.3)
    (cost,) = [
        s
        for n, _, _, s in usage.usage_metrics([("m", m.sessions["s1"].usage)], PRICES)
        if n == "contextuate_cost_usd_total"
    ]
    assert cost == [({"machine": "m", "model": model}, "6.300000")]
    # Records that all carry it: the bill as Claude Code computed it.
    n = SessionManager()
    for ev in otel.to_events(
        "logs",
        log_doc("s2", "api_request", model=model, input_tokens=1_000_000, cost_usd=3.3),
        machine="m",
        received_ms=1,
    ).events:
        n.apply(ev)
    one = usage.render(n.sessions["s2"].usage, PRICES)
    assert one["costUsd"] == pytest.approx(3.3) and one["models"][model]["pricedAs"] == "otel"
    # A model the table does not know, without a cost: unpriced, not $0.
    k = SessionManager()
    for ev in otel.to_events(
        "logs", log_doc("s3", "api_request", model="my-gateway-model", input_tokens=500), machine="m", received_ms=1
    ).events:
        k.apply(ev)
    unknown = usage.render(k.sessions["s3"].usage, PRICES)
    assert unknown["costUsd"] is None and unknown["unpricedModels"] == ["my-gateway-model"]
