// Tokens and cost on the dashboard: a badge per session in the tree (its own cost,
// and with its sub-agents), a "Cost" panel with totals per machine, the cost over time
// (stacked per model) and the selected session's breakdown per sub-agent and model.
// Additive: it reads the dashboard's state (window.__contextuate, whose sessions carry
// `usage`) and the daemon's /api/usage; nothing in app.js depends on it.
import { el, shortId } from './util.js';
import { colorFor } from './charts.js';
import { sessionTitle } from './tree.js';

const state = window.__contextuate;
const RANGES = { '24h': [86400000, 'hour'], '7d': [7 * 86400000, 'day'], '30d': [30 * 86400000, 'day'] };
let range = localStorage.getItem('contextuate-cost-range') || '24h';
if (!RANGES[range]) range = '24h';
let series = null; // last /api/usage answer for the chart

export function money(u) {
  if (!u) return '';
  if (u.costUsd === null || u.costUsd === undefined) {
    return u.pricedCostUsd ? `≥$${fmt(u.pricedCostUsd)}` : (u.estimate ? `≈${tokens(u.estimate.totalTokens)} tok` : '$?');
  }
  return `$${fmt(u.costUsd)}`;
}
function fmt(x) { return x >= 100 ? x.toFixed(0) : x >= 1 ? x.toFixed(2) : x >= 0.01 ? x.toFixed(3) : x.toFixed(4); }
export function tokens(n) {
  if (!n) return '0';
  return n >= 1e9 ? `${(n / 1e9).toFixed(1)}G` : n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : String(n);
}
function tip(u) {
  if (!u) return '';
  if (u.estimate && !u.calls) {
    return `Estimate from the Agent tool's result (transcript not read): ${u.estimate.totalTokens} tokens, not priced`;
  }
  const t = u.tokens;
  const lines = [`${u.calls} model calls · ${t.total.toLocaleString()} tokens`,
    `input ${t.input.toLocaleString()} · output ${t.output.toLocaleString()}`,
    `cache read ${t.cacheRead.toLocaleString()} · write 5m ${t.cacheWrite5m.toLocaleString()} · 1h ${t.cacheWrite1h.toLocaleString()}`];
  for (const [m, r] of Object.entries(u.models || {})) lines.push(`${m}: ${tokens(r.total)} tok, ${r.costUsd === null ? 'no price' : '$' + fmt(r.costUsd)}`);
  if (u.unpricedModels?.length) lines.push(`no price for ${u.unpricedModels.join(', ')} (pricing.models in the config)`);
  lines.push(SOURCE[u.source] || SOURCE.transcript);
  if (u.transcript) lines.push(`the transcript says ${u.transcript.costUsd === null ? '$?' : '$' + fmt(u.transcript.costUsd)}, ${u.transcript.calls} calls`);
  return lines.join('\n');
}

// Where a session's figures come from (the API's `usage.source`).
const SOURCE = {
  otel: "cost: Claude Code's own, from its OpenTelemetry (api_request)",
  transcript: 'cost: tokens read from the transcript, priced by the table',
  mixed: 'cost: OpenTelemetry for some sessions, transcripts for the others',
};
export const sourceLabel = (u) => (u?.source === 'otel' ? 'OTel' : u?.source === 'mixed' ? 'mixed' : 'transcript');

// Sum sessions' usage (the same fields the API renders), for a session and its sub-agents.
function sum(list) {
  const out = { tokens: { input: 0, output: 0, cacheRead: 0, cacheWrite5m: 0, cacheWrite1h: 0, total: 0 }, calls: 0,
    costUsd: 0, pricedCostUsd: 0, unpricedModels: [], models: {}, estimate: null };
  let any = false;
  const sources = new Set();
  for (const u of list) {
    if (!u) continue;
    any = true;
    if (u.source) sources.add(u.source);
    for (const k of Object.keys(out.tokens)) out.tokens[k] += u.tokens?.[k] || 0;
    out.calls += u.calls || 0;
    out.pricedCostUsd += u.pricedCostUsd || 0;
    if (out.costUsd !== null) out.costUsd = u.costUsd === null || u.costUsd === undefined ? null : out.costUsd + u.costUsd;
    for (const m of u.unpricedModels || []) if (!out.unpricedModels.includes(m)) out.unpricedModels.push(m);
    for (const [m, r] of Object.entries(u.models || {})) {
      const d = out.models[m] || (out.models[m] = { total: 0, costUsd: 0 });
      d.total += r.total;
      d.costUsd = d.costUsd === null || r.costUsd === null ? null : d.costUsd + r.costUsd;
    }
    if (u.estimate && !u.calls) out.estimate = { totalTokens: (out.estimate?.totalTokens || 0) + u.estimate.totalTokens };
  }
  out.source = sources.size > 1 ? 'mixed' : [...sources][0];
  return any ? out : null;
}
function subtree(id) {
  const out = [];
  const stack = [id];
  const seen = new Set();
  while (stack.length) {
    const sid = stack.pop();
    if (seen.has(sid)) continue;
    seen.add(sid);
    const s = state.sessions.get(sid);
    if (!s) continue;
    out.push(s);
    for (const c of s.childSessionIds || []) stack.push(c);
  }
  return out;
}
const totalOf = (id) => sum(subtree(id).map((s) => s.usage));

// --- tree badges --------------------------------------------------------------------
function decorate() {
  for (const node of document.querySelectorAll('#tree .node[data-id]')) {
    const s = state.sessions.get(node.dataset.id);
    const u = s?.usage;
    const kids = (s?.childSessionIds || []).length;
    const total = kids ? totalOf(s.sessionId) : u;
    const text = total ? (kids && u !== total ? `${money(total)} Σ` : money(total)) : '';
    let badge = node.querySelector('.usage-badge');
    if (!text) { badge?.remove(); continue; }
    const title = kids ? `with its sub-agents:\n${tip(total)}${u ? `\n\nthis session alone: ${money(u)}` : ''}` : tip(u);
    if (badge && badge.textContent === text && badge.title === title) continue;
    if (!badge) {
      badge = el('span', { class: 'chip usage-badge' });
      (node.querySelector('.meta') || node).append(badge);
    }
    badge.textContent = text;
    badge.title = title;
    badge.classList.toggle('unknown', total.costUsd === null);
  }
}

// --- the panel ------------------------------------------------------------------------
const panel = el('section', { class: 'usage-panel', 'aria-label': 'Tokens and cost' });
const head = el('div', { class: 'panel-head' });
const title = el('h2', {}, 'Cost ', el('span', { class: 'muted', id: 'cost-scope' }));
const seg = el('div', { class: 'seg', role: 'group', 'aria-label': 'Cost range' });
for (const r of Object.keys(RANGES)) {
  const b = el('button', { type: 'button', text: r, class: r === range ? 'on' : '' });
  b.onclick = () => { range = r; localStorage.setItem('contextuate-cost-range', r); for (const x of seg.children) x.classList.toggle('on', x === b); load(); };
  seg.append(b);
}
head.append(title, seg);
const machinesRow = el('div', { class: 'usage-machines', 'aria-label': 'Cost per machine' });
const canvas = el('canvas', { class: 'usage-chart', height: '80', role: 'img', 'aria-label': 'Cost over time, stacked per model' });
const legend = el('div', { class: 'legend usage-legend' });
const breakdown = el('div', { class: 'usage-breakdown' });
panel.append(head, machinesRow, canvas, legend, breakdown);
document.querySelector('.activity')?.after(panel);

function authHeaders() {
  const t = sessionStorage.getItem('contextuate-token') || localStorage.getItem('contextuate-token');
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function load() {
  const [span, by] = RANGES[range];
  const since = Date.now() - span;
  try {
    const r = await fetch(`/api/usage?by=${by}&since=${since}`, { headers: authHeaders() });
    if (!r.ok) return;
    series = await r.json();
    series.span = span;
    lastSig = '';
    draw();
  } catch (e) { /* offline: the next refresh tries again */ }
}

function machines() {
  const by = new Map();
  for (const s of state.sessions.values()) {
    if (!s.usage) continue;
    const list = by.get(s.machineId) || [];
    list.push(s.usage);
    by.set(s.machineId, list);
  }
  const chips = [...by.entries()].map(([m, list]) => [m, sum(list)])
    .sort((a, b) => (b[1].pricedCostUsd || 0) - (a[1].pricedCostUsd || 0))
    .map(([m, u]) => el('span', { class: 'chip usage-machine', title: tip(u) }, el('b', { text: m }), ` ${money(u)} · ${tokens(u.tokens.total)} tok`));
  const all = sum([...by.values()].flat());
  machinesRow.replaceChildren(...(all ? [el('span', { class: 'chip usage-machine all', title: tip(all) }, el('b', { text: 'all machines' }), ` ${money(all)}`), ...chips]
    : [el('span', { class: 'muted', text: 'No token usage yet: it is read from the transcripts when a turn ends.' })]));
}

function draw() {
  machines();
  const sel = state.filters?.session;
  document.getElementById('cost-scope').textContent = series ? `· ${range} · ${money(series.total)}` : '';
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600;
  const h = canvas.clientHeight || 80;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const css = (n) => getComputedStyle(document.documentElement).getPropertyValue(n).trim();
  ctx.font = `11px ${css('--sans') || 'sans-serif'}`;
  if (series) {
    const step = series.by === 'hour' ? 3600000 : 86400000;
    const end = Date.now();
    const start = end - series.span;
    const n = Math.ceil(series.span / step);
    const first = Math.floor(start / step) * step;
    const stacks = Array.from({ length: n + 1 }, () => new Map());
    const models = new Set();
    for (const row of series.rows) {
      const t = series.by === 'hour' ? row.key : Date.parse(`${row.key}T00:00:00Z`);
      const i = Math.floor((t - first) / step);
      if (i < 0 || i > n) continue;
      for (const [m, r] of Object.entries(row.models)) {
        if (r.costUsd === null) continue;
        models.add(m);
        stacks[i].set(m, (stacks[i].get(m) || 0) + r.costUsd);
      }
    }
    const max = Math.max(1e-9, ...stacks.map((s) => [...s.values()].reduce((a, b) => a + b, 0)));
    const left = 44, bottom = 14, bw = (w - left) / stacks.length;
    ctx.fillStyle = css('--muted');
    ctx.fillText(`$${fmt(max)}`, 2, 10);
    ctx.fillText('$0', 2, h - bottom);
    stacks.forEach((s, i) => {
      let y = h - bottom;
      for (const [m, c] of s) {
        const bh = (c / max) * (h - bottom - 4);
        ctx.fillStyle = colorFor(m);
        ctx.fillRect(left + i * bw + 1, y - bh, Math.max(1, bw - 2), bh);
        y -= bh;
      }
    });
    ctx.fillStyle = css('--muted');
    const label = (ms) => (series.by === 'hour' ? new Date(ms).toTimeString().slice(0, 5) : new Date(ms).toISOString().slice(5, 10));
    for (const i of [0, Math.floor(stacks.length / 2), stacks.length - 1]) ctx.fillText(label(first + i * step), left + i * bw, h - 2);
    legend.replaceChildren(...[...models].map((m) => el('span', { class: 'lg' }, el('i', { style: `background:${colorFor(m)}` }), m)));
    const unpriced = series.total?.unpricedModels || [];
    if (unpriced.length) legend.append(el('span', { class: 'muted', text: ` · no price for ${unpriced.join(', ')}` }));
  }
  // The selected session: itself and each sub-agent, with models.
  breakdown.replaceChildren();
  if (sel && state.sessions.get(sel)) {
    const rows = subtree(sel).filter((s) => s.usage);
    const total = totalOf(sel);
    if (total) {
      const tbl = el('table', { class: 'usage-table' },
        el('thead', {}, el('tr', {}, ...['session', 'model(s)', 'calls', 'input', 'output', 'cache read', 'cache write', 'cost', 'from'].map((t) => el('th', { text: t })))));
      const tb = el('tbody');
      const line = (name, u, cls = '') => tb.append(el('tr', { class: cls, title: tip(u) },
        el('td', { text: name }), el('td', { text: Object.keys(u.models || {}).join(', ') || (u.estimate ? 'estimate' : '') }),
        el('td', { text: String(u.calls || 0) }), el('td', { text: tokens(u.tokens?.input) }), el('td', { text: tokens(u.tokens?.output) }),
        el('td', { text: tokens(u.tokens?.cacheRead) }), el('td', { text: tokens((u.tokens?.cacheWrite5m || 0) + (u.tokens?.cacheWrite1h || 0)) }),
        el('td', { text: money(u) }), el('td', { class: 'usage-source', text: u.source ? sourceLabel(u) : '' })));
      for (const s of rows) line(`${s.sessionId === sel ? '' : '↳ '}${sessionTitle(s) || shortId(s.sessionId)}`, s.usage);
      if (rows.length > 1) line('total', total, 'total');
      tbl.append(tb);
      breakdown.append(tbl);
    }
  }
}

// Sessions change on every event; redraw cheaply, at most twice a second.
let pending = false;
let lastSig = '';
function soon() {
  if (pending) return;
  pending = true;
  setTimeout(() => {
    pending = false;
    decorate();
    let sig = `${state.filters?.session}|${range}|${series ? series.rows.length : -1}`;
    for (const s of state.sessions.values()) if (s.usage) sig += `|${s.sessionId}:${s.usage.tokens.total}:${s.usage.estimate?.totalTokens || 0}`;
    if (sig !== lastSig) { lastSig = sig; draw(); }
  }, 500);
}
const tree = document.getElementById('tree');
if (tree) new MutationObserver(() => soon()).observe(tree, { childList: true, subtree: true });
window.addEventListener('resize', soon);
setInterval(load, 30000);
setTimeout(load, 300);
soon();
