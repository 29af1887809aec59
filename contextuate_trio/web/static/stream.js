// The event stream: a virtualised list (fixed row height, only visible rows in the
// DOM), so 50,000+ events scroll smoothly. Newest at the bottom; follows the tail
// unless the person scrolled up or paused.
import { el, clock, shortId, basename } from './util.js';

const ROW = 30;
const OVERSCAN = 12;
const KNOWN_TYPES = new Set(['tool_call', 'tool_result', 'tool_error', 'stop_failure', 'user_prompt',
  'permission_request', 'notification', 'session_start', 'session_end', 'stop', 'subagent_start', 'subagent_stop']);

export class Stream {
  constructor(root, spacer, { onSelect, sessionLabel }) {
    this.root = root;
    this.spacer = spacer;
    this.onSelect = onSelect;
    this.sessionLabel = sessionLabel;
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
    const summary = ev.summary || ev.hookType || '';
    const row = el('div', {
      class: `row${i === this.selected ? ' sel' : ''}`, role: 'option', 'aria-selected': String(i === this.selected),
      dataset: { i: String(i) }, title: summary,
    },
    el('span', { class: 't', text: clock(ev.timestamp) }),
    el('span', { class: 's', text: this.sessionLabel(ev) }),
    el('span', { class: `type ${cls}`, text: type.replace(/_/g, ' ') }),
    el('span', { class: 'tool', text: ev.toolName || '' }),
    el('span', { class: 'sum', text: summary }));
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
