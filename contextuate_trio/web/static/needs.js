// "Needs you": every session waiting for a person, longest wait first, from the
// daemon's /api/attention (on every machine). Refreshed on load, soon after a session's
// `attention` changes (coalesced: at most one fetch per 200 ms), and every 5 s (the
// daemon's clock decides `stuck`). Opt-in browser notifications: one per new item
// (key sessionId|reason|since), never for what was already waiting when the page loaded.
// A request the daemon can answer (config decisions.enabled: the item's `decision`) gets
// its answer buttons and a countdown under the row (decide.js).
import { el, duration, basename, shortId } from './util.js';
import { decisionBar, deadlineOf, leftText, queueChanged } from './decide.js';

export const REASONS = {
  permission: { label: 'permission', title: 'A tool waits for your approval' },
  elicitation: { label: 'question', title: 'An MCP server asks you something' },
  idle: { label: 'your turn', title: 'The prompt has been waiting for you' },
  input: { label: 'input', title: 'An agent asks for input' },
  failure: { label: 'failed', title: 'Rate limit, billing or credentials: a person must act' },
  stuck: { label: 'stuck?', title: 'Working, but no event for a while' },
};

export const keyOf = (it) => `${it.sessionId}|${it.reason}|${it.since}`;

export class Needs {
  constructor({ root, load, onSelect, onCount }) {
    this.root = root;
    this.list = root.querySelector('#needs-list');
    this.countEl = root.querySelector('#needs-count');
    this.emptyEl = root.querySelector('#needs-empty');
    this.noteEl = root.querySelector('#needs-note');
    this.button = root.querySelector('#notify');
    this.load = load;
    this.onSelect = onSelect;
    this.onCount = onCount || (() => {});
    this.items = [];
    this.fetchedAt = 0;
    this.seen = null;          // keys already shown (null until the first answer)
    this.timer = 0;
    this.inflight = false;
    this.again = false;
    this.waits = new Map();    // span -> item
    this.spans = [];           // the rows' wait spans, in order
    this.sig = null;           // what the rows show (to skip rebuilding the same list)
    this.clocks = [];          // [span, deadline getter]: the answerable rows' countdowns
    this.notify = localStorage.getItem('contextuate-notify') === '1' && this.permitted();
    window.__ctNotified = [];
    this.button.addEventListener('click', () => this.toggleNotify());
    this.list.addEventListener('click', (e) => {
      const b = e.target.closest('.need');
      const it = b && this.items[Number(b.dataset.i)];
      if (it) this.onSelect(it);
    });
    this.updateButton();
    setInterval(() => this.tick(), 1000);
  }

  permitted() { return 'Notification' in window && Notification.permission === 'granted'; }

  // Ask again soon; a change while a fetch is under way asks once more after it.
  schedule(ms = 200) {
    if (this.timer) return;
    this.timer = setTimeout(() => { this.timer = 0; this.refresh(); }, ms);
  }

  async refresh() {
    if (this.inflight) { this.again = true; return; }
    this.inflight = true;
    try {
      this.apply(await this.load());
      this.noteEl.hidden = true;
    } catch (e) {
      this.noteEl.hidden = false;
      this.noteEl.textContent = `(could not load: ${e.message})`;
    } finally {
      this.inflight = false;
      if (this.again) { this.again = false; this.schedule(); }
    }
  }

  apply(data) {
    const items = Array.isArray(data?.items) ? data.items : [];
    this.items = items;
    this.fetchedAt = Date.now();
    for (const it of items) if (it.decision) it.deadline = deadlineOf(it, this.fetchedAt);
    queueChanged(items);
    if (this.seen === null) this.seen = new Set(items.map(keyOf)); // present at page load: never notified
    else {
      for (const it of items) {
        const k = keyOf(it);
        if (this.seen.has(k)) continue;
        this.seen.add(k);
        if (this.notify) this.raise(it, k);
      }
      if (this.seen.size > 20000) this.seen = new Set(items.map(keyOf));
    }
    this.render();
  }

  waited(it) { return Math.max(0, (it.waitedMs || 0) + (Date.now() - this.fetchedAt)); }

  waitText(it) {
    const ms = this.waited(it);
    return ms < 60000 ? `${Math.floor(ms / 1000)} s` : duration(ms);
  }

  render() {
    const items = this.items;
    // The same queue again (the 5 s poll): keep the rows, only the waits move on.
    const offer = (o) => (o ? `${o.requestId}|${o.expiresAt}|${(o.decisions || []).join(',')}|${o.canAllowAlways}` : '');
    const sig = items.map((it) => `${keyOf(it)}|${it.detail}|${it.name}|${it.workingDirectory}|${offer(it.decision)}`).join('\n');
    if (sig === this.sig) {
      this.spans.forEach((span, i) => this.waits.set(span, items[i]));
      this.tick();
      return;
    }
    this.sig = sig;
    this.waits.clear();
    this.spans = [];
    this.clocks = [];
    this.countEl.textContent = items.length ? String(items.length) : '';
    this.countEl.hidden = !items.length;
    this.emptyEl.hidden = items.length > 0;
    this.root.classList.toggle('has-items', items.length > 0);
    this.list.replaceChildren(...items.map((it, i) => this.row(it, i)));
    this.onCount(items.length);
  }

  row(it, i) {
    const r = REASONS[it.reason] || { label: it.reason, title: '' };
    const sub = !!it.parentSessionId;
    const wait = el('span', { class: 'wait', title: `since ${new Date(it.since).toLocaleString()}` });
    this.waits.set(wait, it);
    this.spans.push(wait);
    wait.textContent = this.waitText(it);
    const title = it.name || shortId(String(it.sessionId).split(':')[0]);
    let bar = null;
    if (it.decision) {
      // The countdown follows the newest copy of the request (each poll brings one).
      const rid = it.decision.requestId;
      const deadline = () => (this.items.find((x) => x.decision?.requestId === rid) || it).deadline;
      const made = decisionBar(it, { onAnswered: () => this.refresh(), deadline });
      bar = made.bar;
      this.clocks.push([made.left, deadline]);
    }
    return el('li', { class: it.decision ? 'answerable' : null, dataset: it.decision ? { requestId: it.decision.requestId } : undefined },
      el('button', {
        class: `need r-${it.reason}`, type: 'button', dataset: { i: String(i), sessionId: it.sessionId, reason: it.reason },
        title: `${r.title}\n${it.sessionId}${it.workingDirectory ? `\n${it.workingDirectory}` : ''}`,
      },
      el('span', { class: `reason r-${it.reason}`, text: r.label }),
      el('span', { class: 'who' },
        el('b', { text: title }),
        sub ? el('span', { class: 'chip agent', text: it.agentType || 'sub-agent', title: 'sub-agent' }) : null,
        el('span', { class: 'chip', text: it.machineId || 'unknown', title: 'machine' }),
        it.workingDirectory ? el('span', { class: 'chip', text: basename(it.workingDirectory), title: it.workingDirectory }) : null),
      el('span', { class: 'what', text: it.detail || it.toolName || '' }),
      wait),
    bar);
  }

  tick() {
    for (const [span, it] of this.waits) span.textContent = this.waitText(it);
    for (const [span, get] of this.clocks) {
      const deadline = get();
      const text = leftText(deadline);
      span.textContent = text;
      span.classList.toggle('soon', text !== 'expired' && deadline - Date.now() < 15000);
      span.classList.toggle('expired', text === 'expired');
    }
  }

  raise(it, key) {
    if (!this.permitted()) return;
    const r = REASONS[it.reason] || { label: it.reason };
    const who = it.name || basename(it.workingDirectory) || shortId(it.sessionId);
    try {
      const n = new Notification(`Needs you (${r.label}): ${who}${it.agentType && it.parentSessionId ? ` · ${it.agentType}` : ''}`, {
        body: `${it.detail || r.title || ''}\n${it.machineId || ''}${it.workingDirectory ? ` · ${it.workingDirectory}` : ''}`, tag: key,
      });
      n.onclick = () => { window.focus(); this.onSelect(it); n.close(); };
      window.__ctNotified.push(key);
    } catch (e) { /* a browser without page notifications: the panel still shows it */ }
  }

  async toggleNotify() {
    if (!this.notify) {
      if (!('Notification' in window)) { this.say('This browser has no notifications'); return; }
      const p = await Notification.requestPermission();
      if (p !== 'granted') { this.say('Notifications were not allowed'); return; }
    }
    this.notify = !this.notify;
    localStorage.setItem('contextuate-notify', this.notify ? '1' : '0');
    this.updateButton();
  }

  say(text) { this.noteEl.hidden = false; this.noteEl.textContent = text; }

  updateButton() {
    this.button.setAttribute('aria-pressed', String(this.notify));
    this.button.textContent = this.notify ? 'Notifying ✓' : 'Notify me';
    this.button.title = this.notify ? 'Browser notifications are on: click to turn them off'
      : 'A browser notification for each new session that needs you';
  }
}
