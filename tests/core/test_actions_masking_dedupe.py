"""The sans-IO pieces the broker is built on, tested directly: session actions, the
stored form of an event (masking), and dedupe."""

from __future__ import annotations

import json

import pytest

from contextuate_trio.core import actions
from contextuate_trio.core.dedupe import RecentIds, SeenIds
from contextuate_trio.core.events import from_payload
from contextuate_trio.core.masking import stored_line
from contextuate_trio.core.redact import Redactor
from contextuate_trio.core.sessions import SessionManager

SECRET = "sk-ant-" + "a" * 30


def feed(m: SessionManager, sid: str, n: int, **payload):
    ev = from_payload(
        {"session_id": sid, "hook_event_name": "UserPromptSubmit", "prompt": "hi", **payload},
        event_id=f"{sid}-{n}",
        timestamp=1000 + n,
        machine_id="m",
    )
    return ev, m.apply(ev)


def test_actions_change_sessions_and_say_what_changed():
    m = SessionManager()
    feed(m, "a", 1)
    feed(m, "b", 2)
    assert [s.session_id for s in actions.apply(m, "rename", "a", "  my   task ")] == ["a"]
    assert m.get("a").name == "my task"
    actions.apply(m, "pin", "a")
    actions.apply(m, "hide", "a")
    assert m.get("a").pinned and m.get("a").hidden
    changed = actions.apply(m, "set_parent", "b", "a")
    assert {s.session_id for s in changed} == {"a", "b"}
    assert m.get("b").parent_session_id == "a" and m.get("b").parent_set_by_user
    assert m.get("a").child_session_ids == ["b"]
    actions.apply(m, "remove_parent", "b")
    assert m.get("b").parent_session_id is None and m.get("a").child_session_ids == []


def test_actions_refuse_clearly():
    m = SessionManager()
    feed(m, "a", 1)
    with pytest.raises(actions.NoSuchSession) as info:
        actions.apply(m, "pin", "nope")
    assert info.value.session_id == "nope"
    with pytest.raises(actions.ActionError, match="unknown action"):
        actions.apply(m, "paint", "a")
    with pytest.raises(actions.ActionError, match="string"):
        actions.apply(m, "rename", "a", 5)
    # A missing parent is a bad request, not a missing session (the HTTP answer differs).
    with pytest.raises(actions.ActionError) as parent:
        actions.apply(m, "set_parent", "a", "ghost")
    assert not isinstance(parent.value, actions.NoSuchSession)
    with pytest.raises(actions.ActionError, match="itself"):
        actions.apply(m, "set_parent", "a", "a")


def hook_event(sid: str, n: int, **payload):
    return from_payload(
        {"session_id": sid, "hook_event_name": "UserPromptSubmit", "prompt": "hi", **payload},
        event_id=f"{sid}-{n}",
        timestamp=1000 + n,
        machine_id="m",
    )


def test_stored_line_masks_the_event_before_the_sessions_take_from_it():
    m = SessionManager()
    ev = hook_event("s", 1, prompt=f"use {SECRET} please")
    line, masked = stored_line(Redactor(), ev)
    assert masked and SECRET not in line.decode()
    assert json.loads(line)["data"]["prompt"] == "use [REDACTED:anthropic-key] please"
    m.apply(ev)
    assert "[REDACTED" in (m.get("s").last_summary or "") and ev.summary == m.get("s").last_summary


def test_stored_line_is_the_plain_json_when_nothing_is_secret_and_never_invalid_utf8():
    ev = hook_event("s", 1, prompt="lone \ud800 surrogate")
    line, masked = stored_line(Redactor(), ev)
    assert not masked and line.endswith(b"\n")
    assert json.loads(line.decode("utf-8"))["data"]["prompt"] == "lone \ufffd surrogate"


def test_recent_ids_forget_the_oldest_and_seen_ids_never_forget():
    recent, seen = RecentIds(3), SeenIds()
    for i in range(5):
        recent.add(f"e{i}")
        seen.add(f"e{i}")
    assert len(recent) == 3 and "e0" not in recent and "e4" in recent
    assert all(f"e{i}" in seen for i in range(5))
    assert sum(f"x{i}" in seen for i in range(10_000)) < 10  # "no" is almost always certain
    # ``add_new``: ``in`` then ``add``, in one.
    assert seen.add_new("e1") is True and seen.add_new("new") is False and "new" in seen
    assert seen.add_new("new") is True
