"""Actions people take on sessions from the dashboard: plain code, no I/O.

``apply`` changes the sessions in the manager and returns the ones that changed; the
broker stores and broadcasts them. An action that cannot be done raises
``ActionError`` (its message is what the person sees); ``NoSuchSession`` says which
session was not found, so the HTTP layer answers 404 without reading a message.
"""

from __future__ import annotations

from typing import Any

from contextuate_trio.core.sessions import Session, SessionManager

SESSION_ACTIONS = ("rename", "pin", "unpin", "hide", "unhide", "delete", "set_parent", "remove_parent")
MAX_NAME = 200


class ActionError(ValueError):
    """An action that cannot be done; the message says why."""


def set_parent(manager: SessionManager, child_id: str, parent_id: str | None) -> list[Session]:
    """Move ``child_id`` under ``parent_id`` (None: make it a root); the choice sticks
    (automatic linking no longer moves it). Returns the sessions that changed."""
    child = manager.get(child_id)
    if child is None:
        raise NoSuchSession(child_id)
    changed: dict[str, Session] = {child_id: child}
    if parent_id is not None:
        parent = manager.get(parent_id)
        if parent is None:
            raise ActionError(f"no such session {parent_id!r}")
        if manager.would_cycle(child_id, parent_id):
            raise ActionError("a session cannot be put under itself or its own sub-agent")
    old = manager.get(child.parent_session_id or "")
    if old is not None and child_id in old.child_session_ids:
        old.child_session_ids.remove(child_id)
        changed[old.session_id] = old
    child.parent_session_id = parent_id
    child.parent_set_by_user = True
    if parent_id is not None:
        parent = manager.sessions[parent_id]
        if child_id not in parent.child_session_ids:
            parent.child_session_ids.append(child_id)
        changed[parent_id] = parent
    return list(changed.values())


class NoSuchSession(ActionError):
    """The action names a session the daemon does not hold."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no such session {session_id!r}")
        self.session_id = session_id


def check(manager: SessionManager, action: str, session_id: str) -> Session:
    """The session an action applies to; ActionError for an unknown action or session."""
    if action not in SESSION_ACTIONS:
        raise ActionError(f"unknown action {action!r} (one of {', '.join(SESSION_ACTIONS)})")
    s = manager.get(session_id)
    if s is None:
        raise NoSuchSession(session_id)
    return s


def apply(manager: SessionManager, action: str, session_id: str, value: Any = None) -> list[Session]:
    """Do ``action`` (not ``delete``: that one removes files, see the broker).

    ``value``: the new name for ``rename`` (empty or None: back to none), the parent's
    id for ``set_parent``. Returns the sessions that changed."""
    s = check(manager, action, session_id)
    if action == "rename":
        if value is not None and not isinstance(value, str):
            raise ActionError("rename needs a string value")
        s.name = " ".join((value or "").split())[:MAX_NAME] or None
    elif action in ("pin", "unpin"):
        s.pinned = action == "pin"
    elif action in ("hide", "unhide"):
        s.hidden = action == "hide"
    elif action == "set_parent":
        if not isinstance(value, str) or not value:
            raise ActionError("set_parent needs the parent's session id as value")
        return set_parent(manager, session_id, value)
    elif action == "remove_parent":
        return set_parent(manager, session_id, None)
    elif action == "delete":
        raise ActionError("delete is done by the broker (it removes files)")
    return [s]
