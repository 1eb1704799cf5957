"use strict";
// Live metrics panel: polls /playground/stats (a JSON snapshot of the server's Prometheus registry) once a
// second and plots requests/s, p99 latency, queue depth, mean batch size and LM tokens/s.

const POLL_MS = 1000;
const HISTORY = 120; // points kept per chart (2 minutes)
const WINDOW = 5; // snapshots back for p99 and batch size (≈ 5 s: one second holds too few requests)

// q-quantile of a cumulative histogram, interpolated linearly inside its bucket (Prometheus histogram_quantile):
//   rank = q·N;  i = first bucket with cum[i] ≥ rank;  x = lo_i + (hi_i − lo_i)·(rank − cum[i−1]) / (cum[i] − cum[i−1])
// The +Inf bucket (le = null) has no upper edge: its quantile is the largest finite edge.
function quantile(q, le, cum) {
  const total = cum.at(-1) ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  const i = cum.findIndex((c) => c >= rank);
  const lo = i > 0 ? le[i - 1] : 0, prev = i > 0 ? cum[i - 1] : 0;
  if (le[i] === null) return lo;
  return lo + (le[i] - lo) * (rank - prev) / Math.max(cum[i] - prev, 1e-12);
}

// Bucket counts of a histogram between two snapshots (same edges: one registry).
function histDelta(now, then) {
  return { le: now.le, counts: now.counts.map((c, i) => c - (then.counts[i] ?? 0)),
    count: now.count - then.count, sum: now.sum - then.sum };
}

const charts = {};
for (const fig of document.querySelectorAll("#metrics-panel .chart")) {
  charts[fig.dataset.series] = { canvas: fig.querySelector("canvas"), value: fig.querySelector("[data-value]"), points: [] };
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
}

function draw(chart) {
  const { canvas, points } = chart;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 60;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const top = niceMax(Math.max(0, ...points.filter((p) => p !== null)));
  // the x step shrinks as history fills (≥ 30 points wide), newest point at the right edge
  const x = (i) => w - (points.length - 1 - i) * (w / (Math.max(points.length, 30) - 1));
  const y = (v) => h - 2 - (v / top) * (h - 14); // top → 12 px from the top edge
  ctx.strokeStyle = "#e9ecef";
  ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(0, y(top) + 0.5); ctx.lineTo(w, y(top) + 0.5); ctx.stroke();
  ctx.fillStyle = "#868e96";
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(fmt(top), 3, 10); // the y-axis top, just above its grid line
  ctx.strokeStyle = "#1c7ed6";
  ctx.fillStyle = "rgba(28, 126, 214, 0.12)";
  ctx.lineWidth = 1.5;
  // one path per run of non-null points: a gap where a window held no requests
  let run = [];
  const flush = () => {
    if (!run.length) return;
    ctx.beginPath();
    run.forEach(([i, v], k) => (k ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.stroke();
    ctx.lineTo(x(run.at(-1)[0]), h); ctx.lineTo(x(run[0][0]), h); ctx.closePath(); ctx.fill();
    run = [];
  };
  points.forEach((v, i) => (v === null ? flush() : run.push([i, v])));
  flush();
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v >= 100) return String(Math.round(v));
  return String(Number(v.toPrecision(3)));
}

function push(name, v) {
  const c = charts[name];
  if (!c) return;
  c.points.push(v);
  if (c.points.length > HISTORY) c.points.shift();
  c.value.textContent = fmt(v);
  draw(c);
}

function modelRows(models) {
  const body = document.getElementById("metrics-models");
  body.replaceChildren(...Object.entries(models).map(([name, m]) => {
    const tr = document.createElement("tr");
    for (const v of [name, m.requests, m.errors, m.queue_depth, m.streams, m.tokens]) {
      const td = document.createElement("td");
      td.textContent = typeof v === "number" ? String(Math.round(v)) : v;
      tr.append(td);
    }
    if (!m.ready) tr.className = "down";
    return tr;
  }));
}

const snapshots = [];
const panel = document.getElementById("metrics-panel");
const status = document.getElementById("server-status");

async function poll() {
  try {
    const r = await fetch("/playground/stats", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const s = await r.json();
    snapshots.push(s);
    if (snapshots.length > WINDOW + 1) snapshots.shift();
    const prev = snapshots.at(-2), old = snapshots[0];
    if (prev) {
      const dt = Math.max(s.t - prev.t, 1e-3);
      push("rps", (s.requests - prev.requests) / dt);
      push("tokens", (s.tokens - prev.tokens) / dt);
      const lat = histDelta(s.latency, old.latency);
      const p99 = quantile(0.99, lat.le, lat.counts);
      push("p99", p99 === null ? null : p99 * 1000);
      const batch = histDelta(s.batch_size, old.batch_size);
      push("batch", batch.count > 0 ? batch.sum / batch.count : null);
    }
    push("queue", s.queue_depth);
    modelRows(s.models);
    status.dataset.state = s.ready ? "ready" : "starting";
    status.textContent = s.ready ? "ready" : "starting";
    panel.dataset.updates = String(Number(panel.dataset.updates) + 1);
    panel.dataset.requests = String(s.requests);
    document.getElementById("metrics-age").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    status.dataset.state = "down";
    status.textContent = "server unreachable";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
