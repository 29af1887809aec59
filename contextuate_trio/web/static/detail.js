// The detail pane: everything about one event, the tool call joined to its result.
import { el, jsonBlock, dateTime, duration, clock } from './util.js';
import { agentReport } from './stream.js';
import { decisionSummary } from './decide.js';

function section(title, content, extra) {
  return el('div', { class: 'block' }, el('h3', {}, title, extra || null), content);
}

function outputOf(ev) {
  const d = ev?.data || {};
  let out = d.tool_response;
  if (typeof out === 'string' && /^[[{]/.test(out)) { try { out = JSON.parse(out); } catch { /* keep text */ } }
  // Common shapes: Bash {stdout, stderr}, Read {file: {content}}: show the text itself.
  if (out && typeof out === 'object') {
    if (typeof out.stdout === 'string' && Object.keys(out).every((k) => ['stdout', 'stderr', 'interrupted', 'isImage', 'returnCodeInterpretation', 'noOutputExpected'].includes(k))) {
      return out.stderr ? `${out.stdout}\n--- stderr ---\n${out.stderr}` : out.stdout;
    }
    if (out.file && typeof out.file.content === 'string') return out.file.content;
  }
  return out;
}

const TITLE = { message_display: 'assistant', agent_report: 'report from agent', permission_denied: 'permission denied', decision: 'answered from the dashboard' };

// A `decision` event: an answer given from a dashboard (who, what, from where).
function decisionBlock(ev) {
  const d = ev.data || {};
  const kv = el('dl', { class: 'kv' });
  const add = (k, v) => { if (v !== null && v !== undefined && v !== '') kv.append(el('dt', { text: k }), el('dd', { text: String(v) })); };
  add('decision', d.always ? `${d.decision} (always: Claude Code's suggested rules added)` : d.decision);
  add('by', d.by ? `${d.by} (token name)` : null);
  add('from', d.from);
  add('waited', typeof d.waitedMs === 'number' ? duration(d.waitedMs) : null);
  add('request', d.requestId);
  const ok = d.decision === 'allow' || d.decision === 'accept';
  const parts = [el('p', { class: `decision-line ${ok ? 'yes' : 'no'}`, text: decisionSummary(ev) }), kv];
  if (d.message !== undefined) parts.push(section('Message sent to Claude', jsonBlock(String(d.message))));
  if (d.content !== undefined) parts.push(section('Answer sent to the MCP server', jsonBlock(d.content)));
  return section('Decision', el('div', {}, ...parts));
}

export function renderDetail(body, title, ev, { pair, sessionTitle, messageText, onJump, onSession }) {
  body.replaceChildren();
  const type = ev.eventType || 'event';
  title.textContent = `${TITLE[type] || type.replace(/_/g, ' ')}${ev.toolName ? ` · ${ev.toolName}` : ''}`;
  const d = ev.data || {};
  const call = pair?.call; const result = pair?.result;
  const dur = ev.durationMs ?? result?.durationMs ?? (call && result ? result.timestamp - call.timestamp : null);
  const kv = el('dl', { class: 'kv' });
  const add = (k, v) => { if (v !== null && v !== undefined && v !== '') kv.append(el('dt', { text: k }), el('dd', {}, v)); };
  add('time', dateTime(ev.timestamp));
  add('session', el('button', { class: 'linkish', type: 'button', text: sessionTitle(ev.sessionId), title: ev.sessionId, onclick: () => onSession(ev.sessionId) }));
  add('session id', ev.sessionId);
  add('parent', ev.parentSessionId);
  add('machine', ev.machineId);
  add('directory', ev.workingDirectory);
  add('hook', ev.hookType);
  add('agent', ev.agentType ? `${ev.agentType}${ev.agentId ? ` (${ev.agentId})` : ''}` : null);
  add('tool use', ev.toolUseId);
  add('turn', ev.promptId);
  add('duration', dur !== null && dur !== undefined ? duration(dur) : null);
  add('notification', ev.notificationType);
  add('source', ev.source);
  body.append(kv);
  if (ev.truncated) body.append(el('p', { class: 'results-note', text: 'Large event: loading the whole of it…' }));
  if (type === 'decision') body.append(decisionBlock(ev));

  if (ev.toolName || call || result) {
    const input = (call || ev).data?.tool_input ?? d.tool_input;
    const links = el('span', { class: 'pair' },
      call && call !== ev ? el('button', { class: 'linkish', type: 'button', text: `call at ${clock(call.timestamp)}`, onclick: () => onJump(call) }) : null,
      result && result !== ev ? el('button', { class: 'linkish', type: 'button', text: `${result.eventType === 'tool_error' ? 'error' : 'result'} at ${clock(result.timestamp)}`, onclick: () => onJump(result) }) : null);
    if (input !== undefined) {
      const text = typeof input?.command === 'string' && Object.keys(input).length <= 3 ? input.command : null;
      body.append(section('Input', text ? jsonBlock(text) : jsonBlock(input), links));
    }
    const res = result || (['tool_result', 'tool_error'].includes(type) ? ev : null);
    if (res) {
      const rd = res.data || {};
      if (res.eventType === 'tool_error' || rd.error) body.append(section('Error', jsonBlock(rd.error ?? rd, 'err')));
      const out = outputOf(res);
      if (out !== undefined && out !== null) body.append(section('Output', jsonBlock(out)));
    } else if (pair?.outcome && ['tool_call', 'permission_request', 'permission_denied'].includes(type)) {
      const end = pair.end;
      const why = end?.eventType === 'permission_denied' ? (end.data?.reason || 'permission denied')
        : pair.outcome === 'denied' ? `no permission given; the turn ended (${end?.eventType?.replace(/_/g, ' ') || '?'})`
          : `stopped before it finished (Escape); the turn ended (${end?.eventType?.replace(/_/g, ' ') || '?'})`;
      body.append(section(pair.outcome === 'denied' ? 'Denied' : 'Interrupted', jsonBlock(String(why), 'err'),
        end && end !== ev ? el('span', { class: 'pair' }, el('button', { class: 'linkish', type: 'button', text: `at ${clock(end.timestamp)}`, onclick: () => onJump(end) })) : null));
    } else if (type === 'tool_call') {
      body.append(el('p', { class: 'results-note', text: 'No result yet (still running, or the result was not seen).' }));
    }
  }
  if (type === 'message_display') {
    const whole = messageText ? messageText(ev) : null;
    body.append(section('The assistant said', jsonBlock(String(d.delta ?? ev.summary ?? ''))));
    if (whole && whole !== d.delta) body.append(section('The whole message', jsonBlock(whole)));
  }
  if (type === 'agent_report') {
    const r = agentReport(ev);
    body.append(section(`Report from agent${r.name ? ` “${r.name}”` : ''}${r.status ? ` (${r.status})` : ''}`,
      jsonBlock(r.result || r.summary || ev.summary || '')));
    if (r.taskId) body.append(el('p', { class: 'results-note', text: `agent id ${r.taskId}${r.toolUseId ? ` · started by ${r.toolUseId}` : ''}` }));
  }
  if (ev.unansweredCalls && Object.keys(ev.unansweredCalls).length) {
    body.append(section('Calls left without a result', jsonBlock(ev.unansweredCalls)));
  }
  if (d.prompt && type !== 'agent_report') body.append(section('Prompt', jsonBlock(String(d.prompt))));
  if (d.message && type !== 'decision') body.append(section('Message', jsonBlock(String(d.message))));
  if (d.last_assistant_message) body.append(section('Last message', jsonBlock(String(d.last_assistant_message))));
  if (d.error && !ev.toolName) body.append(section('Error', jsonBlock(d.error, 'err')));
  if (d.raw !== undefined) body.append(section('Raw input (not JSON)', jsonBlock(String(d.raw))));
  const raw = el('details', { class: 'block' }, el('summary', { text: 'Whole event (JSON)' }));
  raw.append(jsonBlock(ev));
  body.append(raw);
}
