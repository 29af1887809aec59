// Answering Claude Code from the "needs you" queue (config decisions.enabled). A waiting
// PermissionRequest (or an MCP server's Elicitation) comes with an offer (`decision`:
// requestId, kind, decisions, expiresAt, canAllowAlways): its row gets buttons and a
// countdown. Every button opens a confirmation dialog that shows the whole request (the
// stored event, already masked by the daemon, fetched by id over the WebSocket) before
// anything is sent; Confirm POSTs /api/decisions with the page's own token (conn.js).
// Untrusted text only ever goes in as text nodes.
import { el, jsonBlock, toast, shortId, basename } from './util.js';
import { connection, token as pageToken } from './conn.js';

const MESSAGE_MAX = 2000; // the daemon's bound on a deny's message

const CHOICES = {
  permission: [
    { key: 'allow', decision: 'allow', label: 'Allow once', verb: 'Allow once', done: 'allowed once', cls: 'allow' },
    { key: 'always', decision: 'allow', always: true, label: 'Allow always', verb: 'Allow always', done: 'allowed always', cls: 'allow', when: (o) => o.canAllowAlways },
    { key: 'deny', decision: 'deny', label: 'Deny…', verb: 'Deny', done: 'denied', cls: 'deny' },
  ],
  elicitation: [
    { key: 'accept', decision: 'accept', label: 'Accept…', verb: 'Accept', done: 'accepted', cls: 'allow' },
    { key: 'decline', decision: 'decline', label: 'Decline', verb: 'Decline', done: 'declined', cls: 'deny' },
    { key: 'cancel', decision: 'cancel', label: 'Cancel', verb: 'Cancel the question', done: 'cancelled', cls: '' },
  ],
};

// The answers this page may offer for an item's `decision` (only those the daemon lists).
export function choicesFor(offer) {
  if (!offer || !CHOICES[offer.kind]) return [];
  const allowed = new Set(Array.isArray(offer.decisions) ? offer.decisions : []);
  return CHOICES[offer.kind].filter((c) => allowed.has(c.decision) && (!c.when || c.when(offer)));
}

// When the offer runs out, on this browser's clock: the daemon's own clock is the item's
// `since + waitedMs` at fetch time, so a skewed clock here does not shorten or stretch it.
export function deadlineOf(it, fetchedAt) {
  const o = it.decision;
  if (!o || typeof o.expiresAt !== 'number') return null;
  const serverNow = it.waitedMs > 0 ? it.since + it.waitedMs : fetchedAt;
  return fetchedAt + (o.expiresAt - serverNow);
}

export function leftText(deadline) {
  if (deadline === null || deadline === undefined) return '';
  const s = Math.ceil((deadline - Date.now()) / 1000);
  if (s <= 0) return 'expired';
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')} left`;
}

// The buttons and countdown under an answerable row. `onAnswered()`: refresh the queue.
export function decisionBar(it, { onAnswered, deadline }) {
  const left = el('span', { class: 'left', title: 'After this, the hook stops waiting and Claude Code asks in the terminal' });
  left.textContent = leftText(deadline());
  const bar = el('div', { class: `decide-bar k-${it.decision.kind}`, role: 'group', 'aria-label': `Answer ${it.toolName || it.reason}` },
    ...choicesFor(it.decision).map((c) => el('button', {
      type: 'button', class: `btn decide ${c.cls}`, text: c.label, dataset: { choice: c.key, requestId: it.decision.requestId },
      onclick: () => openDecision(it, c, { onAnswered, deadline }),
    })),
    left);
  return { bar, left };
}

// --- the dialog ----------------------------------------------------------------------------
let open = null; // the dialog's state while it is shown

function dialogEl() {
  const dlg = document.getElementById('decide');
  if (!dlg.dataset.wired) {
    dlg.dataset.wired = '1';
    // Keys typed here are not the page's shortcuts (j/k/p/f/Esc on the stream).
    dlg.addEventListener('keydown', (e) => e.stopPropagation());
    dlg.querySelector('#decide-form').addEventListener('submit', (e) => { e.preventDefault(); if (open) confirm(open); });
    dlg.querySelector('#decide-cancel').addEventListener('click', () => dlg.close('cancel'));
    dlg.addEventListener('close', () => { if (open) clearInterval(open.timer); open = null; });
  }
  return dlg;
}

function section(title, ...content) {
  return el('div', { class: 'block' }, el('h3', { text: title }), ...content);
}

export function openDecision(it, choice, { onAnswered, deadline }) {
  const dlg = dialogEl();
  if (dlg.open) dlg.close('cancel');
  const o = it.decision;
  const tool = it.toolName || (o.kind === 'elicitation' ? 'an MCP server' : 'a tool');
  const body = dlg.querySelector('#decide-body');
  const outcome = dlg.querySelector('#decide-outcome');
  const ok = dlg.querySelector('#decide-ok');
  const cancel = dlg.querySelector('#decide-cancel');
  const leftEl = dlg.querySelector('#decide-left');
  dlg.querySelector('#decide-title').textContent = o.kind === 'elicitation'
    ? `${choice.verb}: the question from ${tool}?` : `${choice.verb}: ${tool}?`;
  const who = [it.name || shortId(String(it.sessionId).split(':')[0]), it.machineId, it.workingDirectory ? basename(it.workingDirectory) : null]
    .filter(Boolean).join(' · ');
  dlg.querySelector('#decide-who').textContent = who;
  dlg.querySelector('#decide-who').title = `${it.sessionId}${it.workingDirectory ? `\n${it.workingDirectory}` : ''}`;
  outcome.hidden = true; outcome.textContent = ''; outcome.className = 'decide-outcome';
  ok.textContent = choice.verb; ok.disabled = false; ok.className = `btn primary ${choice.cls}`;
  cancel.textContent = 'Cancel';
  body.replaceChildren(el('p', { class: 'results-note', text: 'Loading the request…' }));
  const state = { it, choice, onAnswered, dlg, body, outcome, ok, cancel, collect: () => ({}), timer: 0, done: false };
  open = state;
  const tick = () => { leftEl.textContent = leftText(deadline()); };
  tick();
  state.timer = setInterval(tick, 1000);
  dlg.returnValue = '';
  dlg.showModal();
  cancel.focus();
  loadRequest(it).then((ev) => {
    if (open !== state) return;
    fill(state, ev);
  }, (e) => {
    if (open !== state) return;
    fill(state, null, e?.message || String(e));
  });
}

async function loadRequest(it) {
  const rid = it.decision.requestId;
  const conn = connection();
  try {
    const r = await conn.request({ type: 'get_event_detail', eventId: rid, sessionId: it.sessionId, timestamp: it.since });
    if (r?.event) return r.event;
  } catch (e) {
    const known = window.__contextuate?.byId?.get(rid);
    if (known && !known.truncated) return known;
    throw new Error(e?.message || 'could not load it');
  }
  throw new Error('not found');
}

function fill(state, ev, failed) {
  const { it, choice, body } = state;
  const kind = it.decision.kind;
  const d = ev?.data && typeof ev.data === 'object' ? ev.data : {};
  const parts = [];
  if (failed) parts.push(el('p', { class: 'decide-warn', text: `Could not load the whole request (${failed}). What the queue says: ${it.detail || it.toolName || ''}` }));
  if (kind === 'permission') {
    const kv = el('dl', { class: 'kv' });
    const add = (k, v) => { if (v !== undefined && v !== null && v !== '') kv.append(el('dt', { text: k }), el('dd', { text: String(v) })); };
    add('tool', ev?.toolName || it.toolName);
    add('mode', d.permission_mode);
    add('directory', d.cwd || it.workingDirectory);
    add('agent', ev?.agentType);
    parts.push(kv);
    if (ev) parts.push(section('Tool input (all of it)', jsonBlock(d.tool_input ?? null)));
    if (choice.always) {
      parts.push(section('Rules Claude Code adds (its suggestion)', jsonBlock(d.permission_suggestions ?? [])));
    }
    if (choice.decision === 'deny') {
      const msg = el('textarea', {
        id: 'decide-message', rows: '3', maxlength: String(MESSAGE_MAX), 'aria-label': 'Message to Claude',
        placeholder: 'Why not, or what to do instead (sent to Claude). Empty: “Denied from the contextuate-trio dashboard.”',
      });
      parts.push(el('label', { class: 'decide-field' }, el('span', { text: 'Message to Claude' }), msg));
      state.collect = () => (msg.value.trim() ? { message: msg.value.trim() } : {});
    } else if (choice.always) state.collect = () => ({ always: true });
  } else {
    const kv = el('dl', { class: 'kv' });
    const add = (k, v) => { if (v !== undefined && v !== null && v !== '') kv.append(el('dt', { text: k }), el('dd', { text: String(v) })); };
    if (d.mcp_server_name) {
      state.dlg.querySelector('#decide-title').textContent = `${choice.verb}: the question from ${d.mcp_server_name}?`;
    }
    add('server', d.mcp_server_name);
    add('mode', d.mode);
    add('url', d.url);
    parts.push(kv);
    if (d.message !== undefined) parts.push(section('It asks', el('p', { class: 'decide-ask', text: String(d.message) })));
    if (d.requested_schema !== undefined) {
      const det = el('details', { class: 'block' }, el('summary', { text: 'Requested schema (JSON)' }), jsonBlock(d.requested_schema));
      parts.push(det);
    }
    if (choice.decision === 'accept') parts.push(contentForm(state, d.requested_schema));
  }
  if (ev) parts.push(el('details', { class: 'block' }, el('summary', { text: 'Whole request (JSON)' }), jsonBlock(ev)));
  body.replaceChildren(...parts);
  const first = body.querySelector('textarea, input, select');
  if (first) first.focus();
}

// An accepted question's answer: the schema's properties as inputs (text, numbers,
// yes/no, a choice), or a JSON object when the schema names none.
function contentForm(state, schema) {
  const props = schema && typeof schema === 'object' && schema.properties && typeof schema.properties === 'object' ? schema.properties : null;
  const required = new Set(Array.isArray(schema?.required) ? schema.required : []);
  if (!props || !Object.keys(props).length) {
    const area = el('textarea', { id: 'decide-content', rows: '4', class: 'mono', 'aria-label': 'Answer (a JSON object)', placeholder: '{"field": "value"}  (empty: no content)' });
    state.collect = () => {
      const text = area.value.trim();
      if (!text) return {};
      let v;
      try { v = JSON.parse(text); } catch (e) { throw new Error(`the answer is not JSON: ${e.message}`); }
      if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('the answer must be a JSON object');
      return { content: v };
    };
    return el('label', { class: 'decide-field' }, el('span', { text: 'Answer (a JSON object)' }), area);
  }
  const fields = [];
  const box = el('fieldset', { class: 'decide-form' }, el('legend', { text: 'Your answer' }));
  for (const [name, spec] of Object.entries(props)) {
    const p = spec && typeof spec === 'object' ? spec : {};
    const label = `${p.title || name}${required.has(name) ? ' *' : ''}`;
    const options = Array.isArray(p.enum) ? p.enum.map((v, i) => ({ value: v, label: Array.isArray(p.enumNames) ? p.enumNames[i] : v }))
      : Array.isArray(p.oneOf) ? p.oneOf.filter((x) => x && 'const' in x).map((x) => ({ value: x.const, label: x.title ?? x.const })) : null;
    let input;
    if (options && options.length) {
      input = el('select', { name },
        required.has(name) ? null : el('option', { value: '', text: '—' }),
        ...options.map((x, i) => el('option', { value: String(i), text: String(x.label) })));
    } else if (p.type === 'boolean') {
      input = el('input', { type: 'checkbox', name });
      if (p.default === true) input.checked = true;
    } else {
      input = el('input', { type: p.type === 'number' || p.type === 'integer' ? 'number' : 'text', name, step: p.type === 'integer' ? '1' : (p.type === 'number' ? 'any' : null) });
      if (p.default !== undefined && p.default !== null) input.value = String(p.default);
    }
    fields.push({ name, p, input, options, label });
    box.append(el('label', { class: 'decide-field', title: p.description || '' },
      el('span', { text: label }), input, p.description ? el('small', { class: 'muted', text: String(p.description) }) : null));
  }
  state.collect = () => {
    const content = {};
    for (const f of fields) {
      if (f.options && f.options.length) {
        if (f.input.value !== '') content[f.name] = f.options[Number(f.input.value)].value;
      } else if (f.p.type === 'boolean') content[f.name] = f.input.checked;
      else if (f.input.value !== '') {
        if (f.p.type === 'number' || f.p.type === 'integer') {
          const n = Number(f.input.value);
          if (!Number.isFinite(n)) throw new Error(`${f.label}: not a number`);
          content[f.name] = n;
        } else content[f.name] = f.input.value;
      }
      if (required.has(f.name) && !(f.name in content)) throw new Error(`${f.label.replace(/ \*$/, '')} is required`);
    }
    return { content };
  };
  return box;
}

// The queue as the daemon sees it now: a request the open dialog is about that is no
// longer answerable (answered in the terminal or elsewhere, expired) says so.
export function queueChanged(items) {
  const st = open;
  if (!st || st.done || st.sending) return;
  const rid = st.it.decision.requestId;
  if (items.some((x) => x.decision?.requestId === rid)) return;
  say(st, 'This request is no longer waiting here: it was answered elsewhere (the terminal, another dashboard, a rule) or it expired.', 'bad');
  finish(st);
}

// --- sending the answer ----------------------------------------------------------------------
function say(state, text, cls) {
  state.outcome.hidden = false;
  state.outcome.className = `decide-outcome ${cls || ''}`;
  state.outcome.textContent = text;
}

function finish(state) {
  state.done = true;
  state.ok.disabled = true;
  state.cancel.textContent = 'Close';
  state.cancel.focus();
}

const NO_DECIDE = (origin) => 'This dashboard’s token cannot answer: open it with a token that has the decide scope. '
  + 'Make one with `contextuate-trio token add NAME --scopes read,decide`, then `contextuate-trio open --token NAME` '
  + `(or open ${origin}/#token=<that token> in a new tab).`;

async function confirm(state) {
  if (state.done || state.ok.disabled) return;
  const { it, choice } = state;
  let extra;
  try { extra = state.collect(); } catch (e) { say(state, e.message, 'bad'); return; }
  const body = { requestId: it.decision.requestId, decision: choice.decision, ...extra };
  const headers = { 'Content-Type': 'application/json' };
  const t = pageToken();
  if (t) headers.Authorization = `Bearer ${t}`;
  state.ok.disabled = true;
  say(state, 'Sending…', 'busy');
  let r; let doc = {};
  state.sending = true;
  try {
    r = await fetch('/api/decisions', { method: 'POST', headers, body: JSON.stringify(body), cache: 'no-store' });
    doc = await r.json().catch(() => ({}));
  } catch (e) {
    state.ok.disabled = false;
    say(state, `Not sent: the daemon did not answer (${e.message}). Try again.`, 'bad');
    return;
  } finally {
    state.sending = false;
  }
  const why = doc && typeof doc.error === 'string' ? doc.error : '';
  const tool = it.toolName || 'the question';
  if (open !== state) { // closed while it was sent: say how it went all the same
    toast(r.ok ? `${tool} ${choice.done} (answered as ${doc.by || '?'})` : `${tool}: not answered (${why || `HTTP ${r.status}`})`, 6000);
    state.onAnswered?.();
    return;
  }
  if (r.ok) {
    state.done = true;
    state.dlg.close('ok');
    toast(`${tool} ${choice.done} (answered as ${doc.by || '?'})`);
    state.onAnswered?.();
    return;
  }
  if (r.status === 403 || r.status === 401) {
    const lead = r.status === 401 ? 'The daemon does not know this page’s token. ' : '';
    say(state, `${lead}${NO_DECIDE(location.origin)}${why ? `\n(The daemon said: ${why}.)` : ''}`, 'bad');
    finish(state);
    return;
  }
  if (r.status === 409) {
    say(state, `Answered elsewhere already (another dashboard, the terminal, or a rule): nothing was sent.${why ? `\n(${why})` : ''}`, 'bad');
    finish(state); state.onAnswered?.();
    return;
  }
  if (r.status === 404) {
    say(state, `Too late: the request expired or its hook stopped waiting, so Claude Code asks in the terminal. Nothing was sent.${why ? `\n(${why})` : ''}`, 'bad');
    finish(state); state.onAnswered?.();
    return;
  }
  state.ok.disabled = false;
  if (r.status === 503) say(state, `Not sent: the daemon could not record the answer (${why || 'store failing'}). Try again.`, 'bad');
  else say(state, `Not sent (HTTP ${r.status}): ${why || 'refused'}`, 'bad');
}

// The one-line story of a `decision` event (the audit of an answer given from here).
export function decisionSummary(ev) {
  const d = ev?.data || {};
  const what = { allow: d.always ? 'allowed always' : 'allowed once', deny: 'denied', accept: 'accepted', decline: 'declined', cancel: 'cancelled' }[d.decision] || String(d.decision || '?');
  const subject = ev.toolName || (d.kind === 'elicitation' ? 'the question' : 'the request');
  return `${subject} ${what} by ${d.by || 'anonymous'}${d.from ? ` (from ${d.from})` : ''}`;
}
