// AGP Rerank console: a small script over the JSON API (no framework, no CDN). Pages are
// hash routes; every call carries the key the user entered (kept in this browser only).
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const view = () => $("#view");
let poller = null;

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function fmt(x, d = 3) {
  return typeof x === "number" ? (Number.isInteger(x) ? x.toLocaleString("en") : x.toFixed(d)) : esc(x);
}
function key() {
  return localStorage.getItem("agp.key") || "";
}

async function api(method, path, body, as = "json") {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (key()) headers.authorization = "Bearer " + key();
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  if (!r.ok) {
    let msg = text;
    try { msg = JSON.parse(text).error.message; } catch (_) { /* not JSON */ }
    const e = new Error(r.status === 403 ? msg + " (this key's scope is not enough)" : msg);
    e.status = r.status;
    throw e;
  }
  return as === "text" ? text : text ? JSON.parse(text) : null;
}

function show(html) {
  if (poller) { clearInterval(poller); poller = null; }
  view().innerHTML = html;
}
function fail(e, where = "#view") {
  // Gone: the user went to another page before this one's answer came (or its own
  // rendering failed for that reason); the page now shown is not this one's to write.
  const el = $(where);
  if (!el) return;
  const msg = e.status === 401 ? "Enter an API key above (this server has keys on)." : e.message;
  el.innerHTML = `<p class="error" role="alert">${esc(msg)}</p>`;
}

// ---- overview -------------------------------------------------------------------------
// The LLM budget and this hour's and today's spend (admin keys only: others skip it).
async function budget() {
  let b;
  try { b = await api("GET", "/v1/budget"); } catch (_) { return; }
  const cell = (spent, limit) => `${fmt(spent)} / ${limit == null ? "unlimited" : fmt(limit)}`;
  const row = (name, s, perHour, perDay) =>
    `<tr><td>${name}</td><td>${cell(s.tokens_this_hour, perHour)}</td><td>${cell(s.tokens_today, perDay)}</td></tr>`;
  const el = $("#budget");
  if (!el) return;
  // Cost rows only when a cost limit is set or priced calls spent something.
  const money = (v) => (v == null ? "unlimited" : Number(v).toFixed(4));
  const costRow = (name, s, perHour, perDay) =>
    `<tr><td>${name}</td><td>${money(s.cost_this_hour)} / ${money(perHour)}</td><td>${money(s.cost_today)} / ${money(perDay)}</td></tr>`;
  const costs = [b.interactive_cost_per_hour, b.interactive_cost_per_day, b.background_cost_per_hour,
    b.background_cost_per_day].some((v) => v != null)
    || b.interactive.cost_today > 0 || b.background.cost_today > 0;
  el.innerHTML = "<h3>LLM budget (spent / limit; UTC windows)</h3><table id='budget-table'><thead><tr><th>work</th><th>this hour</th><th>today</th></tr></thead><tbody>"
    + row("interactive (reranks), tokens", b.interactive, b.interactive_tokens_per_hour, b.interactive_tokens_per_day)
    + row("background (jobs, refreshes), tokens", b.background, b.background_tokens_per_hour, b.background_tokens_per_day)
    + (costs
      ? costRow("interactive, cost", b.interactive, b.interactive_cost_per_hour, b.interactive_cost_per_day)
        + costRow("background, cost", b.background, b.background_cost_per_hour, b.background_cost_per_day)
      : "")
    + "</tbody></table>";
}

async function overview() {
  show("<h2>Overview</h2><div id='ov'>Loading…</div>");
  try {
    const o = await api("GET", "/v1/console/overview");
    const a = o.activity;
    let html = `<div class="cards">
      <div class="card"><div class="value" id="items">${fmt(a.items)}</div><div class="label">items</div></div>
      <div class="card"><div class="value">${fmt(a.users)}</div><div class="label">users</div></div>
      <div class="card"><div class="value">${fmt(a.interactions)}</div><div class="label">interactions</div></div>
      <div class="card"><div class="value">${o.llm.configured ? esc(o.llm.model) : "none"}</div><div class="label">ranking model</div></div></div>`;
    if (a.items === 0) {
      html += `<div class="notice" id="first-run"><p><strong>This project is empty.</strong> Load the bundled sample
        (Amazon Games, 300 users) to try everything, or import your data with <code>agp import</code>.</p>
        <button id="load-sample">Load the sample data</button> <span id="sample-status" role="status"></span></div>`;
    }
    if (!o.llm.configured) {
      html += `<div class="notice" id="llm-hint"><p><strong>No LLM is configured:</strong> reranks answer with their
        fallback order. Run <code>agp serve --llm local</code> (a local llama-server with a small model), or set
        <code>AGP_LLM_BASE_URL</code> (and <code>AGP_LLM_API_KEY</code>, <code>AGP_LLM_MODEL</code>) for any
        OpenAI-compatible server.</p></div>`;
    }
    html += "<div class='row'><section><h3>Reranks per minute, last hour, by fallback reason</h3>" + rerankTable(a.reranks) + "</section>";
    html += "<section><h3>LLM calls by role, last hour</h3>" + llmTable(a.llm) + "</section></div>";
    html += "<h3>LLM calls per minute by role (calls / tokens / mean latency ms)</h3>" + llmMinutes(a.llm);
    html += "<div id='budget'></div>";
    $("#ov").innerHTML = html;
    budget();
    const btn = $("#load-sample");
    if (btn) btn.onclick = async () => {
      btn.disabled = true;
      $("#sample-status").textContent = "Loading…";
      try {
        const r = await api("POST", "/v1/console/sample", {});
        $("#sample-status").textContent = `Loaded ${r.items} items and ${r.interactions} interactions.`;
        setTimeout(() => { if (page() === "overview") overview(); }, 600);
      } catch (e) { $("#sample-status").innerHTML = `<span class="error">${esc(e.message)}</span>`; btn.disabled = false; }
    };
  } catch (e) { fail(e, "#ov"); }
}

function rerankTable(rows) {
  if (!rows.length) return "<p class='muted'>No reranks in the last hour.</p>";
  const reasons = [...new Set(rows.map((r) => r.fallback))];
  const minutes = [...new Set(rows.map((r) => r.minute))];
  const max = Math.max(...minutes.map((m) => rows.filter((r) => r.minute === m).reduce((s, r) => s + r.reranks, 0)));
  let h = "<table><thead><tr><th>minute (UTC)</th>" + reasons.map((r) => `<th class="num">${esc(r)}</th>`).join("") + "<th>volume</th></tr></thead><tbody>";
  for (const m of minutes.slice(-20)) {
    const at = rows.filter((r) => r.minute === m);
    const total = at.reduce((s, r) => s + r.reranks, 0);
    h += `<tr><td>${esc(m.slice(11, 16))}</td>` + reasons.map((r) => `<td class="num">${fmt((at.find((x) => x.fallback === r) || {}).reranks || 0)}</td>`).join("")
      + `<td><span class="bar" style="width:${Math.round(120 * total / max)}px"></span></td></tr>`;
  }
  return h + "</tbody></table>";
}

function llmMinutes(rows) {
  if (!rows.length) return "<p class='muted'>–</p>";
  const roles = [...new Set(rows.map((r) => r.role))];
  const minutes = [...new Set(rows.map((r) => r.minute))].slice(-15);
  let h = "<table id='llm-minutes'><thead><tr><th>minute (UTC)</th>" + roles.map((r) => `<th class="num">${esc(r)}</th>`).join("") + "</tr></thead><tbody>";
  for (const m of minutes) {
    h += `<tr><td>${esc(m.slice(11, 16))}</td>` + roles.map((role) => {
      const x = rows.find((r) => r.minute === m && r.role === role);
      return `<td class="num">${x ? `${fmt(x.calls)} / ${fmt(x.tokens)} / ${fmt(x.latency_ms, 0)}` : "–"}</td>`;
    }).join("") + "</tr>";
  }
  return h + "</tbody></table>";
}

function llmTable(rows) {
  if (!rows.length) return "<p class='muted'>No LLM calls in the last hour.</p>";
  const by = {};
  for (const r of rows) {
    const b = by[r.role] || (by[r.role] = { calls: 0, hits: 0, tokens: 0, lat: 0 });
    b.calls += r.calls; b.hits += r.cache_hits; b.tokens += r.tokens; b.lat += r.latency_ms * r.calls;
  }
  let h = "<table><thead><tr><th>role</th><th class='num'>calls</th><th class='num'>tokens</th><th class='num'>mean latency ms</th><th class='num'>cache hit rate</th></tr></thead><tbody>";
  for (const [role, b] of Object.entries(by)) {
    h += `<tr><td>${esc(role)}</td><td class="num">${fmt(b.calls)}</td><td class="num">${fmt(b.tokens)}</td>
      <td class="num">${b.calls ? fmt(b.lat / b.calls, 0) : "–"}</td><td class="num">${fmt(b.hits / Math.max(1, b.hits + b.calls), 2)}</td></tr>`;
  }
  return h + "</tbody></table>";
}

// ---- prompts --------------------------------------------------------------------------
async function prompts() {
  show(`<h2>Prompts</h2><p><label for="prompt-name">Prompt</label>
    <select id="prompt-name">${["p_gen", "p_rank", "p_sum", "p_fb", "p_agg", "p_opt"].map((n) => `<option>${n}</option>`).join("")}</select></p>
    <div id="labels"></div><div id="versions">Loading…</div><p id="prompt-status" role="status"></p><div id="diff"></div>`);
  const sel = $("#prompt-name");
  sel.value = sessionStorage.getItem("agp.prompt") || "p_gen";
  sel.onchange = () => { sessionStorage.setItem("agp.prompt", sel.value); loadVersions(sel.value); };
  loadVersions(sel.value);
}

async function loadVersions(name) {
  try {
    const [list, versions] = await Promise.all([api("GET", "/v1/prompts"), api("GET", `/v1/prompts/${name}/versions`)]);
    const me = list.find((p) => p.name === name) || { labels: [] };
    $("#labels").innerHTML = "<h3>Labels</h3>" + (me.labels.length ? "<ul>" + me.labels.map((l) => `<li id="label-${esc(l.label)}"><strong>${esc(l.label)}</strong> → `
      + (l.version ? `v${l.version}` : "split " + l.split.map((a) => `v${a.version} × ${a.weight}`).join(", ")) + "</li>").join("") + "</ul>" : "<p class='muted'>none</p>");
    let h = `<h3>Versions</h3><table id="version-table"><thead><tr><th>A</th><th>B</th><th>version</th><th>origin</th><th>message</th><th>scores</th><th>actions</th></tr></thead><tbody>`;
    for (const v of versions) {
      const origin = v.run_id ? `${esc(v.source)} <span class="muted">(job ${esc(v.run_id.slice(0, 8))})</span>` : esc(v.source);
      const scores = Object.entries(v.scores || {}).map(([k, x]) => `${esc(k)} ${fmt(x)}`).join("<br>");
      h += `<tr><td><input type="radio" name="a" value="${v.version}" aria-label="diff from v${v.version}"></td>
        <td><input type="radio" name="b" value="${v.version}" aria-label="diff to v${v.version}"></td>
        <td class="num"><a href="#" class="show-version" data-v="${v.version}">v${v.version}</a></td><td>${origin}</td><td>${esc(v.message)}</td><td>${scores}</td>
        <td><button class="promote secondary" data-v="${v.version}">Promote to production</button></td></tr>`;
    }
    h += `</tbody></table><button id="diff-button">Compare A and B</button>
      <form id="split-form" aria-label="Split production"><h3>Split production</h3>
      <label>control <input id="split-a" type="number" min="1" size="4"></label>
      <label>treatment <input id="split-b" type="number" min="1" size="4"></label>
      <label>treatment share <input id="split-share" type="number" min="0.01" max="0.99" step="0.01" value="0.1"></label>
      <button type="submit" class="secondary">Split</button></form>`;
    $("#versions").innerHTML = h;
    const byV = Object.fromEntries(versions.map((v) => [v.version, v]));
    const radios = (n) => [...document.querySelectorAll(`input[name=${n}]`)];
    if (versions.length > 1) { radios("a")[versions.length - 2].checked = true; radios("b")[versions.length - 1].checked = true; }
    $("#diff-button").onclick = () => {
      const a = (radios("a").find((r) => r.checked) || {}).value, b = (radios("b").find((r) => r.checked) || {}).value;
      if (!a || !b) return;
      $("#diff").innerHTML = `<h3>v${a} → v${b}</h3>` + wordDiff(byV[a].template, byV[b].template);
    };
    document.querySelectorAll(".show-version").forEach((el) => el.onclick = (ev) => {
      ev.preventDefault();
      const v = byV[el.dataset.v];
      $("#diff").innerHTML = `<h3>v${v.version}</h3><pre>${esc(v.template)}</pre>`;
    });
    document.querySelectorAll(".promote").forEach((el) => el.onclick = () => moveLabel(name, { version: Number(el.dataset.v) }, `production → v${el.dataset.v}`));
    $("#split-form").onsubmit = (ev) => {
      ev.preventDefault();
      const share = Number($("#split-share").value);
      moveLabel(name, { split: [{ version: Number($("#split-a").value), weight: 1 - share }, { version: Number($("#split-b").value), weight: share }] }, "production split");
    };
  } catch (e) { fail(e, "#versions"); }
}

async function moveLabel(name, body, what) {
  const st = $("#prompt-status");
  try {
    await api("PUT", `/v1/prompts/${name}/labels/production`, body);
    st.innerHTML = `<span class="ok">Done: ${esc(what)}.</span>`;
    loadVersions(name).then(() => { $("#prompt-status").innerHTML = `<span class="ok">Done: ${esc(what)}.</span>`; });
  } catch (e) { st.innerHTML = `<span class="error" role="alert">Refused: ${esc(e.message)}</span>`; }
}

// Side-by-side word diff (longest common subsequence of words and spaces).
function wordDiff(a, b) {
  const x = a.split(/(\s+)/), y = b.split(/(\s+)/);
  const n = x.length, m = y.length;
  const L = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  let i = 0, j = 0, left = "", right = "";
  while (i < n && j < m) {
    if (x[i] === y[j]) { left += esc(x[i]); right += esc(y[j]); i++; j++; }
    else if (L[i + 1][j] >= L[i][j + 1]) { left += `<del>${esc(x[i++])}</del>`; }
    else { right += `<ins>${esc(y[j++])}</ins>`; }
  }
  while (i < n) left += `<del>${esc(x[i++])}</del>`;
  while (j < m) right += `<ins>${esc(y[j++])}</ins>`;
  return `<div class="diff" id="diff-view"><pre aria-label="before">${left}</pre><pre aria-label="after">${right}</pre></div>`;
}

// ---- jobs -----------------------------------------------------------------------------
const METHODS = ["base", "random", "popularity", "item_knn", "item_knn_all", "llm_no_profile", "llm_manual", "llm_manual_logprobs", "fused"];

async function jobs(id) {
  if (id) return job(id);
  show(`<h2>Jobs</h2><h3>Start an evaluation</h3>
    <form id="eval-form" class="grid">
      <label>test users <input id="f-test" type="number" min="1" value="50"></label>
      <label>validation users <input id="f-val" type="number" min="0" value="20"></label>
      <label>train users <input id="f-train" type="number" min="0" value="0"></label>
      <label>candidates <input id="f-cand" type="number" min="2" max="200" value="20"></label>
      <label>seed <input id="f-seed" type="number" min="0" value="7"></label>
      <label>protocol <select id="f-protocol"><option>llmrank</option><option>base-topk</option><option>logged</option></select></label>
      <label>summaries <select id="f-sum"><option value="false">off</option><option value="true">on</option></select></label>
      <fieldset><legend>methods</legend>${METHODS.map((m) => `<label><input type="checkbox" name="method" value="${m}" ${["base", "popularity", "item_knn", "llm_manual"].includes(m) ? "checked" : ""}> ${m}</label>`).join("")}</fieldset>
      <button type="submit" id="start-eval">Start evaluation</button>
    </form><p id="start-status" role="status"></p>
    <h3>Start an optimization of p_gen</h3>
    <form id="opt-form" class="grid">
      <label>train users <input id="o-train" type="number" min="1" value="100"></label>
      <label>validation users <input id="o-val" type="number" min="0" value="50"></label>
      <label>test users <input id="o-test" type="number" min="0" value="100"></label>
      <label>batch size <input id="o-batch" type="number" min="1" max="100" value="10"></label>
      <label>candidates per batch <input id="o-verify" type="number" min="1" max="10" value="3"></label>
      <label>epochs <input id="o-epochs" type="number" min="1" max="20" value="1"></label>
      <label>acceptance <select id="o-accept"><option>validation</option><option>paper</option></select></label>
      <label>protocol <select id="o-protocol"><option>llmrank</option><option>base-topk</option><option>logged</option></select></label>
      <label>summaries <select id="o-sum"><option value="false">off</option><option value="true">on</option></select></label>
      <button type="submit" id="start-opt">Start optimization</button>
    </form><p id="opt-status" role="status"></p>
    <h3>Recent jobs</h3><div id="job-list">Loading…</div>`);
  $("#opt-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const body = {
      train_users: Number($("#o-train").value), validation_users: Number($("#o-val").value), test_users: Number($("#o-test").value),
      batch_size: Number($("#o-batch").value), verify_steps: Number($("#o-verify").value), epochs: Number($("#o-epochs").value),
      acceptance: $("#o-accept").value, protocol: $("#o-protocol").value, summaries: $("#o-sum").value === "true",
    };
    try {
      const r = await api("POST", "/v1/optimizations", body);
      location.hash = `#/jobs/${r.id}`;
    } catch (e) { $("#opt-status").innerHTML = `<span class="error" role="alert">${esc(e.message)}</span>`; }
  };
  $("#eval-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const body = {
      test_users: Number($("#f-test").value), validation_users: Number($("#f-val").value), train_users: Number($("#f-train").value),
      candidates: Number($("#f-cand").value), seed: Number($("#f-seed").value), protocol: $("#f-protocol").value,
      summaries: $("#f-sum").value === "true",
      methods: [...document.querySelectorAll("input[name=method]:checked")].map((c) => c.value),
    };
    try {
      const r = await api("POST", "/v1/evaluations", body);
      location.hash = `#/jobs/${r.id}`;
    } catch (e) { $("#start-status").innerHTML = `<span class="error" role="alert">${esc(e.message)}</span>`; }
  };
  try {
    const list = await api("GET", "/v1/console/jobs");
    $("#job-list").innerHTML = list.length ? "<table><thead><tr><th>job</th><th>kind</th><th>status</th><th>created</th></tr></thead><tbody>"
      + list.map((j) => `<tr><td><a href="#/jobs/${j.id}">${esc(j.id.slice(0, 8))}</a></td><td>${esc(j.kind)}</td><td>${esc(j.status)}</td><td>${esc(j.created_at.slice(0, 19).replace("T", " "))}</td></tr>`).join("")
      + "</tbody></table>" : "<p class='muted'>No jobs yet.</p>";
  } catch (e) { fail(e, "#job-list"); }
}

function jobPath(kind, id) {
  return kind === "optimization" ? `/v1/optimizations/${id}` : kind === "summarize_catalog" ? `/v1/summaries/${id}` : `/v1/evaluations/${id}`;
}

async function job(id) {
  show(`<h2>Job <code>${esc(id.slice(0, 8))}</code></h2><p>Status: <strong id="job-status">…</strong> <span id="job-progress" class="muted"></span></p><div id="job-body"></div>`);
  let kind = "evaluation";
  try { kind = ((await api("GET", "/v1/console/jobs")).find((j) => j.id === id) || {}).kind || kind; } catch (_) { /* default */ }
  const seen = { at: 0, done: 0 };
  const tick = async () => {
    try {
      const j = await api("GET", jobPath(kind, id));
      $("#job-status").textContent = j.status;
      const p = j.progress || {};
      // ETA from the rate seen in this page (the first sample starts the clock).
      if (!seen.at && p.done) { seen.at = Date.now(); seen.done = p.done; }
      const rate = seen.at && p.done > seen.done ? (p.done - seen.done) / ((Date.now() - seen.at) / 1000) : 0;
      const eta = rate && p.total > p.done && j.status === "running" ? `, ETA ${Math.ceil((p.total - p.done) / rate)} s` : "";
      $("#job-progress").textContent = `${p.phase || ""} ${p.done ?? 0}/${p.total ?? 0} ${p.message || ""} · ${j.cost.llm_calls} LLM calls, ${j.cost.prompt_tokens + j.cost.completion_tokens} tokens${eta}`;
      if (["succeeded", "failed", "cancelled"].includes(j.status)) {
        clearInterval(poller); poller = null;
        renderReport(id, kind, j);
      }
    } catch (e) { fail(e, "#job-body"); clearInterval(poller); poller = null; }
  };
  poller = setInterval(tick, 1000);
  tick();
}

async function renderReport(id, kind, j) {
  const r = j.report;
  if (!r) { $("#job-body").innerHTML = `<p class="error">${esc(j.error || "no report")}</p>`; return; }
  let h = (r.summary || []).map((s) => `<p>${esc(s)}</p>`).join("");
  h += "<h3>Results</h3><table id='report-table'><thead><tr><th>method</th><th class='num'>NDCG@10</th><th class='num'>HR@10</th><th class='num'>MRR</th><th class='num'>users</th><th class='num'>LLM calls</th></tr></thead><tbody>"
    + r.methods.map((m) => `<tr><td>${esc(m.method)}</td><td class="num">${fmt(m.mean.ndcg_10)}</td><td class="num">${fmt(m.mean.hr_10)}</td><td class="num">${fmt(m.mean.mrr)}</td><td class="num">${[...new Set((m.per_seed || []).map((x) => x.metrics.n))].join(" / ")}</td><td class="num">${fmt(m.cost.llm_calls)}</td></tr>`).join("")
    + "</tbody></table>";
  if (kind === "optimization") h += "<h3>Steps</h3><div id='steps'>Loading…</div>";
  h += `<h3>Chart</h3><div class="chart" id="chart">Loading…</div><p>Report folder: <button id="download" class="secondary">report.md</button>
    <button id="download-json" class="secondary">report.json</button> <button id="download-svg" class="secondary">chart.svg</button></p>`;
  h += "<h3>Notes</h3><ul>" + (r.data_notes || []).map((n) => `<li>${esc(n)}</li>`).join("") + "</ul>";
  $("#job-body").innerHTML = h;
  try { $("#chart").innerHTML = await api("GET", `/v1/console/jobs/${id}/chart.svg`, undefined, "text"); } catch (e) { fail(e, "#chart"); }
  const save = (body, type, name) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([body], { type }));
    a.download = `${id.slice(0, 8)}-${name}`;
    a.click();
  };
  $("#download").onclick = async () => save(await api("GET", `/v1/console/jobs/${id}/report.md`, undefined, "text"), "text/markdown", "report.md");
  $("#download-json").onclick = () => save(JSON.stringify(r, null, 2) + "\n", "application/json", "report.json");
  $("#download-svg").onclick = async () => save(await api("GET", `/v1/console/jobs/${id}/chart.svg`, undefined, "text"), "image/svg+xml", "chart.svg");
  if (kind === "optimization") {
    try {
      const steps = await api("GET", `/v1/optimizations/${id}/steps`);
      $("#steps").innerHTML = "<table><thead><tr><th>step</th><th>kind</th><th>version</th><th>accepted</th><th>scores</th><th>reason</th></tr></thead><tbody>"
        + steps.map((s) => `<tr><td class="num">${s.step}</td><td>${esc(s.kind)}</td><td>${s.prompt_version ? `<a href="#" class="step-v" data-v="${s.prompt_version}">v${s.prompt_version}</a>` : "–"}</td>
          <td>${s.accepted === null ? "–" : s.accepted ? "yes" : "no"}</td><td>${Object.entries(s.scores || {}).map(([k, x]) => `${esc(k)} ${fmt(x)}`).join("<br>")}</td><td>${esc(s.reason)}</td></tr>`).join("")
        + "</tbody></table><pre id='step-prompt' hidden></pre>";
      document.querySelectorAll(".step-v").forEach((el) => el.onclick = async (ev) => {
        ev.preventDefault();
        const v = await api("GET", `/v1/prompts/p_gen/versions/${el.dataset.v}`);
        const pre = $("#step-prompt"); pre.hidden = false; pre.textContent = `v${v.version}\n\n${v.template}`;
      });
    } catch (e) { fail(e, "#steps"); }
  }
}

// ---- experiments ----------------------------------------------------------------------
const DESIGNS = {
  ab: "A/B: users are split between the arms by a stable hash of the user id; each user sees one arm's ranking.",
  interleave: "Interleaved: users in the share see both rankings merged by team-draft interleaving, and their clicks say which ranking's items they preferred; the rest see the control.",
};

// A p-value: 4 decimals, or an exponent when that would round it to 0.
function pval(p) {
  return typeof p !== "number" ? "–" : p > 0 && p < 1e-4 ? p.toExponential(1) : fmt(p, 4);
}
function signed(x, d = 3) {
  return typeof x === "number" ? (x > 0 ? "+" : "") + x.toFixed(d) : "–";
}

async function experiments() {
  show("<h2>Experiments</h2><div id='exp'>Loading…</div>");
  try {
    const list = await api("GET", "/v1/experiments");
    if (!list.length) { $("#exp").innerHTML = "<p class='muted'>No experiments yet (POST /v1/experiments, or the autopilot).</p>"; return; }
    $("#exp").innerHTML = list.map(experiment).join("");
  } catch (e) { fail(e, "#exp"); }
}

function experiment(e) {
  const r = e.result || {}, c = r.control || {}, t = r.treatment || {}, look = r.look || {};
  const inter = e.design === "interleave";
  const [cName, tName] = inter ? ["control only", "interleaved"] : ["control", "treatment"];
  const [cVer, tVer] = inter ? [`v${e.control}`, `v${e.control} + v${e.treatment}`] : [`v${e.control}`, `v${e.treatment}`];
  const row = (k, label, d) => `<tr><td>${label}</td><td class="num">${c[k] === undefined ? "–" : fmt(c[k], d)}</td><td class="num">${t[k] === undefined ? "–" : fmt(t[k], d)}</td></tr>`;
  const id = esc(e.id);
  const what = inter ? "preference for the treatment" : "difference";
  let h = `<section class="exp" id="exp-${id}" data-design="${esc(e.design)}">
    <h3>${esc(e.name)} on ${esc(e.label)}: v${esc(e.control)} vs v${esc(e.treatment)} <span class="muted">(${esc(e.status)}, ${esc(e.source)})</span></h3>
    <p class="exp-design">design: <strong>${esc(e.design)}</strong> · ${inter ? "interleaved" : "treatment"} share ${fmt(Math.round(100 * e.treatment_share))}%<br>
      <span class="muted">${esc(DESIGNS[e.design] || "")}</span></p>
    <p>${esc(e.reason || "")}</p>
    <p class="exp-look">${what} ${look.difference === undefined ? "–" : signed(look.difference)} · always-valid interval ${(look.interval || [])[0] == null ? "(not yet: too few users)" : `[${fmt(look.interval[0])}, ${fmt(look.interval[1])}]`}
      · p = ${pval(e.p_value)} <span class="muted">(alpha ${esc((e.settings || {}).alpha)})</span> · sample-ratio p = ${pval(e.srm_p)} <span class="muted">(always valid; below ${esc((e.settings || {}).srm_alpha)} voids the experiment)</span></p>
    <table class="exp-arms"><thead><tr><th></th><th class="num">${cName} <span class="muted">(${cVer})</span></th><th class="num">${tName} <span class="muted">(${tVer})</span></th></tr></thead><tbody>`
    + row("requests", "requests") + row("users", "users") + row("click_through", "click-through") + row("click_through_at_k", "click-through@k")
    + row("user_click_through", "per-user click-through") + row("mrr", "MRR") + row("fallback_rate", "fallback rate")
    + row("latency_p50_ms", "latency p50 ms", 1) + row("latency_p99_ms", "latency p99 ms", 1)
    + row("llm_calls_per_rerank", "LLM calls / rerank", 2) + row("tokens_per_rerank", "tokens / rerank", 1)
    + "</tbody></table>";
  if (inter) {
    h += `<p class="muted">An interleaved ${esc(e.name)} request costs ${e.name === "p_gen" ? "two profiles and two rankings" : "one ranking fused two ways"}: compare LLM calls and tokens per rerank above.</p>`;
    h += teamTable(e, t.interleaving);
  }
  h += `<div class="exp-chart" id="exp-chart-${id}">${expChart(e, r.history)}</div></section>`;
  return h;
}

function teamTable(e, m) {
  if (!m) return "<p class='exp-teams muted'>No interleaved requests folded yet.</p>";
  const row = (k, label, v) => `<tr class="team-${k}"><td>${label}</td><td class="num">${v}</td></tr>`;
  return `<table class="exp-teams"><caption>Teams of the interleaved lists (v${esc(e.treatment)}, the treatment, against v${esc(e.control)}, the control)</caption><tbody>`
    + row("wins", "wins: requests whose clicks favoured the treatment's items", fmt(m.wins))
    + row("losses", "losses: requests whose clicks favoured the control's items", fmt(m.losses))
    + row("ties", "ties: clicks on both teams alike", fmt(m.ties))
    + row("control_clicks", "clicked items from the control's ranking", fmt(m.control_clicks))
    + row("treatment_clicks", "clicked items from the treatment's ranking", fmt(m.treatment_clicks))
    + row("preference_users", "users with a preference (a non-tie request)", fmt(m.preference_users))
    + row("preference", "mean per-user preference for the treatment (−1 … +1)", signed(m.preference))
    + row("preference_var", "its variance over users", fmt(m.preference_var, 4))
    + "</tbody></table>";
}

// ---- experiment chart: an inline SVG in the style of the job reports' chart.svg ----------
const SVG_FONT = 'font-family="DejaVu Sans, Arial, Helvetica, sans-serif"';
const C_BLUE = "#3b6fb6", C_GREY = "#9a9a9a", C_RED = "#a62424";

// Round ticks covering [lo, hi] (at most about 6), and the decimals their labels need.
function niceTicks(lo, hi) {
  if (!(hi - lo > 1e-12)) { const d = Math.abs(lo) > 1e-9 ? Math.abs(lo) * 0.1 : 0.1; lo -= d; hi += d; }
  const mag = 10 ** Math.floor(Math.log10((hi - lo) / 5));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => Math.ceil(hi / s - 1e-9) - Math.floor(lo / s + 1e-9) <= 5) ?? 20 * mag;
  const a = Math.floor(lo / step + 1e-9), b = Math.ceil(hi / step - 1e-9);
  const ticks = [];
  for (let i = a; i <= b; i++) ticks.push(i * step);
  let d = 0;
  while (d < 8 && Math.abs(step * 10 ** d - Math.round(step * 10 ** d)) > 1e-6) d++;
  return { ticks, d };
}

// A path through the points, broken where a point is missing (null).
function pathOf(pts) {
  let d = "", pen = false;
  for (const p of pts) {
    if (!p) { pen = false; continue; }
    d += `${pen ? "L" : "M"}${p[0].toFixed(1)} ${p[1].toFixed(1)}`;
    pen = true;
  }
  return d;
}

function svgText(x, y, s, extra = "") {
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" fill="#444" ${extra}>${esc(s)}</text>`;
}

// Legend entries right-aligned at `right` on the line `y`: [kind, colour, label], kind is
// "line", "dash" or "band".
function legend(items, right, y) {
  let x = right, out = "";
  for (const [kind, color, label] of [...items].reverse()) {
    x -= label.length * 6.6;
    out += svgText(x, y + 4, label, 'fill="#333"');
    x -= 26;
    out += kind === "band" ? `<rect x="${x}" y="${y - 5}" width="20" height="10" fill="${color}" fill-opacity=".18" stroke="${color}" stroke-opacity=".4"/>`
      : `<line x1="${x}" y1="${y}" x2="${x + 20}" y2="${y}" stroke="${color}" stroke-width="2"${kind === "dash" ? ' stroke-dasharray="5 4"' : ""}/>`;
    x -= 14;
  }
  return out;
}

function expChart(e, history) {
  const pts = (history || []).filter((p) => p && typeof p.users === "number" && typeof p.difference === "number");
  if (pts.length < 2) return `<p class="muted">Chart of the ${e.design === "interleave" ? "preference" : "difference"} and the p-value over time: not enough looks yet (${pts.length} so far).</p>`;
  const inter = e.design === "interleave";
  const alpha = (e.settings || {}).alpha ?? 0.05;
  const W = 900, L = 80, R = W - 40;
  const title = `${e.name} on ${e.label}, v${e.control} vs v${e.treatment} (${inter ? "interleaved" : "A/B"}): ${inter ? "preference" : "difference"} and p-value by users`;
  // x: users in both arms.
  const u0 = Math.min(...pts.map((p) => p.users)), u1 = Math.max(...pts.map((p) => p.users));
  const xt = niceTicks(u1 > u0 ? u0 : Math.max(0, u0 - 1), u1 > u0 ? u1 : u0 + 1);
  const xs = { lo: xt.ticks[0], hi: xt.ticks[xt.ticks.length - 1] };
  const X = (u) => L + (u - xs.lo) / (xs.hi - xs.lo) * (R - L);
  const xTicks = xt.d === 0 ? xt.ticks : xt.ticks.filter((t) => Number.isInteger(t));
  let s = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="500" viewBox="0 0 ${W} 500" ${SVG_FONT} font-size="12" role="img" aria-label="${esc(title)}">
    <title>${esc(title)}</title><path d="M0 0H${W}V500H0Z" fill="#ffffff"/>
    <text x="20" y="26" font-size="16" font-weight="bold" fill="#222">${esc(title)}</text>`;
  const xGrid = (top, bottom, labels) => xTicks.map((t) => `<line x1="${X(t).toFixed(1)}" y1="${top}" x2="${X(t).toFixed(1)}" y2="${bottom}" stroke="#eeeeee"/>`
    + (labels ? `<line x1="${X(t).toFixed(1)}" y1="${bottom}" x2="${X(t).toFixed(1)}" y2="${bottom + 4}" stroke="#666"/>` + svgText(X(t), bottom + 17, fmt(t), 'text-anchor="middle"') : "")).join("");
  const yAxis = (ticks, Y, top, bottom, label, name) => ticks.map(([v, text]) => `<line x1="${L}" y1="${Y(v).toFixed(1)}" x2="${R}" y2="${Y(v).toFixed(1)}" stroke="#e4e4e4"/>`
    + svgText(L - 6, Y(v) + 4, text, 'text-anchor="end"')).join("")
    + `<path d="M${L} ${top}V${bottom}H${R}" fill="none" stroke="#666"/>`
    + `<text x="22" y="${(top + bottom) / 2}" text-anchor="middle" fill="#444" transform="rotate(-90 22 ${(top + bottom) / 2})">${esc(name)}</text>`
    + `<text x="${L}" y="${top - 12}" font-size="14" font-weight="bold" fill="#222">${esc(label)}</text>`;
  const tip = (p) => `${p.users} users at ${String(p.at).slice(0, 19).replace("T", " ")}: ${inter ? "preference" : "difference"} ${signed(p.difference, 4)}, interval ${p.lower == null ? "unbounded" : `[${p.lower.toFixed(4)}, ${p.upper.toFixed(4)}]`}, p = ${pval(p.p_value)}, sample-ratio p = ${pval(p.sample_ratio_p)}`;

  // Top panel: the difference, its always-valid interval as a band (where bounded), zero.
  const t1 = 80, b1 = 250;
  const bounded = pts.filter((p) => typeof p.lower === "number" && typeof p.upper === "number");
  const vals = [0, ...pts.map((p) => p.difference), ...bounded.flatMap((p) => [p.lower, p.upper])].map((v) => Math.max(-1, Math.min(1, v)));
  const yt = niceTicks(Math.min(...vals), Math.max(...vals));
  const ylo = yt.ticks[0], yhi = yt.ticks[yt.ticks.length - 1];
  const Y1 = (v) => b1 - (Math.max(ylo, Math.min(yhi, v)) - ylo) / (yhi - ylo) * (b1 - t1);
  s += `<g class="difference">` + xGrid(t1, b1, false)
    + yAxis(yt.ticks.map((v) => [v, v.toFixed(yt.d)]), Y1, t1, b1, inter ? "Per-user preference for the treatment, with its always-valid interval" : "Difference (treatment − control per-user click-through), with its always-valid interval", inter ? "preference" : "difference")
    + legend([["band", C_BLUE, "interval"], ["line", C_BLUE, inter ? "preference" : "difference"], ["dash", "#666", "0"]], R, t1 - 16);
  // The band: one polygon per run of bounded points.
  let run = [];
  const flush = () => {
    if (run.length) {
      const up = run.map((p) => `${X(p.users).toFixed(1)} ${Y1(p.upper).toFixed(1)}`), down = run.map((p) => `${X(p.users).toFixed(1)} ${Y1(p.lower).toFixed(1)}`).reverse();
      s += run.length === 1 ? `<path class="band" d="M${up[0]}L${down[0]}" stroke="${C_BLUE}" stroke-opacity=".4" stroke-width="6"/>`
        : `<path class="band" d="M${up.join("L")}L${down.join("L")}Z" fill="${C_BLUE}" fill-opacity=".18" stroke="${C_BLUE}" stroke-opacity=".4"/>`;
    }
    run = [];
  };
  for (const p of pts) { if (typeof p.lower === "number" && typeof p.upper === "number") run.push(p); else flush(); }
  flush();
  s += `<line x1="${L}" y1="${Y1(0).toFixed(1)}" x2="${R}" y2="${Y1(0).toFixed(1)}" stroke="#666" stroke-dasharray="5 4"/>`
    + `<path d="${pathOf(pts.map((p) => [X(p.users), Y1(p.difference)]))}" fill="none" stroke="${C_BLUE}" stroke-width="2"/>`
    + pts.map((p) => `<circle cx="${X(p.users).toFixed(1)}" cy="${Y1(p.difference).toFixed(1)}" r="3.5" fill="${C_BLUE}" stroke="#ffffff" stroke-width="1"><title>${esc(tip(p))}</title></circle>`).join("")
    + "</g>";

  // Bottom panel: the p-values on a log scale, with the alpha line.
  const t2 = 310, b2 = 450;
  const logs = [...pts.flatMap((p) => [p.p_value, p.sample_ratio_p]), alpha].filter((v) => typeof v === "number").map((v) => Math.log10(Math.max(v, 1e-12)));
  const lo = Math.min(-2, Math.floor(Math.min(...logs)));
  const Y2 = (v) => b2 - (Math.log10(Math.max(v, 1e-12)) - lo) / (0 - lo) * (b2 - t2);
  const every = Math.ceil(-lo / 6);
  const decades = [];
  for (let k = 0; k >= lo; k -= every) decades.push([10 ** k, k === 0 ? "1" : k >= -3 ? String(10 ** k) : `1e${k}`]);
  s += `<g class="p-value">` + xGrid(t2, b2, true)
    + yAxis(decades, Y2, t2, b2, "Always-valid p-values (log scale)", "p-value")
    + legend([["line", C_BLUE, "p-value"], ["line", C_GREY, "sample-ratio p"], ["dash", C_RED, `alpha ${alpha}`]], R, t2 - 16)
    + `<line x1="${L}" y1="${Y2(alpha).toFixed(1)}" x2="${R}" y2="${Y2(alpha).toFixed(1)}" stroke="${C_RED}" stroke-dasharray="5 4"/>`
    + `<path d="${pathOf(pts.map((p) => typeof p.sample_ratio_p === "number" ? [X(p.users), Y2(p.sample_ratio_p)] : null))}" fill="none" stroke="${C_GREY}" stroke-width="1.5"/>`
    + `<path d="${pathOf(pts.map((p) => [X(p.users), Y2(p.p_value)]))}" fill="none" stroke="${C_BLUE}" stroke-width="2"/>`
    + pts.map((p) => `<circle cx="${X(p.users).toFixed(1)}" cy="${Y2(p.p_value).toFixed(1)}" r="3.5" fill="${C_BLUE}" stroke="#ffffff" stroke-width="1"><title>${esc(tip(p))}</title></circle>`).join("")
    + svgText((L + R) / 2, b2 + 36, "users in both arms", 'text-anchor="middle"')
    + "</g></svg>";
  return s;
}

// ---- playground -----------------------------------------------------------------------
async function playground() {
  show(`<h2>Rerank playground</h2>
    <form id="user-form" class="grid"><label>user id <input id="user" required></label><button type="submit" id="load-user">Load user</button></form>
    <div class="row"><section><h3>Recent history</h3><div id="history" class="muted">–</div></section>
    <section><h3>Profile</h3><div id="profile" class="muted">–</div></section></div>
    <h3>Candidates</h3><p><label for="candidates">catalog item ids, one per line</label></p>
    <textarea id="candidates" rows="8" cols="40"></textarea>
    <p><label><input type="checkbox" id="logprobs"> log-probability mode</label> <button id="run-rerank">Rerank</button></p>
    <div id="rerank-out"></div>`);
  $("#user").value = sessionStorage.getItem("agp.user") || "";
  $("#user-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const u = $("#user").value.trim();
    sessionStorage.setItem("agp.user", u);
    try {
      const h = await api("GET", `/v1/users/${encodeURIComponent(u)}/history`);
      $("#history").innerHTML = h.history.length ? "<ol>" + h.history.slice(-10).map((x) => `<li>${esc(x.title)} <span class="muted">${esc(x.item_id)}</span></li>`).join("") + "</ol>" : "<p>No history.</p>";
      if (!$("#candidates").value.trim()) $("#candidates").value = h.history.slice(-3).map((x) => x.item_id).join("\n");
    } catch (e) { fail(e, "#history"); }
    loadProfile(u);
  };
  $("#run-rerank").onclick = async () => {
    const ids = $("#candidates").value.split("\n").map((s) => s.trim()).filter(Boolean);
    const body = { user_id: $("#user").value.trim(), candidates: ids.map((id) => ({ id })) };
    if ($("#logprobs").checked) body.rank_mode = "logprobs";
    try {
      const r = await api("POST", "/v1/rerank", body);
      $("#rerank-out").innerHTML = "<h3>Order</h3><table id='rerank-results'><thead><tr><th>#</th><th>id</th><th class='num'>score</th></tr></thead><tbody>"
        + r.results.map((x, i) => `<tr><td class="num">${i + 1}</td><td>${esc(x.id)}</td><td class="num">${fmt(x.score)}</td></tr>`).join("")
        + `</tbody></table><h3>meta</h3><pre id="rerank-meta">${esc(JSON.stringify(r.meta, null, 2))}</pre>`;
      loadProfile(body.user_id);
    } catch (e) { fail(e, "#rerank-out"); }
  };
}

async function loadProfile(u) {
  try {
    const p = await api("GET", `/v1/users/${encodeURIComponent(u)}/profile`);
    $("#profile").innerHTML = `<p>${esc(p.profile)}</p><p class="muted">p_gen v${p.prompt.version} · ${esc(p.model)}</p>`;
  } catch (e) { $("#profile").innerHTML = `<p class="muted">${esc(e.message)}</p>`; }
}

// ---- routing --------------------------------------------------------------------------
const PAGES = { overview, prompts, jobs, experiments, playground };

function page() {
  return location.hash.split("/")[1] || "overview";
}

function route() {
  const [, , arg] = location.hash.split("/");
  const page = location.hash.split("/")[1] || "overview";
  document.querySelectorAll("nav a").forEach((a) => a.toggleAttribute("aria-current", a.id === `nav-${page}`));
  document.querySelectorAll("nav a[aria-current]").forEach((a) => a.setAttribute("aria-current", "page"));
  (PAGES[page] || overview)(arg);
}

$("#key").value = key();
$("#key-status").textContent = key() ? "key in use" : "no key (development mode)";
$("#key-form").onsubmit = (ev) => {
  ev.preventDefault();
  localStorage.setItem("agp.key", $("#key").value.trim());
  $("#key-status").textContent = key() ? "key in use" : "no key (development mode)";
  route();
};
window.addEventListener("hashchange", route);
route();
