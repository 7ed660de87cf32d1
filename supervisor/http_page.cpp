// The status page served at / (http_server.h): one self-contained HTML document, no
// external script, style or font, that polls /status.json every second and draws the stage
// graph with live rates, the rings' fill, the pressure level against the memory budget and
// the drops by cause, and /log.json for the newest lines of the run's log (as text: a line
// may hold anything a stage printed, so it never becomes markup).
#include "http_server.h"

namespace flowseal::supervisor {

// function-length: data table (the status page: one HTML document in a raw string)
std::string_view status_page_html() {
  static constexpr std::string_view kPage = R"HTML(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>flowseal status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
  h1 { font-size: 1.3em; margin: 0 0 .3em; }
  #meta { color: #555; margin-bottom: 1em; }
  #graph { display: flex; align-items: center; flex-wrap: wrap; gap: .3em; }
  .column { display: flex; flex-direction: column; gap: .4em; }
  .stage { border: 2px solid #4a7; border-radius: 6px; padding: .4em .7em; background: #fff; min-width: 9em; }
  .stage.down { border-color: #c44; }
  .stage .name { font-weight: bold; }
  .stage .rate { font-variant-numeric: tabular-nums; }
  .edge { display: flex; flex-direction: column; align-items: center; font-size: .8em; color: #555; min-width: 5em; }
  .bar { width: 4.5em; height: .6em; border: 1px solid #888; background: #fff; }
  .bar > div { height: 100%; background: #58c; }
  table { border-collapse: collapse; margin-top: 1em; }
  td, th { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
  th { background: #eee; }
  .level-LOW { color: #383; } .level-MEDIUM { color: #a80; } .level-HIGH, .level-CRITICAL { color: #c22; font-weight: bold; }
  #error { color: #c22; }
  #log { font: 12px/1.35 ui-monospace, monospace; background: #fff; border: 1px solid #ccc;
         padding: .4em .6em; max-height: 24em; overflow-y: auto; white-space: pre-wrap; }
  #log .warning { color: #a80; } #log .error, #log .critical { color: #c22; }
</style>
</head>
<body>
<h1>flowseal <span id="instance"></span></h1>
<div id="meta">pressure <span id="pressure"></span> &mdash; memory <span id="usage"></span> of the budget <span id="budget"></span>
  &mdash; supervisor pid <span id="supervisor"></span> <span id="error"></span></div>
<div id="graph"></div>
<table id="drops"><tr><th>drops by cause</th><th>packets</th></tr></table>
<table id="ship"></table>
<table id="stages"></table>
<h2 style="font-size:1.1em">recent log</h2>
<div id="log"></div>
<script>
"use strict";
const fmt = n => n >= 1e6 ? (n / 1e6).toFixed(2) + " M" : n >= 1e4 ? (n / 1e3).toFixed(1) + " k" : String(Math.round(n));
const mib = b => (b / 1048576).toFixed(1) + " MiB";
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function stageBox(s) {
  const box = el("div", {class: "stage" + (s.state === "running" ? "" : " down"), "data-stage": s.stage,
                         "data-in-rate": s.in_per_s, "data-out-rate": s.out_per_s});
  box.append(el("div", {class: "name"}, s.stage),
             el("div", {class: "state"}, s.state + (s.restarts ? ", " + s.restarts + " restarts" : "")),
             el("div", {class: "rate"}, "in " + fmt(s.in_per_s) + "/s"),
             el("div", {class: "rate"}, "out " + fmt(s.out_per_s) + "/s"),
             el("div", {}, mib(s.pss_bytes)));
  return box;
}
function edge(names, rings) {
  const e = el("div", {class: "edge"});
  for (const n of names) {
    const pct = rings[n];
    const bar = el("div", {class: "bar", title: n});
    const fill = el("div", {});
    fill.style.width = Math.max(0, Math.min(100, pct)) + "%";
    bar.append(fill);
    e.append(el("span", {}, n + " " + (pct < 0 ? "?" : pct.toFixed(1) + "%")), bar);
  }
  e.append(el("span", {}, "\u2192"));
  return e;
}
function render(st) {
  document.getElementById("instance").textContent = st.instance + (st.stop_requested ? " (draining)" : "");
  const p = document.getElementById("pressure");
  p.textContent = st.pressure; p.className = "level-" + st.pressure;
  document.getElementById("usage").textContent = st.pressure_usage_pct.toFixed(1) + "%";
  document.getElementById("budget").textContent = mib(st.memory_budget_bytes);
  document.getElementById("supervisor").textContent = st.supervisor_pid;
  const graph = document.getElementById("graph");
  graph.replaceChildren();
  const byKind = k => st.stages.filter(s => s.stage === k || s.stage.startsWith(k + "["));
  const flowds = byKind("flowd");
  const column = list => { const c = el("div", {class: "column"}); list.forEach(s => c.append(stageBox(s))); return c; };
  const ringsOf = test => Object.keys(st.rings).filter(test);
  graph.append(column(byKind("capture")), edge(ringsOf(n => n.startsWith("capture-")), st.rings),
               column(flowds), edge(ringsOf(n => n.endsWith("-dedupd")), st.rings),
               column(byKind("dedupd")), edge(ringsOf(n => n === "dedupd-signerd"), st.rings),
               column(byKind("signerd")), edge(ringsOf(n => n === "signerd-writerd"), st.rings),
               column(byKind("writerd")));
  // shipd, the sixth stage, when the run ships or exports: it follows the store, not a ring.
  const shipd = byKind("shipd");
  if (shipd.length) {
    const e = el("div", {class: "edge"});
    e.append(el("span", {}, "store"), el("span", {}, "\u2192"));
    graph.append(e, column(shipd));
  }
  const ship = document.getElementById("ship");
  ship.replaceChildren();
  if (st.ship) {
    const head = ship.insertRow();
    head.append(el("th", {}, "shipping / export"), el("th", {}, "value"));
    const rows = Object.entries(st.ship);
    for (const [output, counters] of Object.entries(st.export || {})) {
      for (const [key, n] of Object.entries(counters)) rows.push([output + "." + key, n]);
    }
    for (const [key, n] of rows) {
      const r = ship.insertRow(); r.setAttribute("data-ship", key);
      r.append(el("td", {}, key), el("td", {}, String(n)));
    }
  }
  const drops = document.getElementById("drops");
  drops.replaceChildren(drops.rows[0]);
  for (const [cause, n] of Object.entries(st.drops)) {
    const r = drops.insertRow(); r.setAttribute("data-cause", cause);
    r.append(el("td", {}, cause), el("td", {}, String(n)));
  }
  const table = document.getElementById("stages");
  table.replaceChildren();
  const head = table.insertRow();
  for (const h of ["stage", "pid", "state", "uptime s", "restarts", "heartbeat ms", "in total", "out total"]) head.append(el("th", {}, h));
  for (const s of st.stages) {
    const r = table.insertRow();
    for (const v of [s.stage, s.pid, s.state, s.uptime_s, s.restarts, s.heartbeat_age_ms, s.in_total, s.out_total]) r.append(el("td", {}, String(v)));
  }
}
function renderLog(log) {
  const box = document.getElementById("log");
  const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  box.replaceChildren();
  box.setAttribute("data-lines", log.lines.length);
  for (const line of log.lines) {
    const level = (line.match(/^\S+ (\w+) /) || [])[1] || "";
    box.append(el("div", {class: level, "data-log-line": ""}, line));
  }
  if (atEnd) box.scrollTop = box.scrollHeight;
}
async function pollLog() {
  try {
    const response = await fetch("log.json", {cache: "no-store"});
    if (response.ok) renderLog(await response.json());
  } catch (e) { /* the status poll reports a server that does not answer */ }
}
async function poll() {
  try {
    const response = await fetch("status.json", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "(no answer: " + e.message + ")";
  }
}
poll();
pollLog();
setInterval(poll, 1000);
setInterval(pollLog, 1000);
</script>
</body>
</html>
)HTML";
  return kPage;
}

}  // namespace flowseal::supervisor
