// gptlab serve: the page. Plain JavaScript, no libraries, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { limits: null, controller: null, view: null, last: null };

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
    min_p: Number($("min-p").value),
    seed,
  };
}

function showSliderValues() {
  $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
  const k = Number($("top-k").value);
  $("top-k-value").textContent = k === 0 ? "off" : String(k);
  $("top-p-value").textContent = Number($("top-p").value).toFixed(2);
  const minP = Number($("min-p").value);
  $("min-p-value").textContent = minP === 0 ? "off" : minP.toFixed(2);
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
// Step view: the explanation trace, drawn by trace_view.js (the same view as an HTML trace's).
// It replays the text just written (same prompt, settings and seed), one step per generated token.
async function explain() {
  showError("");
  setBusy(true);
  try {
    const wanted = Math.max(1, Number($("max-tokens").value));
    const limit = state.limits ? state.limits.max_explain_steps : wanted;
    const steps = Math.min(wanted, limit);
    const resp = await api("/v1/explain", { ...sampling(true), prompt: $("prompt").value, steps, top: 10 });
    const trace = await resp.json();
    const note = steps < wanted ? `this server traces at most ${limit} steps: the first ${steps} of ${wanted} tokens` : "";
    state.view = GptlabTraceView.mount($("trace-view"), trace, { note, rows: 10 });
    $("step-view").hidden = false;
    $("step-view").scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (e) {
    showError(e.message);
  } finally {
    setBusy(false);
  }
}

// ---------------------------------------------------------------------------------------------
function init() {
  for (const id of ["temperature", "top-k", "top-p", "min-p", "max-tokens"]) $(id).addEventListener("input", showSliderValues);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("explain").addEventListener("click", explain);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
  showSliderValues();
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
