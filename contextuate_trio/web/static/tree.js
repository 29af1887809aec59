// The session tree: parents with their sub-agents (across machines), status badges,
// live durations. Rebuilt (throttled) when sessions change; durations tick in place.
import { el, duration, basename, shortId, STATUS_LABEL } from './util.js';

const ORDER = { waiting: 0, active: 1, idle: 2, failed: 3, ended: 4 };

export function sessionTitle(s) {
  if (!s) return '';
  if (s.name) return s.name;
  if (s.parentSessionId && (s.agentType || s.description)) return s.description || s.agentType;
  return basename(s.workingDirectory) || shortId(s.sessionId);
}

export class Tree {
  constructor(root, { onSelect, onMenu }) {
    this.root = root;
    this.onSelect = onSelect;
    this.onMenu = onMenu;
    this.durs = new Map();
    this.selected = null;
    this.showHidden = false;
    root.addEventListener('click', (e) => {
      const node = e.target.closest('.node');
      if (!node) return;
      if (e.target.closest('.more')) { this.onMenu(node.dataset.id, e.target.closest('.more')); return; }
      this.onSelect(this.selected === node.dataset.id ? null : node.dataset.id);
    });
    root.addEventListener('contextmenu', (e) => {
      const node = e.target.closest('.node');
      if (!node) return;
      e.preventDefault();
      this.onMenu(node.dataset.id, { getBoundingClientRect: () => ({ left: e.clientX, bottom: e.clientY, right: e.clientX }) });
    });
    root.addEventListener('keydown', (e) => {
      const node = e.target.closest('.node');
      if (!node) return;
      const all = [...root.querySelectorAll('.node')];
      const i = all.indexOf(node);
      if (e.key === 'ArrowDown' || e.key === 'j') { all[Math.min(all.length - 1, i + 1)]?.focus(); e.preventDefault(); }
      else if (e.key === 'ArrowUp' || e.key === 'k') { all[Math.max(0, i - 1)]?.focus(); e.preventDefault(); }
      else if (e.key === 'Enter' || e.key === ' ') { this.onSelect(this.selected === node.dataset.id ? null : node.dataset.id); e.preventDefault(); }
      else if (e.key === 'm' || e.key === 'ContextMenu' || (e.key === 'F10' && e.shiftKey)) { this.onMenu(node.dataset.id, node.querySelector('.more')); e.preventDefault(); }
    });
    setInterval(() => this.tick(), 1000);
  }

  render(sessions) {
    const focusedId = document.activeElement?.closest?.('.node')?.dataset.id;
    const byParent = new Map();
    const roots = [];
    for (const s of sessions.values()) {
      if (s.hidden && !this.showHidden) continue;
      const p = s.parentSessionId;
      if (p && sessions.has(p) && p !== s.sessionId) {
        if (!byParent.has(p)) byParent.set(p, []);
        byParent.get(p).push(s);
      } else roots.push(s);
    }
    const sortRoots = (a, b) => (b.pinned - a.pinned)
      || ((a.status === 'waiting' ? 0 : 1) - (b.status === 'waiting' ? 0 : 1))
      || ((b.lastEventTime || 0) - (a.lastEventTime || 0));
    const sortKids = (a, b) => (a.startTime || 0) - (b.startTime || 0);
    roots.sort(sortRoots);
    this.durs.clear();
    const frag = document.createDocumentFragment();
    const seen = new Set();
    const build = (s, depth) => {
      seen.add(s.sessionId);
      const li = el('li', { role: 'treeitem', 'aria-expanded': byParent.has(s.sessionId) ? 'true' : null });
      li.append(this.node(s, depth, sessions));
      const kids = (byParent.get(s.sessionId) || []).filter((k) => !seen.has(k.sessionId)).sort(sortKids);
      if (kids.length) {
        const ul = el('ul', { role: 'group' });
        for (const k of kids) ul.append(build(k, depth + 1));
        li.append(ul);
      }
      return li;
    };
    for (const s of roots) frag.append(build(s, 0));
    this.root.replaceChildren(frag);
    if (focusedId) this.root.querySelector(`.node[data-id="${CSS.escape(focusedId)}"]`)?.focus();
    else if (!this.root.querySelector('.node[tabindex="0"]')) this.root.querySelector('.node')?.setAttribute('tabindex', '0');
    this.tick();
    return roots.length;
  }

  node(s, depth, sessions) {
    const status = s.status || 'active';
    // The turn ended but background sub-agents still run: say so, not "turn ended".
    const bg = Array.isArray(s.backgroundAgents) ? s.backgroundAgents.length : 0;
    const onBg = bg > 0 && (status === 'idle' || (status === 'active' && s.lastEventType === 'stop'));
    const badge = onBg ? { cls: 'b-background', text: `waiting on ${bg} background agent${bg === 1 ? '' : 's'}` }
      : { cls: `b-${status}`, text: STATUS_LABEL[status] || status };
    const said = typeof s.lastMessage === 'string' ? s.lastMessage.replace(/\s+/g, ' ').trim().slice(0, 300) : '';
    const parent = s.parentSessionId && sessions.get(s.parentSessionId);
    const crossMachine = parent && parent.machineId !== s.machineId;
    const dur = el('span', { class: 'dur' });
    this.durs.set(dur, s);
    const last = s.lastSummary || '';
    const node = el('div', {
      class: `node st-${onBg ? 'background' : status}${status === 'waiting' ? ' waiting' : ''}${this.selected === s.sessionId ? ' sel' : ''}${s.hidden ? ' hidden-s' : ''}`,
      dataset: { id: s.sessionId }, tabindex: this.selected === s.sessionId ? '0' : '-1',
      'aria-selected': String(this.selected === s.sessionId),
      title: `${s.sessionId}\n${s.workingDirectory || ''}`,
    },
    el('span', { class: 'sdot', 'aria-hidden': 'true' }),
    el('span', { class: 'title' }, s.pinned ? el('span', { class: 'pin', text: '★ ', title: 'pinned' }) : null, sessionTitle(s)),
    el('span', { class: 'right' },
      el('span', { class: `badge ${badge.cls}`, text: badge.text }),
      el('button', { class: 'more', type: 'button', 'aria-label': 'Session actions', tabindex: '-1', text: '⋯' })),
    el('span', { class: 'meta' },
      s.agentType ? el('span', { class: 'chip agent', text: s.agentType }) : null,
      el('span', { class: 'chip', text: `${crossMachine ? '⇄ ' : ''}${s.machineId || 'unknown'}`, title: 'machine' }),
      depth === 0 || s.name ? el('span', { class: 'chip', text: basename(s.workingDirectory) || '—', title: s.workingDirectory || '' }) : null,
      el('span', { class: 'chip', text: `${s.eventCount || 0} ev · ${s.toolCount || 0} tools${s.errorCount ? ` · ${s.errorCount} err` : ''}${s.deniedCount ? ` · ${s.deniedCount} denied` : ''}${s.interruptedCount ? ` · ${s.interruptedCount} interrupted` : ''}` }),
      bg && !onBg ? el('span', { class: 'chip', text: `+${bg} background`, title: 'background sub-agents still running' }) : null,
      dur),
    said ? el('span', { class: 'msg', text: said, title: s.lastMessage.slice(0, 2000) }) : null,
    last ? el('span', { class: 'last', text: last }) : null);
    return node;
  }

  tick() {
    const now = Date.now();
    for (const [span, s] of this.durs) {
      const end = (s.status === 'ended' || s.status === 'failed') ? (s.endTime || s.lastEventTime) : now;
      span.textContent = s.startTime ? duration(end - s.startTime) : '';
    }
  }
}

export { ORDER };
