// The event stream: a virtualised list (fixed row height, only visible rows in the
// DOM), so 50,000+ events scroll smoothly. Newest at the bottom; follows the tail
// unless the person scrolled up or paused.
import { el, clock, shortId, basename } from './util.js';

const ROW = 30;
const OVERSCAN = 12;
const KNOWN_TYPES = new Set(['tool_call', 'tool_result', 'tool_error', 'stop_failure', 'user_prompt',
  'permission_request', 'notification', 'session_start', 'session_end', 'stop', 'subagent_start', 'subagent_stop',
  'message_display', 'agent_report', 'permission_denied', 'elicitation', 'prompt_expansion']);
// What a person reads in the type column (the filter keeps the eventType itself).
const TYPE_LABEL = { message_display: 'assistant', agent_report: 'agent report', permission_denied: 'denied' };

// A background agent's report (a <task-notification> prompt): its name, status, result.
export function agentReport(ev) {
  const text = typeof ev?.data?.prompt === 'string' ? ev.data.prompt : '';
  const tag = (name) => {
    const a = text.indexOf(`<${name}>`); const b = text.indexOf(`</${name}>`, a + 1);
    return a < 0 || b < 0 ? null : text.slice(a + name.length + 2, b).trim() || null;
  };
  const summary = tag('summary');
  const name = (summary && /Agent "([^"]+)"/.exec(summary)?.[1]) || tag('task-id');
  return { name, summary, status: tag('status'), result: tag('result'), taskId: tag('task-id'), toolUseId: tag('tool-use-id') };
}

export function readable(ev) {
  if (ev.eventType === 'agent_report') {
    const r = agentReport(ev);
    const body = r.result || (r.summary && r.summary.replace(/^Agent "[^"]+"\s*/, '')) || ev.summary || '';
    return `report from agent${r.name ? ` "${r.name}"` : ''}${r.status && r.status !== 'completed' ? ` (${r.status})` : ''}: ${body}`;
  }
  if (ev.eventType === 'message_display') return ev.data?.delta ?? ev.summary ?? '';
  return ev.summary || ev.hookType || '';
}

export class Stream {
  constructor(root, spacer, { onSelect, sessionLabel, outcome, fold, onFold }) {
    this.root = root;
    this.spacer = spacer;
    this.onSelect = onSelect;
    this.sessionLabel = sessionLabel;
    this.outcome = outcome || (() => null);  // a tool call's end: 'denied' | 'interrupted' | 'error' | null
    this.fold = fold || (() => null);        // {head, open, count} for a turn's first row, {inTurn} for the rest
    this.onFold = onFold || (() => {});
    this.items = [];          // the events in view (filtered), oldest first
    this.rows = new Map();    // index -> row element
    this.selected = -1;
    this.follow = true;
    this.raf = 0;
    root.addEventListener('scroll', () => {
      const atBottom = root.scrollTop + root.clientHeight >= root.scrollHeight - ROW;
      if (!atBottom && this.follow && !this.programmatic) this.setFollow(false);
      else if (atBottom && !this.follow) this.setFollow(true);
      this.programmatic = false;
      this.schedule();
    }, { passive: true });
    root.addEventListener('click', (e) => {
      const row = e.target.closest('.row');
      if (row && e.target.closest('.fold')) { this.onFold(this.items[Number(row.dataset.i)]); return; }
      if (row) this.select(Number(row.dataset.i), true);
    });
    new ResizeObserver(() => this.schedule()).observe(root);
    this.onFollow = () => {};
  }

  setFollow(on) {
    this.follow = on;
    this.onFollow(on);
    if (on) this.scrollToEnd();
  }

  setItems(items) {
    const keep = this.selected >= 0 ? this.items[this.selected] : null;
    this.items = items;
    this.selected = keep ? items.indexOf(keep) : -1;
    this.clearRows();
    this.spacer.style.height = `${items.length * ROW}px`;
    if (this.follow) this.scrollToEnd();
    this.schedule();
  }

  append(newItems) {
    if (!newItems.length) return;
    for (const e of newItems) this.items.push(e);
    this.spacer.style.height = `${this.items.length * ROW}px`;
    if (this.follow) this.scrollToEnd();
    this.schedule();
  }

  refresh() { this.clearRows(); this.schedule(); }

  clearRows() {
    for (const r of this.rows.values()) r.remove();
    this.rows.clear();
  }

  scrollToEnd() {
    this.programmatic = true;
    this.root.scrollTop = this.root.scrollHeight;
  }

  schedule() {
    if (this.raf) return;
    this.raf = requestAnimationFrame(() => { this.raf = 0; this.render(); });
  }

  render() {
    const top = this.root.scrollTop;
    const h = this.root.clientHeight;
    const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    const last = Math.min(this.items.length - 1, Math.ceil((top + h) / ROW) + OVERSCAN);
    for (const [i, row] of this.rows) {
      if (i < first || i > last) { row.remove(); this.rows.delete(i); }
    }
    for (let i = first; i <= last; i++) {
      if (this.rows.has(i)) continue;
      const row = this.row(this.items[i], i);
      this.rows.set(i, row);
      this.root.append(row);
    }
  }

  row(ev, i) {
    const type = ev.eventType || 'unknown';
    const cls = KNOWN_TYPES.has(type) ? `ty-${type}` : 'ty-other';
    const summary = readable(ev);
    const out = type === 'tool_call' ? this.outcome(ev) : null;
    const fold = this.fold(ev);
    const said = type === 'message_display' || type === 'agent_report';
    const row = el('div', {
      class: `row${i === this.selected ? ' sel' : ''}${said ? ' said' : ''}${fold?.head ? ' turn-head' : ''}${fold?.inTurn ? ' in-turn' : ''}`,
      role: 'option', 'aria-selected': String(i === this.selected),
      dataset: out ? { i: String(i), type, outcome: out } : { i: String(i), type }, title: summary,
    },
    el('span', { class: 't', text: clock(ev.timestamp) }),
    el('span', { class: 's', text: this.sessionLabel(ev) }),
    el('span', { class: `type ${cls}`, text: TYPE_LABEL[type] || type.replace(/_/g, ' ') }),
    el('span', { class: 'tool', text: ev.toolName || '' }),
    el('span', { class: 'sum' },
      fold?.head ? el('button', {
        class: 'fold', type: 'button', tabindex: '-1', 'aria-expanded': String(fold.open),
        title: fold.open ? 'Fold this turn' : 'Show this turn', text: `${fold.open ? '▾' : '▸'} ${fold.count}`,
      }) : null,
      out ? el('span', { class: `outcome o-${out}`, text: out }) : null,
      summary));
    row.style.top = `${i * ROW}px`;
    return row;
  }

  select(i, fromClick = false) {
    if (i < 0 || i >= this.items.length) return;
    const old = this.rows.get(this.selected);
    if (old) { old.classList.remove('sel'); old.setAttribute('aria-selected', 'false'); }
    this.selected = i;
    const row = this.rows.get(i);
    if (row) { row.classList.add('sel'); row.setAttribute('aria-selected', 'true'); }
    if (!fromClick) this.reveal(i);
    this.onSelect(this.items[i]);
  }

  reveal(i) {
    const top = i * ROW;
    if (top < this.root.scrollTop) this.root.scrollTop = top;
    else if (top + ROW > this.root.scrollTop + this.root.clientHeight) this.root.scrollTop = top + ROW - this.root.clientHeight;
    this.schedule();
  }

  move(delta) {
    if (!this.items.length) return;
    if (this.follow && delta < 0) this.setFollow(false);
    const base = this.selected < 0 ? (delta > 0 ? -1 : this.items.length) : this.selected;
    this.select(Math.max(0, Math.min(this.items.length - 1, base + delta)));
  }
}

export function projectOf(session) {
  return basename(session?.workingDirectory) || '';
}
export { shortId };
