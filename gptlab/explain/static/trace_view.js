// gptlab: the interactive step view of a GPT trace ("gptlab-trace", kind "gpt"). Plain JavaScript,
// no libraries. One file for both places that show a trace: the HTML trace / notebook output
// (gptlab/explain/render_html.py puts it inline) and the page of `gptlab serve` (a copy in
// gptlab/serve/static/, which tests keep identical). GptlabTraceView.mount(element, trace) draws:
// the step slider (every generated token), the words highlighted by attention, every layer x head
// as a small grid (click one to show it), the next-word bars from the sampler's whole distribution
// at any temperature and top-k / top-p / min-p (removed words greyed, the cut marked), and the
// logit lens. `distribution` is gptlab/explain/distribution.py's algorithm, the same steps as
// gptlab/infer/sampling.py's process_logits.
(function (global) {
  "use strict";
  if (global.GptlabTraceView) return;
  var EOT = "<|endoftext|>";
  var STRIP = 48;  // the most segments one cell of the layer x head grid draws

  // -- the sampler's distribution, from a step's stored logits ------------------------------------
  // A group is `count` tokens sharing one logit: one token, or a bin of the large-vocabulary histogram.
  function groupsOf(step) {
    var d = step.dist, groups = [];
    if (d && d.ids) {
      d.ids.forEach(function (id, k) { groups.push({ id: id, logit: d.logits[k], count: 1 }); });
      var t = d.tail || {}, lo = t.lo || 0, w = t.width || 1;
      (t.counts || []).forEach(function (c, b) { if (c) groups.push({ id: null, logit: lo + (b + 0.5) * w, count: c }); });
    } else if (d) {
      d.logits.forEach(function (lg, id) { if (lg !== null) groups.push({ id: id, logit: lg, count: 1 }); });
    } else { // a version-2 trace: only the stored candidates (renormalised over them)
      var seen = {};
      step.candidates.concat([step.chosen]).forEach(function (c) {
        if (!seen[c.id] && c.logit !== null) { seen[c.id] = true; groups.push({ id: c.id, logit: c.logit, count: 1 }); }
      });
    }
    groups.sort(function (a, b) { return b.logit - a.logit || (a.id === null) - (b.id === null) || a.id - b.id; });
    return groups;
  }

  function distribution(groups, T, topK, topP, minP) {
    var n = groups.length, i;
    if (!n) return groups;
    if (T === 0) {
      groups.forEach(function (g, k) { g.kept = k === 0 ? 1 : 0; g.pT = g.p = k === 0 ? 1 : 0; });
      return groups;
    }
    var z = groups.map(function (g) { return g.logit / T; });
    var e = z.map(function (x) { return Math.exp(x - z[0]); });
    var total = 0, vocab = 0;
    for (i = 0; i < n; i++) { total += groups[i].count * e[i]; vocab += groups[i].count; }
    groups.forEach(function (g, k) { g.pT = e[k] / total; g.kept = g.count; });
    if (topK > 0 && topK < vocab) { // keep logits >= the k-th largest (ties with it stay)
      var before = 0, kth = z[n - 1];
      for (i = 0; i < n; i++) {
        if (before < topK && topK <= before + groups[i].count) { kth = z[i]; break; }
        before += groups[i].count;
      }
      before = 0;
      for (i = 0; i < n; i++) {
        var g = groups[i];
        g.kept = g.id !== null ? (z[i] >= kth ? 1 : 0) : Math.max(0, Math.min(g.count, topK - before));
        before += g.count;
      }
    }
    if (topP < 1) { // drop a token once the tokens before it reach p; the best always stays
      var kept = 0, massBefore = 0, first = true;
      for (i = 0; i < n; i++) kept += groups[i].kept * e[i];
      for (i = 0; i < n; i++) {
        var h = groups[i];
        if (!h.kept) continue;
        var each = e[i] / kept, m = h.kept;
        if (massBefore >= topP) h.kept = first ? 1 : 0;
        else if (h.id === null) h.kept = Math.min(m, Math.ceil((topP - massBefore) / each));
        first = false;
        massBefore += m * each;
      }
    }
    if (minP > 0) { // drop logits below the best kept one + log(min_p), at this temperature
      var best = null;
      for (i = 0; i < n && best === null; i++) if (groups[i].kept) best = z[i];
      for (i = 0; i < n; i++) if (z[i] < best + Math.log(minP)) groups[i].kept = 0;
    }
    var drawn = 0;
    for (i = 0; i < n; i++) drawn += groups[i].kept * e[i];
    groups.forEach(function (g, k) { g.p = g.kept ? e[k] / drawn : 0; });
    return groups;
  }

  // -- small helpers ------------------------------------------------------------------------------
  function el(tag, cls, text) {
    var x = document.createElement(tag);
    if (cls) x.className = cls;
    if (text !== undefined) x.textContent = text;
    return x;
  }
  function pct(p) { return (100 * p).toFixed(p >= 0.1 ? 1 : 2) + "%"; }
  // A token as a chip shows it: spaces and newlines visible, the start/end-of-text token by role.
  function label(text, position) {
    if (text === EOT) return position === 0 ? "\u27e8start\u27e9" : "\u27e8end\u27e9";
    var shown = text.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
    return shown.trim() === "" ? shown.replace(/ /g, "\u2423") : shown;
  }
  function attentionRow(step, choice) {
    var att = step.attention, rows = [];
    if (choice === "mean") att.forEach(function (layer) { layer.forEach(function (r) { rows.push(r); }); });
    else if (choice.indexOf(":") < 0) att[Number(choice)].forEach(function (r) { rows.push(r); });
    else { var lh = choice.split(":").map(Number); rows.push(att[lh[0]][lh[1]]); }
    var n = step.tokens.length, mean = [];
    for (var i = 0; i < n; i++) {
      var s = 0;
      rows.forEach(function (r) { s += r[i] || 0; });
      mean.push(s / rows.length);
    }
    return mean;
  }
  function argmax(a) { var b = 0; for (var i = 1; i < a.length; i++) if (a[i] > a[b]) b = i; return b; }
  function slider(cls, name, min, max, step, value, hint) {
    var box = el("label", "tv-slider " + cls), head = el("span", "tv-name", name + " "), out = el("output");
    var input = el("input");
    input.type = "range"; input.min = String(min); input.max = String(max); input.step = String(step); input.value = String(value);
    head.append(out);
    box.append(head, input);
    if (hint) box.append(el("span", "tv-hint", hint));
    return { box: box, input: input, out: out };
  }

  // -- the view -----------------------------------------------------------------------------------
  function mount(root, raw, options) {
    options = options || {};
    if (!raw || raw.format !== "gptlab-trace") throw new Error("not a gptlab trace");
    var steps = raw.steps || [];
    if (!steps.length) { root.replaceChildren(el("p", "tv-note", "The model produced no steps for this prompt.")); return null; }
    var nPrompt = (raw.prompt_tokens || []).length, s0 = raw.sampling || {};
    var nLayer = steps[0].attention.length, nHead = steps[0].attention[0].length;
    var nRows = Math.max(raw.top || 5, options.rows || 8);
    var st = { step: 0, head: options.head || "mean" };

    root.classList.add("tv");
    root.replaceChildren();
    // stepper
    var stepper = el("div", "tv-stepper");
    var prev = el("button", "tv-prev", "\u2190"), next = el("button", "tv-next", "\u2192");
    prev.type = next.type = "button"; prev.setAttribute("aria-label", "previous step"); next.setAttribute("aria-label", "next step");
    var stepInput = el("input", "tv-step");
    stepInput.type = "range"; stepInput.min = "0"; stepInput.max = String(steps.length - 1); stepInput.step = "1"; stepInput.value = "0";
    stepInput.setAttribute("aria-label", "step");
    var stepLabel = el("span", "tv-step-label");
    stepper.append(prev, stepInput, next, stepLabel);
    if (options.note) stepper.append(el("span", "tv-note", options.note));

    // attention: words, head picker, all-heads grid
    var left = el("div", "tv-col");
    var headRow = el("div", "tv-row-head");
    var headSelect = el("select", "tv-head");
    headSelect.setAttribute("aria-label", "attention layer and head");
    var opts = [["mean", "mean over all heads"]];
    for (var l = 0; l < nLayer; l++) {
      opts.push([String(l), "layer " + (l + 1) + " \u00b7 mean of heads"]);
      for (var h = 0; h < nHead; h++) opts.push([l + ":" + h, "layer " + (l + 1) + " \u00b7 head " + (h + 1)]);
    }
    opts.forEach(function (o) { var x = el("option", null, o[1]); x.value = o[0]; headSelect.append(x); });
    if (opts.some(function (o) { return o[0] === st.head; })) headSelect.value = st.head;
    headRow.append(el("h3", null, "Attention of the next position"), headSelect);
    var tokens = el("div", "tv-tokens");
    var gridTitle = el("h4", null, "Every layer \u00d7 head (click one to show it above)");
    var grid = el("div", "tv-heads");
    grid.style.gridTemplateColumns = "auto repeat(" + nHead + ", minmax(0, 1fr))";
    var gridNote = el("p", "tv-hint");
    left.append(headRow, el("p", "tv-hint", "Darker words got more of the model's attention while it chose the next word."),
                tokens, gridTitle, grid, gridNote);

    // next word: temperature and filters, bars
    var right = el("div", "tv-col");
    var temp = slider("tv-temperature", "temperature", 0, 3, 0.05, Math.min(3, s0.temperature === undefined ? 1 : s0.temperature),
                      "0 = always the likeliest word");
    var ticks = el("span", "tv-ticks");
    ["0.5", "1", "1.5", "3"].forEach(function (t) { var b = el("button", null, t); b.type = "button"; b.dataset.t = t; ticks.append(b); });
    temp.box.append(ticks);
    var filters = el("div", "tv-filters");
    function numberInput(cls, name, min, max, step, value) {
      var box = el("label", "tv-filter " + cls, name + " "), input = el("input");
      input.type = "number"; input.min = String(min); input.max = String(max); input.step = String(step); input.value = String(value);
      box.append(input);
      filters.append(box);
      return input;
    }
    var topK = numberInput("tv-top-k", "top-k", 0, 100000, 1, s0.top_k || 0);
    var topP = numberInput("tv-top-p", "top-p", 0.01, 1, 0.01, s0.top_p === undefined ? 1 : s0.top_p);
    var minP = numberInput("tv-min-p", "min-p", 0, 0.99, 0.01, s0.min_p || 0);
    var bars = el("div", "tv-bars"), meta = el("p", "tv-meta");
    var exact = !!steps[0].dist;
    var how = exact ? "the sampler's whole distribution, redone from the stored logits: no new model call"
                    : "this trace (an older version) keeps only the top candidates: bars are renormalised over them";
    right.append(el("h3", null, "Next word: the distribution it was drawn from"), temp.box, filters,
                 el("p", "tv-hint", how + (s0.repetition_penalty && s0.repetition_penalty !== 1 ? "; the repetition penalty is already applied" : "")),
                 bars, meta);

    // logit lens
    var lensBox = el("div", "tv-lens-box");
    var lens = el("div", "tv-lens");
    lensBox.append(el("h3", null, "Logit lens: what each layer would predict"),
                   el("p", "tv-hint", "The final layer norm and output layer applied to the residual stream after each layer, at this position."),
                   lens);

    var cols = el("div", "tv-grid");
    cols.append(left, right);
    root.append(stepper, cols);
    if (steps[0].lens) root.append(lensBox);

    function labels(step) {
      var names = {};
      step.candidates.concat([step.chosen]).forEach(function (c) { names[c.id] = c.token; });
      return names;
    }

    function drawTokens(step) {
      var w = attentionRow(step, headSelect.value || "mean"), max = Math.max.apply(null, w.concat([1e-9]));
      var chips = step.tokens.map(function (t, k) {
        var pos = step.start + k, c = el("span", "tv-tok" + (pos >= nPrompt ? " generated" : "") + (t === EOT ? " special" : ""), label(t, pos));
        var a = w[k] / max;
        c.style.backgroundColor = "rgba(122, 31, 61, " + (0.04 + 0.81 * a).toFixed(3) + ")";
        if (a > 0.55) c.style.color = "#fff";
        c.dataset.weight = w[k].toFixed(4);
        c.dataset.position = String(pos);
        c.title = "#" + pos + " \u00b7 attention " + (100 * w[k]).toFixed(1) + "%";
        return c;
      });
      var nx = el("span", "tv-tok tv-nexttok", label(step.chosen.token, -1));
      nx.title = "the word the model picked at this step";
      tokens.replaceChildren.apply(tokens, chips.concat([nx]));
    }

    function drawGrid(step) {
      var cells = [el("span", "tv-corner", "")];
      for (var h = 0; h < nHead; h++) cells.push(el("span", "tv-colhead", "h" + (h + 1)));
      step.attention.forEach(function (heads, l) {
        cells.push(el("span", "tv-rowhead", "L" + (l + 1)));
        heads.forEach(function (row, h) {
          var key = l + ":" + h, cell = el("button", "tv-cell" + (headSelect.value === key ? " selected" : ""));
          cell.type = "button";
          cell.dataset.head = key;
          var m = Math.max.apply(null, row.concat([1e-9])), top = argmax(row);
          // At most STRIP segments (each the largest weight of its positions): a long context
          // would otherwise put thousands of elements in every cell.
          var per = Math.ceil(row.length / STRIP);
          for (var a = 0; a < row.length; a += per) {
            var seg = el("span");
            seg.style.opacity = (Math.max.apply(null, row.slice(a, a + per)) / m).toFixed(3);
            cell.append(seg);
          }
          cell.title = "layer " + (l + 1) + " \u00b7 head " + (h + 1) + ": most attention on " +
            JSON.stringify(label(step.tokens[top], step.start + top)) + " (#" + (step.start + top) + ") " + (100 * row[top]).toFixed(0) + "%";
          cell.addEventListener("click", function () { headSelect.value = key; draw(); });
          cells.push(cell);
        });
      });
      grid.replaceChildren.apply(grid, cells);
      var sel = headSelect.value;
      if (sel.indexOf(":") > 0) {
        var lh = sel.split(":").map(Number), r = step.attention[lh[0]][lh[1]], t = argmax(r);
        gridNote.textContent = "layer " + (lh[0] + 1) + " \u00b7 head " + (lh[1] + 1) + " looks most at " +
          JSON.stringify(label(step.tokens[t], step.start + t)) + " (#" + (step.start + t) + ", " + (100 * r[t]).toFixed(0) + "%)";
      } else gridNote.textContent = "Each cell: one head's attention over the words (left = first word), darker = more.";
    }

    function drawBars(step) {
      var T = Number(temp.input.value), k = Math.max(0, Math.floor(Number(topK.value) || 0));
      var p = Number(topP.value), mp = Number(minP.value);
      if (!(p > 0 && p <= 1)) p = 1;
      if (!(mp >= 0 && mp < 1)) mp = 0;
      temp.out.textContent = T.toFixed(2);
      var groups = distribution(groupsOf(step), T, k, p, mp), names = labels(step);
      var words = groups.filter(function (g) { return g.id !== null; });
      words.forEach(function (g, r) { g.rank = r; });
      var shown = words.slice(0, nRows), chosen = step.chosen.id;
      if (!shown.some(function (g) { return g.id === chosen; })) {
        var c = words.filter(function (g) { return g.id === chosen; })[0];
        if (c) shown.push(c);
      }
      var inShown = {};
      shown.forEach(function (g) { inShown[g.id] = true; });
      var rest = { count: 0, kept: 0, p: 0, pT: 0 };
      groups.forEach(function (g) {
        if (g.id !== null && inShown[g.id]) return;
        rest.count += g.count; rest.kept += g.kept; rest.p += g.kept * g.p; rest.pT += g.count * g.pT;
      });
      var active = [];
      if (T === 0) active.push("temperature 0 (greedy)");
      if (k > 0) active.push("top-k " + k);
      if (p < 1) active.push("top-p " + p);
      if (mp > 0) active.push("min-p " + mp);
      var rows = [], cutShown = false;
      function bar(name, title, g, cls, pKept, pBefore, removed) {
        var row = el("div", "tv-bar" + cls + (removed ? " removed" : ""));
        var word = el("span", "tv-word", name), track = el("span", "tv-track"), fill = el("span", "tv-fill");
        word.title = title;
        fill.style.width = (100 * (removed ? pBefore : pKept)).toFixed(2) + "%";
        track.append(fill);
        var value = el("span", "tv-pct", removed ? "cut" : pct(pKept));
        value.title = removed ? "removed by " + active.join(", ") + " (it had " + pct(pBefore) + " at this temperature)" : "";
        row.dataset.prob = pKept.toFixed(6);
        row.dataset.probBefore = pBefore.toFixed(6);
        if (g) { row.dataset.rank = String(g.rank); row.dataset.id = String(g.id); }
        row.append(word, track, value);
        return row;
      }
      shown.forEach(function (g) {
        var removed = g.kept === 0;
        if (removed && !cutShown) {
          rows.push(el("div", "tv-cut", "\u2500\u2500 cut by " + active.join(", ") + ": the words below are never drawn"));
          cutShown = true;
        }
        var name = names[g.id] === undefined ? "#" + g.id : names[g.id];
        var isChosen = g.id === chosen;
        var title = name + " \u00b7 rank " + (g.rank + 1) + " \u00b7 logit " + g.logit.toFixed(3) +
          " \u00b7 " + pct(g.pT) + " at T = " + T.toFixed(2) + " before the filters" + (isChosen ? " \u00b7 drawn at this step" : "");
        rows.push(bar((g.rank >= nRows ? "#" + (g.rank + 1) + " " : "") + label(name, -1), title, g, isChosen ? " chosen" : "",
                      g.p, g.pT, removed));
      });
      if (rest.count > 0) {
        var partly = rest.kept > 0 && rest.kept < rest.count;
        var other = bar(rest.count + " others", rest.count + " more words" +
                        (rest.kept < rest.count ? "; " + (rest.count - rest.kept) + " of them removed by " + active.join(", ") : ""),
                        null, " other", rest.p, rest.pT, rest.kept === 0);
        if (partly) other.querySelector(".tv-pct").textContent = pct(rest.p) + "*";
        rows.push(other);
      }
      bars.replaceChildren.apply(bars, rows);
      var hDrawn = 0;
      groups.forEach(function (g) { if (g.kept && g.p > 0) hDrawn -= g.kept * g.p * Math.log2(g.p); });
      var parts = ["drawn from " + hDrawn.toFixed(2) + " bits at T = " + T.toFixed(2)];
      if (typeof step.entropy === "number") parts.push("the model's own (T = 1): " + step.entropy.toFixed(2) + " bits");
      var kept = 0;
      groups.forEach(function (g) { kept += g.kept; });
      parts.push(kept + " word" + (kept === 1 ? "" : "s") + " can be drawn");
      if (step.finish) parts.push(step.finish === "stop" ? "the text ended here" : "last step");
      meta.textContent = parts.join(" \u00b7 ");
    }

    function drawLens(step) {
      if (!step.lens) return;
      var final = step.lens[step.lens.length - 1].top[0].id, wins = step.lens.length - 1;
      while (wins > 0 && step.lens[wins - 1].top[0].id === final) wins--;
      var rows = step.lens.map(function (entry, i) {
        var row = el("div", "tv-lens-row" + (i === wins ? " wins" : ""));
        var best = entry.top[0];
        var name = el("span", "tv-lens-layer", i === 0 ? "embeddings" : "layer " + i);
        var word = el("span", "tv-lens-word" + (best.id === final ? " final" : ""), label(best.token, -1));
        word.title = entry.top.map(function (w) { return label(w.token, -1) + " " + pct(w.p); }).join(" \u00b7 ");
        var track = el("span", "tv-track"), fill = el("span", "tv-fill");
        fill.style.width = (100 * best.p).toFixed(1) + "%";
        track.append(fill);
        var chosenP = el("span", "tv-pct", pct(best.p));
        var pc = el("span", "tv-lens-chosen", label(step.chosen.token, -1) + " " + pct(entry.p_chosen));
        pc.title = "the probability of the word drawn at this step, read from this layer";
        row.dataset.top = String(best.id);
        row.append(name, word, track, chosenP, pc);
        if (i === wins) row.append(el("span", "tv-wins", i === 0 ? "leads from the start" : "takes the lead here"));
        return row;
      });
      lens.replaceChildren.apply(lens, rows);
    }

    function draw() {
      var i = st.step, step = steps[i];
      stepInput.value = String(i);
      stepLabel.textContent = "step " + (i + 1) + " of " + steps.length;
      prev.disabled = i === 0;
      next.disabled = i === steps.length - 1;
      drawTokens(step);
      drawGrid(step);
      drawBars(step);
      drawLens(step);
    }
    function go(i) { st.step = Math.max(0, Math.min(steps.length - 1, i)); draw(); }

    prev.addEventListener("click", function () { go(st.step - 1); });
    next.addEventListener("click", function () { go(st.step + 1); });
    stepInput.addEventListener("input", function () { go(Number(stepInput.value)); });
    headSelect.addEventListener("change", draw);
    temp.input.addEventListener("input", draw);
    [topK, topP, minP].forEach(function (x) { x.addEventListener("input", draw); });
    ticks.querySelectorAll("button").forEach(function (b) {
      b.addEventListener("click", function () { temp.input.value = b.dataset.t; draw(); });
    });
    go(0);
    return { go: go, draw: draw, steps: steps };
  }

  global.GptlabTraceView = { mount: mount, distribution: distribution, groupsOf: groupsOf, label: label };
})(typeof window !== "undefined" ? window : this);
