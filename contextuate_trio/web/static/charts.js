// Activity (events over time, stacked per machine or per session) and the tool
// timeline (one lane per session, a bar per tool call from call to result). Canvas.
const PALETTE = ['#6366f1', '#10b981', '#f59e0b', '#ef4444', '#06b6d4', '#a855f7', '#84cc16', '#ec4899', '#64748b', '#14b8a6'];
const colorCache = new Map();
export function colorFor(key) {
  if (!colorCache.has(key)) {
    let h = 0;
    for (const c of String(key)) h = (h * 31 + c.charCodeAt(0)) >>> 0;
    colorCache.set(key, PALETTE[h % PALETTE.length]);
  }
  return colorCache.get(key);
}

function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

function prepare(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600;
  const h = canvas.clientHeight || Number(canvas.getAttribute('height')) || 80;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = `11px ${css('--sans') || 'sans-serif'}`;
  return { ctx, w, h };
}

function timeLabel(ms, range) {
  const d = new Date(ms);
  const hm = `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  return range <= 3600000 ? `${hm}` : hm;
}

// events: oldest first. key(ev) -> series name.
export function drawActivity(canvas, events, { range, now, key }) {
  const { ctx, w, h } = prepare(canvas);
  const BUCKETS = Math.max(20, Math.min(90, Math.floor(w / 9)));
  const start = now - range;
  const size = range / BUCKETS;
  const series = new Map();
  for (let i = 0; i < events.length; i++) {
    const ev = events[i];
    const k = Math.floor((ev.timestamp - start) / size);
    if (k < 0 || k >= BUCKETS) continue;
    const name = key(ev);
    if (!series.has(name)) series.set(name, new Array(BUCKETS).fill(0));
    series.get(name)[k] += 1;
  }
  const totals = new Array(BUCKETS).fill(0);
  for (const arr of series.values()) arr.forEach((v, i) => { totals[i] += v; });
  const max = Math.max(1, ...totals);
  const left = 30; const bottom = 16; const top = 6;
  const plotH = h - bottom - top; const bw = (w - left) / BUCKETS;
  ctx.strokeStyle = css('--line'); ctx.fillStyle = css('--muted'); ctx.lineWidth = 1;
  for (const frac of [0, 0.5, 1]) {
    const y = top + plotH * (1 - frac);
    ctx.beginPath(); ctx.moveTo(left, Math.round(y) + 0.5); ctx.lineTo(w, Math.round(y) + 0.5); ctx.stroke();
    ctx.fillText(String(Math.round(max * frac)), 2, y + 4);
  }
  const names = [...series.keys()].sort();
  for (let i = 0; i < BUCKETS; i++) {
    let y = top + plotH;
    for (const name of names) {
      const v = series.get(name)[i];
      if (!v) continue;
      const bh = (v / max) * plotH;
      ctx.fillStyle = colorFor(name);
      ctx.fillRect(left + i * bw + 1, y - bh, Math.max(1, bw - 2), bh);
      y -= bh;
    }
  }
  ctx.fillStyle = css('--muted');
  for (const frac of [0, 0.25, 0.5, 0.75]) {
    ctx.fillText(timeLabel(start + range * frac, range), left + (w - left) * frac + 2, h - 3);
  }
  ctx.textAlign = 'right'; ctx.fillText('now', w - 2, h - 3); ctx.textAlign = 'left';
  return names;
}

// calls: [{lane, tool, start, end|null, error}], lanes: [{id, label}]
export function drawTimeline(canvas, calls, lanes, { range, now }) {
  const { ctx, w, h } = prepare(canvas);
  const start = now - range;
  const left = 130; const laneH = Math.max(14, Math.min(22, (h - 4) / Math.max(1, lanes.length)));
  const x = (t) => left + ((t - start) / range) * (w - left);
  ctx.strokeStyle = css('--line');
  ctx.fillStyle = css('--muted');
  if (!lanes.length) {
    ctx.fillText('No tool calls in this range.', left, h / 2);
    return;
  }
  lanes.forEach((lane, i) => {
    const y = 2 + i * laneH;
    ctx.fillStyle = css('--muted');
    const label = lane.label.length > 20 ? `${lane.label.slice(0, 19)}…` : lane.label;
    ctx.fillText(label, 4, y + laneH / 2 + 4);
    ctx.beginPath(); ctx.moveTo(left, Math.round(y + laneH) + 0.5); ctx.lineTo(w, Math.round(y + laneH) + 0.5); ctx.stroke();
  });
  const index = new Map(lanes.map((l, i) => [l.id, i]));
  for (const c of calls) {
    const i = index.get(c.lane);
    if (i === undefined) continue;
    const end = c.end ?? now;
    if (end < start) continue;
    const x0 = Math.max(left, x(c.start)); const x1 = Math.max(x0 + 2, x(end));
    const y = 2 + i * laneH + 3;
    ctx.fillStyle = c.error ? css('--failed') : colorFor(c.tool);
    ctx.globalAlpha = c.end === null ? 0.55 : 0.9;
    ctx.fillRect(x0, y, x1 - x0, laneH - 6);
    ctx.globalAlpha = 1;
  }
}
