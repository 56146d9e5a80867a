// The dashboard polls the node's dashboard/data JSON and redraws the figures, draws the last hour
// from dashboard/history (chart.js), looks tasks up and cancels or retries them; no build step.
"use strict";

(function () {
  const POLL_MS = 2000;
  const FETCH_TIMEOUT_MS = 5000;
  const STALE_S = 3 * POLL_MS / 1000; // three missed refreshes in a row
  const source = document.body.dataset.source;
  const historySource = document.body.dataset.history;
  const historyMs = Math.max(2000, 1000 * Number(document.body.dataset.historySeconds || 10));
  let lastUpdate = null; // Date.now() of the last refresh that worked

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

  // queued, with the priorities present when any is above 0 ("12 · p9 3 p0 9") and the scheduled ones
  function queued(n) {
    const levels = Object.keys(n.by_priority || {}).sort(function (a, b) { return b - a; });
    let text = String(n.queued);
    if (levels.some(function (p) { return p !== "0"; })) {
      text += " · " + levels.map(function (p) { return "p" + p + " " + n.by_priority[p]; }).join(" ");
    }
    if (n.scheduled) text += " · " + n.scheduled + " later";
    return text;
  }

  // live / pending / capacity: what this node can run at once (its quota, or less: the launcher's limit)
  function workers(w) {
    if (!w) return "";
    const capacity = w.capacity === undefined ? w.max : w.capacity;
    return w.live + " / " + w.pending + " / " + capacity + (capacity < w.max ? " (max " + w.max + ")" : "");
  }

  // fetch with a deadline: a node that hangs must not stop the page from noticing.
  function getJSON(url, options) {
    const controller = new AbortController();
    const timer = setTimeout(function () { controller.abort(); }, FETCH_TIMEOUT_MS);
    const init = Object.assign({ cache: "no-store", headers: { Accept: "application/json" }, signal: controller.signal },
      options || {});
    return fetch(url, init).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        return { ok: response.ok, status: response.status, body: body };
      });
    }).finally(function () { clearTimeout(timer); });
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    return seconds < 90 ? Math.round(seconds) + " s ago" : Math.round(seconds / 60) + " min ago";
  }

  function button(text, onClick, title) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    if (title) b.title = title;
    b.addEventListener("click", onClick);
    return b;
  }

  // ------------------------------------------------------------ stale warning
  function checkStale() {
    const banner = byId("stale");
    const age = lastUpdate === null ? null : (Date.now() - lastUpdate) / 1000;
    const stale = age === null ? performance.now() / 1000 > STALE_S : age > STALE_S;
    banner.hidden = !stale;
    document.body.classList.toggle("is-stale", stale);
    if (stale) {
      banner.textContent = "Stale: " + (age === null ? "no update received yet" :
        "no update for " + Math.round(age) + " s (last at " + clock(lastUpdate / 1000) + ")") +
        ". The figures below are not current.";
    }
  }

  function render(data) {
    const t = data.totals;
    setText("total-queued", t.queued);
    setText("total-running", t.running);
    setText("total-completed", t.completed);
    setText("total-failed", t.failed, t.failed > 0 ? "bad" : "");
    setText("total-workers", workers(t.workers));
    setText("capacity-why", t.workers.capacity_why ? "capacity below max: " + t.workers.capacity_why : "");
    const checks = t.checks || {checks: 0, mismatches: 0};
    setText("total-checks", checks.checks + " / " + checks.mismatches, checks.mismatches > 0 ? "bad" : "");
    if (!data.peer.url) setText("peer", "no peer configured", "");
    else if (data.peer.reachable) setText("peer", "reachable", "ok");
    else setText("peer", "unreachable", "bad");

    fill("nodes", null, data.nodes, function (tr, n) {
      cell(tr, n.node + (n.node === data.node ? " (this node)" : ""), null, n.url || "");
      if (!n.reachable) {
        cell(tr, n.problem ? "answers in a form this node does not read: " + n.problem : "unreachable", "bad").colSpan = 8;
        return;
      }
      cell(tr, queued(n), "num", "ready to run, by priority (higher first); later: waiting for their not_before");
      ["running", "completed", "failed"].forEach(function (k) { cell(tr, n[k], "num"); });
      cell(tr, workers(n.workers), "num", n.workers.capacity_why ? "capacity: " + n.workers.capacity_why : "");
      cell(tr, n.quota.lent, "num");
      cell(tr, n.quota.borrowed, "num");
      if (n.draining || n.problem) {
        cell(tr, (n.draining ? "shutting down" : "up") + (n.problem ? "; part of its answer left out: " + n.problem : ""), "bad");
      } else if (n.paused) cell(tr, "intake paused", "bad", "tm resume takes tasks again");
      else cell(tr, "up", "ok");
    });
    fill("progress", "progress-empty", data.in_progress || [], function (tr, p) {
      cell(tr, p.node);
      cell(tr, p.done, "num");
      cell(tr, p.iterations, "num");
      const bar = document.createElement("progress");
      bar.max = 100;
      bar.value = p.percent;
      bar.textContent = p.percent + " %";
      cell(tr, p.percent + " %").prepend(bar, " ");
    });
    if (!paged("results")) showList("results", data.results, data.results.length >= 10);
    fill("decisions", "decisions-empty", data.decisions, function (tr, d) {
      cell(tr, clock(d.at));
      cell(tr, d.node);
      cell(tr, d.reason);
      cell(tr, d.launched, "num");
      cell(tr, d.borrowed, "num");
      cell(tr, d.queued, "num");
      cell(tr, d.workers, "num");
    });
    if (!paged("failed")) showList("failed", data.failed || [], (data.failed || []).length >= 20);
    fill("quarantined", "quarantined-empty", data.quarantined || [], function (tr, q) {
      cell(tr, clock(q.at));
      cell(tr, q.node);
      cell(tr, q.worker, "mono bad");
      cell(tr, q.engine || "–");
      cell(tr, q.cpu || "–");
      cell(tr, q.launcher || "–");
      cell(tr, short(q.task, 12), "mono", q.task);
      cell(tr, q.reason);
      cell(tr, q.rerun, "num");
    });
    fill("workers", "workers-empty", data.workers || [], function (tr, w) {
      cell(tr, w.node);
      cell(tr, w.id, "mono");
      cell(tr, w.state, w.state === "live" ? "ok" : "");
      cell(tr, w.engine ? w.engine + (w.kernel ? " " + w.kernel : "") : "–");
      cell(tr, w.borrowed ? "borrowed" : "own");
      cell(tr, ago(w.last_seen_ago), "num");
    });
    setText("updated", "updated " + clock(data.at), "ok");
    lastUpdate = Date.now();
    checkStale();
  }

  // ------------------------------------------------------------ results and failed tasks: search and pages
  // Without a search, on the first page, a list shows what dashboard/data brings every refresh;
  // otherwise the page asks dashboard/list (both nodes, newest first) and asks again each refresh.
  const ROWS = {
    results: function (tr, r) {
      cell(tr, clock(r.completed_at));
      cell(tr, short(r.id, 12), "mono", r.id);
      cell(tr, r.iterations, "num");
      cell(tr, short(r.result, 24), "mono", r.result);
    },
    failed: function (tr, f) {
      cell(tr, clock(f.at));
      cell(tr, f.node);
      cell(tr, short(f.id, 12), "mono", f.id);
      cell(tr, f.state, "bad");
      cell(tr, f.iterations, "num");
      cell(tr, f.reason);
      cell(tr, "").appendChild(button("Retry", function () { act("retry", f.id); }, "queue task " + f.id + " again"));
    },
  };
  const lists = { results: { q: "", offset: 0 }, failed: { q: "", offset: 0 } };

  function searchForm(kind) { return byId(kind + "-search"); }
  function paged(kind) { return lists[kind].q !== "" || lists[kind].offset > 0; }

  function showList(kind, items, more) {
    const form = searchForm(kind), state = lists[kind], limit = Number(form.dataset.limit);
    fill(kind, kind + "-empty", items, ROWS[kind]);
    form.querySelector("[data-page=newer]").disabled = state.offset === 0;
    form.querySelector("[data-page=older]").disabled = !more;
    const span = items.length ? (state.offset + 1) + "–" + (state.offset + items.length) : "none";
    form.querySelector(".page-note").textContent = paged(kind) ?
      (state.q ? "matching “" + state.q + "”: " : "") + span + (more ? " (more older)" : "") :
      "newest " + limit;
  }

  function refreshList(kind) {
    if (!paged(kind)) return Promise.resolve();
    const state = lists[kind], limit = Number(searchForm(kind).dataset.limit);
    const url = "dashboard/list?kind=" + kind + "&q=" + encodeURIComponent(state.q) + "&offset=" + state.offset +
      "&limit=" + limit;
    return getJSON(url).then(function (answer) {
      if (answer.ok) showList(kind, answer.body.items, answer.body.more);
      else searchForm(kind).querySelector(".page-note").textContent = errorText(answer);
    }).catch(function () { /* the stale warning tells */ });
  }

  Object.keys(lists).forEach(function (kind) {
    const form = searchForm(kind), state = lists[kind], limit = Number(form.dataset.limit);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      state.q = form.elements.q.value.trim().toLowerCase();
      state.offset = 0;
      if (paged(kind)) refreshList(kind); else poll(true);
    });
    form.querySelector("[data-page=older]").addEventListener("click", function () {
      state.offset += limit;
      refreshList(kind);
    });
    form.querySelector("[data-page=newer]").addEventListener("click", function () {
      state.offset = Math.max(0, state.offset - limit);
      if (paged(kind)) refreshList(kind); else poll(true);
    });
  });

  function poll(once) {
    Object.keys(lists).forEach(refreshList);
    getJSON(source)
      .then(function (answer) {
        if (!answer.ok) throw new Error("HTTP " + answer.status);
        render(answer.body);
      })
      .catch(function (err) { setText("updated", "cannot reach this node (" + err.message + ")", "bad"); })
      .finally(function () { if (once !== true) setTimeout(poll, POLL_MS); });
  }

  // ------------------------------------------------------------ the last hour
  function drawHistory(h) {
    const end = h.at, start = h.at - h.window;
    const pts = h.points || [];
    const series = function (name, cls, key) {
      return { name: name, cls: cls, points: pts.map(function (p) { return [p.at, p[key] === undefined ? null : p[key]]; }) };
    };
    const markers = (h.decisions || []).map(function (d) {
      return { at: d.at, title: clock(d.at) + " " + d.node + ": " + d.reason + " -> launched " + d.launched +
        ", borrowed " + d.borrowed };
    });
    const bands = [];
    pts.forEach(function (p) {
      if (!p.peer_down) return;
      const last = bands[bands.length - 1];
      if (last && p.at - last.to <= h.interval * 1.5) last.to = p.at + h.interval;
      else bands.push({ from: p.at, to: p.at + h.interval });
    });
    bands.forEach(function (b) { b.title = "peer unreachable " + clock(b.from) + " – " + clock(b.to); });
    window.TmChart.draw(byId("chart-load"), {
      start: start, end: end, markers: markers, bands: bands,
      series: [series("queued", "queued", "queued"), series("running", "running", "running"),
        series("workers live", "live", "live"), series("workers pending", "pending", "pending")],
    });
    window.TmChart.draw(byId("chart-rate"), {
      start: start, end: end, markers: markers, bands: bands,
      series: [series("completed per minute", "rate", "per_minute")],
    });
    byId("chart-empty").hidden = pts.length > 1;
    // the card shows the chart's newest figure: one definition (completions of the last minute, both nodes)
    const newest = pts.length ? pts[pts.length - 1].per_minute : null;
    setText("per-minute", newest === null || newest === undefined ? "–" : String(Math.round(newest)));
    byId("chart-title").textContent = h.window >= 3600 ? "Last hour" : "Last " + Math.round(h.window / 60) + " minutes";
    document.body.dataset.chartPoints = String(pts.length);
  }

  function pollHistory() {
    getJSON(historySource)
      .then(function (answer) { if (answer.ok) drawHistory(answer.body); })
      .catch(function () { /* the stale warning tells */ })
      .finally(function () { setTimeout(pollHistory, historyMs); });
  }

  // ------------------------------------------------------------ look-up, cancel, retry
  function showMessage(text, bad) {
    const el = byId("action-message");
    el.textContent = text;
    el.className = "action-message " + (bad ? "bad" : "ok");
    el.hidden = false;
  }

  function errorText(answer) {
    const b = answer.body || {};
    return (b.error ? b.error + ": " : "HTTP " + answer.status + ": ") + (b.message || "");
  }

  function showTask(task) {
    const box = byId("lookup-result");
    const rows = [["id", task.id], ["state", task.state], ["iterations", task.iterations],
      ["enqueued", clock(task.enqueued_at)], ["completed", clock(task.completed_at)]];
    if (task.done !== undefined && task.state !== "completed") rows.push(["iterations done", task.done]);
    if (task.result) rows.push(["result", task.result]);
    if (task.reason) rows.push(["reason", task.reason]);
    if (task.reused_from) rows.push(["reused from", task.reused_from]);
    const dl = document.createElement("dl");
    rows.forEach(function (r) {
      if (r[1] === "" || r[1] === undefined || r[1] === null) return;
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = r[0];
      dd.textContent = String(r[1]);
      if (r[0] === "state") dd.className = "state-" + task.state;
      dl.append(dt, dd);
    });
    const actions = document.createElement("p");
    if (task.state === "queued" || task.state === "running") {
      actions.appendChild(button("Cancel", function () { act("cancel", task.id); }, "cancel task " + task.id));
    }
    if (task.state === "failed" || task.state === "cancelled") {
      actions.appendChild(button("Retry", function () { act("retry", task.id); }, "queue task " + task.id + " again"));
    }
    box.replaceChildren(dl, actions);
    box.dataset.taskId = task.id;
    box.hidden = false;
  }

  function lookUp(id) {
    id = id.trim().toLowerCase();
    if (!id) return;
    getJSON("status/" + encodeURIComponent(id), { headers: credentials() }).then(function (answer) {
      if (answer.ok) {
        showTask(answer.body);
        byId("action-message").hidden = true;
      } else {
        byId("lookup-result").hidden = true;
        showMessage(errorText(answer), true);
      }
    }).catch(function (err) { showMessage("cannot reach this node (" + err.message + ")", true); });
  }

  // What the form's field holds goes along with look-ups, cancels and retries: a client key
  // (tmk_..., for nodes with API_KEYS=required) as X-Api-Key, any other token (ACTIONS_TOKEN, the
  // operator's) as X-Cluster-Token. Never stored by the page.
  function credentials() {
    const token = byId("action-token").value.trim();
    const headers = { Accept: "application/json" };
    if (token) headers[token.indexOf("tmk_") === 0 ? "X-Api-Key" : "X-Cluster-Token"] = token;
    return headers;
  }

  // Cancel and retry are public API calls, like enqueue, unless the node sets ACTIONS_TOKEN or
  // API_KEYS=required: then the token or key typed in the form goes along. The node refuses them
  // from another site's pages (nodeapp/web/origin.py).
  function act(verb, id) {
    const headers = credentials();
    getJSON(verb + "/" + encodeURIComponent(id), { method: "POST", headers: headers }).then(function (answer) {
      if (answer.ok) {
        showMessage("task " + id + (verb === "cancel" ? " cancelled" : " queued again") + ": now " + answer.body.state, false);
        showTask(answer.body);
      } else {
        showMessage(verb + " " + id + " refused: " + errorText(answer), true);
      }
    }).catch(function (err) { showMessage("cannot reach this node (" + err.message + ")", true); });
  }

  byId("lookup").addEventListener("submit", function (event) {
    event.preventDefault();
    lookUp(byId("lookup-id").value);
  });

  setInterval(checkStale, 1000);
  poll();
  pollHistory();
})();
