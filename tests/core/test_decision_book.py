"""The decision book, sans-IO: what may be answered, once, in time, and what the hook
prints for each answer."""

from __future__ import annotations

import pytest

from contextuate_trio.core import decisions as d
from contextuate_trio.core.events import Event


def ev(event_id, session, event_type, data=None, **fields):
    return Event(
        id=event_id,
        timestamp=1000,
        session_id=session,
        machine_id="m1",
        event_type=event_type,
        data=data or {},
        **fields,
    )


def request(event_type="permission_request", at=1000, wait=5000, **data):
    e = ev("r1", "s1", event_type, data={"tool_name": "Bash", **data}, tool_name="Bash")
    req = d.request_for(e, at, wait)
    assert req is not None
    return req


def test_only_prompts_and_questions_open_requests():
    assert d.request_for(ev("x", "s1", "tool_call"), 0, 1000) is None
    assert request().kind == d.PERMISSION and request("elicitation").kind == d.ELICITATION


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"decision": "yes"},
        {"decision": "allow", "message": 5},
        {"decision": "allow", "message": "x" * (d.MESSAGE_MAX + 1)},
        {"decision": "deny", "always": True},
        {"decision": "allow", "always": "yes"},
        {"decision": "allow", "content": {}},
    ],
)
def test_malformed_answers_are_400(body):
    with pytest.raises(d.Refused) as err:
        d.parse_answer(body, d.PERMISSION, "t", None)
    assert err.value.status == 400


def test_once_and_in_time():
    book = d.DecisionBook()
    req = request()
    book.add(req)
    ans = d.parse_answer({"decision": "allow"}, d.PERMISSION, "phone", "127.0.0.1:1")
    assert book.take("r1", ans, 2000) is req
    with pytest.raises(d.Refused) as err:
        book.take("r1", ans, 2001)
    assert err.value.status == 409 and "phone" in err.value.why
    late = request(at=0, wait=10)
    late.request_id = "r2"
    book.add(late)
    with pytest.raises(d.Refused) as err:
        book.take("r2", ans, 10)
    assert err.value.status == 404
    with pytest.raises(d.Refused) as err:
        book.take("nope", ans, 0)
    assert err.value.status == 404


def test_undo_reopens_and_expiry_closes():
    book = d.DecisionBook()
    req = request()
    book.add(req)
    book.undo(book.take("r1", d.Answer("deny"), 1500))
    assert book.get("r1") is req and req.answer is None
    assert book.next_expiry() == 6000
    assert book.expired(5999) == [] and book.expired(6000) == [req]
    assert book.get("r1") is None


def test_the_session_moving_on_closes_as_answered_elsewhere():
    book = d.DecisionBook()
    book.add(request())
    # The Notification that says the same prompt: still waiting on it.
    assert book.after_event(ev("n", "s1", "notification"), {"requestId": "r1"}) == []
    assert book.after_event(ev("o", "other", "tool_result"), None) == []
    closed = book.after_event(ev("p", "s1", "tool_result"), None)
    assert [r.request_id for r in closed] == ["r1"]
    with pytest.raises(d.Refused) as err:
        book.take("r1", d.Answer("allow"), 2000)
    assert err.value.status == 409


RULE = {"type": "addRules", "rules": [{"toolName": "Bash", "ruleContent": "npm test:*"}], "behavior": "allow"}
BROAD = [
    {"type": "setMode", "mode": "acceptEdits", "destination": "session"},
    {"type": "addDirectories", "directories": ["/w"], "destination": "session"},
]


def test_hook_output_shapes():
    req = request(permission_suggestions=[*BROAD, RULE])
    assert req.public()["canAllowAlways"] and req.public()["alwaysRules"] == ["Bash(npm test:*) (localSettings)"]
    allow = d.hook_output(req, d.Answer("allow", always=True))
    # Only the allow rule: a mode or a folder is broader than the call asked about.
    assert allow["hookSpecificOutput"]["decision"] == {
        "behavior": "allow",
        "updatedPermissions": [{**RULE, "destination": "localSettings"}],
    }
    once = d.hook_output(req, d.Answer("allow"))
    assert once["hookSpecificOutput"]["decision"] == {"behavior": "allow"}
    deny = d.hook_output(req, d.Answer("deny"))["hookSpecificOutput"]["decision"]
    assert deny["behavior"] == "deny" and deny["message"]
    q = request("elicitation")
    assert d.hook_output(q, d.Answer("decline")) == {
        "hookSpecificOutput": {"hookEventName": "Elicitation", "action": "decline"}
    }


def test_only_rules_can_be_allowed_always():
    req = request(permission_suggestions=BROAD)
    assert req.public()["canAllowAlways"] is False and req.public()["alwaysRules"] == []


def test_audit_event_names_who_and_what():
    req = request()
    a = d.audit_event(req, d.Answer("deny", "no", by="phone", origin="10.0.0.2:5"), "e9", 1500)
    assert a.event_type == "decision" and a.session_id == "s1" and a.source == "dashboard"
    assert a.data == {
        "requestId": "r1",
        "kind": "permission",
        "decision": "deny",
        "by": "phone",
        "from": "10.0.0.2:5",
        "waitedMs": 500,
        "message": "no",
    }


def test_always_grants_only_what_is_shown_and_never_the_users_settings():
    odd = {
        "type": "addRules",
        "behavior": "allow",
        "destination": "userSettings",
        "rules": [{"toolName": "Bash", "ruleContent": "make:*", "extra": 1}, {"ruleContent": "no tool"}, "junk"],
    }
    session = {**RULE, "destination": "session"}
    grants = d.always_rules([odd, session])
    assert grants == [
        {
            "type": "addRules",
            "rules": [{"toolName": "Bash", "ruleContent": "make:*"}],
            "behavior": "allow",
            "destination": "localSettings",
        },
        {"type": "addRules", "rules": RULE["rules"], "behavior": "allow", "destination": "session"},
    ]
    assert d.rule_texts(grants) == ["Bash(make:*) (localSettings)", "Bash(npm test:*) (session)"]


def test_a_known_request_is_never_opened_again_and_the_book_is_bounded():
    book = d.DecisionBook()
    first = request()
    assert book.add(first)
    book.take("r1", d.Answer("deny"), 1500)
    assert not book.add(request())  # the same event read again (a Redis re-read)
    for i in range(d.OPEN_MAX):
        r = request()
        r.request_id = f"x{i}"
        book.add(r)
    extra = request()
    extra.request_id = "one-too-many"
    assert len(book.open) == d.OPEN_MAX and not book.add(extra)
