"use strict";
// genloom playground: one card per served model — sample grids, per-label rows, the VAE latent walk and
// streamed LM text. Plain browser JS, no dependencies; it only talks to this server's own HTTP API.
// The live metrics panel is in metrics.js.

const el = (tag, props = {}, ...kids) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat(Infinity)) if (kid !== null && kid !== undefined && kid !== false) node.append(kid);
  return node;
};

// POST JSON; a non-2xx answer throws the server's own message ({"error": ...} names the field and the fix).
async function postJSON(path, body, { signal } = {}) {
  const r = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  });
  if (!r.ok) {
    let msg = `HTTP ${r.status}`;
    try { const j = await r.json(); if (j.error) msg = `HTTP ${r.status}: ${j.error}`; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}

const fmtNum = (v) => (Number.isInteger(v) ? String(v) : Number(v.toPrecision(4)).toString());
function fmtValue(v) {
  if (typeof v === "number") return fmtNum(v);
  if (v === null) return "–";
  if (Array.isArray(v)) return v.map(fmtValue).join(", ");
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// Provenance: the dataset and the quality metrics first, then the rest as written by the trainer.
const PROV_FIRST = ["dataset", "fid", "nelbo", "iwae_nll", "val_loss", "bpc", "best_val_loss", "test_accuracy",
  "steps", "epochs", "train_seconds"];
function provenanceList(prov) {
  const keys = Object.keys(prov || {});
  keys.sort((a, b) => {
    const ia = PROV_FIRST.indexOf(a), ib = PROV_FIRST.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  if (!keys.length) return el("p", { class: "muted small" }, "no provenance in this file");
  return el("dl", { class: "prov" }, keys.map((k) => [el("dt", {}, k), el("dd", {}, fmtValue(prov[k]))]));
}

const field = (label, input, extra = null) => el("label", { class: "field" }, el("span", {}, label), input, extra);
const numberInput = (value, props = {}) => el("input", { type: "number", value: String(value), ...props });
const intOf = (input, fallback) => {
  const v = Number.parseInt(input.value, 10);
  return Number.isFinite(v) ? v : fallback;
};
const randomSeed = () => Math.floor(Math.random() * 1e9);

function busy(button, on) {
  button.disabled = on;
  button.classList.toggle("busy", on);
}

// Run one section's request: the button is busy meanwhile, and the section's data-state (which the browser
// test waits on) ends "ready" with the error box cleared, or "error" with the error shown.
async function attempt(section, button, err, work, { loading = false } = {}) {
  busy(button, true);
  if (loading) section.dataset.state = "loading";
  try {
    await work();
    err.show(null);
    section.dataset.state = "ready";
  } catch (e) {
    err.show(e);
    section.dataset.state = "error";
  } finally {
    busy(button, false);
  }
}

function errorBox() {
  const box = el("p", { class: "error", role: "alert", hidden: true });
  box.show = (e) => { box.textContent = e ? String(e.message || e) : ""; box.hidden = !e; };
  return box;
}

// Draw float images (n, 28, 28) in [0, 1] side by side: cols per row, each pixel scale×scale, pad between.
function drawImages(canvas, images, { cols = images.length, scale = 2, pad = 2, highlight = -1 } = {}) {
  const h = images[0].length, w = images[0][0].length, rows = Math.ceil(images.length / cols);
  const W = cols * (w + pad) + pad, H = rows * (h + pad) + pad;
  const off = new OffscreenCanvas(W, H);
  const octx = off.getContext("2d");
  const img = octx.createImageData(W, H);
  img.data.fill(255);
  images.forEach((im, i) => {
    const r0 = pad + Math.floor(i / cols) * (h + pad), c0 = pad + (i % cols) * (w + pad);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const g = Math.round(Math.min(1, Math.max(0, im[y][x])) * 255);
        const o = 4 * ((r0 + y) * W + c0 + x);
        img.data[o] = img.data[o + 1] = img.data[o + 2] = g;
      }
    }
  });
  octx.putImageData(img, 0, 0);
  canvas.width = W * scale;
  canvas.height = H * scale;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, W * scale, H * scale);
  if (highlight >= 0) {
    const r0 = Math.floor(highlight / cols) * (h + pad), c0 = (highlight % cols) * (w + pad);
    ctx.strokeStyle = "#e8590c";
    ctx.lineWidth = 2;
    ctx.strokeRect(c0 * scale + 1, r0 * scale + 1, (w + pad) * scale, (h + pad) * scale);
  }
}

// --- image models: the sample grid -------------------------------------------------------------------
function sampleSection(m) {
  const maxN = m.limits?.max_n ?? 256;
  const seed = numberInput(0, { min: 0, class: "seed" });
  const counts = [4, 16, 36, 64, 100].filter((n) => n <= maxN);
  const count = el("select", { class: "count" },
    counts.map((n) => el("option", { value: String(n), selected: n === Math.min(36, counts.at(-1)) }, String(n))));
  const img = el("img", { class: "sample-grid", alt: `samples from ${m.name}` });
  const caption = el("figcaption", { class: "muted small" });
  const err = errorBox();
  const go = el("button", { class: "primary", onclick: () => run() }, "Sample");
  const dice = el("button", { title: "a random seed", onclick: () => { seed.value = randomSeed(); run(); } }, "random");
  const section = el("section", { class: "block samples", dataset: { state: "loading" } },
    el("h3", {}, "Samples"),
    el("div", { class: "controls" }, field("seed", seed, dice), field("count", count), go),
    err, el("figure", {}, img, caption));
  let url = null;

  async function run() {
    const n = Number(count.value), s = intOf(seed, 0);
    const t0 = performance.now();
    await attempt(section, go, err, async () => {
      const r = await postJSON(`/v1/models/${encodeURIComponent(m.name)}/sample`, { n, seed: s, format: "png" });
      const next = URL.createObjectURL(await r.blob());
      img.src = next;
      await img.decode();
      if (url) URL.revokeObjectURL(url);
      url = next;
      caption.textContent = `${n} samples · seed ${s} · ${Math.round(performance.now() - t0)} ms`;
    }, { loading: true });
  }
  seed.addEventListener("change", run);
  count.addEventListener("change", run);
  run();
  return section;
}

// "3 · Dress" when the dataset names its classes, "label 3" when the names are just the numbers
const labelText = (names, i) => (names[i] === String(i) ? `label ${i}` : `${i} · ${names[i]}`);

// --- conditional models: one row of samples per label, the same seed (so the same noise) in every row --------
function labelSection(m, names) {
  const seed = numberInput(0, { min: 0 });
  const perLabel = el("select", {}, [4, 6, 8, 10, 12].map((n) => el("option", { value: String(n), selected: n === 8 }, String(n))));
  const rows = el("div", { class: "label-rows" });
  const err = errorBox();
  const go = el("button", { onclick: () => run() }, "Sample per label");
  const section = el("section", { class: "block labels", dataset: { state: "loading" } },
    el("h3", {}, "Per label"), el("div", { class: "controls" }, field("seed", seed), field("per label", perLabel), go),
    err, rows);

  async function run() {
    const k = Number(perLabel.value), s = intOf(seed, 0);
    await attempt(section, go, err, async () => {
      // one request per label, sent together: the server's batcher runs them as one forward pass
      const results = await Promise.all(names.map(async (_, label) => {
        const r = await postJSON(`/v1/models/${encodeURIComponent(m.name)}/sample`,
          { n: k, seed: s, labels: Array(k).fill(label), format: "json" });
        return (await r.json()).images; // (k, 28, 28)
      }));
      rows.replaceChildren(...results.map((images, label) => {
        const canvas = el("canvas", { class: "label-row" });
        drawImages(canvas, images, { cols: k, scale: 2 });
        return el("div", { class: "label-line" }, el("span", { class: "label-name" }, labelText(names, label)), canvas);
      }));
    });
  }
  run();
  return section;
}

// --- VAE: latent walk z(t) = (1 - t)·z_a + t·z_b between the latents of two seeds, decoded at each step ------
function walkSection(m, names) {
  const a = numberInput(0, { min: 0 }), b = numberInput(1, { min: 0 });
  const steps = numberInput(12, { min: 2, max: 64 });
  const label = names.length
    ? el("select", {}, names.map((_, i) => el("option", { value: String(i) }, labelText(names, i)))) : null;
  const frame = el("canvas", { class: "walk-frame" });
  const strip = el("canvas", { class: "walk-strip" });
  const slider = el("input", { type: "range", min: "0", max: "11", value: "0", class: "walk-slider" });
  const tLabel = el("span", { class: "muted small" });
  const err = errorBox();
  const go = el("button", { onclick: () => run() }, "Walk");
  const section = el("section", { class: "block walk", dataset: { state: "loading" } },
    el("h3", {}, "Latent walk"),
    el("div", { class: "controls" }, field("from seed", a), field("to seed", b), field("steps", steps),
      label && field("label", label), go),
    err,
    el("div", { class: "walk-view" }, frame,
      el("div", { class: "walk-side" }, el("label", { class: "field" }, el("span", {}, "t"), slider), tLabel, strip)));
  let images = [];

  function show() {
    const i = Number(slider.value);
    if (!images.length) return;
    drawImages(frame, [images[i]], { scale: 6, pad: 0 });
    drawImages(strip, images, { cols: Math.min(images.length, 12), scale: 2, pad: 2, highlight: i });
    tLabel.textContent = `step ${i + 1}/${images.length} · t = ${(i / (images.length - 1)).toFixed(2)}`;
  }

  async function run() {
    await attempt(section, go, err, async () => {
      const body = { a: intOf(a, 0), b: intOf(b, 1), steps: Math.max(2, intOf(steps, 12)), format: "json" };
      if (label) body.label = Number(label.value);
      const r = await postJSON(`/v1/models/${encodeURIComponent(m.name)}/interpolate`, body);
      images = (await r.json()).images; // (steps, 28, 28)
      slider.max = String(images.length - 1);
      slider.value = String(Math.min(Number(slider.value), images.length - 1));
      show();
    });
  }
  slider.addEventListener("input", show);
  run();
  return section;
}

// --- LM: a prompt, sampling controls, and tokens appended as their Server-Sent Events arrive ---------------
function defaultPrompt(vocab) {
  const ok = (p) => !vocab || [...p].every((c) => vocab.includes(c));
  return ["ROMEO:\n", "The ", "the ", "Once upon a time", "a"].find(ok) ?? (vocab?.find((c) => c.trim()) ?? "");
}

// Parse a text/event-stream body: blocks separated by a blank line, "event:" and "data:" lines.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) onEvent(event, JSON.parse(data));
    }
  }
}

function lmSection(m, info) {
  const maxTokens = m.limits?.max_new_tokens ?? 1024;
  const prompt = el("textarea", { rows: "3", class: "prompt", spellcheck: "false" });
  prompt.value = defaultPrompt(info.vocab);
  const temp = el("input", { type: "range", min: "0", max: "2", step: "0.05", value: "0.8", class: "temperature" });
  const tempOut = el("output", {}, "0.80");
  temp.addEventListener("input", () => { tempOut.textContent = Number(temp.value).toFixed(2); });
  const topK = numberInput("", { min: 1, placeholder: "off", class: "narrow top-k" });
  const maxNew = numberInput(Math.min(400, maxTokens), { min: 1, max: maxTokens, class: "narrow max-new" });
  const seed = numberInput("", { min: 0, placeholder: "random", class: "narrow lm-seed" });
  const promptOut = el("span", { class: "prompt-echo" });
  const textNode = document.createTextNode("");
  const out = el("pre", { class: "lm-output", dataset: { tokens: "0", state: "idle" } }, promptOut,
    el("span", { class: "generated" }, textNode), el("span", { class: "cursor" }));
  const stats = el("p", { class: "muted small lm-stats" });
  const err = errorBox();
  const go = el("button", { class: "primary", onclick: () => run() }, "Generate");
  const stop = el("button", { disabled: true, onclick: () => controller?.abort() }, "Stop");
  let controller = null;

  async function run() {
    controller?.abort();
    controller = new AbortController();
    const body = { prompt: prompt.value, max_new_tokens: intOf(maxNew, 200), temperature: Number(temp.value),
      stream: true };
    if (topK.value !== "") body.top_k = intOf(topK, null);
    if (seed.value !== "") body.seed = intOf(seed, null);
    busy(go, true);
    stop.disabled = false;
    err.show(null);
    promptOut.textContent = body.prompt;
    textNode.data = "";
    out.dataset.tokens = "0";
    out.dataset.state = "streaming";
    stats.textContent = "waiting for the first token…";
    const t0 = performance.now();
    let n = 0, tFirst = null;
    try {
      const r = await postJSON(`/v1/models/${encodeURIComponent(m.name)}/generate`, body,
        { signal: controller.signal });
      await readEvents(r, (event, data) => {
        if (event === "token") {
          tFirst ??= performance.now() - t0;
          textNode.appendData(data.text);
          out.dataset.tokens = String(++n);
          stats.textContent = `${n} tokens…`;
        } else if (event === "done") {
          const s = data.seconds;
          stats.textContent = `${data.tokens} tokens · first token ${Math.round(data.ttft_ms)} ms · ` +
            `${s > 0 ? Math.round(data.tokens / s) : "–"} tokens/s (server clock)`;
        } else if (event === "error") {
          throw new Error(`HTTP ${data.status}: ${data.error}`);
        }
      });
      out.dataset.state = "done";
    } catch (e) {
      if (e.name === "AbortError") {
        stats.textContent = `stopped after ${n} tokens`;
        out.dataset.state = "stopped";
      } else {
        err.show(e);
        stats.textContent = n ? `${n} tokens before the error` : "";
        out.dataset.state = "error";
      }
    } finally {
      busy(go, false);
      stop.disabled = true;
    }
  }

  return el("section", { class: "block lm" },
    el("h3", {}, "Generate text"),
    field("prompt", prompt),
    el("div", { class: "controls" },
      field("temperature", temp, tempOut), field("top-k", topK), field("max new tokens", maxNew),
      field("seed", seed), go, stop),
    err, out, stats);
}

// --- flow: the denoising trajectory — from noise (t = 1) to the image (t = 0), the state x_t and the prediction
// x̂₀ = x_t − t·v at every step (the server decodes both through the autoencoder) ---------------------------
function trajectorySection(m, names) {
  const c = m.config || {};
  const seed = numberInput(0, { min: 0, class: "traj-seed" });
  const steps = numberInput(c.sample_steps ?? 8, { min: 1, max: 64, class: "traj-steps" });
  const guidance = numberInput(c.guidance ?? 1, { min: 0, max: 20, step: 0.5, class: "traj-guidance" });
  // ODE solvers, and a shortcut model's learned steps (a power of two of them)
  const samplers = ["heun", "euler", ...(Number(c.shortcut_levels || 0) ? ["shortcut"] : [])];
  const sampler = el("select", { class: "traj-sampler" },
    samplers.map((s) => el("option", { value: s, selected: s === (c.sampler || "heun") }, s)));
  const label = names.length
    ? el("select", { class: "traj-label" }, names.map((_, i) => el("option", { value: String(i) }, labelText(names, i))))
    : null;
  const canvas = el("canvas", { class: "traj-strip" });
  const caption = el("figcaption", { class: "muted small traj-caption" });
  const err = errorBox();
  const go = el("button", { class: "primary", onclick: () => run() }, "Denoise");
  const section = el("section", { class: "block trajectory", dataset: { state: "loading" } },
    el("h3", {}, "Denoising trajectory"),
    el("div", { class: "controls" }, field("seed", seed), label ? field("class", label) : null,
      field("sampler", sampler), field("steps", steps), field("guidance", guidance), go),
    err, el("figure", {}, canvas, caption));

  async function run() {
    const k = Math.max(1, Math.min(64, intOf(steps, 8)));
    const w = Number.parseFloat(guidance.value);
    const body = { n: 1, seed: intOf(seed, 0), steps: k, guidance: Number.isFinite(w) ? w : null,
      sampler: sampler.value, format: "json" };
    if (label) body.labels = [Number(label.value)];
    const t0 = performance.now();
    await attempt(section, go, err, async () => {
      const r = await postJSON(`/v1/models/${encodeURIComponent(m.name)}/trajectory`, body);
      const images = (await r.json()).images; // 2·(k + 1) images: states x_t then predictions x̂₀, each + the sample
      drawImages(canvas, images, { cols: k + 1, scale: 2 });
      const nfe = (sampler.value === "heun" ? 2 : 1) * k;
      caption.textContent = `top: x_t from t = 1 (noise) to 0 · bottom: predicted image x̂₀ = x_t − t·v · ` +
        `${k} ${sampler.value} steps (${nfe} evaluations) · ${Math.round(performance.now() - t0)} ms`;
    }, { loading: true });
  }
  for (const input of [seed, steps, guidance, label, sampler]) input?.addEventListener("change", run);
  run();
  return section;
}

// --- the page ---------------------------------------------------------------------------------------------
function modelCard(m, info) {
  const num = Number(m.config?.num_classes || 0);
  const names = info.class_names || [];
  const summary = m.kind === "lm"
    ? `${m.config.n_layer} layers · ${m.config.n_embd} wide · context ${m.config.block_size} · vocab ${m.config.vocab_size}`
    : m.kind === "flow"
    ? `DiT ${m.config.depth}×${m.config.dim} · latent ${m.config.ae_channels}×7×7 · ${m.config.sampler} ${m.config.sample_steps} steps${num ? ` · ${num} classes` : ""}`
    : `latent ${m.config.latent}${m.config.arch ? " · " + m.config.arch : ""}${num ? ` · ${num} classes` : ""}`;
  const blocks = m.kind === "lm" ? [lmSection(m, info)]
    : [sampleSection(m), num ? labelSection(m, names) : null, m.kind === "vae" ? walkSection(m, num ? names : []) : null,
      m.kind === "flow" ? trajectorySection(m, num ? names : []) : null];
  return el("article", { class: "panel model", id: `model-${m.name}`, dataset: { kind: m.kind, name: m.name } },
    el("header", {},
      el("h2", {}, m.name), el("span", { class: `badge ${m.kind}` }, m.kind),
      el("span", { class: "muted small" }, summary)),
    el("div", { class: "model-body" },
      el("div", { class: "model-main" }, blocks),
      el("aside", { class: "model-meta" }, el("h3", {}, "Provenance"), provenanceList(m.provenance),
        el("details", {}, el("summary", {}, "config"), el("pre", { class: "config" }, JSON.stringify(m.config, null, 2))))));
}

async function main() {
  const list = document.getElementById("models");
  try {
    const [models, info] = await Promise.all([
      fetch("/v1/models").then((r) => r.json()), fetch("/playground/info").then((r) => r.json()),
    ]);
    list.replaceChildren(...models.models.map((m) => modelCard(m, info[m.name] || {})));
    if (!models.models.length) list.append(el("p", { class: "muted" }, "This server has no models loaded."));
  } catch (e) {
    list.replaceChildren(el("p", { class: "error" }, `Could not list the models: ${e.message}`));
  }
}

main();
