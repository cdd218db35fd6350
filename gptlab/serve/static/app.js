// gptlab serve: the page. Plain JavaScript, no libraries, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { limits: null, controller: null, trace: null, step: 0 };

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
function sampling() {
  const seed = $("seed").value.trim();
  return {
    model: $("model").value || undefined,
    temperature: Number($("temperature").value),
    top_k: Number($("top-k").value),
    top_p: Number($("top-p").value),
    seed: seed === "" ? undefined : Number(seed),
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
  try {
    const resp = await api("/v1/completions", {
      ...sampling(), prompt, max_tokens: Number($("max-tokens").value), stream: true,
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
    $("output-meta").textContent = `${pieces} pieces in ${secs.toFixed(2)} s · ${why}`;
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
    const resp = await api("/v1/explain", { ...sampling(), prompt: $("prompt").value, steps, top: 8 });
    state.trace = normaliseTrace(await resp.json());
    if (!state.trace.steps.length) throw new Error("the model produced no steps for this prompt");
    fillHeadSelect(state.trace);
    const slider = $("step-slider");
    slider.max = String(state.trace.steps.length - 1);
    slider.value = "0";
    $("reweight-temperature").value = String(clampT(state.trace.temperature || 1));
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

// The trace JSON ("gptlab-trace", version 1) -> what the view draws:
// { temperature, steps: [{ tokens: [{text, generated}], attention: [layer][head][pos], top: [{text, prob, logit}], chosen, entropy }] }
function normaliseTrace(raw) {
  const settings = raw.settings || raw.sampling || {};
  const steps = (raw.steps || []).map((s) => {
    const tokens = (s.tokens || s.context || []).map((t, i) => {
      const text = typeof t === "string" ? t : (t.text ?? t.token ?? "");
      return { text, generated: i >= (s.n_prompt ?? raw.n_prompt ?? raw.prompt_len ?? Infinity) };
    });
    const attention = s.attention || s.attn || [];
    const top = (s.top || s.top_k || s.candidates || []).map((c) => ({
      text: c.token ?? c.text ?? String(c.id),
      prob: c.prob ?? c.p ?? c.probability ?? 0,
      logit: c.logit ?? c.raw_logit ?? null,
    }));
    const chosen = typeof s.chosen === "object" && s.chosen !== null ? (s.chosen.token ?? s.chosen.text) : s.chosen;
    return { tokens, attention, top, chosen, entropy: s.entropy };
  });
  return { temperature: settings.temperature ?? raw.temperature ?? 1, steps, raw };
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
    chip.textContent = t.text;
    const w = weights[k] / max; // scaled to the strongest word so the pattern shows at any length
    chip.style.backgroundColor = `rgba(122, 31, 61, ${(0.04 + 0.81 * w).toFixed(3)})`;
    chip.style.color = w > 0.55 ? "#fff" : "";
    chip.dataset.weight = weights[k].toFixed(4);
    chip.title = `attention ${(100 * weights[k]).toFixed(1)}%`;
    return chip;
  });
  const next = document.createElement("span");
  next.className = "tok next";
  next.textContent = step.chosen ?? "?";
  next.title = "the word the model picked at this step";
  box.replaceChildren(...chips, next);
  drawBars();
}

// softmax(logit / T) over the stored candidates: sharper below 1, flatter above.
function reweight(top, T) {
  if (top.some((c) => c.logit === null || c.logit === undefined)) return top.map((c) => c.prob);
  const z = top.map((c) => c.logit / T);
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function drawBars() {
  const step = state.trace.steps[state.step];
  const T = Number($("reweight-temperature").value);
  $("reweight-value").textContent = T.toFixed(2);
  const probs = reweight(step.top, T);
  $("bars").replaceChildren(...step.top.map((c, k) => {
    const row = document.createElement("div");
    row.className = "bar" + (c.text === step.chosen ? " chosen" : "");
    const word = document.createElement("span");
    word.className = "word";
    word.textContent = c.text;
    word.title = c.logit === null ? c.text : `${c.text} · logit ${c.logit.toFixed(2)} · model p ${(100 * c.prob).toFixed(1)}%`;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * probs[k]).toFixed(1)}%`;
    fill.style.display = "block";
    track.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(100 * probs[k]).toFixed(1)}%`;
    row.dataset.prob = probs[k].toFixed(5);
    row.append(word, track, pct);
    return row;
  }));
  const h = -probs.reduce((a, p) => a + (p > 0 ? p * Math.log(p) : 0), 0);
  const parts = [`entropy over these ${probs.length}: ${h.toFixed(2)} nats at T = ${T.toFixed(2)}`];
  if (typeof step.entropy === "number") parts.push(`model's full entropy at sampling: ${step.entropy.toFixed(2)} nats`);
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
