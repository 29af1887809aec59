// The WebSocket: snapshot on first connect, resume (?since=seq&epoch=) on every
// reconnect, exponential back-off with jitter. The token (when the daemon has one)
// travels in the Sec-WebSocket-Protocol header, never in the URL.
const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content;

function b64url(text) {
  const bytes = new TextEncoder().encode(text);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

// The page's connection (the last one made), for modules that need its token or its
// requests without being handed it: `token()` is the same getter the socket uses.
let current = null;
export const connection = () => current;
export const token = () => (current?.getToken ? current.getToken() || null : null);

export class Connection {
  constructor({ onMessage, onState, getToken }) {
    current = this;
    this.onMessage = onMessage;
    this.onState = onState;
    this.getToken = getToken;
    this.port = meta('contextuate-ws-port') || '3848';
    this.seq = null;
    this.epoch = null;
    this.ws = null;
    this.attempt = 0;
    this.timer = 0;
    this.pending = new Map();
    this.nextId = 1;
    this.stopped = false;
  }

  url() {
    const host = location.hostname.includes(':') ? `[${location.hostname}]` : location.hostname;
    const q = new URLSearchParams();
    if (this.seq !== null) { q.set('since', this.seq); q.set('epoch', this.epoch || ''); }
    const qs = q.toString();
    return `ws://${host}:${this.port}/${qs ? `?${qs}` : ''}`;
  }

  connect() {
    clearTimeout(this.timer);
    const protocols = ['contextuate'];
    const token = this.getToken();
    if (token) protocols.push(`contextuate.bearer.${b64url(token)}`);
    this.onState(this.attempt ? 'retry' : 'connecting', this.attempt);
    let ws;
    try { ws = new WebSocket(this.url(), protocols); } catch (e) { this.retry(); return; }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => { opened = true; this.attempt = 0; this.onState('live'); };
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      if (typeof msg.seq === 'number' && ['snapshot', 'resume', 'caught_up', 'event', 'events'].includes(msg.type)) this.seq = msg.seq;
      if (msg.epoch) this.epoch = msg.epoch;
      if (msg.requestId !== undefined && this.pending.has(msg.requestId)) {
        const { resolve, reject } = this.pending.get(msg.requestId);
        this.pending.delete(msg.requestId);
        (msg.type === 'error' ? reject : resolve)(msg);
        return;
      }
      this.onMessage(msg);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      for (const { reject } of this.pending.values()) reject({ message: 'disconnected' });
      this.pending.clear();
      if (this.stopped) return;
      if (!opened && this.getToken && e.code === 1006 && this.attempt >= 2) this.onState('auth?', this.attempt);
      this.retry(e.code);
    };
  }

  retry(code) {
    this.attempt += 1;
    const base = Math.min(10000, 400 * 2 ** Math.min(this.attempt - 1, 5));
    const wait = base / 2 + Math.random() * base / 2;
    this.onState('retry', this.attempt, wait, code);
    this.timer = setTimeout(() => this.connect(), wait);
  }

  reconnectNow() { if (this.ws) this.ws.close(); else { this.attempt = 0; this.connect(); } }

  send(obj) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  request(obj, timeoutMs = 15000) {
    return new Promise((resolve, reject) => {
      const requestId = this.nextId++;
      if (!this.send({ ...obj, requestId })) { reject({ message: 'not connected' }); return; }
      this.pending.set(requestId, { resolve, reject });
      setTimeout(() => {
        if (this.pending.delete(requestId)) reject({ message: 'no answer' });
      }, timeoutMs);
    });
  }
}
