// The dashboard polls the node's dashboard/data JSON and redraws the figures; no library, no build step.
"use strict";

(function () {
  const POLL_MS = 2000;
  const RATE_WINDOW_S = 60;
  const source = document.body.dataset.source;
  const samples = []; // [server time in s, completed total], for "completed / min"

  function byId(id) { return document.getElementById(id); }

  function setText(id, text, cls) {
    const el = byId(id);
    el.textContent = text;
    if (cls !== undefined) el.className = el.className.replace(/\b(ok|bad)\b/g, "").trim() + (cls ? " " + cls : "");
  }

  function clock(ts) {
    return ts ? new Date(ts * 1000).toLocaleTimeString([], { hour12: false }) : "";
  }

  function short(text, n) {
    text = text || "";
    return text.length > n ? text.slice(0, n) + "…" : text;
  }

  function cell(row, text, cls, title) {
    const td = document.createElement("td");
    td.textContent = text === undefined || text === null ? "" : String(text);
    if (cls) td.className = cls;
    if (title) td.title = title;
    row.appendChild(td);
    return td;
  }

  function fill(tableId, emptyId, items, addCells) {
    const body = byId(tableId).tBodies[0];
    const rows = items.map(function (item) {
      const tr = document.createElement("tr");
      addCells(tr, item);
      return tr;
    });
    body.replaceChildren.apply(body, rows);
    if (emptyId) byId(emptyId).hidden = items.length > 0;
  }

  function workers(w) { return w ? w.live + " / " + w.pending + " / " + w.max : ""; }

  function perMinute(at, completed) {
    if (samples.length && completed < samples[samples.length - 1][1]) samples.length = 0; // a node dropped out
    samples.push([at, completed]);
    while (samples.length > 2 && at - samples[1][0] >= RATE_WINDOW_S) samples.shift();
    const first = samples[0];
    const span = at - first[0];
    if (span < 1) return null;
    return (completed - first[1]) * 60 / span;
  }

  function render(data) {
    const t = data.totals;
    setText("total-queued", t.queued);
    setText("total-running", t.running);
    setText("total-completed", t.completed);
    setText("total-failed", t.failed, t.failed > 0 ? "bad" : "");
    setText("total-workers", workers(t.workers));
    const rate = perMinute(data.at, t.completed);
    setText("per-minute", rate === null ? "–" : String(Math.round(rate)));
    if (!data.peer.url) setText("peer", "no peer configured", "");
    else if (data.peer.reachable) setText("peer", "reachable", "ok");
    else setText("peer", "unreachable", "bad");

    fill("nodes", null, data.nodes, function (tr, n) {
      cell(tr, n.node + (n.node === data.node ? " (this node)" : ""), null, n.url || "");
      if (!n.reachable) {
        cell(tr, "unreachable", "bad").colSpan = 8;
        return;
      }
      ["queued", "running", "completed", "failed"].forEach(function (k) { cell(tr, n[k], "num"); });
      cell(tr, workers(n.workers), "num");
      cell(tr, n.quota.lent, "num");
      cell(tr, n.quota.borrowed, "num");
      cell(tr, n.draining ? "shutting down" : "up", n.draining ? "bad" : "ok");
    });
    fill("progress", "progress-empty", data.in_progress || [], function (tr, p) {
      cell(tr, p.node);
      cell(tr, short(p.id, 12), "mono", p.id);
      cell(tr, p.done, "num");
      cell(tr, p.iterations, "num");
      const bar = document.createElement("progress");
      bar.max = 100;
      bar.value = p.percent;
      bar.textContent = p.percent + " %";
      cell(tr, p.percent + " %").prepend(bar, " ");
    });
    fill("results", "results-empty", data.results, function (tr, r) {
      cell(tr, clock(r.completed_at));
      cell(tr, short(r.id, 12), "mono", r.id);
      cell(tr, r.iterations, "num");
      cell(tr, short(r.result, 24), "mono", r.result);
    });
    fill("decisions", "decisions-empty", data.decisions, function (tr, d) {
      cell(tr, clock(d.at));
      cell(tr, d.node);
      cell(tr, d.reason);
      cell(tr, d.launched, "num");
      cell(tr, d.borrowed, "num");
      cell(tr, d.queued, "num");
      cell(tr, d.workers, "num");
    });
    setText("updated", "updated " + clock(data.at), "ok");
  }

  function poll() {
    fetch(source, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(render)
      .catch(function (err) { setText("updated", "cannot reach this node (" + err.message + ")", "bad"); })
      .finally(function () { setTimeout(poll, POLL_MS); });
  }

  poll();
})();
