"""Tokens and cost from transcripts written in Claude Code's format, with totals and
dollars computed by hand in the comments."""

from __future__ import annotations

import json
import os

import pytest
from helpers import PRICES
from transcripts_data import HAIKU, OPUS, SONNET, TURN, TURN_COST, assistant, dump, tool_result, user  # noqa: F401

from contextuate_trio.core import events, usage
from contextuate_trio.core.sessions import SessionManager
from contextuate_trio.sources import transcripts


def read_all(state, data: bytes, at_eof=True):
    return usage.read_chunk(state, data, json.loads, at_eof=at_eof)


def apply_records(manager: SessionManager, records, session="S", agent=None, ts=1):
    ev = events.Event(
        id=f"u{ts}-{len(records)}-{agent}",
        timestamp=ts,
        session_id=session,
        machine_id="m1",
        event_type="usage",
        agent_id=agent,
        source="transcript",
        data={"records": records},
    )
    return manager.apply(ev)


def test_a_response_split_over_lines_counts_once_with_its_final_usage():
    st = usage.FileState()
    data = dump(TURN)
    recs = read_all(st, data)
    assert st.offset == len(data)
    assert [r[usage.R_KEY] for r in recs] == ["msg_A", "msg_B"]  # one record each, the largest usage
    assert recs[0][usage.R_TOKENS : usage.R_AGENT] == [10, 120, 20_000, 1_000, 2_000, 0]
    m = SessionManager()
    apply_records(m, recs)
    u = m.get("S").public(PRICES)["usage"]
    assert u["tokens"] == {
        "input": 15,
        "output": 170,
        "cacheRead": 41_000,
        "cacheWrite5m": 1_000,
        "cacheWrite1h": 2_000,
        "total": 44_185,
    }
    assert u["calls"] == 2
    assert u["costUsd"] == pytest.approx(TURN_COST)
    assert u["models"][SONNET]["pricedAs"] == "claude-sonnet-4-5"
    assert m.get("S").model == SONNET


def test_a_truncated_last_line_waits_for_the_rest_and_a_growing_file_reads_only_what_is_new():
    data = dump(TURN)
    cut = data.rfind(b'{"parentUuid"') + 40  # msg_B half written
    st = usage.FileState()
    first = read_all(st, data[:cut])
    assert {r[usage.R_KEY] for r in first} == {"msg_A"}
    assert st.offset == data.rfind(b'{"parentUuid"')  # the partial line is not consumed
    second = read_all(st, data[st.offset :])
    assert [r[usage.R_KEY] for r in second] == ["msg_B"]
    m = SessionManager()
    apply_records(m, first + second)
    assert m.get("S").public(PRICES)["usage"]["costUsd"] == pytest.approx(TURN_COST)
    # Nothing new: nothing read twice.
    assert read_all(st, b"") == []


def test_a_last_line_without_newline_is_taken_only_when_it_is_whole():
    line = json.dumps(assistant("msg_Z", HAIKU, 1, 2)).encode()
    st = usage.FileState()
    assert len(read_all(st, line, at_eof=True)) == 1 and st.offset == len(line)
    st2 = usage.FileState()
    assert read_all(st2, line, at_eof=False) == [] and st2.offset == 0
    st3 = usage.FileState()
    assert read_all(st3, line[:-5], at_eof=True) == [] and st3.offset == 0


def test_the_same_response_in_two_files_counts_once_and_growth_adds_the_difference():
    # A resumed session copies its history into a new file; a sub-agent's lines may be
    # in the parent's transcript and in its own.
    m = SessionManager()
    a, b = usage.FileState(), usage.FileState()
    apply_records(m, read_all(a, dump(TURN)))
    apply_records(m, read_all(b, dump(TURN)), ts=2)
    assert m.get("S").public(PRICES)["usage"]["costUsd"] == pytest.approx(TURN_COST)
    # msg_B's output grows from 50 to 80 in a later line: +30 output = +$0.00045.
    apply_records(m, read_all(b, dump([assistant("msg_B", SONNET, 5, 80, 21_000)])), ts=3)
    u = m.get("S").public(PRICES)["usage"]
    assert u["tokens"]["output"] == 200 and u["calls"] == 2
    assert u["costUsd"] == pytest.approx(TURN_COST + 30 * 15 / 1e6)


def test_sub_agent_usage_goes_to_the_sub_agent_and_rolls_up_to_the_parent():
    m = SessionManager()
    apply_records(m, read_all(usage.FileState(), dump(TURN)))
    # The sub-agent's own transcript (SubagentStop's agent_transcript_path), on Haiku 4.5:
    # 100 in, 200 out, 300 read, 400 5m writes, 500 1h writes, and a second reply 7/3.
    sub = dump(
        [assistant("msg_S1", HAIKU, 100, 200, 300, 400, 500, agent="a1"), assistant("msg_S2", HAIKU, 7, 3, agent="a1")]
    )
    apply_records(m, read_all(usage.FileState(), sub), agent="a1", ts=5)
    child = m.get("S:agent-a1")
    assert child is not None and child.parent_session_id == "S" and "S:agent-a1" in m.get("S").child_session_ids
    # Haiku 4.5 ($1, $5, $0.10, $1.25, $2): 107*1 + 203*5 + 300*0.1 + 400*1.25 + 500*2
    #   = 107 + 1,015 + 30 + 500 + 1,000 = 2,652 -> $0.002652
    cu = child.public(PRICES)["usage"]
    assert cu["calls"] == 2 and cu["costUsd"] == pytest.approx(0.002652)
    assert m.get("S").public(PRICES)["usage"]["costUsd"] == pytest.approx(TURN_COST)  # own only
    total = usage.render(m.usage_total(m.get("S")), PRICES)
    assert total["costUsd"] == pytest.approx(TURN_COST + 0.002652)
    assert total["calls"] == 4 and set(total["models"]) == {SONNET, HAIKU}


def test_sidechain_lines_in_the_parent_transcript_go_to_their_sub_agent():
    m = SessionManager()
    lines = TURN + [assistant("msg_C", HAIKU, 1, 1, agent="a9")]
    apply_records(m, read_all(usage.FileState(), dump(lines)))
    assert m.get("S:agent-a9").public(PRICES)["usage"]["calls"] == 1
    assert m.get("S").public(PRICES)["usage"]["calls"] == 2


def test_unknown_model_shows_tokens_and_no_cost():
    m = SessionManager()
    apply_records(m, read_all(usage.FileState(), dump(TURN + [assistant("msg_X", "gpt-5-mystery", 1000, 10)])))
    u = m.get("S").public(PRICES)["usage"]
    assert u["costUsd"] is None
    assert u["unpricedModels"] == ["gpt-5-mystery"]
    assert u["pricedCostUsd"] == pytest.approx(TURN_COST)
    assert u["models"]["gpt-5-mystery"]["costUsd"] is None and u["tokens"]["input"] == 1015


def test_synthetic_and_empty_responses_are_not_calls():
    st = usage.FileState()
    assert read_all(st, dump([assistant("msg_0", "<synthetic>", 0, 0), assistant("msg_1", SONNET, 0, 0)])) == []


def test_cache_writes_without_breakdown_are_5_minute_ones_and_web_searches_are_priced():
    rec = read_all(usage.FileState(), dump([assistant("msg_W", OPUS, 0, 0, 0, 1000, 0, breakdown=False, web=3)]))[0]
    assert rec[usage.R_TOKENS : usage.R_AGENT] == [0, 0, 0, 1000, 0, 3]
    m = SessionManager()
    apply_records(m, [rec])
    # Opus 4.5: 1,000 5m writes * $6.25/M = $0.00625; 3 searches * $10/1000 = $0.03
    assert m.get("S").public(PRICES)["usage"]["costUsd"] == pytest.approx(0.03625)


@pytest.mark.parametrize(
    "model,prefix",
    [
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929[1m]", "claude-sonnet-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-opus-4-9", None),  # a newer minor version is not priced as an older one
        ("claude-opus-45", None),
        ("gpt-4o", None),
    ],
)
def test_models_are_priced_by_their_longest_prefix_and_never_guessed(model, prefix):
    assert PRICES.price_for(model)[0] == prefix


def test_the_price_table_can_be_overridden_extended_and_trimmed():
    table = usage.PriceTable.from_config(
        {
            "claude-sonnet-4-5": {"input": 6, "output": 30},
            "my-proxy-model": {"input": 1, "output": 2, "cacheRead": 0},
            "claude-haiku-4-5": None,
        }
    )
    p = table.models
    # Cache prices derived from input with Anthropic's multipliers when not given.
    assert p["claude-sonnet-4-5"]["cacheWrite5m"] == 7.5 and p["claude-sonnet-4-5"]["cacheWrite1h"] == 12
    assert p["claude-sonnet-4-5"]["cacheRead"] == pytest.approx(0.6)
    assert table.cost([1_000_000, 0, 0, 0, 0, 0], "my-proxy-model") == 1
    assert table.price_for(HAIKU) == (None, None)
    # The defaults are untouched (a table is a value, not a process-wide setting).
    assert usage.PriceTable.from_config().models["claude-sonnet-4-5"]["input"] == 3
    assert PRICES.models["claude-sonnet-4-5"]["input"] == 3


def test_timestamps_and_days_without_datetime():
    import datetime

    for text in ("2025-10-01T12:34:56.789Z", "2024-02-29T00:00:00Z", "1999-12-31T23:59:59.5+02:00"):
        want = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        assert usage.iso_ms(text) == int(want.timestamp() * 1000)
        assert usage.day_of(usage.iso_ms(text)) == want.astimezone(datetime.UTC).strftime("%Y-%m-%d")
    assert usage.iso_ms("garbage") == 0 and usage.iso_ms(None) == 0


def test_group_by_machine_model_day_and_hour():
    m = SessionManager()
    apply_records(m, read_all(usage.FileState(), dump(TURN)))
    m.get("S").machine_id = "m1"
    apply_records(
        m,
        read_all(usage.FileState(), dump([assistant("msg_T", HAIKU, 1000, 0, ts="2025-10-02T01:00:00Z")])),
        session="T",
    )
    m.get("T").machine_id = "m2"
    triples = [(s.session_id, s.machine_id, s.usage) for s in m.sessions.values()]
    by_machine = {r["key"]: r for r in usage.group(triples, "machine", PRICES)["rows"]}
    assert by_machine["m1"]["costUsd"] == pytest.approx(TURN_COST)
    assert by_machine["m2"]["costUsd"] == pytest.approx(0.001)
    days = usage.group(triples, "day", PRICES)
    assert [r["key"] for r in days["rows"]] == ["2025-10-01", "2025-10-02"]
    assert days["total"]["costUsd"] == pytest.approx(TURN_COST + 0.001)
    hours = usage.group(triples, "hour", PRICES)["rows"]
    assert [usage.day_of(r["key"]) for r in hours] == ["2025-10-01", "2025-10-01", "2025-10-02"]
    assert hours[0]["calls"] == 1 and hours[1]["calls"] == 1  # msg_A at 12:00, msg_B at 13:05
    since = usage.iso_ms("2025-10-02T00:00:00Z")
    assert usage.group(triples, "model", PRICES, since=since)["total"]["costUsd"] == pytest.approx(0.001)
    with pytest.raises(ValueError):
        usage.group(triples, "colour", PRICES)


def test_agent_result_is_an_estimate_until_the_transcript_is_read():
    m = SessionManager()
    base = {"session_id": "S", "cwd": "/w", "transcript_path": "/nowhere/S.jsonl"}

    def hook(i, **p):
        return events.from_payload({**base, **p}, event_id=f"e{i}", timestamp=i, machine_id="m1")

    m.apply(
        hook(
            1,
            hook_event_name="PreToolUse",
            tool_name="Agent",
            tool_use_id="tu1",
            tool_input={"subagent_type": "Explore", "description": "d"},
        )
    )
    m.apply(
        hook(
            2,
            hook_event_name="PostToolUse",
            tool_name="Agent",
            tool_use_id="tu1",
            tool_response={
                "status": "completed",
                "agentId": "a1",
                "totalTokens": 24680,
                "totalDurationMs": 29159,
                "totalToolUseCount": 4,
                "usage": {
                    "input_tokens": 3,
                    "output_tokens": 400,
                    "cache_read_input_tokens": 24000,
                    "cache_creation_input_tokens": 277,
                },
            },
        )
    )
    u = m.get("S:agent-a1").public(PRICES)["usage"]
    assert u["estimate"]["totalTokens"] == 24680 and u["estimate"]["lastCall"]["output"] == 400
    assert u["costUsd"] is None and u["calls"] == 0  # an estimate is never priced
    apply_records(
        m, read_all(usage.FileState(), dump([assistant("msg_S1", HAIKU, 100, 200, agent="a1")])), agent="a1", ts=3
    )
    u = m.get("S:agent-a1").public(PRICES)["usage"]
    assert u["estimate"] is None and u["calls"] == 1 and u["costUsd"] == pytest.approx(0.0011)


# --- the reader's file handling ---------------------------------------------------------------
def test_reader_follows_a_growing_file_and_restarts_on_rotation_and_truncation(tmp_path):
    path = str(tmp_path / "S.jsonl")
    data = dump(TURN)
    with open(path, "wb") as f:
        f.write(data[:100])
    st = usage.FileState()
    recs, start, end, more = transcripts.read_new(path, st)
    assert recs == [] and start == 0 and end == 0 and not more  # first line not complete yet
    with open(path, "wb") as f:
        f.write(data)
    recs, start, end, _ = transcripts.read_new(path, st)
    assert (start, end) == (0, len(data)) and len(recs) == 2
    recs, start, end, _ = transcripts.read_new(path, st)
    assert recs == [] and start == end == len(data)
    # Rotated: another file under the same name, starting with the same history.
    os.rename(path, path + ".old")
    with open(path, "wb") as f:
        f.write(data + dump([assistant("msg_N", SONNET, 1, 1)]))
    recs, start, _, _ = transcripts.read_new(path, st)
    assert start == 0 and [r[usage.R_KEY] for r in recs] == ["msg_N"]  # the copy is known
    # Truncated in place: read from the start again.
    with open(path, "r+b") as f:
        f.truncate(len(data) // 2)
    recs, start, _, _ = transcripts.read_new(path, st)
    assert start == 0 and st.offset <= len(data) // 2
    with pytest.raises(FileNotFoundError):
        transcripts.read_new(str(tmp_path / "missing.jsonl"), usage.FileState())


def test_reader_budget_leaves_the_rest_for_the_next_read(tmp_path):
    path = str(tmp_path / "big.jsonl")
    lines = [assistant(f"msg_{i:04d}", SONNET, 1, 1) for i in range(200)]
    with open(path, "wb") as f:
        f.write(dump(lines))
    st = usage.FileState()
    got = []
    for _ in range(100):
        recs, _, _, more = transcripts.read_new(path, st, max_bytes=10_000)
        got += recs
        if not more:
            break
    assert len({r[usage.R_KEY] for r in got}) == 200 and st.offset == os.path.getsize(path)


def test_a_line_longer_than_the_read_budget_is_stepped_over_not_blocking_the_file(tmp_path):
    path = str(tmp_path / "huge-line.jsonl")
    with open(path, "wb") as f:
        f.write(dump([user("x" * 30_000)]) + dump([assistant("msg_after", SONNET, 1, 1)]))
    st = usage.FileState()
    got = []
    for _ in range(10):
        recs, _, _, more = transcripts.read_new(path, st, max_bytes=10_000)
        got += recs
        if not more:
            break
    assert [r[usage.R_KEY] for r in got] == ["msg_after"] and st.offset == os.path.getsize(path)


def test_file_state_round_trips():
    st = usage.FileState()
    read_all(st, dump(TURN))
    again = usage.FileState.from_dict(json.loads(json.dumps(st.to_dict())))
    assert again.offset == st.offset and read_all(again, dump(TURN[-1:])) == []
    assert usage.FileState.from_dict("junk").offset == 0


def test_a_damaged_state_file_is_not_trusted():
    """Saved ``recent`` values of the wrong shape would shift a record's fields."""
    good = [1, 2, 3, 4, 5, 6]
    state = usage.FileState.from_dict(
        {"offset": 10, "recent": {"k1": good, "k2": [1, 2], "k3": "x", "k4": [1, 2, 3, 4, 5, True]}}
    )
    assert state.offset == 10 and state.recent == {"k1": good}
    assert usage.FileState.from_dict({"recent": ["not", "a", "dict"]}).recent == {}


def test_observe_restarts_a_replaced_file_and_skip_steps_over_an_unreadable_line():
    state = usage.FileState(offset=500, dev=1, ino=2, head="abc")
    assert not state.observe(1, 2, 600, "abc") and state.offset == 500
    assert state.observe(1, 3, 600, "abc") and state.offset == 0  # another inode: from the start
    assert state.skip_unreadable(100, 100) == 0 and state.offset == 100
    assert state.skip_unreadable(40, 100) == 40 and state.offset == 100
