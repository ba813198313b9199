"""The HTML, CSS and script of the `recap data view` page (`view.py` gathers what it shows).

No library and no network: the script below draws every track as inline SVG from the JSON in
`#recap-data`. Any script error is written into `#errors` (so a headless browser's DOM dump shows
it), and `#status` gets `data-rendered="N"` once N episode cards are drawn.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

CSS = """
* { box-sizing: border-box; }
body { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222;
       background: #fafafa; }
header, #summary, #filters, main, #status, #errors { max-width: 1240px; margin: 0 auto; padding: 0 16px; }
header h1 { font-size: 20px; margin: 14px 0 2px; }
header p { margin: 0 0 8px; color: #555; }
#errors:empty { display: none; }
#errors { background: #fde8e8; color: #8a1010; border: 1px solid #e99; padding: 8px 16px; }
#summary { display: flex; gap: 14px; align-items: stretch; }
#summary .box { min-width: 0; }
@media (max-width: 1000px) { #summary, .ep-body { flex-wrap: wrap; } }
.box { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; }
.box h3 { font-size: 13px; margin: 0 0 6px; }
.box table { border-collapse: collapse; }
.box td, .box th { padding: 1px 8px 1px 0; text-align: left; vertical-align: middle; }
.box th { font-weight: 600; color: #555; }
.num { text-align: right !important; font-variant-numeric: tabular-nums; }
.box td.task { max-width: 230px; }
.note { color: #666; max-width: 1240px; margin: 6px auto 0; padding: 0 16px; }
.shares { display: flex; width: 110px; height: 12px; border: 1px solid #bbb; }
.shares span { display: block; height: 100%; }
.legend { display: flex; gap: 12px; flex-wrap: wrap; color: #444; margin: 4px 0; }
.legend i { display: inline-block; width: 12px; height: 10px; margin-right: 4px; vertical-align: -1px;
            border: 1px solid #999; }
.legend i.line { height: 3px; border: 0; vertical-align: 2px; }
#filters select { max-width: 260px; }
#filters { display: flex; gap: 14px; align-items: center; flex-wrap: wrap; margin-top: 12px; padding-top: 8px;
           padding-bottom: 8px; border-top: 1px solid #ddd; }
#filters label { color: #444; }
#filters input[type=number] { width: 56px; }
.episode { background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: 10px 0; padding: 8px 12px; }
.episode h2 { font-size: 14px; margin: 0 0 6px; display: flex; gap: 10px; align-items: baseline; flex-wrap: wrap; }
.episode h2 .task { font-weight: 400; color: #333; }
.episode h2 .meta { font-weight: 400; color: #666; }
.badge { font-size: 11px; font-weight: 600; padding: 1px 7px; border-radius: 9px; color: #fff; }
.badge.success { background: #228833; }
.badge.failure { background: #bb3344; }
.ep-body { display: flex; gap: 14px; align-items: flex-start; }
.cams { display: flex; gap: 6px; flex-wrap: wrap; flex: none; }
.plot { flex: none; }
.cams figure { margin: 0; overflow: hidden; }
.cams img { display: block; background: #000; image-rendering: auto; }
.cams figcaption { color: #666; font-size: 11px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.plot svg { display: block; cursor: crosshair; user-select: none; }
.plot input[type=range] { display: block; margin: 2px 0 0 86px; width: 532px; }
.readout { color: #333; font-variant-numeric: tabular-nums; margin-left: 86px; width: 556px; min-height: 36px; }
#status { color: #888; padding-bottom: 24px; }
"""

SCRIPT = r"""
"use strict";
window.onerror = function (message, source, line, column) {
  const box = document.getElementById("errors");
  const p = document.createElement("p");
  p.className = "js-error";
  p.textContent = "script error: " + message + " (line " + line + ":" + column + ")";
  box.appendChild(p);
};
window.addEventListener("unhandledrejection", function (e) { window.onerror(String(e.reason), "", 0, 0); });

(function () {
  const DATA = JSON.parse(document.getElementById("recap-data").textContent);
  const IMAGES = JSON.parse(document.getElementById("recap-images").textContent);
  const SVGNS = "http://www.w3.org/2000/svg";
  const C = { positive: "#228833", negative: "#ee6677", none: "#dddddd", human: "#ee7733", robot: "#f3f3f3",
              value_label: "#222222", value_pred: "#4477aa", advantage: "#aa3377", threshold: "#cc3311",
              reward: "#0077bb", grid: "#e4e4e4", axis: "#999999" };
  const LEFT = 92, WIDTH = 520, RIGHT = 8, GAP = 7;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function sv(tag, attrs, text) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function num(v, digits) { return v === null || v === undefined ? "n/a" : Number(v).toFixed(digits === undefined ? 3 : digits); }
  function pct(x) { return (100 * x).toFixed(1) + "%"; }
  function finite(values) { return values.filter(function (v) { return v !== null && isFinite(v); }); }
  function swatch(color, text, line) {
    const span = el("span");
    const i = el("i", { style: "background:" + color });
    if (line) i.className = "line";
    span.appendChild(i);
    span.appendChild(document.createTextNode(text));
    return span;
  }

  // ------------------------------------------------------------------ summary
  function renderHeader() {
    const s = DATA.summary, o = DATA.options;
    document.getElementById("meta").textContent =
      DATA.dataset + " \u00b7 " + DATA.fps + " fps \u00b7 cameras: " + (DATA.cameras.join(", ") || "none") +
      " \u00b7 " + s.episodes + " episodes, " + s.frames + " frames";
    const box = el("div", { class: "box", id: "overview" });
    box.appendChild(el("h3", {}, "Dataset"));
    const t = el("table");
    const rows = [
      ["episodes", s.episodes + " (" + s.outcomes.success + " success, " + s.outcomes.failure + " failure)"],
      ["frames", String(s.frames)],
      ["shown", s.episodes_shown + " of " + s.episodes + " episodes" +
        (s.episodes_left_out ? " (" + s.episodes_left_out + " left out)" : "")],
    ];
    if (DATA.has_predictions) {
      rows.push(["Spearman", s.spearman === null ? "n/a" : num(s.spearman) + " over " + s.spearman_frames + " frames"]);
    }
    if (DATA.label) {
      const th = Object.entries(DATA.label.thresholds).map(function (kv) {
        const name = kv[0] === "all" ? "all tasks" : "task " + kv[0];
        return name + ": " + num(kv[1], 4);
      }).join(", ");
      const ckpt = DATA.label.checkpoint || {};
      rows.push(["threshold", th || "none"]);
      rows.push(["labels", "top " + DATA.label.top_percent + "%, lookahead " + DATA.label.lookahead +
        (ckpt.step === undefined ? "" : ", value model step " + ckpt.step)]);
    } else if (DATA.has_predictions) {
      rows.push(["threshold", "not recorded (no meta/recap_label.json)"]);
    }
    for (const [k, v] of rows) {
      const tr = el("tr");
      tr.appendChild(el("th", {}, k));
      tr.appendChild(el("td", {}, v));
      t.appendChild(tr);
    }
    box.appendChild(t);
    return box;
  }

  function renderBudget() {
    const s = DATA.summary, o = DATA.options;
    return el("p", { class: "note", id: "budget" },
      "Size budget: images every " + o.stride + " frames and the last (--stride " + o.stride + "), JPEG quality " +
      o.jpeg_quality + " (--jpeg-quality), at most " + o.image_width + " px wide (--image-width); at most " +
      o.max_episodes + " episodes spread evenly over the dataset (--max-episodes" +
      (s.episodes_left_out ? "; " + s.episodes_left_out + " episodes left out" : "") +
      "). The summary counts every frame.");
  }

  function renderShares() {
    const box = el("div", { class: "box", id: "label-shares" });
    box.appendChild(el("h3", {}, "adv_ind shares per task"));
    const t = el("table");
    const head = el("tr");
    for (const h of ["task", "frames", "positive", "negative", "none", ""]) head.appendChild(el("th", {}, h));
    t.appendChild(head);
    for (const row of DATA.summary.label_shares) {
      const tr = el("tr");
      tr.appendChild(el("td", { class: "task" }, row.task));
      tr.appendChild(el("td", { class: "num" }, String(row.frames)));
      for (const k of ["positive", "negative", "none"]) tr.appendChild(el("td", { class: "num" }, pct(row[k])));
      const bar = el("div", { class: "shares" });
      for (const k of ["positive", "negative", "none"]) {
        bar.appendChild(el("span", { style: "width:" + (100 * row[k]) + "%;background:" + C[k], title: k + " " + pct(row[k]) }));
      }
      const td = el("td");
      td.appendChild(bar);
      tr.appendChild(td);
      t.appendChild(tr);
    }
    box.appendChild(t);
    const legend = el("div", { class: "legend" });
    for (const k of ["positive", "negative", "none"]) legend.appendChild(swatch(C[k], k));
    box.appendChild(legend);
    return box;
  }

  function renderCalibration() {
    const bins = DATA.summary.calibration;
    const box = el("div", { class: "box", id: "calibration" });
    box.appendChild(el("h3", {}, "Calibration"));
    const size = 104, pad = 40;
    const g = sv("svg", { width: size + pad + 10, height: size + pad + 8, viewBox: "0 0 " + (size + pad + 10) + " " + (size + pad + 8) });
    const x = function (v) { return pad + (v + 1) * size; };
    const y = function (v) { return 4 + (-v) * size; };
    g.appendChild(sv("rect", { x: pad, y: 4, width: size, height: size, fill: "#fff", stroke: C.axis }));
    for (const v of [-1, -0.5, 0]) {
      g.appendChild(sv("line", { x1: x(v), x2: x(v), y1: 4, y2: 4 + size, stroke: C.grid }));
      g.appendChild(sv("line", { x1: pad, x2: pad + size, y1: y(v), y2: y(v), stroke: C.grid }));
      g.appendChild(sv("text", { x: x(v), y: size + 18, "font-size": 10, "text-anchor": "middle", fill: "#555" }, String(v)));
      g.appendChild(sv("text", { x: pad - 4, y: y(v) + 3, "font-size": 10, "text-anchor": "end", fill: "#555" }, String(v)));
    }
    g.appendChild(sv("line", { x1: x(-1), y1: y(-1), x2: x(0), y2: y(0), stroke: C.axis, "stroke-dasharray": "4 3" }));
    g.appendChild(sv("text", { x: pad + size / 2, y: size + 31, "font-size": 10, "text-anchor": "middle", fill: "#555" }, "value_pred (binned)"));
    g.appendChild(sv("text", { x: 8, y: 4 + size / 2, "font-size": 10, "text-anchor": "middle", fill: "#555",
      transform: "rotate(-90 8 " + (4 + size / 2) + ")" }, "mean value_label"));
    const most = Math.max.apply(null, bins.map(function (b) { return b.frames; }));
    const pts = bins.map(function (b) { return x(b.value_pred) + "," + y(b.value_label); });
    g.appendChild(sv("polyline", { points: pts.join(" "), fill: "none", stroke: C.value_pred, "stroke-width": 1.5 }));
    for (const b of bins) {
      const c = sv("circle", { class: "calibration-bin", cx: x(b.value_pred), cy: y(b.value_label),
                               r: 2.5 + 3.5 * Math.sqrt(b.frames / most), fill: C.value_pred });
      c.appendChild(sv("title", {}, "value_pred " + num(b.lo, 1) + ".." + num(b.hi, 1) + ": " + b.frames +
        " frames, mean value_pred " + num(b.value_pred) + ", mean value_label " + num(b.value_label)));
      g.appendChild(c);
    }
    box.appendChild(g);
    return box;
  }

  // ------------------------------------------------------------------ tracks
  function xCell(t, T) { return LEFT + (t * WIDTH) / T; }
  function xMid(t, T) { return LEFT + ((t + 0.5) * WIDTH) / T; }

  function linePath(values, T, scale) {
    let d = "", pen = false;
    values.forEach(function (v, t) {
      if (v === null || !isFinite(v)) { pen = false; return; }
      d += (pen ? "L" : "M") + xMid(t, T).toFixed(1) + "," + scale(v).toFixed(1);
      pen = true;
    });
    return d;
  }

  function runs(values) {
    const out = [];
    values.forEach(function (v, t) {
      if (out.length && out[out.length - 1].value === v) out[out.length - 1].end = t + 1;
      else out.push({ value: v, start: t, end: t + 1 });
    });
    return out;
  }

  function range(values, extra) {
    const all = finite(values).concat(extra);
    let lo = Math.min.apply(null, all), hi = Math.max.apply(null, all);
    if (!(hi > lo)) { lo -= 1; hi += 1; }
    const pad = 0.06 * (hi - lo);
    return [lo - pad, hi + pad];
  }

  function trackFrame(g, name, y0, h, ticks, scale) {
    g.appendChild(sv("rect", { x: LEFT, y: y0, width: WIDTH, height: h, fill: "#fff", stroke: "#ccc" }));
    g.appendChild(sv("text", { x: LEFT - 8, y: y0 + h / 2 + 4, "text-anchor": "end", "font-size": 11, fill: "#333" }, name));
    for (const v of ticks || []) {
      g.appendChild(sv("line", { x1: LEFT, x2: LEFT + WIDTH, y1: scale(v), y2: scale(v), stroke: C.grid }));
      g.appendChild(sv("text", { x: LEFT + WIDTH + 3, y: scale(v) + 3, "font-size": 9, fill: "#888" }, String(v)));
    }
  }

  function band(g, name, y0, h, values, T, color, cls) {
    trackFrame(g, name, y0, h);
    for (const r of runs(values)) {
      g.appendChild(sv("rect", { class: cls, "data-value": r.value, x: xCell(r.start, T).toFixed(2), y: y0,
        width: (xCell(r.end, T) - xCell(r.start, T)).toFixed(2), height: h, fill: color(r.value) }));
    }
  }

  function drawTracks(ep) {
    const cols = ep.columns, T = ep.length;
    const tracks = [];
    tracks.push({ h: 78, draw: function (g, y0, h) {
      const lim = range(cols.value_label.concat(cols.value_pred || []), [-1, 0]);
      const scale = function (v) { return y0 + h - ((v - lim[0]) / (lim[1] - lim[0])) * h; };
      trackFrame(g, "value", y0, h, [-1, -0.5, 0], scale);
      g.appendChild(sv("path", { class: "value_label", d: linePath(cols.value_label, T, scale), fill: "none", stroke: C.value_label, "stroke-width": 1.6 }));
      if (cols.value_pred) {
        g.appendChild(sv("path", { class: "value_pred", d: linePath(cols.value_pred, T, scale), fill: "none", stroke: C.value_pred, "stroke-width": 1.6 }));
      }
    } });
    if (cols.advantage) {
      tracks.push({ h: 62, draw: function (g, y0, h) {
        const extra = [0].concat(ep.threshold === null ? [] : [ep.threshold]);
        const lim = range(cols.advantage, extra);
        const scale = function (v) { return y0 + h - ((v - lim[0]) / (lim[1] - lim[0])) * h; };
        trackFrame(g, "advantage", y0, h);
        if (!finite(cols.advantage).length) {
          g.appendChild(sv("text", { x: LEFT + WIDTH / 2, y: y0 + h / 2 + 4, "text-anchor": "middle", "font-size": 11,
            fill: "#888" }, "nothing predicted (a demo episode)"));
          return;
        }
        g.appendChild(sv("line", { x1: LEFT, x2: LEFT + WIDTH, y1: scale(0), y2: scale(0), stroke: C.axis, "stroke-dasharray": "2 3" }));
        if (ep.threshold !== null) {
          g.appendChild(sv("line", { class: "threshold", x1: LEFT, x2: LEFT + WIDTH, y1: scale(ep.threshold), y2: scale(ep.threshold),
            stroke: C.threshold, "stroke-dasharray": "6 3", "stroke-width": 1.3 }));
          g.appendChild(sv("text", { x: LEFT + WIDTH + 3, y: scale(ep.threshold) + 3, "font-size": 9, fill: C.threshold }, "thr"));
        }
        g.appendChild(sv("path", { class: "advantage", d: linePath(cols.advantage, T, scale), fill: "none", stroke: C.advantage, "stroke-width": 1.5 }));
      } });
    }
    tracks.push({ h: 16, draw: function (g, y0, h) {
      band(g, "adv_ind", y0, h, cols.adv_ind, T, function (v) { return C[v] || "#000"; }, "adv_ind");
    } });
    tracks.push({ h: 16, draw: function (g, y0, h) {
      band(g, "intervention", y0, h, cols.intervention, T, function (v) { return v === 1 ? C.human : C.robot; }, "intervention");
    } });
    tracks.push({ h: 30, draw: function (g, y0, h) {
      const lim = range(cols.reward, [0, 1]);
      const scale = function (v) { return y0 + h - ((v - lim[0]) / (lim[1] - lim[0])) * h; };
      trackFrame(g, "reward", y0, h);
      g.appendChild(sv("line", { x1: LEFT, x2: LEFT + WIDTH, y1: scale(0), y2: scale(0), stroke: C.axis }));
      cols.reward.forEach(function (v, t) {
        if (v === null || v === 0) return;
        g.appendChild(sv("line", { class: "reward", x1: xMid(t, T), x2: xMid(t, T), y1: scale(0), y2: scale(v), stroke: C.reward, "stroke-width": 2.5 }));
      });
    } });

    const height = tracks.reduce(function (a, t) { return a + t.h + GAP; }, 0) + 14;
    const width = LEFT + WIDTH + RIGHT + 22;
    const g = sv("svg", { class: "tracks", width: width, height: height, viewBox: "0 0 " + width + " " + height });
    let y0 = 2;
    for (const t of tracks) { t.draw(g, y0, t.h); y0 += t.h + GAP; }
    for (const f of [0, T - 1]) {
      g.appendChild(sv("text", { x: xMid(f, T), y: y0 + 8, "font-size": 9, "text-anchor": f ? "end" : "start", fill: "#888" }, "frame " + f));
    }
    const cursor = sv("line", { class: "cursor", x1: xMid(0, T), x2: xMid(0, T), y1: 0, y2: y0, stroke: "#000", "stroke-width": 1, opacity: 0.55 });
    g.appendChild(cursor);
    return { svg: g, cursor: cursor };
  }

  function readout(ep, t) {
    const c = ep.columns;
    const parts = ["frame " + t + " / " + (ep.length - 1), "value_label " + num(c.value_label[t])];
    if (c.value_pred) parts.push("value_pred " + num(c.value_pred[t]));
    if (c.advantage) parts.push("advantage " + num(c.advantage[t], 4));
    parts.push("adv_ind " + c.adv_ind[t]);
    parts.push("intervention " + c.intervention[t] + (c.intervention[t] === 1 ? " (human)" : ""));
    parts.push("reward " + num(c.reward[t], 2));
    return parts.join(" \u00b7 ");
  }

  // ------------------------------------------------------------------ episodes
  function episodeCard(ep) {
    const card = el("article", { class: "episode", "data-episode": ep.episode_index, "data-task": ep.task_index,
      "data-outcome": ep.outcome, "data-intervention": ep.intervention_share });
    const h = el("h2");
    h.appendChild(el("span", {}, "Episode " + ep.episode_index));
    h.appendChild(el("span", { class: "badge " + ep.outcome }, ep.outcome));
    h.appendChild(el("span", { class: "task" }, ep.task));
    h.appendChild(el("span", { class: "meta" }, ep.length + " frames \u00b7 intervention " + pct(ep.intervention_share) +
      (ep.threshold === null ? "" : " \u00b7 threshold " + num(ep.threshold, 4))));
    card.appendChild(h);
    const body = el("div", { class: "ep-body" });
    // At most three cameras side by side; more wrap into rows.
    const cams = el("div", { class: "cams", style: "width:" + Math.min(3, DATA.cameras.length) * (DATA.options.image_width + 6) + "px" });
    const imgs = [];
    const shots = IMAGES[String(ep.episode_index)] || {};
    for (const cam of DATA.cameras) {
      const fig = el("figure", { style: "width:" + DATA.options.image_width + "px" });
      const img = el("img", { alt: cam + " of episode " + ep.episode_index, width: DATA.options.image_width });
      const cap = el("figcaption");
      fig.appendChild(img);
      fig.appendChild(cap);
      cams.appendChild(fig);
      imgs.push({ cam: cam, img: img, cap: cap, uris: shots[cam] || [] });
    }
    body.appendChild(cams);
    const plot = el("div", { class: "plot" });
    const drawn = drawTracks(ep);
    plot.appendChild(drawn.svg);
    const slider = el("input", { type: "range", min: 0, max: ep.length - 1, step: 1, value: 0, class: "scrub",
      "aria-label": "frame of episode " + ep.episode_index });
    plot.appendChild(slider);
    const text = el("div", { class: "readout" });
    plot.appendChild(text);
    body.appendChild(plot);
    card.appendChild(body);

    function show(t) {
      const T = ep.length;
      drawn.cursor.setAttribute("x1", xMid(t, T));
      drawn.cursor.setAttribute("x2", xMid(t, T));
      let k = 0;
      while (k + 1 < ep.image_frames.length && ep.image_frames[k + 1] <= t) k += 1;
      for (const c of imgs) {
        if (c.uris[k]) c.img.src = c.uris[k];
        c.cap.textContent = c.cam + " \u00b7 frame " + ep.image_frames[k];
      }
      text.textContent = readout(ep, t);
    }
    slider.addEventListener("input", function () { show(Number(slider.value)); });
    function pick(event) {
      const box = drawn.svg.getBoundingClientRect();
      const scale = Number(drawn.svg.getAttribute("width")) / box.width;
      const x = (event.clientX - box.left) * scale;
      const t = Math.max(0, Math.min(ep.length - 1, Math.floor(((x - LEFT) / WIDTH) * ep.length)));
      slider.value = t;
      show(t);
    }
    drawn.svg.addEventListener("pointerdown", pick);
    drawn.svg.addEventListener("pointermove", function (e) { if (e.buttons === 1) pick(e); });
    show(0);
    return card;
  }

  function renderFilters(cards) {
    const bar = document.getElementById("filters");
    const task = el("select", { id: "filter-task" });
    task.appendChild(el("option", { value: "" }, "all tasks"));
    DATA.tasks.forEach(function (name, i) { task.appendChild(el("option", { value: String(i) }, name)); });
    const outcome = el("select", { id: "filter-outcome" });
    for (const [v, t] of [["", "any outcome"], ["success", "success"], ["failure", "failure"]]) {
      outcome.appendChild(el("option", { value: v }, t));
    }
    const lo = el("input", { type: "number", id: "filter-intervention-min", min: 0, max: 100, step: 5, value: 0 });
    const hi = el("input", { type: "number", id: "filter-intervention-max", min: 0, max: 100, step: 5, value: 100 });
    const count = el("span", { id: "filter-count" });
    function labelled(text, control) { const l = el("label", {}, text + " "); l.appendChild(control); return l; }
    bar.appendChild(labelled("Task", task));
    bar.appendChild(labelled("Outcome", outcome));
    const share = labelled("Intervention share", lo);
    share.appendChild(document.createTextNode(" to "));
    share.appendChild(hi);
    share.appendChild(document.createTextNode(" %"));
    bar.appendChild(share);
    bar.appendChild(count);
    const legend = el("div", { class: "legend" });
    legend.appendChild(swatch(C.value_label, "value_label", true));
    if (DATA.has_predictions) {
      legend.appendChild(swatch(C.value_pred, "value_pred", true));
      legend.appendChild(swatch(C.advantage, "advantage", true));
      legend.appendChild(swatch(C.threshold, "threshold", true));
    }
    for (const k of ["positive", "negative", "none"]) legend.appendChild(swatch(C[k], "adv_ind " + k));
    legend.appendChild(swatch(C.human, "intervention (human)"));
    legend.appendChild(swatch(C.reward, "reward", true));
    bar.appendChild(legend);
    function apply() {
      let shown = 0;
      const a = Number(lo.value) / 100, b = Number(hi.value) / 100;
      for (const card of cards) {
        const ok = (task.value === "" || card.dataset.task === task.value) &&
          (outcome.value === "" || card.dataset.outcome === outcome.value) &&
          Number(card.dataset.intervention) >= a - 1e-9 && Number(card.dataset.intervention) <= b + 1e-9;
        card.hidden = !ok;
        if (ok) shown += 1;
      }
      const left = DATA.summary.episodes_left_out;
      count.textContent = shown + " of " + cards.length + " episodes match" + (left ? " (" + left + " not in this page)" : "");
    }
    for (const c of [task, outcome, lo, hi]) c.addEventListener("input", apply);
    apply();
  }

  const summary = document.getElementById("summary");
  summary.appendChild(renderHeader());
  summary.appendChild(renderShares());
  if (DATA.summary.calibration && DATA.summary.calibration.length) summary.appendChild(renderCalibration());
  summary.after(renderBudget());
  const main = document.getElementById("episodes");
  const cards = DATA.episodes.map(episodeCard);
  for (const card of cards) main.appendChild(card);
  renderFilters(cards);
  const status = document.getElementById("status");
  status.dataset.rendered = String(cards.length);
  status.textContent = "rendered " + cards.length + " episodes \u00b7 written by recap data view";
})();
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@ · recap episodes</title>
<style>@CSS@</style>
</head>
<body>
<header><h1>@TITLE@</h1><p id="meta"></p></header>
<div id="errors" role="alert"></div>
<section id="summary"></section>
<section id="filters"></section>
<main id="episodes"></main>
<p id="status">the page's script has not run (scripts disabled?)</p>
<script type="application/json" id="recap-data">@DATA@</script>
<script type="application/json" id="recap-images">@IMAGES@</script>
<script>@SCRIPT@</script>
</body>
</html>
"""


def page_json(doc: Any) -> str:
    """JSON that is safe inside a <script> element: every "<" is escaped, so no "</script>" or
    "<!--" can appear (JSON readers decode the escape back)."""
    return json.dumps(doc, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")


def render_page(doc: dict[str, Any], images: dict[str, Any]) -> str:
    """The whole page as one string (see `view.py` for `doc` and `images`)."""
    parts = {
        "@TITLE@": html.escape(Path(doc["dataset"]).name),
        "@CSS@": CSS,
        "@SCRIPT@": SCRIPT,
        "@DATA@": page_json(doc),
        "@IMAGES@": page_json(images),
    }
    # One pass: text put in (a task name reading "@SCRIPT@") is never replaced again.
    return re.sub("@(TITLE|CSS|SCRIPT|DATA|IMAGES)@", lambda m: parts[m.group(0)], PAGE)
