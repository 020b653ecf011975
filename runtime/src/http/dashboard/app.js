// The wasmjobs dashboard: one page, no build step, talking to the same API as the CLI
// (docs/api.md) with the token kept in this browser. Each view renders into #view and may
// leave a `stop` function that ends its live updates when another view replaces it.

const TOKEN_KEY = "wasmjobs.token";
// The final states, of a job and of a run alike.
const FINAL = new Set(["succeeded", "failed", "cancelled"]);

const view = document.getElementById("view");
let stopView = () => {};
let modulesByDigest = new Map();

// ---------- API ----------

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

function headers(extra = {}) {
  const h = { ...extra };
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}

async function api(path, opts = {}) {
  const res = await fetch(path, { ...opts, headers: headers(opts.headers) });
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { detail: text }; }
  if (!res.ok) {
    const e = new ApiError(res.status, body);
    if (res.status === 401) askToken(token() ? `The token was refused: ${e.message}` : "This server needs a token.");
    throw e;
  }
  return body;
}

// Server-Sent Events over fetch (EventSource cannot send the Authorization header). Calls
// `on(name, data)` for each event until the stream ends or `signal` aborts.
async function sse(path, on, signal) {
  const res = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!res.ok || !res.body) {
    if (res.status === 401) askToken("The token was refused.");
    return;
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;
      let parsed = data.join("\n");
      try { parsed = JSON.parse(parsed); } catch { /* text */ }
      on(name, parsed);
    }
  }
}

// ---------- token ----------

const dialog = document.getElementById("token-dialog");

function askToken(reason) {
  document.getElementById("token-reason").textContent = reason || "";
  if (!dialog.open) dialog.showModal();
}

document.getElementById("token-form").addEventListener("submit", () => {
  localStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value.trim());
  document.getElementById("token-input").value = "";
  showSignout();
  route();
});

document.getElementById("signout").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  showSignout();
  route();
});

function showSignout() {
  document.getElementById("signout").hidden = !token();
}

// ---------- helpers ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const badge = (state) => h("span", { class: `state ${state}` }, state);
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "—");
const jobLink = (id) => h("a", { href: `#/jobs/${id}` }, `#${id}`);

function ago(ms) {
  if (!ms) return "—";
  const s = Math.round((Date.now() - ms) / 1000);
  if (Math.abs(s) < 60) return s >= 0 ? `${s}s ago` : `in ${-s}s`;
  const m = Math.round(s / 60);
  if (Math.abs(m) < 60) return m >= 0 ? `${m} min ago` : `in ${-m} min`;
  const hr = Math.round(m / 60);
  if (Math.abs(hr) < 48) return hr >= 0 ? `${hr} h ago` : `in ${-hr} h`;
  return when(ms);
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function micros(us) {
  if (us === null || us === undefined) return "—";
  return us < 1000 ? `${us} µs` : us < 1e6 ? `${(us / 1000).toFixed(1)} ms` : `${(us / 1e6).toFixed(2)} s`;
}

function number(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
}

function moduleName(digest) {
  const m = modulesByDigest.get(digest);
  return (m && (m.name || m.names[0])) || (digest ? digest.slice(0, 15) + "…" : "—");
}

async function loadModules() {
  const { modules } = await api("/v1/modules");
  modulesByDigest = new Map(modules.map((m) => [m.digest, m]));
  return modules;
}

// Bytes as people read them: JSON pretty-printed, text as it is, anything else as its size and
// a hex preview.
function showBytes(b64) {
  if (b64 === undefined || b64 === null) return h("p", { class: "muted" }, "none");
  const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  let text = null;
  try { text = new TextDecoder("utf-8", { fatal: true }).decode(raw); } catch { /* binary */ }
  if (text !== null) {
    try { return h("pre", {}, JSON.stringify(JSON.parse(text), null, 2)); } catch { return h("pre", {}, text); }
  }
  const hex = Array.from(raw.slice(0, 256), (x) => x.toString(16).padStart(2, "0")).join(" ");
  return h("div", {}, h("p", { class: "muted" }, `binary, ${bytes(raw.length)}`), h("pre", { class: "hex" }, hex + (raw.length > 256 ? " …" : "")));
}

function outputOf(job) {
  if (job.output !== undefined) return h("pre", {}, JSON.stringify(job.output, null, 2));
  if (job.output_text !== undefined) return h("pre", {}, job.output_text);
  if (job.output_base64 !== undefined) return showBytes(job.output_base64);
  return h("p", { class: "muted" }, FINAL.has(job.state) ? "none" : "not yet");
}

function notice(message) {
  const n = document.getElementById("notice");
  n.textContent = message || "";
  n.hidden = !message;
}

// Runs `fn` now and every `ms` until the view changes; errors show as a notice.
function every(ms, fn) {
  let live = true;
  const tick = async () => {
    if (!live) return;
    try { await fn(); notice(""); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) notice(e.message); }
    if (live) setTimeout(tick, ms);
  };
  tick();
  return () => { live = false; };
}

// ---------- overview ----------

function overview() {
  const cards = h("div", { class: "cards", id: "counts" });
  const chart = h("div", { id: "chart" });
  const rates = h("p", { id: "rates", class: "muted" });
  const nodes = h("div", { class: "table-wrap", id: "nodes" });
  view.replaceChildren(h("h1", {}, "Overview"), cards, h("h2", {}, "Jobs ended, last hour"), rates, chart, h("h2", {}, "Nodes"), nodes);
  return every(2000, async () => {
    const s = await api("/v1/stats");
    const total = (m) => m.succeeded + m.failed + m.cancelled;
    const ended = s.minutes.reduce((a, m) => a + total(m), 0);
    const failed = s.minutes.reduce((a, m) => a + m.failed, 0);
    const slots = s.nodes.reduce((a, n) => a + n.slots, 0);
    const busy = s.nodes.reduce((a, n) => a + n.busy, 0);
    cards.replaceChildren(
      ...[["queued", s.jobs.queued], ["running", s.jobs.running], ["scheduled", s.jobs.scheduled],
        ["ended (1 h)", ended], ["runs running", s.runs.running], ["busy slots", `${busy} / ${slots}`]]
        .map(([l, n]) => h("div", { class: "card", "data-count": l }, h("div", { class: "n" }, typeof n === "number" ? number(n) : n), h("div", { class: "l" }, l))));
    const perMin = ended / 60;
    const thisMinute = s.minutes.filter((m) => m.minute >= s.at - (s.at % 60000)).reduce((a, m) => a + total(m), 0);
    rates.textContent = `${perMin < 10 ? perMin.toFixed(1) : number(Math.round(perMin))} jobs/min on average · ${number(thisMinute)} this minute · failure rate ${ended ? ((100 * failed) / ended).toFixed(1) : "0.0"} %`;
    chart.replaceChildren(barChart(s.minutes, s.at));
    nodes.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "node"), h("th", {}, "busy"), h("th", {}, "slots"), h("th", {}, ""), h("th", {}, "seen"))),
      h("tbody", {}, s.nodes.map((n) => h("tr", {},
        h("td", {}, n.node), h("td", {}, n.busy), h("td", {}, n.slots),
        h("td", {}, h("div", { class: "bar" }, h("div", { style: `width:${n.slots ? (100 * n.busy) / n.slots : 0}%` }))),
        h("td", {}, ago(n.seen_at)))))));
  });
}

// Stacked bars, one a minute over the last hour: succeeded, failed, cancelled.
function barChart(minutes, at) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 600 120");
  svg.setAttribute("preserveAspectRatio", "none");
  const start = at - (at % 60000) - 59 * 60000;
  const max = Math.max(1, ...minutes.map((m) => m.succeeded + m.failed + m.cancelled));
  for (const m of minutes) {
    const i = Math.round((m.minute - start) / 60000);
    if (i < 0 || i > 59) continue;
    let y = 120;
    for (const [k, color] of [["succeeded", "var(--succeeded)"], ["failed", "var(--failed)"], ["cancelled", "var(--cancelled)"]]) {
      const hgt = (110 * m[k]) / max;
      if (!hgt) continue;
      y -= hgt;
      const r = document.createElementNS(ns, "rect");
      Object.entries({ x: i * 10 + 1, y, width: 8, height: hgt, fill: color }).forEach(([a, v]) => r.setAttribute(a, v));
      const t = document.createElementNS(ns, "title");
      t.textContent = `${new Date(m.minute).toLocaleTimeString()}: ${m[k]} ${k}`;
      r.append(t);
      svg.append(r);
    }
  }
  return svg;
}

// ---------- jobs ----------

const SINCE = { "": 0, "15m": 15 * 60000, "1h": 3600000, "1d": 86400000 };

function jobs(params) {
  const state = params.get("state") || "";
  const module = params.get("module") || "";
  const queue = params.get("queue") || "";
  const since = params.get("since") || "";
  const cursor = params.get("cursor") || "";
  const go = (changes) => {
    const p = new URLSearchParams({ state, module, queue, since, ...changes });
    for (const [k, v] of [...p]) if (!v) p.delete(k);
    location.hash = `#/jobs?${p}`;
  };
  const stateSel = h("select", { id: "filter-state", onchange: (e) => go({ state: e.target.value, cursor: "" }) },
    ["", "scheduled", "queued", "running", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s, selected: s === state }, s || "any state")));
  const moduleSel = h("select", { id: "filter-module", onchange: (e) => go({ module: e.target.value, cursor: "" }) }, h("option", { value: "" }, "any module"));
  const queueSel = h("select", { id: "filter-queue", onchange: (e) => go({ queue: e.target.value, cursor: "" }) }, h("option", { value: "" }, "any queue"));
  const sinceSel = h("select", { id: "filter-since", onchange: (e) => go({ since: e.target.value, cursor: "" }) },
    Object.keys(SINCE).map((k) => h("option", { value: k, selected: k === since }, k ? `last ${k}` : "any time")));
  const search = h("input", { id: "job-search", type: "search", placeholder: "job id", inputmode: "numeric", size: 10 });
  const form = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); const id = search.value.trim().replace(/^#/, ""); if (/^\d+$/.test(id)) location.hash = `#/jobs/${id}`; } },
    h("label", {}, "state", stateSel), h("label", {}, "module", moduleSel), h("label", {}, "queue", queueSel), h("label", {}, "created", sinceSel),
    h("label", {}, "go to job", search), h("button", { type: "submit" }, "Open"));
  const body = h("tbody", { id: "jobs" });
  const pager = h("div", { class: "pager" });
  view.replaceChildren(h("h1", {}, "Jobs"), form, h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["job", "module", "queue", "state", "attempts", "created", "finished"].map((c) => h("th", {}, c)))), body)), pager);
  loadModules().then((mods) => {
    for (const m of mods) for (const n of m.names) moduleSel.append(h("option", { value: n, selected: n === module }, n));
  }).catch(() => {});
  // The queues that are declared or have unfinished jobs, and the one asked for.
  api("/v1/queues").then((list) => {
    const names = new Set(list.queues.map((q) => q.name));
    if (queue) names.add(queue);
    for (const n of [...names].sort()) queueSel.append(h("option", { value: n, selected: n === queue }, n));
  }).catch(() => {});
  return every(2000, async () => {
    const q = new URLSearchParams({ limit: "50" });
    if (state) q.set("state", state);
    if (module) q.set("module", module);
    if (queue) q.set("queue", queue);
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/v1/jobs?${q}`);
    const after = SINCE[since] ? Date.now() - SINCE[since] : 0;
    // Newest first: once a job is older than the window, so are all after it.
    const shown = page.jobs.filter((j) => j.created_at >= after);
    const more = page.next_cursor && shown.length === page.jobs.length;
    body.replaceChildren(...(shown.length ? shown.map((j) => h("tr", { "data-job": j.id },
      h("td", {}, jobLink(j.id)), h("td", {}, moduleName(j.module)), h("td", {}, j.queue), h("td", {}, badge(j.state)),
      h("td", {}, j.attempt_count), h("td", { title: when(j.created_at) }, ago(j.created_at)), h("td", {}, when(j.finished_at))))
      : [h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No jobs."))]));
    pager.replaceChildren(
      cursor ? h("button", { onclick: () => go({ cursor: "" }) }, "← Newest") : "",
      more ? h("button", { id: "older", onclick: () => go({ cursor: page.next_cursor }) }, "Older →") : "");
  });
}

function job(id) {
  const ctl = new AbortController();
  const head = h("h1", {}, `Job #${id}`);
  const actions = h("div", { class: "pager" });
  const facts = h("dl", { class: "kv", id: "job-facts" });
  const attempts = h("tbody", { id: "attempts" });
  const input = h("div", { id: "job-input" });
  const output = h("div", { id: "job-output" });
  const progress = h("div", { id: "job-progress" });
  const logs = h("pre", { class: "logs", id: "job-logs" });
  view.replaceChildren(head, actions, facts,
    h("h2", {}, "Attempts"), h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["#", "outcome", "error", "fuel", "peak memory", "wall time", "worker", "started"].map((c) => h("th", {}, c)))), attempts)),
    h("div", { class: "grid2" }, h("div", {}, h("h2", {}, "Input"), input), h("div", {}, h("h2", {}, "Output"), output)),
    h("h2", {}, "Progress"), progress, h("h2", {}, "Logs"), logs);
  let last = null;
  const refresh = async () => {
    const j = await api(`/v1/jobs/${id}?include=input`);
    await loadModules().catch(() => {});
    last = j;
    head.replaceChildren(`Job #${id}`, badge(j.state));
    facts.replaceChildren(
      h("dt", {}, "module"), h("dd", {}, `${moduleName(j.module)} (${j.module})`),
      h("dt", {}, "queue"), h("dd", {}, j.queue),
      ...(j.concurrency_key ? [h("dt", {}, "concurrency key"), h("dd", { id: "job-key" }, `${j.concurrency_key} (at most ${j.concurrency_limit} at once)`,
        j.waiting_for_key ? h("span", { class: "muted" }, " · waiting for a place") : "")] : []),
      h("dt", {}, "created"), h("dd", {}, when(j.created_at)),
      h("dt", {}, "finished"), h("dd", {}, when(j.finished_at)),
      ...(j.outcome ? [h("dt", {}, "outcome"), h("dd", { id: "job-outcome" }, j.outcome)] : []),
      ...(j.error ? [h("dt", {}, "error"), h("dd", { id: "job-error", class: "error" }, j.error)] : []),
      ...(j.workflow_ref ? [h("dt", {}, "workflow"), h("dd", {}, j.workflow_ref)] : []));
    attempts.replaceChildren(...(j.attempts.length ? j.attempts.map((a) => h("tr", {},
      h("td", {}, a.attempt), h("td", {}, a.outcome ? badge(a.outcome === "succeeded" ? "succeeded" : a.outcome === "cancelled" ? "cancelled" : "failed") : badge("running"), a.outcome && a.outcome !== "succeeded" && a.outcome !== "failed" && a.outcome !== "cancelled" ? ` ${a.outcome}${a.trap ? ` (${a.trap})` : ""}` : ""),
      h("td", { class: "wrap" }, a.error || ""), h("td", {}, number(a.fuel_consumed)), h("td", {}, bytes(a.peak_memory_bytes)),
      h("td", {}, micros(a.wall_time_us)), h("td", {}, a.worker), h("td", {}, when(a.started_at))))
      : [h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No attempt yet."))]));
    input.replaceChildren(showBytes(j.input_base64));
    output.replaceChildren(outputOf(j));
    // The buttons are redrawn only when what they offer changes, so a click never lands on
    // one being replaced.
    const offer = `${j.state}/${j.cancel_requested}`;
    if (actions.dataset.offer !== offer) actions.dataset.offer = offer, actions.replaceChildren(
      !FINAL.has(j.state) ? h("button", { class: "danger", id: "cancel", disabled: j.cancel_requested, onclick: () => act("cancel") }, j.cancel_requested ? "Cancelling…" : "Cancel") : "",
      j.state === "failed" || j.state === "cancelled" ? h("button", { class: "primary", id: "retry", onclick: () => act("retry") }, "Retry") : "");
    return j;
  };
  const act = async (what) => {
    try { await api(`/v1/jobs/${id}/${what}`, { method: "POST" }); await refresh(); if (what === "retry") follow(); } catch (e) { notice(e.message); }
  };
  const follow = () => {
    logs.textContent = "";
    progress.replaceChildren();
    sse(`/v1/jobs/${id}/events`, (name, data) => {
      if (name === "log") {
        const line = h("span", { class: data.level || "" }, `${data.level ? `${data.level.toUpperCase()} ` : ""}${data.source && data.source !== "report" ? `[${data.source}] ` : ""}${data.message ?? JSON.stringify(data)}\n`);
        logs.append(line);
      } else if (name === "progress") {
        const pct = data.total ? Math.min(100, (100 * data.done) / data.total) : null;
        progress.replaceChildren(pct !== null ? h("progress", { max: 100, value: pct }) : "", h("span", { class: "muted" }, ` ${number(data.done)}${data.total ? ` / ${number(data.total)}` : ""}`));
      } else if (name === "state" || name === "end" || name === "cancel_requested") {
        refresh().catch((e) => notice(e.message));
      }
    }, ctl.signal).catch(() => {});
  };
  refresh().then(follow).catch((e) => { if (!(e instanceof ApiError && e.status === 401)) view.replaceChildren(h("h1", {}, `Job #${id}`), h("p", { class: "error" }, e.message)); });
  const poll = every(3000, async () => { if (last && !FINAL.has(last.state)) await refresh(); });
  return () => { ctl.abort(); poll(); };
}

// ---------- workflow runs ----------

function runs(params) {
  const workflow = params.get("workflow") || "";
  const state = params.get("state") || "";
  const cursor = params.get("cursor") || "";
  const go = (changes) => {
    const p = new URLSearchParams({ workflow, state, ...changes });
    for (const [k, v] of [...p]) if (!v) p.delete(k);
    location.hash = `#/runs?${p}`;
  };
  const form = h("form", { class: "filters" },
    h("label", {}, "state", h("select", { onchange: (e) => go({ state: e.target.value, cursor: "" }) },
      ["", "running", "cancelling", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s, selected: s === state }, s || "any state")))),
    workflow ? h("span", {}, `workflow ${workflow} `, h("button", { type: "button", onclick: () => go({ workflow: "", cursor: "" }) }, "all workflows")) : "");
  const body = h("tbody", { id: "runs" });
  const pager = h("div", { class: "pager" });
  view.replaceChildren(h("h1", {}, "Workflow runs"), form, h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["run", "workflow", "state", "created", "finished", "error"].map((c) => h("th", {}, c)))), body)), pager);
  return every(2000, async () => {
    const q = new URLSearchParams({ limit: "50" });
    if (workflow) q.set("workflow", workflow);
    if (state) q.set("state", state);
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/v1/workflow-runs?${q}`);
    body.replaceChildren(...(page.runs.length ? page.runs.map((r) => h("tr", { "data-run": r.id },
      h("td", {}, h("a", { href: `#/runs/${r.id}` }, `#${r.id}`)), h("td", {}, `${r.workflow} v${r.version}`), h("td", {}, badge(r.state)),
      h("td", { title: when(r.created_at) }, ago(r.created_at)), h("td", {}, when(r.finished_at)), h("td", { class: "wrap error" }, r.error || "")))
      : [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No runs."))]));
    pager.replaceChildren(
      cursor ? h("button", { onclick: () => go({ cursor: "" }) }, "← Newest") : "",
      page.next_cursor ? h("button", { onclick: () => go({ cursor: page.next_cursor }) }, "Older →") : "");
  });
}

function run(id) {
  const head = h("h1", {}, `Run #${id}`);
  const actions = h("div", { class: "pager" });
  const facts = h("dl", { class: "kv" });
  const dag = h("div", { class: "dag", id: "dag" });
  const table = h("tbody", { id: "run-nodes" });
  view.replaceChildren(head, actions, facts, h("h2", {}, "Graph"), dag, h("h2", {}, "Nodes"),
    h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, ["node", "state", "job", "elements", "started", "finished", "error"].map((c) => h("th", {}, c)))), table)));
  let final = false;
  return every(1000, async () => {
    if (final) return;
    const r = await api(`/v1/workflow-runs/${id}`);
    final = FINAL.has(r.state);
    head.replaceChildren(`Run #${id}`, badge(r.state));
    facts.replaceChildren(h("dt", {}, "workflow"), h("dd", {}, h("a", { href: `#/runs?workflow=${encodeURIComponent(r.workflow)}` }, `${r.workflow} v${r.version}`)),
      h("dt", {}, "created"), h("dd", {}, when(r.created_at)), h("dt", {}, "finished"), h("dd", {}, when(r.finished_at)),
      ...(r.error ? [h("dt", {}, "error"), h("dd", { class: "error" }, r.error)] : []));
    actions.replaceChildren(!final ? h("button", { class: "danger", disabled: r.cancel_requested, onclick: async () => {
      try { await api(`/v1/workflow-runs/${id}/cancel`, { method: "POST" }); } catch (e) { notice(e.message); }
    } }, r.cancel_requested ? "Cancelling…" : "Cancel run")
      // A failed or cancelled run goes on from where it failed (docs/workflows.md).
      : r.state !== "succeeded" ? h("button", { id: "retry-run", class: "primary", onclick: async () => {
        try { await api(`/v1/workflow-runs/${id}/retry`, { method: "POST" }); final = false; } catch (e) { notice(e.message); }
      } }, "Retry run") : "");
    // Redrawn only when a node changed, so a click never lands on a node being replaced.
    const drawn = JSON.stringify(r.nodes.map((n) => [n.name, n.state, n.job, n.items && [n.items.done, n.items.failed]]));
    if (dag.dataset.drawn !== drawn) dag.dataset.drawn = drawn, dag.replaceChildren(drawDag(r.nodes));
    table.replaceChildren(...r.nodes.map((n) => h("tr", { "data-node": n.name },
      h("td", {}, n.name), h("td", {}, badge(n.state)), h("td", {}, n.job ? jobLink(n.job) : "—"),
      h("td", {}, n.items ? `${n.items.done} / ${n.items.total} done, ${n.items.failed} failed` : "—"),
      h("td", {}, when(n.started_at)), h("td", {}, when(n.finished_at)), h("td", { class: "wrap error" }, n.error || ""))));
  });
}

// Layers by longest path from a root; nodes coloured by state; a click opens the node's job
// (a for_each node's first element's).
function drawDag(nodes) {
  const ns = "http://www.w3.org/2000/svg";
  const depth = new Map();
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const depthOf = (n, seen = new Set()) => {
    if (depth.has(n.name)) return depth.get(n.name);
    if (seen.has(n.name)) return 0;
    seen.add(n.name);
    const d = Math.max(-1, ...n.needs.map((u) => (byName.has(u) ? depthOf(byName.get(u), seen) : -1))) + 1;
    depth.set(n.name, d);
    return d;
  };
  nodes.forEach((n) => depthOf(n));
  const layers = [];
  for (const n of nodes) (layers[depth.get(n.name)] ||= []).push(n);
  const W = 160, H = 46, GX = 60, GY = 18;
  const pos = new Map();
  layers.forEach((layer, x) => layer.forEach((n, y) => pos.set(n.name, { x: 10 + x * (W + GX), y: 10 + y * (H + GY) })));
  const width = 20 + layers.length * (W + GX) - GX;
  const height = 20 + Math.max(...layers.map((l) => l.length)) * (H + GY) - GY;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const el = (tag, attrs) => { const e = document.createElementNS(ns, tag); Object.entries(attrs).forEach(([k, v]) => e.setAttribute(k, v)); return e; };
  for (const n of nodes) for (const u of n.needs) {
    const a = pos.get(u), b = pos.get(n.name);
    if (!a || !b) continue;
    svg.append(el("path", { d: `M${a.x + W},${a.y + H / 2} C${a.x + W + GX / 2},${a.y + H / 2} ${b.x - GX / 2},${b.y + H / 2} ${b.x},${b.y + H / 2}`, fill: "none", stroke: "#8c959f" }));
  }
  for (const n of nodes) {
    const p = pos.get(n.name);
    const g = el("g", { class: `node ${n.state}`, "data-node": n.name, "data-state": n.state, transform: `translate(${p.x},${p.y})` });
    g.append(el("rect", { width: W, height: H, rx: 8, fill: `var(--${n.state}, #afb8c1)`, stroke: "#57606a" }));
    const name = el("text", { x: 10, y: 19, fill: n.state === "skipped" || n.state === "pending" ? "#1b1f24" : "#fff", "font-weight": 600 });
    name.textContent = n.name;
    const sub = el("text", { x: 10, y: 36, fill: n.state === "skipped" || n.state === "pending" ? "#1b1f24" : "#fff" });
    sub.textContent = n.items ? `${n.state} · ${n.items.done}/${n.items.total}${n.items.failed ? ` (${n.items.failed} failed)` : ""}` : n.state;
    g.append(name, sub);
    const target = n.job || (n.items && n.items.elements.find((e) => e.job) || {}).job;
    if (target) g.addEventListener("click", () => { location.hash = `#/jobs/${target}`; });
    svg.append(g);
  }
  return svg;
}

// ---------- queues ----------

function queues() {
  const body = h("tbody", { id: "queues" });
  view.replaceChildren(h("h1", {}, "Queues"), h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["queue", "queued", "scheduled", "running", "weight", "max running", "rate", "state", ""].map((c) => h("th", {}, c)))), body)));
  const act = (q, verb) => async () => {
    try {
      await api(`/v1/queues/${encodeURIComponent(q.name)}/${verb}`, { method: "POST" });
      render();
    } catch (err) { notice(err.message); }
  };
  return every(2000, async () => {
    const { queues: list } = await api("/v1/queues");
    body.replaceChildren(...(list.length ? list.map((q) => h("tr", { "data-queue": q.name },
      h("td", {}, h("a", { href: `#/jobs?queue=${encodeURIComponent(q.name)}` }, q.name)),
      h("td", {}, q.queued), h("td", {}, q.scheduled), h("td", {}, q.running), h("td", {}, q.weight),
      h("td", {}, q.max_running ?? "—"), h("td", {}, q.rate ?? "—"),
      h("td", { class: "queue-state" }, q.paused ? "paused" : "active"),
      h("td", {}, h("button", { class: q.paused ? "primary" : "", onclick: act(q, q.paused ? "resume" : "pause") }, q.paused ? "Resume" : "Pause"))))
      : [h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No queues."))]));
  });
}

// ---------- workflows, modules, schedules ----------

async function workflows() {
  const { workflows: list } = await api("/v1/workflows");
  view.replaceChildren(h("h1", {}, "Workflows"), h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["name", "version", "nodes", "runs", "created"].map((c) => h("th", {}, c)))),
    h("tbody", {}, list.length ? list.map((w) => h("tr", {}, h("td", {}, w.name), h("td", {}, w.version),
      h("td", { class: "wrap" }, ((w.definition && w.definition.nodes) || []).map((n) => n.name).join(", ")), h("td", {}, h("a", { href: `#/runs?workflow=${encodeURIComponent(w.name)}` }, "runs")),
      h("td", {}, when(w.created_at)))) : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No workflows."))))));
}

async function modules() {
  const list = await loadModules();
  const file = h("input", { type: "file", id: "upload-file", accept: ".wasm,application/wasm", required: true });
  const name = h("input", { type: "text", id: "upload-name", placeholder: "name (optional)" });
  const status = h("span", { class: "muted", id: "upload-status" });
  const form = h("form", { class: "filters", onsubmit: async (e) => {
    e.preventDefault();
    if (!file.files[0]) return;
    status.textContent = "Uploading and compiling…";
    try {
      const q = name.value.trim() ? `?name=${encodeURIComponent(name.value.trim())}` : "";
      const m = await api(`/v1/modules${q}`, { method: "POST", headers: { "Content-Type": "application/wasm" }, body: file.files[0] });
      status.textContent = `Stored ${m.digest}`;
      render();
    } catch (err) { status.textContent = ""; notice(err.message); }
  } }, h("label", {}, "component", file), h("label", {}, "name", name), h("button", { class: "primary", type: "submit" }, "Upload"), status);
  view.replaceChildren(h("h1", {}, "Modules"), form, h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["names", "digest", "world", "capabilities", "size", "uploaded"].map((c) => h("th", {}, c)))),
    h("tbody", { id: "modules" }, list.length ? list.map((m) => h("tr", {}, h("td", {}, m.names.join(", ") || "—"), h("td", { title: m.digest }, m.digest.slice(0, 19) + "…"),
      h("td", {}, m.world), h("td", { class: "wrap" }, m.imports.join(", ") || "none"), h("td", {}, bytes(m.size)), h("td", {}, when(m.created_at))))
      : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No modules."))))));
}

// What a schedule fires: its job's module, or a link to its workflow (and its last run).
function scheduleTarget(s) {
  const w = s.target && s.target.workflow;
  if (w) {
    return h("span", {}, "workflow ", h("a", { href: `#/runs?workflow=${encodeURIComponent(w.name)}` }, w.name),
      w.version ? ` v${w.version}` : "", s.last_run ? h("span", {}, " · last ", h("a", { href: `#/runs/${s.last_run}` }, `run ${s.last_run}`)) : "");
  }
  return s.target && s.target.module ? s.target.module : JSON.stringify(s.target);
}

async function schedules() {
  const { schedules: list } = await api("/v1/schedules");
  view.replaceChildren(h("h1", {}, "Schedules"), h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["name", "cron", "target", "next fire", "created"].map((c) => h("th", {}, c)))),
    h("tbody", {}, list.length ? list.map((s) => h("tr", {}, h("td", {}, s.name || `#${s.id}`), h("td", {}, h("code", {}, s.cron), ` ${s.tz || "UTC"}`, s.overlap && s.overlap !== "allow" ? ` (${s.overlap})` : ""),
      h("td", { class: "wrap" }, scheduleTarget(s)),
      h("td", { title: when(s.next_run_at) }, `${when(s.next_run_at)} (${ago(s.next_run_at)})`), h("td", {}, when(s.created_at))))
      : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No schedules."))))));
}

// ---------- routing ----------

function once(render) {
  return () => { render().catch((e) => { if (!(e instanceof ApiError && e.status === 401)) view.replaceChildren(h("p", { class: "error" }, e.message)); }); return () => {}; };
}

let render = () => {};

function route() {
  stopView();
  notice("");
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const parts = (path || "/").split("/").filter(Boolean);
  const section = parts[0] || "overview";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === section));
  const views = {
    overview: () => overview(),
    jobs: () => (parts[1] ? job(parts[1]) : jobs(params)),
    runs: () => (parts[1] ? run(parts[1]) : runs(params)),
    queues: () => queues(),
    workflows: once(workflows),
    modules: once(modules),
    schedules: once(schedules),
  };
  render = () => { stopView(); stopView = (views[section] || views.overview)() || (() => {}); };
  render();
}

window.addEventListener("hashchange", route);
showSignout();
route();
