// The operator's dashboard: polls /api/ops/overview every 2 s and draws it.
// No libraries, no build step. Data reaches the DOM only through textContent.
"use strict";
(function () {
  const POLL_MS = 2000, MAX_POINTS = 180, KEY = "ledger.apiKey";
  const COLORS = ["#2f6fde", "#e0812d", "#1f9d55", "#9b59b6", "#d64545", "#16a2b8", "#7a6a2f"];
  const dash = { samples: [], polls: 0, errors: 0, lastError: null, overview: null };
  window.ledgerDashboard = dash;

  // A key from "#key=..." is moved into sessionStorage and out of the address bar.
  function keyFromFragment() {
    const m = location.hash.match(/[#&]key=([^&]*)/);
    if (!m) return false;
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
    return true;
  }
  keyFromFragment();
  const $ = (id) => document.getElementById(id);
  const apiKey = () => sessionStorage.getItem(KEY) || "";

  async function api(path, options) {
    const headers = { Accept: "application/json" };
    if (apiKey()) headers.Authorization = "Bearer " + apiKey();
    const r = await fetch(path, Object.assign({ cache: "no-store" }, options || {}, { headers }));
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      const err = new Error((body && body.message) || r.statusText || ("HTTP " + r.status));
      err.status = r.status;
      throw err;
    }
    return body;
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function toast(text) {
    const t = $("toast");
    t.textContent = text; t.style.display = "block";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.style.display = "none"; }, 4000);
  }
  const fmt = (n) => (n === null || n === undefined) ? "–" : Number(n).toLocaleString("en-US");
  const backlogOf = (q) => (q.lag === null ? 0 : q.lag) + q.pending;
  const ago = (iso) => {
    if (!iso) return "–";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    return s < 90 ? s.toFixed(0) + " s ago" : s < 5400 ? (s / 60).toFixed(0) + " min ago"
      : new Date(iso).toISOString().replace("T", " ").slice(0, 19) + "Z";
  };

  // -- a small line chart on <canvas> ---------------------------------------------------
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const f of [1, 2, 2.5, 5, 10]) if (f * p >= v) return f * p;
    return 10 * p;
  }
  function drawChart(canvas, series) {
    const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
    if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 48, right = 10, top = 22, bottom = 22, pw = w - left - right, ph = h - top - bottom;
    // the window grows with the history kept: 30 s at first, up to MAX_POINTS polls
    const now = Date.now();
    let max = 0, first = now;
    for (const s of series) {
      for (const [t, v] of s.points) {
        first = Math.min(first, t);
        if (v !== null) max = Math.max(max, v);
      }
    }
    const span = Math.min(POLL_MS * MAX_POINTS, Math.max(30000, now - first + POLL_MS));
    const ymax = niceMax(max * 1.05);
    g.font = "11px system-ui, sans-serif"; g.strokeStyle = "#e2e5eb"; g.fillStyle = "#6b7385";
    g.lineWidth = 1; g.textAlign = "right"; g.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const y = top + ph - ph * i / 4;
      g.beginPath(); g.moveTo(left, y); g.lineTo(left + pw, y); g.stroke();
      const v = ymax * i / 4;
      g.fillText(v >= 100 ? v.toFixed(0) : +v.toFixed(2) + "", left - 6, y);
    }
    g.textAlign = "center"; g.textBaseline = "top";
    for (let i = 0; i <= 3; i++) {
      const x = left + pw * i / 3, secs = Math.round((span / 1000) * (1 - i / 3));
      g.fillText(secs ? "-" + secs + "s" : "now", x, top + ph + 5);
    }
    const xOf = (t) => left + pw * (1 - (now - t) / span), yOf = (v) => top + ph - ph * v / ymax;
    let lx = left;
    series.forEach((s) => {
      g.strokeStyle = s.color; g.lineWidth = 2; g.beginPath();
      let started = false;
      for (const [t, v] of s.points) {
        if (v === null || now - t > span) { started = false; continue; }
        if (started) g.lineTo(xOf(t), yOf(v)); else { g.moveTo(xOf(t), yOf(v)); started = true; }
      }
      g.stroke();
      const last = s.points.length ? s.points[s.points.length - 1] : null;
      if (last && last[1] !== null) {  // the newest value as a dot, so one sample shows too
        g.fillStyle = s.color; g.beginPath();
        g.arc(xOf(last[0]), yOf(last[1]), 3, 0, 2 * Math.PI); g.fill();
      }
      g.fillStyle = s.color; g.fillRect(lx, 6, 10, 10);
      g.fillStyle = "#1d2330"; g.textAlign = "left"; g.textBaseline = "middle";
      g.fillText(s.name, lx + 14, 11);
      lx += 24 + g.measureText(s.name).width;
    });
  }

  // -- rendering -----------------------------------------------------------------------
  function renderCards(ov, rates) {
    const cards = $("cards");
    cards.replaceChildren();
    for (const [name, q] of Object.entries(ov.queues)) {
      const c = el("div", null, "card");
      c.dataset.queue = name;
      c.append(el("h3", name + " · " + q.priority));
      const big = el("div", fmt(backlogOf(q)), "big");
      big.id = "backlog-" + name;
      big.dataset.value = String(backlogOf(q));
      c.append(big, el("div", "backlog (undelivered " + fmt(q.lag) + ", pending " + fmt(q.pending) + ")", "sub"));
      const done = el("div", "processed " + fmt(q.processed) + " · " +
        (rates[name] === null || rates[name] === undefined ? "–" : rates[name].toFixed(1)) + "/s", "sub");
      done.id = "processed-" + name;
      done.dataset.value = String(q.processed);
      c.append(done, el("div", "failed " + fmt(q.failed) + " · retried " + fmt(q.retried) +
        " · dead " + fmt(q.dead) + " · p95 " + fmt(q.latency_ms.p95) + " ms", "sub"));
      const waiting = el("div", "waiting " + fmt(q.waiting) + " · cancelled " + fmt(q.cancelled), "sub");
      waiting.id = "waiting-" + name;
      waiting.dataset.value = String(q.waiting);
      c.append(waiting);
      cards.append(c);
    }
    const d = el("div", null, "card");
    d.append(el("h3", "dead letters"));
    const n = el("div", fmt(ov.dead_letters.count), "big");
    n.id = "dead-count"; n.dataset.value = String(ov.dead_letters.count);
    d.append(n, el("div", "kept for inspection and requeue", "sub"));
    cards.append(d);
  }

  function renderProjections(ov) {
    const body = $("projections").tBodies[0];
    body.replaceChildren();
    for (const p of ov.projections) {
      const tr = el("tr");
      tr.dataset.projection = p.projection;
      tr.append(el("td", p.projection), el("td", fmt(p.pending), "num"), el("td", fmt(p.lag), "num"),
        el("td", (p.lag_ms / 1000).toFixed(1) + " s", "num"), el("td", ago(p.oldest_unacked_at)),
        el("td", ago(p.checkpoint_at)));
      body.append(tr);
    }
  }

  const until = (iso) => {
    if (!iso) return "–";
    const s = (Date.parse(iso) - Date.now()) / 1000;
    return s <= 0 ? "due" : s < 90 ? "in " + s.toFixed(0) + " s" : s < 5400
      ? "in " + (s / 60).toFixed(0) + " min" : iso.replace("T", " ").slice(0, 19) + "Z";
  };
  function emptyRow(body, text, cols) {
    const tr = el("tr"), td = el("td", text, "empty");
    td.colSpan = cols; tr.append(td); body.append(tr);
  }

  function renderSchedules(ov) {
    const body = $("schedules").tBodies[0];
    body.replaceChildren();
    if (!ov.schedules.length) return emptyRow(body, "No schedules.", 6);
    for (const s of ov.schedules) {
      const tr = el("tr");
      tr.dataset.schedule = s.name;
      tr.append(el("td", s.name), el("td", s.cron + (s.timezone !== "UTC" ? " (" + s.timezone + ")" : "")),
        el("td", s.queue_name + " · " + s.task_type), el("td", until(s.next_run_at)),
        el("td", ago(s.last_run_at)),
        el("td", s.last_task_id ? s.last_task_id + " · " + (s.last_task_status || "expired") : "–"));
      body.append(tr);
    }
  }

  function renderWaiting(ov) {
    const body = $("waiting").tBodies[0];
    body.replaceChildren();
    $("waiting-title").textContent = ov.waiting.length ? "(oldest " + ov.waiting.length + " shown)" : "";
    if (!ov.waiting.length) return emptyRow(body, "No task is waiting for another.", 4);
    for (const w of ov.waiting) {
      const tr = el("tr");
      tr.dataset.task = w.task_id;
      tr.append(el("td", w.task_id), el("td", w.queue_name + " · " + w.task_type),
        el("td", ago(new Date(w.enqueued_at_ms).toISOString())),
        el("td", w.waiting_for.join(", ") + " (of " + w.depends_on.length + ")"));
      body.append(tr);
    }
  }

  function renderDeadLetters(ov) {
    $("dead-count-title").textContent = "(" + fmt(ov.dead_letters.count) + ", newest " +
      ov.dead_letters.newest.length + " shown)";
    const body = $("deadletters").tBodies[0];
    body.replaceChildren();
    if (!ov.dead_letters.newest.length) {
      const tr = el("tr"), td = el("td", "No dead letters.", "empty");
      td.colSpan = 8; tr.append(td); body.append(tr);
      return;
    }
    for (const d of ov.dead_letters.newest) {
      const tr = el("tr");
      tr.dataset.id = d.id;
      const button = el("button", "Requeue", "primary requeue");
      button.dataset.id = d.id;
      button.addEventListener("click", () => requeue(d.id, button));
      const td = el("td"); td.append(button);
      tr.append(el("td", d.id), el("td", d.queue_name), el("td", d.task_type ? d.kind + ":" + d.task_type : d.kind),
        el("td", d.task_id || d.user_id || "–"), el("td", d.attempts, "num"), el("td", d.error, "err"),
        el("td", ago(d.at)), td);
      body.append(tr);
    }
  }

  async function requeue(id, button) {
    button.disabled = true;
    try {
      const r = await api("/api/dlq/" + encodeURIComponent(id) + "/requeue", { method: "POST" });
      toast("Requeued " + r.requeued + " as " + r.entry_id);
      dash.requeued = (dash.requeued || []).concat([r]);
      await poll();
    } catch (e) {
      button.disabled = false;
      toast("Requeue failed: " + e.message);
    }
  }

  function render() {
    const ov = dash.overview, last = dash.samples[dash.samples.length - 1];
    renderCards(ov, last.rate);
    renderProjections(ov);
    renderSchedules(ov);
    renderWaiting(ov);
    renderDeadLetters(ov);
    const queues = Object.keys(ov.queues);
    const line = (names, pick) => names.map((name, i) => ({
      name, color: COLORS[i % COLORS.length],
      points: dash.samples.map((s) => [s.t, pick(s)[name] === undefined ? null : pick(s)[name]]),
    }));
    drawChart($("chart-backlog"), line(queues, (s) => s.backlog));
    drawChart($("chart-rate"), line(queues, (s) => s.rate));
    drawChart($("chart-projlag"), line(ov.projections.map((p) => p.projection), (s) => s.projLag));
  }

  function setStatus(ok, text) {
    const s = $("status");
    s.className = ok ? "ok" : "bad";
    s.textContent = text;
    $("keystate").textContent = apiKey() ? "key set" : "no key";
  }

  async function poll() {
    try {
      const ov = await api("/api/ops/overview");
      const t = Date.now(), prev = dash.samples[dash.samples.length - 1];
      const sample = { t, backlog: {}, processed: {}, rate: {}, projLag: {} };
      for (const [name, q] of Object.entries(ov.queues)) {
        sample.backlog[name] = backlogOf(q);
        sample.processed[name] = q.processed;
        sample.rate[name] = prev && prev.processed[name] !== undefined
          ? Math.max(0, (q.processed - prev.processed[name]) / ((t - prev.t) / 1000)) : null;
      }
      for (const p of ov.projections) sample.projLag[p.projection] = p.lag_ms / 1000;
      dash.samples.push(sample);
      if (dash.samples.length > MAX_POINTS) dash.samples.shift();
      dash.overview = ov;
      dash.polls += 1;
      dash.lastError = null;
      render();
      setStatus(true, "live");
      $("updated").textContent = "updated " + new Date(t).toLocaleTimeString();
    } catch (e) {
      dash.errors += 1;
      dash.lastError = e.message;
      setStatus(false, e.status === 401 || e.status === 403
        ? "needs an admin API key: " + e.message : "error: " + e.message);
    }
  }

  async function loop() {
    await poll();
    setTimeout(loop, POLL_MS);
  }

  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("apikey").value.trim();
    if (v) sessionStorage.setItem(KEY, v);
    $("apikey").value = "";
    poll();
  });
  $("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); poll(); });
  window.addEventListener("hashchange", () => { if (keyFromFragment()) poll(); });
  dash.pollNow = poll;
  loop();
})();
