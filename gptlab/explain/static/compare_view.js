// gptlab: where two models disagree on one text (`gptlab explain MODEL PROMPT --compare REF`, and the
// Compare tab of `gptlab serve`'s page, which gets the same JSON from POST /v1/compare). Plain
// JavaScript, no libraries; render_html.render_compare_html puts it inline in a standalone page.
// GptlabCompareView.mount(element, comparison) draws the written text with each token shaded by
// the KL between the two next-token distributions that produced it, and a table: per step the
// token, its KL, the probability each model gives it, and each model's top candidates (a star where
// their first choices differ). Hovering a token of the text picks out its row, and back.
(function (global) {
  "use strict";
  if (global.GptlabCompareView) return;
  var EOT = "<|endoftext|>";

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function show(token) { return token === EOT ? "\u27e8end\u27e9" : token.replace(/\n/g, "\u21b5"); }
  function pct(p) { return (100 * p).toFixed(1) + "%"; }

  function topList(items, written) {
    var ol = el("ol", "cv-top");
    items.forEach(function (c) {
      var li = el("li", c.token === written ? "cv-written" : "");
      var bar = el("span", "cv-pbar");
      bar.style.width = (100 * Math.min(1, Math.max(0, c.p))).toFixed(1) + "%";  // CSSOM: allowed under the page's CSP
      li.append(bar, el("span", "cv-w", show(c.token)), el("span", "cv-num", pct(c.p)));
      ol.append(li);
    });
    return ol;
  }

  function mount(root, data) {
    root.replaceChildren();
    var steps = data.steps || [];
    var maxKL = steps.reduce(function (m, s) { return Math.max(m, s.kl); }, 0);
    var shade = function (kl) { return maxKL > 0 ? Math.max(0, kl) / maxKL : 0; };

    var head = el("p", "cv-head");
    head.append(el("b", "cv-a", data.model), document.createTextNode(" against "), el("b", "cv-b", data.reference),
                document.createTextNode(" \u00b7 KL of the whole continuation "),
                el("b", "cv-total", (data.total_kl || 0).toFixed(3) + " nats"),
                document.createTextNode(" \u00b7 darker = the models disagreed more on that token"));

    var strip = el("div", "cv-strip");
    strip.append(el("span", "cv-prompt", data.prompt));
    var rows = [], chips = [];
    function pick(k, on) {
      [rows[k], chips[k]].forEach(function (x) { x.classList.toggle("cv-on", on); });
    }
    steps.forEach(function (s, k) {
      var chip = el("span", "cv-tok", show(s.token));
      chip.dataset.step = String(k);
      chip.style.setProperty("--kl", shade(s.kl).toFixed(3));
      chip.title = "step " + (k + 1) + ": KL " + s.kl.toFixed(3) + " nats, p " + pct(s.p) + " vs " + pct(s.ref_p);
      chip.addEventListener("mouseenter", function () { pick(k, true); });
      chip.addEventListener("mouseleave", function () { pick(k, false); });
      chips.push(chip);
      strip.append(chip);
    });

    var table = el("table", "cv-table");
    var hr = el("tr");
    ["#", "token", "KL (nats)", "p " + data.model, "p " + data.reference, data.model + " top", data.reference + " top"]
      .forEach(function (h) { hr.append(el("th", "", h)); });
    table.append(hr);
    steps.forEach(function (s, k) {
      var tr = el("tr", "cv-row");
      tr.dataset.step = String(k);
      var differ = s.top.length && s.ref_top.length && s.top[0].token !== s.ref_top[0].token;
      var klCell = el("td", "cv-kl");
      var klBar = el("span", "cv-klbar");
      klBar.style.width = (100 * shade(s.kl)).toFixed(1) + "%";
      klCell.append(el("span", "cv-num", s.kl.toFixed(3)), klBar);
      tr.append(el("td", "cv-num", String(k + 1)), el("td", "cv-w", show(s.token) + (differ ? " *" : "")), klCell,
                el("td", "cv-num cv-p", pct(s.p)), el("td", "cv-num cv-refp", pct(s.ref_p)));
      var a = el("td"), b = el("td");
      a.append(topList(s.top, s.token));
      b.append(topList(s.ref_top, s.token));
      tr.append(a, b);
      tr.addEventListener("mouseenter", function () { pick(k, true); });
      tr.addEventListener("mouseleave", function () { pick(k, false); });
      if (differ) tr.classList.add("cv-differ");
      rows.push(tr);
      table.append(tr);
    });
    var note = el("p", "cv-note", "* the two models' first choices differ. KL(" + data.model + " \u2016 " + data.reference +
                  ") of the next-token distributions, exact (both models read the same text).");
    var wrap = el("div", "cv-wrap");
    wrap.append(table);
    root.append(head, strip, wrap, note);
    return { rows: rows, chips: chips };
  }

  global.GptlabCompareView = { mount: mount };
})(typeof window !== "undefined" ? window : this);
