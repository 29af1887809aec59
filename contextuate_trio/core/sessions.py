"""Sessions and sub-agent linking: a plain state machine, no I/O.

``SessionManager.apply(event)`` attributes an event to the session it belongs to
(a sub-agent is a session of its own), updates that session's status and counts, and
says what changed, so the store can persist it and the web layer can broadcast it.

How a sub-agent's events are recognised, newest Claude Code first:
- ``agent_id`` on the event (Claude Code 2.1.69+): the child is ``<parent>:agent-<agent_id>``;
  stateless, so it survives restarts and works without a ``SubagentStart``.
- the Agent tool's ``PostToolUse`` (``tool_response.agentId``) joins the spawning
  call (``tool_use_id``) to the child.
- older Claude Code (tool ``Task``, no ``agent_id``): the events between the Task
  call and ``SubagentStop`` ran in the sub-agent; the child is ``<parent>:task-<tool_use_id>``.
- ``CONTEXTUATE_PARENT_SESSION`` (the hook's ``parentSessionId``): a whole Claude
  Code session started by another session, on any machine.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import attrs

from contextuate_trio.core import attention as attention_mod
from contextuate_trio.core import otel as otel_mod
from contextuate_trio.core import usage as usage_mod
from contextuate_trio.core.events import AGENT_REPORT, AGENT_TOOLS, Event, tag_text
from contextuate_trio.core.names import camel

log = logging.getLogger("contextuate.sessions")

ACTIVE, WAITING, IDLE, ENDED, FAILED = "active", "waiting", "idle", "ended", "failed"
STATUSES = (ACTIVE, WAITING, IDLE, ENDED, FAILED)

MAX_PENDING = 64
MAX_OPEN_CALLS = 64  # tool calls awaiting their result, per session
MAX_LISTED = 32  # instruction files, models over time: the newest kept
LAST_MESSAGE_MAX = 2000
USAGE_EVENT = "usage"  # tokens read from a transcript; see usage.py and _apply_usage
_STATUS_BY_TYPE = {
    "stop": IDLE,
    "stop_failure": FAILED,
    "session_end": ENDED,
    "subagent_stop": ENDED,
}
# A SubagentStop of one of compaction's own agents (no SubagentStart, no agent type):
# it belongs to the session's compaction, not to a sub-agent session.
COMPACTION_AGENT = "compaction_agent"
# Events that end a turn (or the agent): tool calls still open then got no result.
_TURN_ENDS = frozenset({"stop", "stop_failure", "session_end", "subagent_stop"})
# Background work a Stop lists that is still going (Claude Code's task statuses).
_RUNNING = frozenset({"running", "pending"})


def child_id(root_id: str, kind: str, ident: str) -> str:
    """A sub-agent's session id: scoped by its parent, so that ids Claude Code reuses
    (a forked or replayed session) never merge two machines' sub-agents."""
    return f"{root_id}:{kind}-{ident}"


@attrs.define
class Session:
    session_id: str
    machine_id: str = "unknown"
    working_directory: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    status: str = ACTIVE
    parent_session_id: str | None = None
    child_session_ids: list[str] = attrs.Factory(list)
    agent_type: str | None = None
    agent_id: str | None = None
    spawn_tool_use_id: str | None = None
    description: str | None = None
    model: str | None = None
    event_count: int = 0
    tool_count: int = 0
    error_count: int = 0
    last_event_time: int | None = None
    last_event_type: str | None = None
    last_summary: str | None = None
    # Linking state, persisted so a restart does not forget an open spawn.
    pending_spawns: list[dict[str, Any]] = attrs.Factory(list)  # Agent/Task calls awaiting their child
    legacy_open: list[str] = attrs.Factory(list)  # tool_use_ids of open Task windows (old CC)
    modern: bool = False  # this session has sent agent_id: no Task-window guessing
    # Set by people from the dashboard (session actions), persisted like the rest.
    name: str | None = None  # a display name
    pinned: bool = False
    hidden: bool = False
    parent_set_by_user: bool = False  # the parent was set or removed by hand: keep it
    # Tokens and cost (``usage.empty()`` shape), from its transcript; None until known.
    usage: dict[str, Any] | None = None
    # Claude Code's own telemetry (``otel.empty()`` shape): API errors, tool decisions
    # and durations, hook run times, active time, lines, commits; None until heard.
    otel: dict[str, Any] | None = None
    # What a person should know (issue 13): why it waits for one ("needs you"), the
    # assistant's latest words, the turn it is in, background agents it waits on.
    attention: dict[str, Any] | None = None
    prompt_id: str | None = None
    last_message: str | None = None
    last_message_id: str | None = None
    background_agents: list[str] = attrs.Factory(list)  # agent ids still running in the background
    open_calls: dict[str, dict[str, Any]] = attrs.Factory(dict)  # tool_use_id -> {toolName, since, asked}
    denied_count: int = 0
    interrupted_count: int = 0
    compactions: int = 0
    compacting: bool = False
    instructions: list[str] = attrs.Factory(list)  # CLAUDE.md and rules files loaded
    models: list[dict[str, Any]] = attrs.Factory(list)  # [{"model", "since"}], the model over time

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, name) for key, name in _field_names().items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Session:
        known = _field_names()
        return cls(**{known[k]: v for k, v in data.items() if k in known})

    def public(self, prices: usage_mod.PriceTable) -> dict[str, Any]:
        """The session as the API and the WebSocket show it (dollars from ``prices``)."""
        d = self.to_dict()
        for k in ("pendingSpawns", "legacyOpen", "modern", "lastMessageId", "compacting"):
            d.pop(k)
        d["usage"] = usage_mod.render(self.usage, prices)
        d["otel"] = otel_mod.public(self.otel)
        return d

    def parent_session_id_locked(self) -> bool:
        return self.parent_set_by_user


@attrs.define
class Outcome:
    event: Event
    changed: list[Session]  # Sessions whose state changed, the event's own first
    links: list[tuple[str, str]]  # (child_id, parent_id) pairs made by this event


Changed = dict[str, Session]  # the sessions an event changed, by id
Links = list[tuple[str, str]]  # (child_id, parent_id) pairs an event made


class SessionManager:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self._touched: list[Session] = []
        # What each model response has already added (responses repeat across lines,
        # files and reads); see usage.py.
        self.usage_ledger = usage_mod.Ledger()
        # Which turn a request, a tool call or a trace belongs to (spans carry no prompt id).
        self.otel_joins = otel_mod.Joins()

    # --- state restored from disk -------------------------------------------------
    def restore(self, session: Session) -> None:
        self.sessions[session.session_id] = session

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    def remove(self, session_id: str) -> Session | None:
        """Forget a session (retention, delete); unlink it from its relatives."""
        s = self.sessions.pop(session_id, None)
        if s is None:
            return None
        parent = self.sessions.get(s.parent_session_id or "")
        if parent and session_id in parent.child_session_ids:
            parent.child_session_ids.remove(session_id)
        return s

    # --- the state machine --------------------------------------------------------
    def apply(self, ev: Event) -> Outcome:
        self._touched = []  # sessions changed deep inside the machine (ended sub-agents)
        changed: dict[str, Session] = {}
        links: list[tuple[str, str]] = []
        root = self._session(ev.session_id, ev, changed)
        if ev.event_type == USAGE_EVENT:
            return self._apply_usage(root, ev, changed, links)
        if ev.event_type in otel_mod.EVENT_TYPES:
            return self._apply_otel(root, ev, changed, links)
        target = root
        if ev.from_hook:
            target = self._attribute(root, ev, changed, links)
        if ev.parent_session_id and target.parent_session_id is None and ev.parent_session_id != target.session_id:
            self._link(target, ev.parent_session_id, changed, links)
        ev.session_id = target.session_id
        if target.parent_session_id:
            ev.parent_session_id = target.parent_session_id
        late = ev.timestamp < (target.last_event_time or 0)
        self._count(target, ev)
        self._follow(target, root, ev, changed, late)
        self._status(target, root, ev, changed, late)
        if self._touched:
            changed.update((t.session_id, t) for t in self._touched)
        changed[target.session_id] = target
        if len(changed) == 1:  # (most events: their own session only)
            return Outcome(ev, [target], links)
        order = [target] + [s for sid, s in changed.items() if sid != target.session_id]
        return Outcome(ev, order, links)

    def _session(self, sid: str, ev: Event, changed: Changed) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            s = Session(
                session_id=sid,
                machine_id=ev.machine_id,
                working_directory=ev.working_directory,
                start_time=ev.timestamp,
            )
            self.sessions[sid] = s
            changed[sid] = s
        else:
            if ev.working_directory and not s.working_directory:
                s.working_directory = ev.working_directory
            if s.machine_id == "unknown" and ev.machine_id != "unknown":
                s.machine_id = ev.machine_id
        return s

    def would_cycle(self, child_id: str, parent_id: str) -> bool:
        """Is ``parent_id`` the child itself or one of its descendants?"""
        seen: set[str] = set()
        node_id: str | None = parent_id
        while node_id is not None and node_id not in seen:
            if node_id == child_id:
                return True
            seen.add(node_id)
            node = self.sessions.get(node_id)
            node_id = node.parent_session_id if node is not None else None
        return False

    def _link(self, child: Session, parent_id: str, changed: Changed, links: Links) -> None:
        if child.parent_session_id == parent_id or child.parent_session_id_locked():
            return
        if self.would_cycle(child.session_id, parent_id):
            log.warning("not linking %s under %s: that would make a cycle", child.session_id, parent_id)
            return
        old = self.sessions.get(child.parent_session_id or "")
        if old is not None and child.session_id in old.child_session_ids:
            old.child_session_ids.remove(child.session_id)
            changed[old.session_id] = old
        child.parent_session_id = parent_id
        changed[child.session_id] = child
        parent = self.sessions.get(parent_id)
        if parent is None:  # a parent we have not heard from (yet): keep its place
            parent = Session(session_id=parent_id, machine_id="unknown", start_time=child.start_time)
            self.sessions[parent_id] = parent
        if child.session_id not in parent.child_session_ids:
            parent.child_session_ids.append(child.session_id)
        changed[parent_id] = parent
        links.append((child.session_id, parent_id))
        log.info("[Broker] Linked session %s as child of %s", child.session_id, parent_id)

    def _child(self, root: Session, cid: str, ev: Event, changed: Changed, links: Links) -> Session:
        child = self.sessions.get(cid)
        if child is None:
            child = Session(
                session_id=cid,
                machine_id=root.machine_id if root.machine_id != "unknown" else ev.machine_id,
                working_directory=ev.working_directory or root.working_directory,
                start_time=ev.timestamp,
            )
            self.sessions[cid] = child
            changed[cid] = child
        self._link(child, root.session_id, changed, links)
        return child

    def _attribute(self, root: Session, ev: Event, changed: Changed, links: Links) -> Session:
        hook = ev.hook_type
        tool = ev.tool_name
        if ev.agent_id and self._compaction_agent(root, ev):
            ev.event_type = COMPACTION_AGENT
            return root
        if ev.agent_id:
            if not root.modern:
                root.modern = True
                root.legacy_open.clear()  # Task windows were a guess; agent_id is fact
                changed[root.session_id] = root
            child = self._child(root, child_id(root.session_id, "agent", ev.agent_id), ev, changed, links)
            child.agent_id = ev.agent_id
            child.agent_type = child.agent_type or ev.agent_type
            if hook == "SubagentStart":
                self._claim_spawn(root, child, changed)
            return child

        if tool in AGENT_TOOLS and hook in ("PostToolUse", "PostToolUseFailure"):
            self._spawn_finished(root, ev, changed, links)
            return root

        target = root
        if root.legacy_open and hook not in ("SubagentStart",):
            tid = root.legacy_open[-1] if hook != "SubagentStop" else root.legacy_open[0]
            target = self._task_child(root, tid, ev, changed, links)
            if hook == "SubagentStop":
                root.legacy_open.remove(tid)
                changed[root.session_id] = root

        if hook == "PreToolUse" and tool in AGENT_TOOLS and target is root:
            ti = ev.tool_input() if isinstance(ev.tool_input(), dict) else {}
            spawn = {
                "toolUseId": ev.tool_use_id,
                "agentType": ti.get("subagent_type") or "general-purpose",
                "description": ti.get("description"),
            }
            root.pending_spawns.append(spawn)
            del root.pending_spawns[:-MAX_PENDING]  # calls interrupted before their result
            if tool == "Task" and not root.modern and ev.tool_use_id:
                root.legacy_open.append(ev.tool_use_id)
            changed[root.session_id] = root
        return target

    def _compaction_agent(self, root: Session, ev: Event) -> bool:
        """A SubagentStop for an agent never seen, with no agent type or during a
        compaction: one of the agents ``/compact`` runs (it has no SubagentStart)."""
        if ev.hook_type != "SubagentStop" or child_id(root.session_id, "agent", ev.agent_id or "") in self.sessions:
            return False
        return not ev.agent_type or root.compacting

    def _task_child(self, root: Session, tool_use_id: str, ev: Event, changed: Changed, links: Links) -> Session:
        child = self._child(root, child_id(root.session_id, "task", tool_use_id), ev, changed, links)
        child.spawn_tool_use_id = tool_use_id
        spawn = next((p for p in root.pending_spawns if p.get("toolUseId") == tool_use_id), None)
        if spawn and child.agent_type is None:
            child.agent_type = spawn.get("agentType")
            child.description = spawn.get("description")
        return child

    def _claim_spawn(self, root: Session, child: Session, changed: Changed) -> None:
        """Join a SubagentStart to the oldest unclaimed Agent call of its type."""
        if child.spawn_tool_use_id:
            return
        claimed = {c.spawn_tool_use_id for c in map(self.sessions.get, root.child_session_ids) if c}
        for spawn in root.pending_spawns:
            if spawn.get("toolUseId") in claimed:
                continue
            if spawn.get("agentType") in (child.agent_type, None) or child.agent_type is None:
                child.spawn_tool_use_id = spawn.get("toolUseId")
                child.description = spawn.get("description")
                child.agent_type = child.agent_type or spawn.get("agentType")
                return

    def _spawn_finished(self, root: Session, ev: Event, changed: Changed, links: Links) -> None:
        out = ev.tool_output()
        agent_id = out.get("agentId") if isinstance(out, dict) else None
        spawn = next((p for p in root.pending_spawns if p.get("toolUseId") == ev.tool_use_id), None)
        if spawn:
            root.pending_spawns.remove(spawn)
        child = None
        if isinstance(agent_id, str) and agent_id:
            child = self._child(root, child_id(root.session_id, "agent", agent_id), ev, changed, links)
            child.agent_id = agent_id
        elif ev.tool_use_id and not root.modern:
            # Old Claude Code: the Task window (even an empty one) is the child.
            child = self._task_child(root, ev.tool_use_id, ev, changed, links)
            if ev.tool_use_id in root.legacy_open:
                root.legacy_open.remove(ev.tool_use_id)
        if child is not None:
            est = usage_mod.estimate_from_agent_result(out)
            if est is not None and not (child.usage and child.usage["models"]):
                # Until (unless) its transcript is read, what the Agent tool reported.
                child.usage = child.usage or usage_mod.empty()
                child.usage["estimate"] = est
            child.spawn_tool_use_id = child.spawn_tool_use_id or ev.tool_use_id
            if spawn:
                child.agent_type = child.agent_type or spawn.get("agentType")
                child.description = child.description or spawn.get("description")
            background = isinstance(out, dict) and out.get("status") == "async_launched"
            if not background and child.status not in (ENDED, FAILED):
                child.status = ENDED
                child.end_time = ev.timestamp
            changed[child.session_id] = child
        changed[root.session_id] = root

    def _apply_usage(self, root: Session, ev: Event, changed: Changed, links: Links) -> Outcome:
        """A ``usage`` event: records read from a transcript (see usage.py). Each record
        adds only what its response key has not added yet, to the session it ran in:
        the event's ``agentId`` (a sub-agent's own transcript), or a record's own
        ``agentId`` (a sub-agent's lines in the parent's transcript), else the root.
        It changes no status and no counts: it is bookkeeping, not a step."""
        if ev.parent_session_id and root.parent_session_id is None and ev.parent_session_id != root.session_id:
            self._link(root, ev.parent_session_id, changed, links)
        records = ev.data.get("records") if isinstance(ev.data, dict) else None
        for rec in records if isinstance(records, list) else ():
            if not usage_mod.valid_record(rec):
                continue
            taken = self.usage_ledger.take(rec)
            if taken is None:
                continue
            agent = ev.agent_id or (rec[usage_mod.R_AGENT] if len(rec) > usage_mod.R_AGENT else None)
            target = root
            if isinstance(agent, str) and agent:
                target = self._child(root, child_id(root.session_id, "agent", agent), ev, changed, links)
                target.agent_id = target.agent_id or agent
            if target.usage is None:
                target.usage = usage_mod.empty()
            target.usage["estimate"] = None  # measured now
            delta, new_call = taken
            usage_mod.add(target.usage, rec[usage_mod.R_MODEL], rec[usage_mod.R_TS] or ev.timestamp, delta, new_call)
            if rec[usage_mod.R_MODEL] != "unknown":
                target.model = rec[usage_mod.R_MODEL]
                if not target.models:
                    _note_model(target, target.model, rec[usage_mod.R_TS] or ev.timestamp)
            changed[target.session_id] = target
        if ev.parent_session_id is None and root.parent_session_id:
            ev.parent_session_id = root.parent_session_id
        return Outcome(ev, [root] + [s for sid, s in changed.items() if sid != root.session_id], links)

    def _apply_otel(self, root: Session, ev: Event, changed: Changed, links: Links) -> Outcome:
        """An ``otel_*`` event (Claude Code's own telemetry, see otel.py): its figures go
        to the session it ran in, a sub-agent (a log record's ``agent_id``) or the root;
        spans stay on the root (one tree per turn) and get the turn's ``promptId``.
        Like ``usage``, it changes no status and no counts. A session first heard of
        through OTel is made, idle (nothing says it is working)."""
        if root.session_id in changed and root.event_count == 0:
            root.status = IDLE
        if ev.parent_session_id and root.parent_session_id is None and ev.parent_session_id != root.session_id:
            self._link(root, ev.parent_session_id, changed, links)  # relayed: a sub-agent's already
        target = root
        placed = bool(ev.agent_id) and root.session_id.endswith(f":agent-{ev.agent_id}")  # relayed: placed already
        if ev.agent_id and ev.event_type == otel_mod.OTEL_LOG and not placed:
            cid = child_id(root.session_id, "agent", ev.agent_id)
            known = cid in self.sessions
            target = self._child(root, cid, ev, changed, links)
            target.agent_id = target.agent_id or ev.agent_id
            if not known:
                target.status = IDLE
        figures = target.otel if target.otel is not None else otel_mod.empty()
        u = target.usage if target.usage is not None else usage_mod.empty()
        if otel_mod.learn(figures, u, ev, self.otel_joins):
            target.otel = figures
            if u.get("otel"):
                target.usage = u
                if target.model is None and ev.data.get("name") == "api_request":
                    target.model = ev.data["attributes"].get("model")
            changed[target.session_id] = target
        if otel_mod.late_prompt(root.otel, ev, self.otel_joins):
            changed[root.session_id] = root
        ev.session_id = target.session_id
        if target.parent_session_id:
            ev.parent_session_id = target.parent_session_id
        return Outcome(ev, [target] + [s for sid, s in changed.items() if sid != target.session_id], links)

    def usage_total(self, s: Session) -> dict[str, Any] | None:
        """The session's usage with every sub-agent's under it (any depth)."""
        seen, stack, parts = set(), [s], []
        while stack:
            node = stack.pop()
            if node.session_id in seen:
                continue
            seen.add(node.session_id)
            parts.append(node.usage)
            stack.extend(c for c in map(self.sessions.get, node.child_session_ids) if c is not None)
        if not any(parts):
            return None
        return usage_mod.merge(parts)

    def _count(self, s: Session, ev: Event) -> None:
        s.event_count += 1
        if ev.event_type == "tool_call":
            s.tool_count += 1
        elif ev.event_type in ("tool_error", "stop_failure"):
            s.error_count += 1
        if s.last_event_time is None or ev.timestamp >= s.last_event_time:
            s.last_event_time = ev.timestamp
            s.last_event_type = ev.event_type
            s.last_summary = ev.summary
        if s.start_time is None or ev.timestamp < s.start_time:
            s.start_time = ev.timestamp
        if ev.prompt_id:
            s.prompt_id = ev.prompt_id
        if ev.event_type == "session_start":
            self._started(s, ev)

    def _started(self, s: Session, ev: Event) -> None:
        model = ev.data.get("model")
        if isinstance(model, str) and model:
            s.model = model
            _note_model(s, model, ev.timestamp)
        if ev.agent_type and not ev.agent_id and s.parent_session_id is None:
            s.agent_type = ev.agent_type  # ``--agent NAME``: the session's own agent

    def _follow(self, s: Session, root: Session, ev: Event, changed: Changed, late: bool) -> None:
        """What the event tells about the session beyond its status: where it works,
        what it said, its open tool calls, its background agents, its compactions."""
        et = ev.event_type
        d = ev.data if isinstance(ev.data, dict) else {}
        if ev.agent_type and not ev.agent_id and s is root and s.agent_type is None and s.parent_session_id is None:
            s.agent_type = ev.agent_type  # ``--agent NAME`` (every main-thread event says so)
        learn = _LEARN.get(et)
        if learn is not None:
            learn(s, ev, d)
        self._calls(s, ev, d)
        if et == "stop" and s is root:
            s.background_agents = _running_agents(d.get("background_tasks"))
        elif et == AGENT_REPORT:
            done = tag_text(d.get("prompt"), "task-id")
            if done in s.background_agents:
                s.background_agents.remove(done)
        elif et == "subagent_stop" and s is not root and s.agent_id in root.background_agents:
            root.background_agents.remove(s.agent_id or "")
            changed[root.session_id] = root
        if not late and not _answered_prompt(s, ev):
            s.attention = attention_mod.after_event(s.attention, ev)

    def _calls(self, s: Session, ev: Event, d: dict[str, Any]) -> None:
        """Tool calls awaiting a result. One asked for and never answered was denied
        (``-p``, or the person said no); one still open when its turn ends was
        interrupted (Escape fires no hook): the turn's last event lists them."""
        et, tid = ev.event_type, ev.tool_use_id
        if et == "tool_call" and tid:
            self.otel_joins.note(tid, ev.prompt_id)  # the tool's spans find their turn by it
            call = s.open_calls.setdefault(tid, {"toolName": ev.tool_name, "since": ev.timestamp})
            call.setdefault("asked", False)
            while len(s.open_calls) > MAX_OPEN_CALLS:
                del s.open_calls[next(iter(s.open_calls))]
        elif et == "permission_request":
            key = tid or next((k for k, c in reversed(s.open_calls.items()) if c.get("toolName") == ev.tool_name), None)
            if key:
                s.open_calls.setdefault(key, {"toolName": ev.tool_name, "since": ev.timestamp})["asked"] = True
        elif et in ("tool_result", "tool_error") and tid:
            s.open_calls.pop(tid, None)
            if et == "tool_error" and d.get("is_interrupt") is True:
                s.interrupted_count += 1
        elif et == "permission_denied" and tid:
            s.open_calls.pop(tid, None)
            s.denied_count += 1
        elif et == "tool_batch" and s.open_calls:
            self._batch_denials(s, ev, d.get("tool_calls"))
        elif et in _TURN_ENDS and s.open_calls:
            unanswered = {k: "denied" if c.get("asked") else "interrupted" for k, c in s.open_calls.items()}
            ev.unanswered_calls = unanswered
            self._end_interrupted_agents(s, ev, s.open_calls)
            s.denied_count += sum(1 for v in unanswered.values() if v == "denied")
            s.interrupted_count += sum(1 for v in unanswered.values() if v == "interrupted")
            s.open_calls.clear()

    def _end_interrupted_agents(self, s: Session, ev: Event, calls: dict[str, dict[str, Any]]) -> None:
        """A foreground sub-agent whose Agent call got no result when the turn ended
        was stopped with it (Escape fires nothing): it ends, marked interrupted."""
        spawned = {tid for tid, c in calls.items() if c.get("toolName") in AGENT_TOOLS}
        for cid in s.child_session_ids if spawned else ():
            child = self.sessions.get(cid)
            if child is None or child.spawn_tool_use_id not in spawned or child.status in (ENDED, FAILED):
                continue
            if child.agent_id in s.background_agents:
                continue
            child.status, child.end_time, child.attention = ENDED, ev.timestamp, None
            child.interrupted_count += 1
            self._touched.append(child)

    def _batch_denials(self, s: Session, ev: Event, calls: Any) -> None:
        """A call refused by a rule (or ``dontAsk``) gets no PostToolUse and no
        PermissionDenied: only the batch's ``tool_response`` says it was denied."""
        denied = {}
        for c in calls if isinstance(calls, list) else ():
            tid = c.get("tool_use_id") if isinstance(c, dict) else None
            if isinstance(tid, str) and tid in s.open_calls and _says_denied(c.get("tool_response")):
                del s.open_calls[tid]
                denied[tid] = "denied"
        if denied:
            ev.unanswered_calls = denied
            s.denied_count += len(denied)
            if s.attention is not None and s.attention["reason"] == attention_mod.PERMISSION:
                s.attention = None  # the person (or a rule) said no: answered

    def _status(self, s: Session, root: Session, ev: Event, changed: Changed, late: bool) -> None:
        et = ev.event_type
        att = s.attention
        if att is not None and att["reason"] in attention_mod.BLOCKING and attention_mod.reason_for(ev) is not None:
            new: str | None = WAITING
        elif et in attention_mod.QUIET:
            new = None
        else:
            new = _STATUS_BY_TYPE.get(et, ACTIVE)
        if et == "subagent_stop" and s is root:
            new = None  # no sub-agent to end (old Claude Code, or its window already closed)
        if new == IDLE and s.background_agents:
            new = ACTIVE  # the turn ended, the work did not: it waits on background agents
        if new is None:
            return
        if late and s.status in (ENDED, FAILED):
            return  # a late (spooled) event does not reopen a finished session
        s.status = new
        if new in (ENDED, FAILED):
            s.end_time = ev.timestamp
        else:
            s.end_time = None
        if root is not s:
            # A sub-agent waiting for the person holds its parent up, and releases it.
            if new == WAITING and root.status != WAITING:
                root.status = WAITING
                changed[root.session_id] = root
            elif new in (ACTIVE, ENDED, FAILED) and root.status == WAITING and not _blocked(root):
                root.status = ACTIVE
                changed[root.session_id] = root
        if et == "session_end":
            for cid in s.child_session_ids:
                child = self.sessions.get(cid)
                if child and child.status not in (ENDED, FAILED):
                    child.status = ENDED
                    child.end_time = ev.timestamp
                    child.attention = None
                    changed[cid] = child
            s.background_agents.clear()


_DENIALS = ("has been denied", "doesn't want to proceed", "was rejected by the user")


def _says_denied(response: Any) -> bool:
    """Claude Code's text for a refused call ("Permission to use Bash ... has been
    denied.", or the person's "no" at the prompt)."""
    return isinstance(response, str) and any(d in response for d in _DENIALS)


def _answered_prompt(s: Session, ev: Event) -> bool:
    """The ``permission_prompt`` Notification comes seconds after the prompt showed:
    when no call is open any more, the person has answered already. (An open Agent
    call is not the one asking: its sub-agent's own wait is on the sub-agent.)"""
    if ev.event_type != "notification" or ev.notification_type != "permission_prompt":
        return False
    return not any(c.get("toolName") not in AGENT_TOOLS for c in s.open_calls.values())


def _blocked(s: Session) -> bool:
    return s.attention is not None and s.attention["reason"] in attention_mod.BLOCKING


def _note_model(s: Session, model: str, ts: int) -> None:
    if not s.models or s.models[-1].get("model") != model:
        s.models.append({"model": model, "since": ts})
        del s.models[:-MAX_LISTED]


def _running_agents(tasks: Any) -> list[str]:
    """The ids of the sub-agents a Stop's ``background_tasks`` lists as still going."""
    out = []
    for t in tasks if isinstance(tasks, list) else ():
        if isinstance(t, dict) and t.get("type") == "subagent" and t.get("status") in _RUNNING:
            if isinstance(t.get("id"), str) and t["id"]:
                out.append(t["id"])
    return out


def _message(s: Session, ev: Event, d: dict[str, Any]) -> None:
    """The assistant's words as Claude Code displays them: ``delta`` pieces of one
    ``message_id`` add up; a new message starts over."""
    delta = d.get("delta")
    if not isinstance(delta, str):
        return
    mid = d.get("message_id") if isinstance(d.get("message_id"), str) else None
    if mid is not None and mid == s.last_message_id and s.last_message:
        s.last_message = (s.last_message + delta)[-LAST_MESSAGE_MAX:]
    else:
        s.last_message = delta[:LAST_MESSAGE_MAX]
    s.last_message_id = mid


def _last_words(s: Session, ev: Event, d: dict[str, Any]) -> None:
    if isinstance(d.get("last_assistant_message"), str):
        s.last_message = d["last_assistant_message"][:LAST_MESSAGE_MAX]


def _moved(s: Session, ev: Event, d: dict[str, Any]) -> None:
    if isinstance(d.get("new_cwd"), str) and d["new_cwd"]:
        s.working_directory = d["new_cwd"]


def _instructions(s: Session, ev: Event, d: dict[str, Any]) -> None:
    path = d.get("file_path")
    if isinstance(path, str) and path not in s.instructions:
        s.instructions.append(path)
        del s.instructions[:-MAX_LISTED]


def _model_switched(s: Session, ev: Event, d: dict[str, Any]) -> None:
    after, before = d.get("to_model"), d.get("from_model")
    if not isinstance(after, str) or not after:
        return
    if not s.models and isinstance(before, str) and before:
        _note_model(s, before, s.start_time or ev.timestamp)  # ``-p`` sessions do not say it at start
    s.model = after
    _note_model(s, after, ev.timestamp)


def _compacting(s: Session, ev: Event, d: dict[str, Any]) -> None:
    s.compacting = True


def _compacted(s: Session, ev: Event, d: dict[str, Any]) -> None:
    s.compacting = False
    s.compactions += 1


# What an event teaches about its session, by event type (see SessionManager._follow).
_LEARN: dict[str, Callable[[Session, Event, dict[str, Any]], None]] = {
    "message_display": _message,
    "stop": _last_words,
    "subagent_stop": _last_words,
    "cwd_changed": _moved,
    "instructions_loaded": _instructions,
    "model_switch": _model_switched,
    "pre_compact": _compacting,
    "post_compact": _compacted,
}


@functools.cache
def _field_names() -> dict[str, str]:
    """A session's JSON names -> its attribute names (a start reads one meta per session)."""
    return {camel(a.name): a.name for a in attrs.fields(Session)}
