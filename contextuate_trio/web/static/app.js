// The dashboard: state, wiring, keyboard. Modules: conn (WebSocket), tree, stream,
// detail, charts, util. Plain ES modules served by the daemon; works offline.
import { $, el, toast, throttle, shortId } from './util.js';
import { Connection } from './conn.js';
import { Stream } from './stream.js';
import { Needs } from './needs.js';
import { Tree, sessionTitle } from './tree.js';
import { renderDetail } from './detail.js';
import { drawActivity, drawTimeline, colorFor } from './charts.js';

const MAX_EVENTS = 100000;
const meta = (n) => document.querySelector(`meta[name="${n}"]`)?.content;

const state = {
  sessions: new Map(),
  events: [],
  byId: new Map(),
  byToolUse: new Map(),
  filters: { machine: '', type: '', tool: '', session: null, q: '' },
  paused: false,
  missed: 0,
  range: 3600000,
  detail: null,
  showHidden: false,
  fold: new Map(), // promptId -> open? (turns fold when one session is shown)
};
window.__contextuate = state; // for tests and the curious

// --- token (only when the daemon has one) ------------------------------------------
const needsToken = meta('contextuate-auth') === 'token';
// `contextuate-trio open` (and the URL the daemon prints) carries a token in the
// fragment (#token=…, never sent to the server): it moves into this tab's storage and
// out of the address bar and the history.
(function tokenFromUrl() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!m) return;
  sessionStorage.setItem('contextuate-token', decodeURIComponent(m[1]));
  history.replaceState(null, '', location.pathname + location.search);
})();
let token = needsToken ? (sessionStorage.getItem('contextuate-token') || localStorage.getItem('contextuate-token')) : null;

async function askToken(again = false) {
  const value = await dialog({
    title: 'Access token', text: again ? 'The daemon refused that token. Enter one of its tokens (`contextuate-trio token list`; `contextuate-trio open` logs in by itself).'
      : 'This daemon requires a token (server.tokens in monitor.config.json; `contextuate-trio open` logs in by itself). It is kept in this browser tab only.',
    input: { type: 'password', placeholder: 'token' }, ok: 'Connect',
  });
  if (value) { token = value; sessionStorage.setItem('contextuate-token', value); }
  return value;
}

async function api(path) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await fetch(path, { headers });
  if (r.status === 401) { await askToken(true); throw new Error('token required'); }
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || `HTTP ${r.status}`);
  return r;
}

// --- events and sessions ------------------------------------------------------------
function pairOf(toolUseId) {
  let p = state.byToolUse.get(toolUseId);
  if (!p) { p = {}; state.byToolUse.set(toolUseId, p); }
  return p;
}

// Joins a tool call to what ended it: its result or error, a permission_denied, or the
// turn's end listing it in unansweredCalls (denied / interrupted: it gets no result).
// True when the event changed how an earlier call is shown.
function index(ev) {
  state.byId.set(ev.id, ev);
  let closed = false;
  if (ev.toolUseId) {
    const p = pairOf(ev.toolUseId);
    if (ev.eventType === 'tool_call' || ev.eventType === 'permission_request') { if (ev.eventType === 'tool_call' || !p.call) p.call = ev; }
    else if (ev.eventType === 'tool_result' || ev.eventType === 'tool_error') { p.result = ev; closed = ev.eventType === 'tool_error'; }
    else if (ev.eventType === 'permission_denied') { p.outcome = 'denied'; p.end = ev; closed = true; }
  }
  if (ev.unansweredCalls && typeof ev.unansweredCalls === 'object') {
    for (const [tid, how] of Object.entries(ev.unansweredCalls)) {
      const p = pairOf(tid);
      if (p.result || p.outcome === 'denied') continue;
      p.outcome = how === 'denied' ? 'denied' : 'interrupted'; p.end = ev; closed = true;
    }
  }
  return closed;
}

// How a tool call ended, when not plainly: 'denied', 'interrupted', 'error' (or null).
function outcomeOf(ev) {
  const p = ev.toolUseId ? state.byToolUse.get(ev.toolUseId) : null;
  if (!p) return null;
  if (p.result) return p.result.eventType === 'tool_error' ? (p.result.data?.is_interrupt === true ? 'interrupted' : 'error') : null;
  return p.outcome || null;
}

function resetEvents(list) {
  state.events = list.slice(-MAX_EVENTS);
  state.byId.clear(); state.byToolUse.clear();
  for (const ev of state.events) index(ev);
}

function addEvents(list) {
  const fresh = [];
  let closed = false;
  for (const ev of list) {
    const old = state.byId.get(ev.id);
    if (old) continue;
    state.events.push(ev); if (index(ev)) closed = true; fresh.push(ev);
  }
  if (closed) refreshRows();
  if (state.events.length > MAX_EVENTS * 1.1) {
    const drop = state.events.splice(0, state.events.length - MAX_EVENTS);
    for (const ev of drop) { state.byId.delete(ev.id); if (ev.toolUseId) state.byToolUse.delete(ev.toolUseId); }
    rebuildView();
  }
  return fresh;
}

function mergeHistory(list) {
  const fresh = list.filter((e) => !state.byId.has(e.id));
  if (!fresh.length) return 0;
  state.events = fresh.concat(state.events).sort((a, b) => a.timestamp - b.timestamp);
  for (const ev of fresh) index(ev);
  rebuildView();
  return fresh.length;
}

function selectedSet() {
  const id = state.filters.session;
  if (!id) return null;
  const out = new Set([id]);
  const stack = [id];
  while (stack.length) {
    const s = state.sessions.get(stack.pop());
    for (const c of s?.childSessionIds || []) if (!out.has(c)) { out.add(c); stack.push(c); }
  }
  for (const s of state.sessions.values()) if (s.parentSessionId && out.has(s.parentSessionId)) out.add(s.sessionId);
  return out;
}

function matcher() {
  const f = state.filters;
  const sel = selectedSet();
  let text = null;
  const q = f.q.trim();
  if (q) {
    const rx = /^\/(.+)\/([a-z]*)$/.exec(q);
    if (rx) { try { const re = new RegExp(rx[1], rx[2].includes('i') ? rx[2] : `${rx[2]}i`); text = (s) => re.test(s); } catch { text = () => false; } }
    else { const needle = q.toLowerCase(); text = (s) => s.toLowerCase().includes(needle); }
  }
  const hidden = state.showHidden ? null : new Set([...state.sessions.values()].filter((s) => s.hidden).map((s) => s.sessionId));
  return (ev) => {
    if (f.machine && ev.machineId !== f.machine) return false;
    if (f.type && ev.eventType !== f.type) return false;
    if (f.tool && ev.toolName !== f.tool) return false;
    if (sel && !sel.has(ev.sessionId)) return false;
    if (!sel && hidden && hidden.size && hidden.has(ev.sessionId)) return false;
    if (text && !text(`${ev.summary || ''} ${ev.toolName || ''} ${ev.eventType} ${ev.sessionId} ${ev.machineId} ${ev.workingDirectory || ''} ${ev.agentType || ''}`)) return false;
    return true;
  };
}
let match = matcher();

// --- turns ---------------------------------------------------------------------------
// With one session shown (and no text/type/tool filter), the events of one promptId fold
// under the turn's first event (its prompt): the newest turn open, older ones folded.
// One pass over the shown events; `turns` is null when nothing folds.
let turns = null;
function foldActive() {
  const f = state.filters;
  return !!f.session && !f.q.trim() && !f.type && !f.tool;
}

function foldTurns(items) {
  turns = new Map();
  let last = null;
  for (const ev of items) {
    const pid = ev.promptId;
    if (!pid) continue;
    let t = turns.get(pid);
    if (!t) { t = { head: ev, count: 0 }; turns.set(pid, t); last = pid; }
    t.count += 1;
  }
  for (const pid of turns.keys()) if (!state.fold.has(pid)) state.fold.set(pid, pid === last);
  return items.filter((ev) => !ev.promptId || turns.get(ev.promptId).head === ev || state.fold.get(ev.promptId));
}

// Live events in a folded view: a new turn starts open; an event of a folded turn
// only adds to its head's count.
function foldLive(shown) {
  if (!turns) return shown;
  let counted = false;
  const out = shown.filter((ev) => {
    const pid = ev.promptId;
    if (!pid) return true;
    const t = turns.get(pid);
    if (!t) { turns.set(pid, { head: ev, count: 1 }); if (!state.fold.has(pid)) state.fold.set(pid, true); return true; }
    t.count += 1; counted = true;
    return state.fold.get(pid);
  });
  if (counted) refreshRows();
  return out;
}

function foldInfo(ev) {
  if (!turns || !ev.promptId) return null;
  const t = turns.get(ev.promptId);
  if (!t) return null;
  return t.head === ev ? { head: true, open: !!state.fold.get(ev.promptId), count: t.count } : { inTurn: true };
}

function toggleTurn(ev) {
  if (!ev?.promptId || !turns) return;
  state.fold.set(ev.promptId, !state.fold.get(ev.promptId));
  stream.setFollow(false); // the head stays where it is; the rows after it change
  rebuildView();
}

function rebuildView() {
  match = matcher();
  let items = state.events.filter(match);
  turns = null;
  if (foldActive()) items = foldTurns(items);
  stream.setItems(items);
  state.missed = 0;
  updateCounts();
}

// --- UI pieces ---------------------------------------------------------------------
const stream = new Stream($('#stream'), $('#stream-spacer'), {
  onSelect: (ev) => showDetail(ev),
  sessionLabel: (ev) => {
    const s = state.sessions.get(ev.sessionId);
    return s ? sessionTitle(s) : shortId(ev.sessionId);
  },
  outcome: outcomeOf,
  fold: foldInfo,
  onFold: toggleTurn,
});
const refreshRows = throttle(() => stream.refresh(), 250);
stream.onFollow = (on) => { const b = $('#follow'); b.classList.toggle('on', on); b.setAttribute('aria-pressed', String(on)); };

const tree = new Tree($('#tree'), {
  onSelect: (id) => selectSession(id),
  onMenu: (id, anchor) => openMenu(id, anchor),
});

const renderTree = throttle(() => {
  tree.selected = state.filters.session;
  tree.showHidden = state.showHidden;
  const roots = tree.render(state.sessions);
  $('#tree-empty').hidden = state.sessions.size > 0;
  const visible = [...state.sessions.values()].filter((s) => !s.hidden).length;
  $('#session-count').textContent = state.sessions.size ? `${visible}${visible !== state.sessions.size ? ` (+${state.sessions.size - visible} hidden)` : ''}` : '';
  renderMachines();
  updateOptions();
  return roots;
}, 200);

function renderMachines() {
  const per = new Map();
  for (const s of state.sessions.values()) {
    const m = per.get(s.machineId) || { sessions: 0, events: 0, active: 0 };
    m.sessions += 1; m.events += s.eventCount || 0;
    if (s.status === 'active' || s.status === 'waiting') m.active += 1;
    per.set(s.machineId, m);
  }
  const box = $('#machines');
  box.replaceChildren(...[...per.entries()].sort().map(([name, m]) => el('button', {
    class: `machine${state.filters.machine === name ? ' on' : ''}`, type: 'button', title: `Show only ${name}`,
    onclick: () => { setFilter('machine', state.filters.machine === name ? '' : name); },
  }, el('i', { style: `color:${colorFor(name)}`, text: '●' }), el('b', { text: name }),
  el('span', { class: 'muted', text: `${m.sessions} sessions · ${m.events.toLocaleString()} events${m.active ? ` · ${m.active} live` : ''}` }))));
}

const seenOptions = { machine: new Set(), type: new Set(), tool: new Set() };
function updateOptions() {
  const want = { machine: new Set(), type: new Set(), tool: new Set() };
  for (const s of state.sessions.values()) want.machine.add(s.machineId);
  const from = Math.max(0, state.events.length - 20000);
  for (let i = from; i < state.events.length; i++) {
    const ev = state.events[i];
    want.type.add(ev.eventType);
    if (ev.toolName) want.tool.add(ev.toolName);
  }
  for (const key of ['machine', 'type', 'tool']) {
    const add = [...want[key]].filter((v) => v && !seenOptions[key].has(v));
    if (!add.length) continue;
    for (const v of add) seenOptions[key].add(v);
    const sel = $(`#f-${key}`);
    const cur = sel.value;
    const first = sel.options[0];
    sel.replaceChildren(first, ...[...seenOptions[key]].sort().map((v) => el('option', { value: v, text: v.replace(/_/g, ' ') })));
    sel.value = cur;
  }
}

function updateCounts() {
  const shown = stream.items.length;
  const total = state.events.length;
  $('#stream-count').textContent = `${shown.toLocaleString()}${shown !== total ? ` of ${total.toLocaleString()}` : ''} events`;
  $('#stream-empty').hidden = shown > 0 || total === 0;
  const nb = $('#new-events');
  if (state.paused && state.missed) { nb.hidden = false; nb.textContent = `▶ ${state.missed.toLocaleString()} new events — resume`; }
  else if (!stream.follow && !state.paused && state.newBelow) { nb.hidden = false; nb.textContent = `↓ ${state.newBelow.toLocaleString()} new below`; }
  else nb.hidden = true;
}
const updateCountsSoon = throttle(updateCounts, 250);

function drawChartsNow() {
  const now = Date.now();
  const sel = selectedSet();
  const evs = sel ? state.events.filter((e) => sel.has(e.sessionId)) : (state.filters.machine ? state.events.filter((e) => e.machineId === state.filters.machine) : state.events);
  const scope = sel ? `· ${sessionTitle(state.sessions.get(state.filters.session))} by event type` : (state.filters.machine ? `· ${state.filters.machine} by session` : '· all machines');
  $('#activity-scope').textContent = scope;
  const key = sel ? (e) => e.eventType : (state.filters.machine ? (e) => sessionTitle(state.sessions.get(e.sessionId)) || shortId(e.sessionId) : (e) => e.machineId);
  drawActivity($('#chart'), evs, { range: state.range, now, key });
  // Tool timeline: a lane per session with tool calls in range (the busiest six).
  const start = now - state.range;
  const calls = []; const laneLast = new Map();
  for (const e of evs) {
    if (e.eventType !== 'tool_call' || e.timestamp < start - 3600000) continue;
    const p = e.toolUseId ? state.byToolUse.get(e.toolUseId) : null;
    const end = p?.result ? p.result.timestamp : p?.end ? p.end.timestamp : (e.toolUseId ? null : e.timestamp + 200);
    if ((end ?? now) < start) continue;
    calls.push({ lane: e.sessionId, tool: e.toolName || '?', start: e.timestamp, end: end === null && now - e.timestamp > 3600000 ? e.timestamp + 1000 : end, error: p?.result?.eventType === 'tool_error' || p?.outcome === 'denied' });
    laneLast.set(e.sessionId, Math.max(laneLast.get(e.sessionId) || 0, e.timestamp));
  }
  const lanes = [...laneLast.entries()].sort((a, b) => b[1] - a[1]).slice(0, 6)
    .map(([id]) => ({ id, label: sessionTitle(state.sessions.get(id)) || shortId(id) }));
  const canvas = $('#timeline');
  canvas.style.height = `${Math.max(44, Math.min(6, lanes.length || 1) * 20 + 6)}px`;
  drawTimeline(canvas, calls, lanes, { range: state.range, now });
  const tools = new Map();
  for (const c of calls) tools.set(c.tool, (tools.get(c.tool) || 0) + 1);
  $('#timeline-legend').replaceChildren(...[...tools.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8)
    .map(([t, n]) => el('span', {}, el('i', { style: `background:${colorFor(t)}` }), `${t} ${n}`)));
}
const drawCharts = throttle(drawChartsNow, 500);

// --- detail --------------------------------------------------------------------------
async function showDetail(ev) {
  state.detail = ev;
  $('#detail').hidden = false;
  const draw = (e) => renderDetail($('#detail-body'), $('#detail-title'), e, {
    pair: e.toolUseId ? state.byToolUse.get(e.toolUseId) : null,
    sessionTitle: (id) => sessionTitle(state.sessions.get(id)) || id,
    messageText,
    onJump: (other) => jumpTo(other),
    onSession: (id) => selectSession(id),
  });
  draw(ev);
  const pair = ev.toolUseId ? state.byToolUse.get(ev.toolUseId) : null;
  const partial = [ev, pair?.call, pair?.result].filter((e) => e && e.truncated);
  for (const p of partial) {
    try {
      const r = await conn.request({ type: 'get_event_detail', eventId: p.id, sessionId: p.sessionId, timestamp: p.timestamp });
      Object.assign(p, r.event); delete p.truncated;
    } catch (e) { /* keep the trimmed one */ }
  }
  if (partial.length && state.detail === ev) draw(ev);
}

// The whole assistant message a message_display delta belongs to (its pieces joined).
function messageText(ev) {
  const mid = ev.data?.message_id;
  if (!mid) return null;
  const parts = state.events.filter((e) => e.eventType === 'message_display' && e.sessionId === ev.sessionId && e.data?.message_id === mid);
  if (parts.length < 2) return null;
  parts.sort((a, b) => (a.data.index ?? 0) - (b.data.index ?? 0) || a.timestamp - b.timestamp);
  return parts.map((e) => (typeof e.data.delta === 'string' ? e.data.delta : '')).join('');
}

function jumpTo(ev) {
  let i = stream.items.indexOf(ev);
  if (i < 0 && turns && ev.promptId && turns.has(ev.promptId) && !state.fold.get(ev.promptId)) {
    state.fold.set(ev.promptId, true); rebuildView(); i = stream.items.indexOf(ev); // in a folded turn: open it
  }
  if (i < 0) { clearFilters(); i = stream.items.indexOf(ev); }
  if (i >= 0) { stream.setFollow(false); stream.select(i); } else showDetail(ev);
}

function closeDetail() { $('#detail').hidden = true; state.detail = null; $('#stream').focus(); }

// --- filters -------------------------------------------------------------------------
function setFilter(key, value) {
  state.filters[key] = value;
  if (key !== 'session') { const s = $(`#f-${key}`); if (s && s.value !== value) s.value = value; }
  rebuildView();
  renderTree(); drawCharts();
}

function clearFilters() {
  Object.assign(state.filters, { machine: '', type: '', tool: '', session: null, q: '' });
  $('#q').value = ''; for (const k of ['machine', 'type', 'tool']) $(`#f-${k}`).value = '';
  updateSessionChip(); rebuildView(); renderTree(); drawCharts();
}

function updateSessionChip() {
  const chip = $('#f-session');
  const s = state.sessions.get(state.filters.session);
  chip.hidden = !state.filters.session;
  chip.textContent = s ? `session: ${sessionTitle(s)} ✕` : '';
  chip.title = 'Show all sessions';
}

const historyAsked = new Set();
async function selectSession(id) {
  state.filters.session = id;
  updateSessionChip();
  rebuildView(); renderTree(); drawCharts();
  if (id && !historyAsked.has(id)) {
    historyAsked.add(id);
    const ids = [...(selectedSet() || [])];
    let got = 0;
    for (const sid of ids.slice(0, 20)) {
      try {
        const r = await conn.request({ type: 'get_events', sessionId: sid, limit: 2000 });
        got += mergeHistory(r.events);
      } catch (e) { /* offline: what we have */ }
    }
    if (got) drawCharts();
  }
}

// --- session actions ---------------------------------------------------------------------
function closeMenu() { $('#menu').hidden = true; }

function openMenu(id, anchor) {
  const s = state.sessions.get(id);
  if (!s) return;
  const menu = $('#menu');
  const item = (label, fn, cls) => el('button', { type: 'button', role: 'menuitem', class: cls, text: label, onclick: () => { closeMenu(); fn(); } });
  menu.replaceChildren(
    item('Rename…', async () => {
      const v = await dialog({ title: 'Rename session', input: { value: s.name || '', placeholder: sessionTitle(s) }, ok: 'Rename', text: 'Empty: back to the project name.' });
      if (v !== null) act('rename', id, v);
    }),
    item(s.pinned ? 'Unpin' : 'Pin to top', () => act(s.pinned ? 'unpin' : 'pin', id)),
    item(s.hidden ? 'Unhide' : 'Hide', () => act(s.hidden ? 'unhide' : 'hide', id)),
    item('Set parent…', async () => {
      const options = [...state.sessions.values()].filter((o) => o.sessionId !== id)
        .sort((a, b) => (b.lastEventTime || 0) - (a.lastEventTime || 0))
        .map((o) => ({ value: o.sessionId, label: `${sessionTitle(o)} · ${o.machineId} · ${shortId(o.sessionId)}` }));
      const v = await dialog({ title: 'Set parent', text: `Put “${sessionTitle(s)}” under:`, select: options, ok: 'Set parent' });
      if (v) act('set_parent', id, v);
    }),
    s.parentSessionId ? item('Remove parent', () => act('remove_parent', id)) : null,
    item('Export JSONL', () => exportSession(id)),
    item('Copy session id', () => navigator.clipboard?.writeText(id).then(() => toast('Copied'))),
    item('Delete…', async () => {
      const v = await dialog({ title: 'Delete session', text: `Delete “${sessionTitle(s)}” and its stored events from the daemon? This cannot be undone.`, ok: 'Delete' });
      if (v !== null) act('delete', id);
    }, 'danger'),
  );
  const r = anchor.getBoundingClientRect();
  menu.hidden = false;
  const mw = menu.offsetWidth; const mh = menu.offsetHeight;
  menu.style.left = `${Math.min(window.innerWidth - mw - 8, Math.max(8, r.left))}px`;
  menu.style.top = `${Math.min(window.innerHeight - mh - 8, r.bottom + 4)}px`;
  menu.querySelector('button')?.focus();
}

async function act(action, sessionId, value) {
  try {
    await conn.request({ type: 'session_action', action, sessionId, value });
    toast(`${action.replace(/_/g, ' ')}: done`);
  } catch (e) { toast(`Could not ${action.replace(/_/g, ' ')}: ${e.message}`); }
}

async function exportSession(id) {
  try {
    const r = await api(`/api/sessions/${encodeURIComponent(id)}/export?children=1`);
    const blob = await r.blob();
    const a = el('a', { href: URL.createObjectURL(blob), download: `session-${id}.jsonl` });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 5000);
  } catch (e) { toast(`Export failed: ${e.message}`); }
}

// A small modal: text input, select, or a plain confirm. Resolves the value or null.
function dialog({ title, text = '', input = null, select = null, ok = 'OK' }) {
  const dlg = $('#dialog');
  $('#dialog-title').textContent = title;
  $('#dialog-text').textContent = text;
  $('#dialog-ok').textContent = ok;
  const fields = $('#dialog-fields');
  let field = null;
  if (input) field = el('input', { type: input.type || 'text', value: input.value || '', placeholder: input.placeholder || '', 'aria-label': title });
  if (select) field = el('select', { 'aria-label': title }, ...select.map((o) => el('option', { value: o.value, text: o.label })));
  fields.replaceChildren(...(field ? [field] : []));
  return new Promise((resolve) => {
    dlg.onclose = () => resolve(dlg.returnValue === 'ok' ? (field ? field.value : '') : null);
    dlg.returnValue = '';
    dlg.showModal();
    (field || $('#dialog-ok')).focus();
  });
}

// --- needs you -----------------------------------------------------------------------------
async function loadAttention() {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await fetch('/api/attention', { headers, cache: 'no-store' });
  if (r.status === 401) throw new Error('the token is needed');
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  return r.json();
}

function selectNeed(it) {
  const id = state.sessions.has(it.sessionId) || !it.rootSessionId ? it.sessionId : it.rootSessionId;
  if (state.filters.session !== id) selectSession(id);
  setTimeout(() => $(`#tree .node[data-id="${CSS.escape(id)}"]`)?.scrollIntoView({ block: 'nearest' }), 250);
}

const needs = new Needs({
  root: $('#needs'), load: loadAttention, onSelect: selectNeed,
  onCount: (n) => { document.title = `${n ? `(${n} waiting) ` : ''}contextuate · live agents`; },
});
state.needs = needs;
const inQueue = (id) => needs.items.some((it) => it.sessionId === id);
const attentionSig = (s) => (s ? `${s.hidden ? 'h' : ''}|${s.attention ? `${s.attention.reason}|${s.attention.since}|${s.attention.detail}` : ''}` : '|');
// Events that can start a wait; the session_update that follows says the same.
const ASKING = new Set(['permission_request', 'elicitation', 'notification', 'stop_failure']);

// --- the connection --------------------------------------------------------------------------
function setConn(stateName, attempt, wait, code) {
  const c = $('#conn');
  c.className = `conn ${stateName === 'live' ? 'live' : stateName === 'retry' ? 'retry' : stateName === 'auth?' ? 'down' : ''}`;
  c.querySelector('.label').textContent = stateName === 'live' ? 'live'
    : stateName === 'retry' ? (wait ? `reconnecting in ${Math.ceil(wait / 1000)} s${code === 4008 ? ' (fell behind)' : ''}` : `reconnecting (try ${attempt})…`)
      : stateName === 'auth?' ? 'cannot connect (token?)' : 'connecting…';
  c.title = stateName === 'retry' ? 'Click to retry now' : '';
  c.dataset.state = stateName;
}
$('#conn').addEventListener('click', () => { if ($('#conn').dataset.state !== 'live') conn.reconnectNow(); });

function upsertSession(s) {
  const before = state.sessions.get(s.sessionId);
  state.sessions.set(s.sessionId, s);
  if (attentionSig(before) !== attentionSig(s) || inQueue(s.sessionId)) needs.schedule();
}

function onMessage(msg) {
  switch (msg.type) {
    case 'reset':
      resetEvents([]); state.sessions.clear(); historyAsked.clear();
      break;
    case 'snapshot': {
      state.sessions.clear();
      for (const s of msg.sessions) state.sessions.set(s.sessionId, s);
      resetEvents(msg.events);
      historyAsked.clear();
      $('#mode').textContent = msg.mode || meta('contextuate-mode') || '';
      rebuildView(); renderTree(); drawCharts();
      if (state.filters.session) selectSession(state.filters.session);
      needs.schedule();
      break;
    }
    case 'resume': case 'caught_up': {
      state.sessions = new Map(msg.sessions.map((s) => [s.sessionId, s]));
      renderTree();
      needs.schedule();
      break;
    }
    case 'event': case 'events': {
      const fresh = addEvents(msg.type === 'event' ? [msg.event] : msg.events);
      if (fresh.some((ev) => ASKING.has(ev.eventType) || inQueue(ev.sessionId))) needs.schedule();
      if (state.paused) state.missed += fresh.filter(match).length;
      else {
        const shown = foldLive(fresh.filter(match));
        if (!stream.follow) state.newBelow = (state.newBelow || 0) + shown.length;
        stream.append(shown);
      }
      updateCountsSoon(); drawCharts();
      break;
    }
    case 'session_update': upsertSession(msg.session); renderTree(); break;
    case 'session_deleted':
      state.sessions.delete(msg.sessionId);
      if (inQueue(msg.sessionId)) needs.schedule();
      if (state.filters.session === msg.sessionId) { state.filters.session = null; updateSessionChip(); rebuildView(); }
      renderTree(); break;
    case 'error': toast(msg.message); break;
    default: break;
  }
}

const conn = new Connection({ onMessage, onState: setConn, getToken: () => token });
window.__contextuate_push = onMessage; // lets tests feed messages as the server would

// --- controls and keyboard ---------------------------------------------------------------------
for (const key of ['machine', 'type', 'tool']) $(`#f-${key}`).addEventListener('change', (e) => setFilter(key, e.target.value));
$('#q').addEventListener('input', throttle((e) => { state.filters.q = e.target.value; rebuildView(); }, 150));
$('#filters').addEventListener('submit', (e) => e.preventDefault());
$('#clear').addEventListener('click', clearFilters);
$('#f-session').addEventListener('click', () => selectSession(null));
$('#show-hidden').addEventListener('change', (e) => { state.showHidden = e.target.checked; rebuildView(); renderTree(); });
function setPaused(on) {
  state.paused = on;
  const b = $('#pause');
  b.setAttribute('aria-pressed', String(on));
  b.textContent = on ? 'Resume ▶' : 'Pause';
  if (!on) rebuildView();
  updateCounts();
}
$('#pause').addEventListener('click', () => setPaused(!state.paused));
$('#follow').addEventListener('click', () => stream.setFollow(!stream.follow));
$('#new-events').addEventListener('click', () => { if (state.paused) setPaused(false); state.newBelow = 0; stream.setFollow(true); updateCounts(); });
$('#stream').addEventListener('scroll', () => { if (stream.follow && state.newBelow) { state.newBelow = 0; updateCounts(); } }, { passive: true });
$('#detail-close').addEventListener('click', closeDetail);
for (const b of document.querySelectorAll('.seg button')) {
  b.addEventListener('click', () => {
    state.range = Number(b.dataset.range);
    for (const o of document.querySelectorAll('.seg button')) o.classList.toggle('on', o === b);
    drawCharts();
  });
}
$('#server-search').addEventListener('click', serverSearch);
document.addEventListener('click', (e) => { if (!e.target.closest('#menu') && !e.target.closest('.more')) closeMenu(); });
new ResizeObserver(() => requestAnimationFrame(drawChartsNow)).observe($('.activity'));
setInterval(drawCharts, 5000);

async function serverSearch() {
  const f = state.filters;
  const q = new URLSearchParams({ limit: '500' });
  const rx = /^\/(.+)\/[a-z]*$/.exec(f.q.trim());
  if (rx) { q.set('q', rx[1]); q.set('regex', '1'); } else if (f.q.trim()) q.set('q', f.q.trim());
  if (f.machine) q.set('machine', f.machine);
  if (f.type) q.set('type', f.type);
  if (f.tool) q.set('tool', f.tool);
  if (f.session) q.set('session', f.session);
  $('#detail').hidden = false;
  $('#detail-title').textContent = 'Search history';
  const body = $('#detail-body');
  body.replaceChildren(el('p', { class: 'results-note', text: 'Searching every stored session…' }));
  try {
    const r = await (await api(`/api/search?${q}`)).json();
    body.replaceChildren(el('p', { class: 'results-note', text: `${r.count}${r.truncated ? '+' : ''} events (newest first) across ${r.sessionsScanned} sessions` }));
    const list = el('div', { class: 'results' });
    for (const ev of r.events) {
      list.append(el('button', {
        class: 'row', type: 'button', style: 'position:relative;width:100%;text-align:left;border:0;background:none;color:inherit;font:inherit;grid-template-columns:150px 110px 1fr',
        onclick: () => { const known = state.byId.get(ev.id); showDetail(known || ev); },
      }, el('span', { class: 't', text: new Date(ev.timestamp).toLocaleString() }), el('span', { class: 'type ty-other', text: ev.eventType }), el('span', { class: 'sum', text: ev.summary || '' })));
    }
    body.append(list);
  } catch (e) { body.replaceChildren(el('p', { class: 'results-note', text: `Search failed: ${e.message}` })); }
}

document.addEventListener('keydown', (e) => {
  const typing = ['INPUT', 'SELECT', 'TEXTAREA'].includes(document.activeElement?.tagName);
  if (e.key === 'Escape') {
    if (!$('#menu').hidden) { closeMenu(); return; }
    if (typing) { document.activeElement.blur(); return; }
    if (!$('#detail').hidden) { closeDetail(); return; }
    if (state.filters.session) selectSession(null);
    return;
  }
  if (typing || e.ctrlKey || e.metaKey || e.altKey || $('#dialog').open) return;
  const inTree = document.activeElement?.closest?.('#tree');
  if (e.key === '/') { e.preventDefault(); $('#q').focus(); $('#q').select(); }
  else if (e.key === 'p') setPaused(!state.paused);
  else if (e.key === 'f') stream.setFollow(!stream.follow);
  else if (e.key === 's') ($('#tree .node.sel') || $('#tree .node'))?.focus();
  else if (e.key === 'e') $('#stream').focus();
  else if (!inTree && (e.key === 'j' || e.key === 'ArrowDown')) { e.preventDefault(); stream.move(1); }
  else if (!inTree && (e.key === 'k' || e.key === 'ArrowUp')) { e.preventDefault(); stream.move(-1); }
  else if (!inTree && e.key === 'G') stream.setFollow(true);
  else if (e.key === '?') toast('Keys: / search · j/k move · Esc close · p pause · f follow · s sessions · e events · m actions (in the tree)', 7000);
});

// --- start ------------------------------------------------------------------------------------------
$('#mode').textContent = meta('contextuate-mode') || '';
(async () => {
  if (needsToken && !token) await askToken();
  conn.connect();
  needs.refresh();
  // `stuck` is the daemon's clock: ask every 5 s (not while the daemon is away).
  setInterval(() => { if ($('#conn').dataset.state === 'live') needs.refresh(); }, 5000);
})();
