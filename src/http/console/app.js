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
  const el = $(where) || view();
  const msg = e.status === 401 ? "Enter an API key above (this server has keys on)." : e.message;
  el.innerHTML = `<p class="error" role="alert">${esc(msg)}</p>`;
}

// ---- overview -------------------------------------------------------------------------
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
    $("#ov").innerHTML = html;
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
async function experiments() {
  show("<h2>Experiments</h2><div id='exp'>Loading…</div>");
  try {
    const list = await api("GET", "/v1/experiments");
    if (!list.length) { $("#exp").innerHTML = "<p class='muted'>No experiments yet (POST /v1/experiments, or the autopilot).</p>"; return; }
    let h = "";
    for (const e of list) {
      const r = e.result || {}, c = r.control || {}, t = r.treatment || {}, look = r.look || {};
      const row = (k, label, d) => `<tr><td>${label}</td><td class="num">${fmt(c[k], d)}</td><td class="num">${fmt(t[k], d)}</td></tr>`;
      h += `<h3>${esc(e.name)} on ${esc(e.label)}: v${e.control} vs v${e.treatment} <span class="muted">(${esc(e.status)}, ${esc(e.source)})</span></h3>
        <p>${esc(e.reason || "")}</p>
        <p>difference ${fmt(look.difference)} · always-valid interval ${(look.interval || [])[0] == null ? "(not yet: too few users)" : `[${fmt(look.interval[0])}, ${fmt(look.interval[1])}]`} · p = ${fmt(e.p_value, 4)}</p>
        <table><thead><tr><th></th><th class="num">control</th><th class="num">treatment</th></tr></thead><tbody>`
        + row("requests", "requests") + row("users", "users") + row("click_through", "click-through") + row("click_through_at_k", "click-through@k")
        + row("user_click_through", "per-user click-through") + row("mrr", "MRR") + row("fallback_rate", "fallback rate")
        + row("latency_p50_ms", "latency p50 ms", 1) + row("latency_p99_ms", "latency p99 ms", 1) + row("tokens_per_rerank", "tokens / rerank", 1)
        + "</tbody></table>";
    }
    $("#exp").innerHTML = h;
  } catch (e) { fail(e, "#exp"); }
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
