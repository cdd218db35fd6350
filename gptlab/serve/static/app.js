// gptlab serve: the page. Plain JavaScript, no libraries, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { limits: null, controller: null, trace: null, step: 0, last: null };

// ---------------------------------------------------------------------------------------------
// API
async function api(path, body, signal) {
  const resp = await fetch(path, body === undefined ? { signal } : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  });
  if (!resp.ok) throw new Error(await errorMessage(resp));
  return resp;
}

async function errorMessage(resp) {
  try {
    const j = await resp.json();
    if (j && j.error && j.error.message) return j.error.message;
  } catch (_) { /* not JSON */ }
  return `${resp.status} ${resp.statusText}`;
}

// Server-sent events over fetch: EventSource cannot POST a body.
async function* readEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Controls
// Every generation runs with a seed (the one typed, else a fresh random one), so "Step through"
// can replay the same draws and explain the very text that was just written.
function sampling(reuseSeed) {
  const typed = $("seed").value.trim();
  let seed = typed === "" ? Math.floor(Math.random() * 2 ** 31) : Number(typed);
  if (typed === "" && reuseSeed && state.last && state.last.prompt === $("prompt").value) seed = state.last.seed;
  return {
    model: $("model").value || undefined,
    temperature: Number($("temperature").value),
    top_k: Number($("top-k").value),
    top_p: Number($("top-p").value),
    seed,
  };
}

function showSliderValues() {
  $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
  const k = Number($("top-k").value);
  $("top-k-value").textContent = k === 0 ? "off" : String(k);
  $("top-p-value").textContent = Number($("top-p").value).toFixed(2);
  $("max-tokens-value").textContent = $("max-tokens").value;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function loadModels() {
  try {
    const health = await (await api("/healthz")).json();
    state.limits = health.limits;
    $("health").className = "health ok";
    $("health").title = `server ok · ${health.in_flight} running`;
    const maxTok = $("max-tokens");
    maxTok.max = String(health.limits.max_tokens);
    if (Number(maxTok.value) > health.limits.max_tokens) maxTok.value = String(health.limits.max_tokens);
    showSliderValues();
  } catch (e) {
    $("health").className = "health down";
    $("health").title = "server unreachable";
  }
  try {
    const models = (await (await api("/v1/models")).json()).data;
    const select = $("model");
    select.replaceChildren(...models.map((m) => {
      const opt = document.createElement("option");
      opt.value = m.id;
      const g = m.gptlab || {};
      opt.textContent = g.context_length ? `${m.id}  (${g.kind}, context ${g.context_length}, vocab ${g.vocab_size})` : m.id;
      return opt;
    }));
    if (!models.length) showError("No models found: train one with `gptlab train --out runs/NAME`, then reload.");
  } catch (e) {
    showError(`Could not list models: ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Generate (streamed)
async function generate() {
  const prompt = $("prompt").value;
  showError("");
  const out = $("output");
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt-text";
  promptSpan.textContent = prompt;
  const gen = document.createElement("span");
  gen.className = "gen-text";
  gen.id = "generated";
  out.replaceChildren(promptSpan, gen);
  out.classList.add("streaming");
  $("output-meta").textContent = "";
  setBusy(true);
  const controller = new AbortController();
  state.controller = controller;
  const started = performance.now();
  let pieces = 0;
  let finish = null;
  const settings = sampling(false);
  state.last = { prompt, seed: settings.seed };
  try {
    const resp = await api("/v1/completions", {
      ...settings, prompt, max_tokens: Number($("max-tokens").value), stream: true,
    }, controller.signal);
    for await (const data of readEvents(resp)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices || []) {
        if (choice.text) { gen.textContent += choice.text; pieces += 1; }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    const secs = (performance.now() - started) / 1000;
    const why = finish === "length" ? "reached max tokens" : finish === "stop" ? "stopped by itself" : "done";
    $("output-meta").textContent = `${pieces} pieces in ${secs.toFixed(2)} s · ${why} · seed ${settings.seed}`;
  } catch (e) {
    if (e.name === "AbortError") $("output-meta").textContent = "stopped";
    else showError(e.message);
  } finally {
    out.classList.remove("streaming");
    state.controller = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("explain").disabled = busy;
  $("stop").disabled = !busy;
}

// ---------------------------------------------------------------------------------------------
// Step view: the explanation trace
async function explain() {
  showError("");
  setBusy(true);
  try {
    const steps = Math.max(1, Math.min(Number($("max-tokens").value), state.limits ? state.limits.max_explain_steps : 8, 12));
    const resp = await api("/v1/explain", { ...sampling(true), prompt: $("prompt").value, steps, top: 6 });
    state.trace = normaliseTrace(await resp.json());
    if (!state.trace.steps.length) throw new Error("the model produced no steps for this prompt");
    fillHeadSelect(state.trace);
    const slider = $("step-slider");
    slider.max = String(state.trace.steps.length - 1);
    slider.value = "0";
    $("reweight-temperature").value = String(clampT(state.trace.temperature));
    $("step-view").hidden = false;
    showStep(0);
    $("step-view").scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (e) {
    showError(e.message);
  } finally {
    setBusy(false);
  }
}

function clampT(t) { return Math.min(3, Math.max(0.1, t)); }

// The trace JSON (format "gptlab-trace", version 2, kind "gpt"; see gptlab/explain/trace.py) -> what the view draws.
function normaliseTrace(raw) {
  if (raw.format !== "gptlab-trace") throw new Error("the server sent something that is not a gptlab trace");
  const nPrompt = (raw.prompt_tokens || []).length;
  const steps = (raw.steps || []).map((s) => ({
    tokens: s.tokens.map((text, k) => ({ text, generated: s.start + k >= nPrompt })),
    attention: s.attention,                 // [layer][head][position]
    candidates: s.candidates,               // best first, with raw logits: {token, id, logit, p, p_sample}
    chosen: s.chosen,
    entropy: s.entropy,                     // bits, temperature 1
    logsumexp: s.logsumexp,
    finish: s.finish,
  }));
  const t = (raw.sampling || {}).temperature;
  return { temperature: t > 0 ? t : 1, top: raw.top || 5, steps, raw };
}

function label(text) {
  // Spaces and newlines inside a token would vanish in a chip: show them.
  const shown = text.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
  return shown.trim() === "" ? shown.replace(/ /g, "\u2423") : shown;
}

function fillHeadSelect(trace) {
  const select = $("head-select");
  const att = trace.steps[0].attention;
  const opts = [["mean", "mean over all heads"]];
  att.forEach((layer, l) => {
    opts.push([`${l}`, `layer ${l + 1} · mean of heads`]);
    layer.forEach((_, h) => opts.push([`${l}:${h}`, `layer ${l + 1} · head ${h + 1}`]));
  });
  const keep = select.value;
  select.replaceChildren(...opts.map(([v, label]) => {
    const o = document.createElement("option");
    o.value = v;
    o.textContent = label;
    return o;
  }));
  if (opts.some(([v]) => v === keep)) select.value = keep;
}

// Attention of the new position over the positions it saw, for the chosen layer/head view.
function attentionRow(step, choice) {
  const att = step.attention;
  const rows = [];
  if (choice === "mean") att.forEach((layer) => layer.forEach((row) => rows.push(row)));
  else if (!choice.includes(":")) att[Number(choice)].forEach((row) => rows.push(row));
  else { const [l, h] = choice.split(":").map(Number); rows.push(att[l][h]); }
  const n = step.tokens.length;
  const mean = new Array(n).fill(0);
  for (const row of rows) for (let i = 0; i < n; i++) mean[i] += (row[i] || 0) / rows.length;
  return mean;
}

function showStep(i) {
  const trace = state.trace;
  state.step = i;
  const step = trace.steps[i];
  $("step-slider").value = String(i);
  $("step-label").textContent = `step ${i + 1} of ${trace.steps.length}`;
  $("step-prev").disabled = i === 0;
  $("step-next").disabled = i === trace.steps.length - 1;

  const weights = attentionRow(step, $("head-select").value || "mean");
  const max = Math.max(...weights, 1e-9);
  const box = $("tokens");
  const chips = step.tokens.map((t, k) => {
    const chip = document.createElement("span");
    chip.className = "tok" + (t.generated ? " generated" : "");
    chip.textContent = label(t.text);
    const w = weights[k] / max; // scaled to the strongest word so the pattern shows at any length
    chip.style.backgroundColor = `rgba(122, 31, 61, ${(0.04 + 0.81 * w).toFixed(3)})`;
    chip.style.color = w > 0.55 ? "#fff" : "";
    chip.dataset.weight = weights[k].toFixed(4);
    chip.title = `attention ${(100 * weights[k]).toFixed(1)}%`;
    return chip;
  });
  const next = document.createElement("span");
  next.className = "tok next";
  next.textContent = label(step.chosen.token);
  next.title = "the word the model picked at this step";
  box.replaceChildren(...chips, next);
  drawBars();
}

// softmax(logit / T) over the stored candidates (the model's top 20 by logit, plus the drawn
// token): sharper below 1, flatter above. Renormalised over those at every T, T = 1 included, so
// the bars move smoothly with the slider; the exact whole-vocabulary p at T = 1 is in each tooltip.
function reweight(pool, T) {
  const z = pool.map((c) => c.logit / T);
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

function drawBars() {
  const step = state.trace.steps[state.step];
  const T = Number($("reweight-temperature").value);
  $("reweight-value").textContent = T.toFixed(2);
  const pool = step.candidates.slice();
  if (!pool.some((c) => c.id === step.chosen.id)) pool.push(step.chosen);
  const probs = reweight(pool, T);
  // The top candidates, plus the drawn token wherever it ranked.
  const shown = pool.map((c, k) => ({ c, p: probs[k], rank: k }))
    .filter((x) => x.rank < state.trace.top || x.c.id === step.chosen.id);
  $("bars").replaceChildren(...shown.map(({ c, p, rank }) => {
    const isChosen = c.id === step.chosen.id;
    const row = document.createElement("div");
    row.className = "bar" + (isChosen ? " chosen" : "");
    const word = document.createElement("span");
    word.className = "word";
    word.textContent = (rank >= state.trace.top ? `#${rank + 1} ` : "") + label(c.token);
    word.title = `${c.token} · logit ${c.logit.toFixed(3)} · p at T=1 ${(100 * c.p).toFixed(2)}%` +
      ` · p it was drawn with ${(100 * c.p_sample).toFixed(2)}%` + (isChosen ? " · drawn" : "");
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * p).toFixed(2)}%`;
    track.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(100 * p).toFixed(1)}%`;
    row.dataset.prob = p.toFixed(6);
    row.append(word, track, pct);
    return row;
  }));
  const h = -probs.reduce((a, q) => a + (q > 0 ? q * Math.log2(q) : 0), 0);
  const parts = [`entropy of these ${probs.length} at T = ${T.toFixed(2)}: ${h.toFixed(2)} bits`];
  if (typeof step.entropy === "number") parts.push(`model's full distribution (T = 1): ${step.entropy.toFixed(2)} bits`);
  if (step.finish) parts.push(step.finish === "stop" ? "the text ended here" : "last step");
  $("step-meta").textContent = parts.join(" · ");
}

// ---------------------------------------------------------------------------------------------
function init() {
  for (const id of ["temperature", "top-k", "top-p", "max-tokens"]) $(id).addEventListener("input", showSliderValues);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("explain").addEventListener("click", explain);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
  $("step-prev").addEventListener("click", () => showStep(Math.max(0, state.step - 1)));
  $("step-next").addEventListener("click", () => showStep(Math.min(state.trace.steps.length - 1, state.step + 1)));
  $("step-slider").addEventListener("input", (e) => showStep(Number(e.target.value)));
  $("head-select").addEventListener("change", () => showStep(state.step));
  $("reweight-temperature").addEventListener("input", drawBars);
  for (const b of document.querySelectorAll(".ticks button")) {
    b.addEventListener("click", () => { $("reweight-temperature").value = b.dataset.t; drawBars(); });
  }
  showSliderValues();
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
