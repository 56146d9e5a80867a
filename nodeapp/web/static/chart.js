// A small time-series chart in plain SVG: lines, vertical markers and shaded bands, no library.
// window.TmChart.draw(svg, {start, end, series, markers, bands}); times in seconds since the epoch.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const PAD = { left: 44, right: 10, top: 10, bottom: 22 };

  function el(name, attrs, parent, title) {
    const node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (key) { node.setAttribute(key, String(attrs[key])); });
    if (title) {
      const t = document.createElementNS(NS, "title");
      t.textContent = title;
      node.appendChild(t);
    }
    if (parent) parent.appendChild(node);
    return node;
  }

  // 0, then 1, 2 or 5 times a power of ten: a round top for the y axis.
  function niceTop(max) {
    if (!(max > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(max)));
    const steps = [1, 2, 5, 10];
    for (let i = 0; i < steps.length; i++) if (steps[i] * power >= max) return steps[i] * power;
    return 10 * power;
  }

  function hhmm(t) {
    return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  }

  function label(text) { return (Math.round(text * 10) / 10).toLocaleString(); }

  // opts.series: [{name, cls, points: [[t, value or null], ...]}]; a null value breaks the line.
  // opts.markers: [{at, title}] (vertical dashed lines); opts.bands: [{from, to, title}].
  function draw(svg, opts) {
    const box = svg.viewBox.baseVal;
    const width = box.width, height = box.height;
    const x0 = PAD.left, x1 = width - PAD.right, y0 = height - PAD.bottom, y1 = PAD.top;
    const span = Math.max(1, opts.end - opts.start);
    let max = 0;
    opts.series.forEach(function (s) {
      s.points.forEach(function (p) { if (p[1] !== null && p[1] > max) max = p[1]; });
    });
    const top = niceTop(max);
    const x = function (t) { return x0 + (x1 - x0) * (t - opts.start) / span; };
    const y = function (v) { return y0 - (y0 - y1) * v / top; };

    svg.replaceChildren();
    (opts.bands || []).forEach(function (b) {
      const left = Math.max(x0, x(b.from)), right = Math.min(x1, x(b.to));
      if (right > left) el("rect", { x: left, y: y1, width: right - left, height: y0 - y1, class: "band" }, svg, b.title);
    });
    for (let i = 0; i <= 4; i++) {
      const v = top * i / 4, yy = y(v);
      el("line", { x1: x0, x2: x1, y1: yy, y2: yy, class: i ? "grid" : "axis" }, svg);
      el("text", { x: x0 - 6, y: yy + 4, class: "tick", "text-anchor": "end" }, svg).textContent = label(v);
    }
    const steps = [10, 30, 60, 120, 300, 600, 900, 1800, 3600];
    const step = steps.find(function (s) { return span / s <= 8; }) || 7200; // at most 8 time labels
    for (let t = Math.ceil(opts.start / step) * step; t <= opts.end; t += step) {
      el("text", { x: x(t), y: height - 6, class: "tick", "text-anchor": "middle" }, svg).textContent = hhmm(t);
    }
    (opts.markers || []).forEach(function (m) {
      if (m.at < opts.start || m.at > opts.end) return;
      const group = el("g", { class: "marker" }, svg, m.title);
      el("line", { x1: x(m.at), x2: x(m.at), y1: y1, y2: y0 }, group);
      el("line", { x1: x(m.at), x2: x(m.at), y1: y1, y2: y0, class: "hit" }, group); // a wider target to hover
    });
    opts.series.forEach(function (s) {
      let d = "", pen = "M";
      s.points.forEach(function (p) {
        if (p[1] === null || p[0] < opts.start) { pen = "M"; return; }
        d += pen + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1) + " ";
        pen = "L";
      });
      if (d) el("path", { d: d, class: "line " + s.cls }, svg, s.name);
      const last = s.points[s.points.length - 1];
      if (last && last[1] !== null && last[0] >= opts.start) {
        el("circle", { cx: x(last[0]), cy: y(last[1]), r: 2.5, class: "dot " + s.cls }, svg, s.name + ": " + label(last[1]));
      }
    });
  }

  window.TmChart = { draw: draw };
})();
