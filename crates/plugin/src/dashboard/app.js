// The nightshift dashboard: rows from /events (server-sent events), a job's page from
// /api/jobs/NS/NAME, fetched again when that job changes. No page reloads.
"use strict";
window.__loaded = Date.now();
// The printed address brought the token; the answer set it as a cookie, which the page's own
// requests carry. Out of the address bar, it stays out of the history and of copied links.
if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname + location.hash);

const jobs = new Map(); // key -> row
let detailsTimer = null;

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function age(iso) {
  if (!iso) return "";
  let s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

function seconds(n) {
  if (n == null) return "";
  if (n < 60) return n + "s";
  if (n < 3600) return Math.floor(n / 60) + "m" + String(n % 60).padStart(2, "0") + "s";
  return Math.floor(n / 3600) + "h" + String(Math.floor((n % 3600) / 60)).padStart(2, "0") + "m";
}

function finished(row) { return row.phase === "Succeeded" || row.phase === "Failed"; }

function progressCell(row) {
  return `<progress max="100" value="${row.percent}" aria-label="${esc(row.name)} progress"
    aria-valuenow="${row.percent}" data-key="${esc(row.key)}"></progress> <span class="percent">${row.percent}%</span>
    <span class="muted">${row.done}/${row.total}</span>`;
}

function note(row) {
  if (row.phase === "Queued" || finished(row)) return esc(row.message);
  const parts = [];
  if (row.failures) parts.push(`${row.failures} failed attempt${row.failures === 1 ? "" : "s"}`);
  if (row.disruptions) parts.push(`${row.disruptions} disruption${row.disruptions === 1 ? "" : "s"}`);
  return esc(parts.join(" · "));
}

function renderList() {
  const rows = [...jobs.values()].sort((a, b) => a.order - b.order || String(b.created).localeCompare(String(a.created)));
  if (rows.length === 0) {
    $("page").innerHTML = `<p class="muted">No BackgroundJobs here yet.</p>`;
    return;
  }
  $("page").innerHTML = `<table><thead><tr><th>Job</th><th>Phase</th><th>Progress</th><th>Shards</th>
    <th>Workers</th><th>Heartbeat</th><th>ETA</th><th></th></tr></thead><tbody>${rows.map((r) => `
    <tr data-key="${esc(r.key)}"><td><a href="#/job/${esc(r.key)}">${esc(r.key)}</a></td>
    <td><span class="phase ${esc(r.phase)}">${esc(r.phase)}</span></td>
    <td>${progressCell(r)}</td><td>${r.shardsSucceeded}/${r.shards}${r.shardsFailed ? ` (${r.shardsFailed} failed)` : ""}</td>
    <td>${finished(r) ? "" : `${r.workers}/${r.workersDesired}`}</td>
    <td class="heartbeat" data-at="${esc(finished(r) ? "" : r.lastHeartbeat)}">${finished(r) ? "" : age(r.lastHeartbeat)}</td>
    <td>${finished(r) ? "" : seconds(r.eta)}</td><td>${note(r)}</td></tr>`).join("")}</tbody></table>`;
}

async function renderJob(key) {
  const row = jobs.get(key);
  if (!row) {
    $("page").innerHTML = `<p><a href="#/">All jobs</a></p><p class="muted">No job ${esc(key)} (yet).</p>`;
    return;
  }
  let details;
  try {
    const response = await fetch(`/api/jobs/${key}`);
    if (!response.ok) throw new Error(`${response.status}: ${await response.text()}`);
    details = await response.json();
  } catch (e) {
    $("banner").hidden = false;
    $("banner").textContent = `Could not load ${key}: ${e.message}`;
    return;
  }
  if (location.hash !== `#/job/${key}`) return;
  const r = details.row;
  const legend = ["succeeded", "running", "retrying", "pending", "failed", "skipped"]
    .map((s) => `<span><span class="cell ${s}"></span>${s}</span>`).join("");
  const grid = details.grid
    ? `<div class="grid" id="grid">${details.grid.map((c, i) => `<span class="cell ${c}" title="shard ${i}: ${c}"></span>`).join("")}</div>`
    : `<p class="muted">Too many shards to draw.</p>`;
  $("page").innerHTML = `<p><a href="#/">All jobs</a></p>
    <h2>${esc(r.key)} <span class="phase ${esc(r.phase)}" id="job-phase">${esc(r.phase)}</span></h2>
    <p>${progressCell(r)} ${finished(r) ? "" : `· workers ${r.workers}/${r.workersDesired}
      · heartbeat <span class="heartbeat" data-at="${esc(r.lastHeartbeat)}">${age(r.lastHeartbeat)}</span>
      · ETA ${seconds(r.eta)}`} ${r.message ? "· " + esc(r.message) : ""}</p>
    <h3>Shards</h3><div class="legend">${legend}</div>${grid}
    <h3>Events</h3><table><tbody>${details.events.map((e) => `<tr><td class="muted">${esc(e.age)}</td>
      <td>${esc(e.type)}</td><td>${esc(e.reason)}</td><td>${esc(e.message)}</td></tr>`).join("") || `<tr><td class="muted">none</td></tr>`}</tbody></table>
    <h3>Workers' last log lines</h3><pre class="logs">${esc(details.logs.join("\n")) || "no running worker"}</pre>`;
}

function render() {
  const m = location.hash.match(/^#\/job\/([^/]+\/[^/]+)$/);
  if (m) renderJob(decodeURIComponent(m[1]));
  else renderList();
}

function changed(key) {
  const m = location.hash.match(/^#\/job\/([^/]+\/[^/]+)$/);
  if (!m) return renderList();
  if (decodeURIComponent(m[1]) !== key) return;
  // At most one fetch a second for the job on screen.
  if (detailsTimer) return;
  detailsTimer = setTimeout(() => { detailsTimer = null; render(); }, 1000);
}

function connect() {
  const source = new EventSource("/events");
  source.addEventListener("open", () => {
    $("connection").textContent = "live";
    $("banner").hidden = true;
  });
  source.addEventListener("error", () => {
    $("connection").textContent = "disconnected";
    $("banner").hidden = false;
    // CLOSED: the dashboard answered, but not with events (a refusal, after a restart gave it a
    // new token); the browser gives up on such a stream, so the user has to come back.
    $("banner").textContent = source.readyState === EventSource.CLOSED
      ? "The dashboard no longer answers this page (restarted?): open the address it printed."
      : "Disconnected from the dashboard — retrying…";
  });
  source.addEventListener("snapshot", (e) => {
    jobs.clear();
    for (const row of JSON.parse(e.data).rows) jobs.set(row.key, row);
    render();
  });
  source.addEventListener("job", (e) => {
    const row = JSON.parse(e.data);
    jobs.set(row.key, row);
    $("banner").hidden = true;
    changed(row.key);
  });
  source.addEventListener("delete", (e) => {
    jobs.delete(JSON.parse(e.data).key);
    render();
  });
  source.addEventListener("trouble", (e) => {
    $("banner").hidden = false;
    $("banner").textContent = `The cluster cannot be watched right now — retrying: ${JSON.parse(e.data).message}`;
  });
}

// Heartbeat ages tick here, between updates.
setInterval(() => {
  for (const el of document.querySelectorAll(".heartbeat[data-at]")) {
    if (el.dataset.at) el.textContent = age(el.dataset.at);
  }
}, 1000);

window.addEventListener("hashchange", render);
window.addEventListener("unhandledrejection", (e) => {
  $("banner").hidden = false;
  $("banner").textContent = `Something went wrong: ${e.reason}`;
});
connect();
