// driftrag drift dashboard: reads the public API only and redraws every few seconds. No build step.
// Data never goes through innerHTML: every value is set with textContent.
"use strict";
(function () {
  const REFRESH_MS = 5000;
  const TOKEN_KEY = "driftrag-token";
  const KINDS = ["transition", "engagement", "content", "volume"];
  const COLORS = ["#4f46e5", "#d97706", "#059669", "#dc2626", "#0891b2", "#7c3aed", "#65a30d", "#db2777"];
  const KIND_COLOR = { transition: COLORS[0], engagement: COLORS[1], content: COLORS[2], volume: COLORS[3] };
  const state = { cluster: null, pair: null, pairChosen: false, charts: {}, refreshes: 0, timer: null };
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c instanceof Node ? c : String(c));
    return e;
  }

  function fmtTime(ms) {
    if (ms == null) return "-";
    return new Date(ms).toISOString().replace("T", " ").slice(0, 16) + " UTC";
  }
  function fmtAge(ms) {
    if (ms == null) return "-";
    if (ms < 1000) return ms + " ms";
    const s = ms / 1000;
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(0) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }
  function fmtNum(x) {
    if (typeof x !== "number") return x == null ? "-" : String(x);
    if (Number.isInteger(x)) return String(x);
    return Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 1 ? x.toFixed(2) : String(Number(x.toPrecision(3)));
  }
  function fmtValue(v) {
    if (Array.isArray(v)) return v.map((x) => (Array.isArray(x) ? x.map(fmtNum).join(":") : fmtValue(x))).join(", ");
    if (v && typeof v === "object") return Object.entries(v).map(([k, x]) => k + " " + fmtValue(x)).join(", ");
    return fmtNum(v);
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const r = await fetch(path, { headers, cache: "no-store" });
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      const why = body && body.detail ? body.detail : r.statusText;
      const err = new Error(r.status === 401 || r.status === 403
        ? "the API needs a token (enter it above): " + why : path + ": " + r.status + " " + why);
      err.status = r.status;
      throw err;
    }
    return body;
  }

  // -- freshness ---------------------------------------------------------------------------------------------
  function showFreshness(f, ready) {
    $("watermark").textContent = fmtTime(f.watermark_ts);
    $("version").textContent = String(f.index_version);
    $("lag").textContent = fmtAge(f.lag_ms);
    if (ready) $("ready").textContent = ready.ready ? "ready, " + ready.items + " items, " + ready.pairs + " pairs" : "not ready";
  }

  // -- ranking -----------------------------------------------------------------------------------------------
  function showRanking(rows) {
    const body = $("ranking").tBodies[0];
    body.replaceChildren();
    rows.forEach((r, i) => {
      const bar = el("span", { class: "bar" });
      bar.style.width = Math.round(Math.min(r.score, 5) / 5 * 70) + "px";
      const sev = r.severity ? el("span", { class: "sev-" + r.severity, text: " " + r.severity }) : null;
      const tr = el("tr", { "data-cluster": String(r.cluster) },
        el("td", { class: "num", text: String(i + 1) }),
        el("td", { class: "num cluster", text: String(r.cluster) }),
        el("td", { class: "kw", text: r.label }),
        el("td", { class: "num" }, bar, fmtNum(r.score)),
        el("td", { text: r.kind || "-" }),
        ...KINDS.map((k) => el("td", { class: "num", text: fmtNum((r.scores || {})[k]) })),
        el("td", { class: "num" }, String(r.open_alerts), sev));
      if (r.cluster === state.cluster) tr.classList.add("selected");
      tr.addEventListener("click", () => { state.cluster = r.cluster; showSelected(); refreshCluster().catch(showError); });
      body.append(tr);
    });
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: "10", class: "muted", text: "no drift scores yet" })));
  }
  function showSelected() {
    for (const tr of $("ranking").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.cluster === String(state.cluster));
  }

  async function refreshCluster() {
    if (state.cluster == null) return;
    const c = await api("/v1/clusters/" + state.cluster + "?k=5");
    $("cluster-title").textContent = c.cluster + ": " + c.label;
    const dl = el("dl", {},
      el("dt", { text: "keywords" }), el("dd", { text: c.keywords.join(", ") }),
      el("dt", { text: "items in the index" }), el("dd", { text: String(c.size) }),
      el("dt", { text: "pairs ending here" }), el("dd", { text: String(c.pairs_ending_here) }));
    if (c.drift) {
      dl.append(el("dt", { text: "drift scores" }), el("dd", { text: fmtValue(c.drift.scores) }),
        el("dt", { text: "open alerts" }), el("dd", { text: c.drift.alerts.map((a) => a.kind + " " + a.severity).join(", ") || "none" }),
        el("dt", { text: "reference" }), el("dd", { text: fmtReference(c.drift.reference) }));
    }
    const t = el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "next cluster" }), el("th", { text: "keywords" }),
      el("th", { class: "num", text: "share" }), el("th", { class: "num", text: "trend" }))));
    const tb = el("tbody");
    for (const s of c.top_successors) {
      tb.append(el("tr", {}, el("td", { class: "num", text: String(s.cluster) }), el("td", { class: "kw", text: s.label }),
        el("td", { class: "num", text: (s.score * 100).toFixed(0) + "%" }), trendCell(s.trend)));
    }
    t.append(tb);
    $("cluster-detail").replaceChildren(dl, el("h2", { text: "What users move to after it (all pairs ending in it)" }), t);
  }
  function fmtReference(ref) {
    if (!ref || typeof ref !== "object") return "-";
    const parts = [];
    for (const [k, v] of Object.entries(ref)) {
      if (v && typeof v === "object" && !Array.isArray(v)) parts.push(k + ": " + fmtReference(v));
      else parts.push(k.endsWith("_ms") ? k.slice(0, -3) + " " + fmtTime(v) : k + " " + fmtValue(v));
    }
    return parts.join("; ");
  }
  function trendCell(trend) {
    const pts = trend * 100;
    return el("td", { class: "num " + (pts > 0.5 ? "up" : pts < -0.5 ? "down" : ""), text: (pts >= 0 ? "+" : "") + pts.toFixed(1) + " pts" });
  }

  // -- alerts ------------------------------------------------------------------------------------------------
  function showAlerts(alerts) {
    const list = $("alerts");
    list.replaceChildren();
    for (const a of alerts) {
      const ev = el("dl", { class: "evidence" });
      ev.append(el("dt", { text: "window" }), el("dd", { text: fmtTime(a.window && a.window.start) + " .. " + fmtTime(a.window && a.window.end) }));
      for (const [k, v] of Object.entries(a.evidence || {})) ev.append(el("dt", { text: k }), el("dd", { text: fmtValue(v) }));
      ev.append(el("dt", { text: "reference" }), el("dd", { text: fmtReference(a.reference) }));
      const steps = (a.severities || []).map((s) => s.severity + " " + fmtTime(s.ts)).join(" -> ");
      const li = el("li", { "data-alert-id": a.alert_id, "data-cluster": String(a.cluster), "data-kind": a.kind,
        class: a.status === "closed" ? "closed" : "" },
        el("div", { class: "head" },
          el("strong", { text: fmtTime(a.opened_ts) }),
          el("span", { text: "cluster " + a.cluster + " (" + (a.label || "") + ")" }),
          el("span", { text: a.kind }),
          el("span", { class: "sev-" + a.severity, text: a.severity }),
          el("span", { text: "score " + fmtNum(a.score) + " / " + fmtNum(a.threshold) }),
          el("span", { class: "muted", text: a.status === "open" ? "open" : "closed " + fmtTime(a.closed_ts) })),
        steps ? el("div", { class: "muted", text: steps }) : null, ev);
      list.append(li);
    }
    if (!alerts.length) list.append(el("li", { class: "muted", text: "no alerts yet" }));
    drawAlertChart(alerts);
  }

  function drawAlertChart(alerts) {
    // one point per alert at the time it opened, on its cluster's row, coloured by kind
    const sorted = alerts.filter((a) => a.opened_ts != null).sort((a, b) => a.opened_ts - b.opened_ts);
    const xs = [];
    const ys = KINDS.map(() => []);
    let last = -Infinity;
    for (const a of sorted) {
      let x = a.opened_ts / 1000;
      if (x <= last) x = last + 0.001;  // uPlot wants increasing x: alerts of one hour get a nudge
      last = x;
      xs.push(x);
      KINDS.forEach((k, i) => ys[i].push(k === a.kind ? a.cluster : null));
    }
    const series = KINDS.map((k) => ({ label: k, stroke: KIND_COLOR[k], fill: KIND_COLOR[k], paths: () => null,
      points: { show: true, size: 10, fill: KIND_COLOR[k] } }));
    chart("alerts", $("alert-chart"), [xs, ...ys], series, 190, {
      y: { range: (u, min, max) => [Math.min(min, 0) - 1, (max == null ? 1 : max) + 1] },
    }, "cluster");
  }

  // -- pair --------------------------------------------------------------------------------------------------
  function showPairs(pairs, alerts) {
    const sel = $("pair-select");
    const keys = new Map();
    const transition = alerts.filter((a) => a.kind === "transition" && a.evidence && Array.isArray(a.evidence.pair));
    for (const a of transition) keys.set(a.evidence.pair.join(","), "alert: " + a.evidence.pair.join(" -> ") + " (" + a.label + ")");
    for (const p of pairs) {
      const k = p.pair.join(",");
      if (!keys.has(k)) keys.set(k, p.pair.join(" -> ") + "  " + p.labels.join(" -> ") + " (support " + fmtNum(p.support) + ")");
    }
    if (!state.pairChosen || !keys.has(state.pair)) state.pair = keys.size ? keys.keys().next().value : null;
    sel.replaceChildren(...[...keys].map(([k, text]) => el("option", { value: k, text })));
    if (state.pair) sel.value = state.pair;
  }

  async function refreshPair() {
    const tb = $("successors").tBodies[0];
    if (!state.pair) { tb.replaceChildren(el("tr", {}, el("td", { colspan: "5", class: "muted", text: "no pairs yet" }))); return; }
    const [c1, c2] = state.pair.split(",");
    const p = await api("/v1/pairs/" + c1 + "/" + c2 + "?k=5");
    tb.replaceChildren(...p.successors.map((s, i) => el("tr", {},
      el("td", { class: "num", text: String(s.cluster) }), el("td", { class: "kw", text: s.label }),
      el("td", { class: "num", text: (s.score * 100).toFixed(0) + "%" }), el("td", { class: "num", text: fmtNum(s.count) }),
      trendCell(s.trend))));
    const h = p.history;
    const series = h.successors.map((s, i) => ({ label: s.cluster + " " + s.label, stroke: COLORS[i % COLORS.length], width: 2,
      value: (u, v) => (v == null ? "-" : (v * 100).toFixed(0) + "%") }));
    chart("pair", $("pair-chart"), [h.ts_ms.map((t) => t / 1000), ...h.successors.map((s) => s.shares)], series, 220,
      { y: { range: [0, 1] } }, "share of next steps");
  }

  // -- charts ------------------------------------------------------------------------------------------------
  function chart(name, box, data, series, height, scales, yLabel) {
    const width = Math.max(300, box.clientWidth || 600);
    const sig = series.map((s) => s.label).join("|") + "@" + width;
    const old = state.charts[name];
    if (old && old.sig === sig) { old.plot.setData(data); return; }
    if (old) old.plot.destroy();
    const opts = {
      width, height, tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      scales: { x: { time: true }, ...scales }, legend: { live: true },
      series: [{ label: "time (UTC)" }, ...series],
      axes: [{}, { label: yLabel, size: 50 }],
    };
    state.charts[name] = { sig, plot: new uPlot(opts, data, box) };
  }

  // -- loop --------------------------------------------------------------------------------------------------
  function showError(e) {
    $("status").className = "status error";
    $("status").textContent = String((e && e.message) || e);
  }

  async function refresh() {
    clearTimeout(state.timer);
    const status = $("status");
    try {
      const [drift, alerts, pairs, ready] = await Promise.all([
        api("/v1/drift?limit=20"), api("/v1/alerts?limit=100"), api("/v1/pairs?limit=30"),
        api("/readyz").catch(() => null)]);
      showFreshness(drift.freshness, ready);
      if (state.cluster == null && drift.clusters.length) state.cluster = drift.clusters[0].cluster;
      showRanking(drift.clusters);
      showAlerts(alerts.alerts);
      showPairs(pairs.pairs, alerts.alerts);
      await Promise.all([refreshCluster(), refreshPair()]);
      state.refreshes += 1;
      document.body.dataset.refreshes = String(state.refreshes);
      status.className = "status";
      status.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC; refreshes every " + REFRESH_MS / 1000 + " s";
    } catch (e) {
      showError(e);
    } finally {
      clearTimeout(state.timer);
      state.timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
    $("auth").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token").value.trim();
      if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
      refresh();
    });
    $("pair-select").addEventListener("change", (ev) => { state.pair = ev.target.value; state.pairChosen = true; refreshPair().catch(showError); });
    refresh();
  });
})();
