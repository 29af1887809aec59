// Small helpers shared by the dashboard modules. No framework: plain DOM.
export const $ = (sel, root = document) => root.querySelector(sel);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'style') node.style.cssText = v; // CSSOM: allowed by the page's CSP
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');
export function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
export function dateTime(ms) {
  if (!ms) return '—';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(ms)}`;
}
export function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${(ms / 1000).toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${pad(s % 60)}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${pad(m % 60)}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}
export function basename(path) {
  if (!path) return '';
  const parts = String(path).replace(/\/+$/, '').split('/');
  return parts[parts.length - 1] || path;
}
export function shortId(id) {
  if (!id) return '';
  const m = /^(agent-|task-)?(.*)$/.exec(id);
  return (m[1] || '') + m[2].slice(0, 8);
}

export const STATUS_LABEL = {
  active: 'working', waiting: 'waiting for you', idle: 'turn ended', ended: 'ended', failed: 'failed',
};

// Pretty JSON with light syntax colouring, built from text nodes (never innerHTML).
export function jsonBlock(value, cls = '') {
  const pre = el('pre', { class: `code ${cls}` });
  if (typeof value === 'string') { pre.textContent = value; return pre; }
  const text = JSON.stringify(value, null, 2) ?? 'null';
  if (text.length > 400000) { pre.textContent = text; return pre; }
  const re = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
  let last = 0; let m;
  while ((m = re.exec(text))) {
    if (m.index > last) pre.append(text.slice(last, m.index));
    if (m[1]) {
      pre.append(el('span', { class: m[2] ? 'j-k' : 'j-s', text: m[1] }));
      if (m[2]) pre.append(m[2]);
    } else if (m[3]) pre.append(el('span', { class: 'j-b', text: m[3] }));
    else pre.append(el('span', { class: 'j-n', text: m[4] }));
    last = re.lastIndex;
  }
  pre.append(text.slice(last));
  return pre;
}

let toastTimer = 0;
export function toast(text, ms = 3500) {
  const t = $('#toast');
  t.textContent = text; t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, ms);
}

export function throttle(fn, ms) {
  let timer = 0; let pending = false;
  return (...args) => {
    if (timer) { pending = true; return; }
    fn(...args);
    timer = setTimeout(() => { timer = 0; if (pending) { pending = false; fn(...args); } }, ms);
  };
}
