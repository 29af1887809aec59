// Claude Code's own OpenTelemetry for the selected session: its figures (API errors,
// tool decisions, hook times, active time, lines, commits) and each turn's spans as a
// timeline. Additive, like usage.js: it reads the dashboard's state (sessions carry
// `otel`; `otel_spans` events are in state.events once the session is selected).
import { el, duration, clock } from './util.js';

const state = window.__contextuate;
const panel = el('section', { class: 'otel-panel', 'aria-label': 'OpenTelemetry of the selected session', hidden: true });
const head = el('div', { class: 'panel-head' }, el('h2', {}, 'Telemetry ', el('span', { class: 'muted', id: 'otel-scope' })));
const figures = el('div', { class: 'otel-figures' });
const turns = el('div', { class: 'otel-turns', role: 'group', 'aria-label': 'Turns' });
const timeline = el('div', { class: 'otel-timeline', role: 'list', 'aria-label': 'Spans of the turn' });
panel.append(head, figures, turns, timeline);
(document.querySelector('.usage-panel') || document.querySelector('.activity'))?.after(panel);

let chosen = null; // the trace id shown
const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);

function facts(s) {
  const o = s.otel;
  const u = s.usage;
  const d = o.decided || {};
  const parts = [
    u?.source === 'otel' ? `cost: Claude Code's own (${u.otelFrom === 'metrics' ? 'cost.usage metrics' : 'api_request records'})`
      : 'cost: priced from the transcript',
    `${o.apiRequests} API requests`,
    `${o.apiErrors} errors${o.apiErrors ? ` (${Object.entries(o.errorsByStatus || {}).map(([k, n]) => `${k}×${n}`).join(', ')})` : ''}`,
    `${o.retries} retries`,
    `tools: ${d.acceptedByConfig || 0} allowed by config, ${d.acceptedByUser || 0} by you, ${d.rejected || 0} rejected`,
    `hooks ${duration(o.hookMsTotal || 0) || '0 ms'}`,
  ];
  if (sum(o.activeTimeS)) parts.push(`active ${Object.entries(o.activeTimeS).map(([k, v]) => `${v.toFixed(1)} s ${k}`).join(', ')}`);
  if (o.linesAdded || o.linesRemoved) parts.push(`+${o.linesAdded}/−${o.linesRemoved} lines`);
  if (o.commits) parts.push(`${o.commits} commits`);
  if (o.pullRequests) parts.push(`${o.pullRequests} PRs`);
  const tools = Object.entries(o.tools || {}).map(([t, r]) => `${t}: ${r.count}× avg ${duration(r.avgMs)}${r.failures ? `, ${r.failures} failed` : ''}`);
  return [parts.join(' · '), tools.length ? `tool time — ${tools.join(' · ')}` : ''];
}

function spansOf(sid, trace) {
  const seen = new Map();
  for (const ev of state.events) {
    if (ev.eventType !== 'otel_spans' || ev.sessionId !== sid || ev.data?.traceId !== trace) continue;
    for (const sp of ev.data.spans || []) seen.set(sp.spanId, sp);
  }
  return [...seen.values()];
}

function label(sp) {
  const a = sp.attributes || {};
  const what = a.tool_name || a.model || a.hook_event || '';
  return `${sp.name}${what ? ` ${what}` : ''}${a.agent_id ? ' (sub-agent)' : ''}`;
}

function drawTimeline(sid, trace) {
  const spans = spansOf(sid, trace);
  timeline.replaceChildren();
  if (!spans.length) {
    timeline.append(el('p', { class: 'muted', text: 'No spans of this turn loaded (CLAUDE_CODE_ENHANCED_TELEMETRY_BETA=1 and OTEL_TRACES_EXPORTER=otlp send them).' }));
    return;
  }
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  const depth = (s) => { let n = 0; let p = s; while (p.parentSpanId && byId.has(p.parentSpanId) && n < 20) { p = byId.get(p.parentSpanId); n++; } return n; };
  const t0 = Math.min(...spans.map((s) => s.startMs));
  const t1 = Math.max(...spans.map((s) => s.startMs + s.durationMs));
  const total = Math.max(1, t1 - t0);
  // Parents before children, in time order (a depth-first walk).
  const kids = new Map();
  for (const s of spans) {
    const p = byId.has(s.parentSpanId) ? s.parentSpanId : null;
    if (!kids.has(p)) kids.set(p, []);
    kids.get(p).push(s);
  }
  const ordered = [];
  const walk = (p) => { for (const s of (kids.get(p) || []).sort((a, b) => a.startMs - b.startMs)) { ordered.push(s); walk(s.spanId); } };
  walk(null);
  for (const s of ordered) {
    const left = ((s.startMs - t0) / total) * 100;
    const width = Math.max(0.4, (s.durationMs / total) * 100);
    timeline.append(el('div', { class: `otel-span${s.error ? ' error' : ''}`, role: 'listitem', title: `${label(s)} · ${duration(s.durationMs)} at ${clock(s.startMs)}${s.error ? ` · ${s.error}` : ''}\n${JSON.stringify(s.attributes)}` },
      el('span', { class: 'otel-name', style: `padding-left:${depth(s) * 12}px`, text: label(s) }),
      el('span', { class: 'otel-track' }, el('i', { class: `otel-bar k-${s.name.split('.')[0]}`, style: `left:${left}%;width:${width}%` })),
      el('span', { class: 'otel-dur', text: duration(s.durationMs) })));
  }
}

function draw() {
  const sid = state.filters?.session;
  const s = sid ? state.sessions.get(sid) : null;
  if (!s || !s.otel) { panel.hidden = true; return; }
  panel.hidden = false;
  document.getElementById('otel-scope').textContent = `· ${s.name || s.sessionId.slice(0, 8)}`;
  const [line, tools] = facts(s);
  figures.replaceChildren(el('div', { text: line }), tools ? el('div', { class: 'muted', text: tools }) : null);
  const traces = Object.entries(s.otel.traces || {}).sort((a, b) => (b[1].startMs || 0) - (a[1].startMs || 0));
  if (!traces.some(([t]) => t === chosen)) chosen = traces[0]?.[0] || null;
  turns.replaceChildren(...traces.map(([t, info], i) => el('button', {
    type: 'button', class: `chip${t === chosen ? ' on' : ''}`, 'aria-pressed': t === chosen ? 'true' : 'false',
    title: `trace ${t}${info.promptId ? `\nturn ${info.promptId}` : ''}\n${info.spans} spans`,
    text: `turn ${info.sequence ?? traces.length - i} · ${duration((info.endMs || 0) - (info.startMs || 0))}`,
    onclick: () => { chosen = t; draw(); },
  })));
  if (chosen) drawTimeline(sid, chosen);
  else timeline.replaceChildren();
}

let pending = false;
function soon() {
  if (pending) return;
  pending = true;
  setTimeout(() => { pending = false; draw(); }, 500);
}
const tree = document.getElementById('tree');
if (tree) new MutationObserver(() => soon()).observe(tree, { childList: true, subtree: true });
setInterval(soon, 2000);
soon();
