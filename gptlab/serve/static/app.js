// gptlab serve: the page. Plain JavaScript, no libraries, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { limits: null, controller: null, view: null, last: null, image: null };

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
    // Image models draw (the Image tab); every other model is offered where text is written.
    const kindOf = (m) => (m.gptlab || {}).kind;
    const texts = models.filter((m) => kindOf(m) !== "image");
    const images = models.filter((m) => kindOf(m) === "image");
    $("model").replaceChildren(...texts.map((m) => option(m.id, describe(m))));
    fillCompareRoles(texts.map((m) => m.id));
    $("img-model").replaceChildren(...images.map((m) => option(m.id, m.id)));
    $("tab-image").hidden = !images.length;
    if (!models.length) showError("No models found: train one with `gptlab train --out runs/NAME`, then reload.");
  } catch (e) {
    showError(`Could not list models: ${e.message}`);
  }
}

function option(value, text) {
  const opt = document.createElement("option");
  opt.value = value;
  opt.textContent = text;
  return opt;
}

function describe(m) {
  const g = m.gptlab || {};
  return g.context_length ? `${m.id}  (${g.kind}, context ${g.context_length}, vocab ${g.vocab_size})` : m.id;
}

// ---------------------------------------------------------------------------------------------
// Tabs
function showTab(tab) {
  for (const t of document.querySelectorAll(".tab")) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    $(t.dataset.panel).hidden = !on;
  }
  $("model-picker").hidden = tab.id !== "tab-write";  // the header's model is the Write tab's
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
// Compare models: samples side by side (same prompt, settings and seed), then POST /v1/compare on
// two of them, drawn by compare_view.js (the view `gptlab explain --compare --out` writes too).
const ROLES = ["base", "sft", "aligned"];
const ROLE_NAMES = { base: "base", sft: "SFT", aligned: "aligned" };
// A model's role guessed from its name, so runs/base, runs/sft and runs/ppo start out in place.
const ROLE_GUESS = { sft: /sft|instruct/i, aligned: /ppo|dpo|ipo|grpo|rloo|align|rlhf|reflect/i };

function fillCompareRoles(ids) {
  const guess = (id) => (ROLE_GUESS.aligned.test(id) ? "aligned" : ROLE_GUESS.sft.test(id) ? "sft" : "base");
  const chosen = {};
  for (const role of ROLES) chosen[role] = ids.find((id) => guess(id) === role) || "";
  if (!chosen.aligned && !chosen.sft) [chosen.aligned, chosen.sft] = [ids[0] || "", ids[1] || ""];
  for (const role of ROLES) {
    const select = $(`cmp-${role}`);
    select.replaceChildren(option("", "\u2014 none"), ...ids.map((id) => option(id, id)));
    select.value = chosen[role];
  }
}

function comparePair(roles) {
  // The pair asked for, else the first pair of roles that both have a model.
  const wanted = $("cmp-pair").value.split(":");
  const pairs = [wanted, ["aligned", "sft"], ["sft", "base"], ["aligned", "base"]];
  return pairs.find(([a, b]) => roles[a] && roles[b]) || null;
}

function sampleColumn(role, model) {
  const col = document.createElement("div");
  col.className = "sample";
  col.dataset.role = role;
  const h = document.createElement("h3");
  h.textContent = `${ROLE_NAMES[role]} \u00b7 ${model}`;
  const text = document.createElement("div");
  text.className = "sample-text";
  text.textContent = "\u2026";
  col.append(h, text);
  return col;
}

async function compareModels() {
  const box = $("cmp-error");
  const fail = (message) => { box.textContent = message; box.hidden = false; };
  box.hidden = true;
  const roles = {};
  for (const role of ROLES) roles[role] = $(`cmp-${role}`).value;
  const picked = ROLES.filter((r) => roles[r]);
  if (!picked.length) return fail("Pick at least one model (two to see where they disagree).");
  const prompt = $("cmp-prompt").value;
  const tokens = Number($("cmp-tokens").value);
  const seedText = $("cmp-seed").value.trim();
  const settings = { temperature: Number($("cmp-temperature").value), seed: seedText === "" ? 0 : Number(seedText) };
  $("cmp-run").disabled = true;
  try {
    const columns = picked.map((role) => sampleColumn(role, roles[role]));
    $("cmp-samples").replaceChildren(...columns);
    const samples = picked.map(async (role, k) => {
      const resp = await api("/v1/completions", { ...settings, model: roles[role], prompt, max_tokens: tokens });
      const text = columns[k].querySelector(".sample-text");
      text.textContent = (await resp.json()).choices[0].text;
    });
    const pair = comparePair(roles);
    let steps = null;
    if (pair) {
      const limit = state.limits ? state.limits.max_explain_steps : tokens;
      steps = api("/v1/compare", { ...settings, model: roles[pair[0]], reference: roles[pair[1]], prompt,
                                   steps: Math.min(tokens, limit), top: 5 });
    }
    // Awaited together: a failed request is reported once, and none is left without a listener.
    const [comparison] = await Promise.all([steps && steps.then((r) => r.json()), ...samples]);
    if (comparison) GptlabCompareView.mount($("cmp-view"), comparison);
    $("cmp-steps").hidden = !comparison;
  } catch (e) {
    fail(e.message);
  } finally {
    $("cmp-run").disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Image: POST /v1/images gives the picture and its trace; hovering a word lays its map over it.
const CANVAS = 256;

function drawImage(heat) {
  const img = state.image;
  const ctx = $("img-canvas").getContext("2d");
  ctx.imageSmoothingEnabled = false;  // 32x32 pixels, drawn large: keep them square
  ctx.drawImage(img.picture, 0, 0, CANVAS, CANVAS);
  $("img-canvas").dataset.word = heat === undefined ? "" : String(heat);
  if (heat === undefined) return;
  const [rows, cols] = img.trace.grid;
  const map = img.trace.heatmaps[heat];
  const lo = Math.min(...map), hi = Math.max(...map);
  const w = CANVAS / cols, h = CANVAS / rows;
  for (let k = 0; k < map.length; k++) {
    const a = hi - lo > 1e-12 ? (map[k] - lo) / (hi - lo) : 0;  // as render_image.py scales a map
    ctx.fillStyle = `rgba(255, 40, 40, ${(0.75 * a).toFixed(3)})`;
    ctx.fillRect((k % cols) * w, Math.floor(k / cols) * h, w, h);
  }
}

async function drawPicture() {
  const box = $("img-error");
  box.hidden = true;
  $("img-generate").disabled = true;
  try {
    const seedText = $("img-seed").value.trim();
    const resp = await api("/v1/images", {
      model: $("img-model").value || undefined, prompt: $("img-prompt").value,
      guidance: Number($("img-guidance").value), steps: Number($("img-steps").value),
      seed: seedText === "" ? 0 : Number(seedText),
    });
    const body = await resp.json();
    const picture = new Image();
    picture.src = body.image;
    await picture.decode();
    state.image = { picture, trace: body.trace };
    drawImage();
    const words = body.trace.tokens.map((t, k) => {
      const chip = document.createElement("span");
      chip.className = "img-word";
      chip.dataset.index = String(k);
      chip.textContent = t === "<|endoftext|>" ? "\u27e8end\u27e9" : t;
      chip.addEventListener("mouseenter", () => drawImage(k));
      chip.addEventListener("mouseleave", () => drawImage());
      return chip;
    });
    $("img-words").replaceChildren(...words);
    const s = body.trace.settings;
    $("img-meta").textContent = `${body.seconds.toFixed(2)} s · ${s.sampler} ${s.steps} steps · guidance ${s.guidance} · seed ${s.seed}`;
    $("img-result").hidden = false;
  } catch (e) {
    box.textContent = e.message;
    box.hidden = false;
  } finally {
    $("img-generate").disabled = false;
  }
}

function showOtherSliders() {
  $("cmp-temperature-value").textContent = Number($("cmp-temperature").value).toFixed(2);
  $("cmp-tokens-value").textContent = $("cmp-tokens").value;
  $("img-guidance-value").textContent = Number($("img-guidance").value).toFixed(1);
  $("img-steps-value").textContent = $("img-steps").value;
}

// ---------------------------------------------------------------------------------------------
function init() {
  for (const id of ["temperature", "top-k", "top-p", "min-p", "max-tokens"]) $(id).addEventListener("input", showSliderValues);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("explain").addEventListener("click", explain);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab));
  for (const id of ["cmp-temperature", "cmp-tokens", "img-guidance", "img-steps"]) $(id).addEventListener("input", showOtherSliders);
  $("cmp-run").addEventListener("click", compareModels);
  $("img-generate").addEventListener("click", drawPicture);
  showSliderValues();
  showOtherSliders();
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
