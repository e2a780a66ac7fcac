// tuneforge dashboard: the pages' live parts. Text from the server is set with textContent or
// DOM nodes, never innerHTML; HTML comes only from the server's escaped templates (htmx).
"use strict";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d"];

function $(sel, root) { return (root || document).querySelector(sel); }
function $all(sel, root) { return Array.from((root || document).querySelectorAll(sel)); }

async function call(method, url, body) {
  const options = { method, headers: { "X-Tuneforge": "1" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const error = new Error((data && data.error) || ("HTTP " + response.status));
    error.hint = data && data.hint;
    error.data = data;
    throw error;
  }
  return data;
}

function say(target, text, kind) {
  target.textContent = text;
  target.className = (target.className.replace(/\b(ok|bad|busy)\b/g, "").trim() + " " + (kind || "")).trim();
}

function errorText(e) { return e.message + (e.hint ? "\nhint: " + e.hint : ""); }

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function table(header, rows) {
  const t = el("table");
  const head = el("tr");
  header.forEach(h => head.appendChild(el("th", h)));
  t.appendChild(el("thead")).appendChild(head);
  const body = el("tbody");
  rows.forEach(r => { const tr = el("tr"); r.forEach(c => tr.appendChild(el("td", c))); body.appendChild(tr); });
  t.appendChild(body);
  return t;
}

function fmt(v) { return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(4)) : (v === null || v === undefined ? "" : String(v)); }

function duration(s) {
  if (s === null || s === undefined) return "";
  s = Math.round(s);
  return s < 60 ? s + " s" : s < 3600 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
}

// ------------------------------------------------------------------------------------ charts

class Chart {
  // One uPlot chart of [step, value] series that grow; `names` fixed once data arrives.
  constructor(target, pick) {
    this.target = target;
    this.pick = pick;  // which series names belong to this chart
    this.series = {};
    this.plot = null;
    this.names = [];
  }
  add(series) {
    let changed = false;
    for (const [name, points] of Object.entries(series)) {
      if (!this.pick(name) || !points.length) continue;
      (this.series[name] = this.series[name] || []).push(...points);
      changed = true;
    }
    if (changed) this.draw();
  }
  data() {
    const names = Object.keys(this.series).sort();
    const steps = Array.from(new Set(names.flatMap(n => this.series[n].map(p => p[0])))).sort((a, b) => a - b);
    const index = new Map(steps.map((s, i) => [s, i]));
    const columns = names.map(n => { const c = new Array(steps.length).fill(null); this.series[n].forEach(([s, v]) => { c[index.get(s)] = v; }); return c; });
    return { names, data: [steps, ...columns] };
  }
  draw() {
    const { names, data } = this.data();
    this.target.dataset.points = String(data[0].length);
    if (this.plot && names.join() === this.names.join()) { this.plot.setData(data); return; }
    if (this.plot) this.plot.destroy();
    this.names = names;
    this.target.textContent = "";
    const width = Math.max(320, this.target.clientWidth || 480);
    this.plot = new uPlot({
      width, height: 240,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, {}],
      series: [{ label: "step" }, ...names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true, points: { show: true, size: 4 } }))],
    }, data, this.target);
  }
}

// ------------------------------------------------------------------------------------ run page

function runPage(root) {
  const id = root.dataset.run;
  const url = "/api/runs/" + encodeURIComponent(id);
  const loss = new Chart($("#chart-loss"), n => n === "train_loss" || n === "loss");
  const metrics = new Chart($("#chart-metrics"), n => n !== "train_loss" && n !== "loss");
  const result = $("#action-result");
  let status = root.dataset.status;

  const logBox = $("#run-log");
  async function refreshLog() {
    const response = await fetch(url + "/log");
    if (response.ok) { logBox.textContent = await response.text(); logBox.scrollTop = logBox.scrollHeight; }
  }

  if (status === "running") {
    const source = new EventSource(url + "/events");
    source.addEventListener("progress", event => {
      const payload = JSON.parse(event.data);
      loss.add(payload.series); metrics.add(payload.series);
      const p = payload.progress;
      if (p) {
        $("#run-progress-bar").value = p.fraction;
        $("#run-progress-text").textContent = "step " + p.step + "/" + p.max_steps + (p.eta_seconds != null ? " · ETA " + duration(p.eta_seconds) : "") + (p.loss != null ? " · loss " + p.loss.toFixed(4) : "");
      }
      $("#run-status").textContent = payload.status;
    });
    source.addEventListener("end", event => {
      source.close();
      const end = JSON.parse(event.data);
      $("#run-status").textContent = end.status;
      $("#run-status").className = "status " + end.status;
      refreshLog();
      setTimeout(() => location.reload(), 800);  // the finished run's results
    });
    const timer = setInterval(() => { if ($("#run-status").textContent !== "running") clearInterval(timer); else refreshLog(); }, 2000);
  } else {
    fetch(url + "/curves").then(r => r.json()).then(d => { loss.add(d.series); metrics.add(d.series); });
  }
  refreshLog();

  const on = (sel, handler) => { const b = $(sel); if (b) b.addEventListener("click", handler); };
  on("#cancel-run", async () => {
    say(result, "interrupting…", "busy");
    try { await call("POST", url + "/cancel"); say(result, "interrupt sent: the run ends as interrupted and can be resumed", "ok"); }
    catch (e) { say(result, errorText(e), "bad"); }
  });
  on("#resume-run", async () => {
    try {
      const r = await call("POST", url + "/resume");
      say(result, "resume queued as job " + r.job.id + " (see New run → Queue); this page follows it when it starts", "ok");
      const timer = setInterval(async () => {  // the run says running again once its process has it
        const run = await call("GET", url);
        const job = await call("GET", "/api/jobs/" + r.job.id);
        if (run.status === "running") { clearInterval(timer); location.reload(); }
        else if (["failed", "cancelled", "finished"].includes(job.state)) { clearInterval(timer); location.reload(); }
      }, 1000);
    } catch (e) { say(result, errorText(e), "bad"); }
  });
  on("#export-run", async () => {
    try {
      const r = await call("POST", url + "/export", { format: $("#export-format").value });
      say(result, "export queued as job " + r.job.id + " → " + r.output, "busy");
      waitForJob(r.job.id, job => say(result, "export " + job.state + ": " + r.output + (job.error ? "\n" + job.error : ""), job.state === "finished" ? "ok" : "bad"), result);
    } catch (e) { say(result, errorText(e), "bad"); }
  });
  on("#register-run", async () => {
    try {
      const r = await call("POST", url + "/register", { name: $("#model-name").value });
      say(result, "registered as " + r.name + " version " + r.version + " (see Models)", "ok");
    } catch (e) { say(result, errorText(e), "bad"); }
  });
}

function waitForJob(jobId, done, target) {
  const timer = setInterval(async () => {
    try {
      const job = await call("GET", "/api/jobs/" + jobId);
      if (["finished", "failed", "cancelled"].includes(job.state) || (job.run_id && job.state === "running")) {
        clearInterval(timer);
        done(job);
      }
    } catch (e) { clearInterval(timer); if (target) say(target, errorText(e), "bad"); }
  }, 1000);
}

// ------------------------------------------------------------------------------------ runs page

function runsPage() {
  const button = $("#compare-button");
  if (!button) return;
  button.addEventListener("click", () => {
    const ids = $all("#runs-table input.pick:checked").map(b => b.value);
    if (ids.length < 2) { alert("Tick two or more runs to compare."); return; }
    location.href = "/compare?" + ids.map(i => "ids=" + encodeURIComponent(i)).join("&");
  });
}

// ------------------------------------------------------------------------------------ compare

async function comparePage(root) {
  const ids = JSON.parse(root.dataset.runs);
  const curves = {};
  for (const id of ids) curves[id] = (await call("GET", "/api/runs/" + encodeURIComponent(id) + "/curves")).series;
  for (const name of JSON.parse(root.dataset.curves)) {
    const series = {};
    for (const id of ids) if (curves[id][name]) series[id] = curves[id][name];
    new Chart(document.getElementById("chart-" + name), () => true).add(series);
  }
}

// ------------------------------------------------------------------------------------ new run

function newRunPage() {
  const yaml = $("#recipe-yaml");
  const validation = $("#validation");
  const fields = $all(".recipe-field");

  $all(".tab").forEach(tab => tab.addEventListener("click", () => {
    $all(".tab").forEach(t => t.classList.toggle("here", t === tab));
    $("#tab-form").hidden = tab.dataset.tab !== "form";
    $("#tab-yaml").hidden = tab.dataset.tab !== "yaml";
  }));

  function show(result) {
    if (result.ok) say(validation, "✓ valid recipe: " + result.name + " (" + result.task + ")", "ok");
    else say(validation, result.error + (result.hint ? "\nhint: " + result.hint : ""), "bad");
    for (const f of fields) {
      if (document.activeElement === f) continue;
      const value = result.values[f.name];
      if (value !== undefined) f.value = value;
    }
  }
  let writes = Promise.resolve();  // one field at a time: each applies to the YAML the last left
  function setField(name, value) {
    writes = writes.then(async () => {
      try {
        const r = await call("POST", "/api/recipes/set", { yaml: yaml.value, field: name, value });
        yaml.value = r.yaml;
        show(r);
      } catch (e) { say(validation, errorText(e), "bad"); }
    });
    return writes;
  }
  writes = call("POST", "/api/recipes/validate", { yaml: yaml.value }).then(show).catch(e => say(validation, errorText(e), "bad"));
  fields.forEach(f => f.addEventListener("change", () => setField(f.name, f.value)));
  function useButtons(item) {  // an uploaded file as the recipe's train, validation or test data
    for (const split of ["train", "validation", "test"]) {
      const b = el("button", "use as " + split, "secondary small");
      b.type = "button";
      b.addEventListener("click", () => setField("data." + split, item.dataset.path));
      item.appendChild(document.createTextNode(" "));
      item.appendChild(b);
    }
  }
  $all("#uploads li[data-path]").forEach(useButtons);
  let pending = null;
  yaml.addEventListener("input", () => {
    clearTimeout(pending);
    pending = setTimeout(async () => {
      try { show(await call("POST", "/api/recipes/validate", { yaml: yaml.value })); }
      catch (e) { say(validation, errorText(e), "bad"); }
    }, 400);
  });


  $("#upload-button").addEventListener("click", async () => {
    const file = $("#upload-file").files[0];
    const list = $("#uploads");
    if (!file) { alert("Choose a .csv or .jsonl file first."); return; }
    try {
      const response = await fetch("/api/uploads/" + encodeURIComponent(file.name), { method: "PUT", headers: { "X-Tuneforge": "1" }, body: file });
      const data = await response.json();
      if (!response.ok) throw Object.assign(new Error(data.error), { hint: data.hint });
      const item = el("li"); item.appendChild(el("code", data.path)); item.appendChild(document.createTextNode(" (" + data.bytes + " bytes)"));
      item.dataset.path = data.path;
      useButtons(item);
      list.appendChild(item);
    } catch (e) { list.appendChild(el("li", errorText(e), "bad")); }
  });

  const inspect = $("#inspect-result");
  $all(".inspect").forEach(button => button.addEventListener("click", async () => {
    const what = button.dataset.what;
    say(inspect, "running tuneforge " + (what === "plan" ? "plan" : "data " + what) + "…", "busy");
    try {
      const r = await call("POST", "/api/recipes/" + what, { yaml: yaml.value });
      inspect.textContent = ""; inspect.className = "inspect-result ok";
      inspect.appendChild(renderInspection(what, r.result));
    } catch (e) {
      say(inspect, errorText(e), "bad");
      if (e.data && e.data.result) inspect.appendChild(renderInspection(what, e.data.result));
    }
  }));

  const launched = $("#launch-result");
  $("#launch").addEventListener("click", async () => {
    say(launched, "validating…", "busy");
    try {
      const r = await call("POST", "/api/launch", { yaml: yaml.value });
      say(launched, "queued as job " + r.job.id + "; its page opens when training starts", "ok");
      htmx.trigger("#jobs", "load");
      waitForJob(r.job.id, job => {
        if (job.run_id) location.href = "/runs/" + encodeURIComponent(job.run_id);
        else say(launched, "job " + job.id + " " + job.state + (job.error ? ":\n" + job.error : ""), "bad");
      }, launched);
    } catch (e) { say(launched, errorText(e), "bad"); }
  });
}

function renderInspection(what, result) {
  const box = el("div");
  if (!result) return box;
  if (what === "preview") {
    (result.examples || []).forEach(ex => {
      box.appendChild(el("h4", ex.title));
      const pre = el("pre", null, "preview");
      ex.pieces.forEach(p => pre.appendChild(el("span", p.text, p.kind)));
      box.appendChild(pre);
      if (ex.note) box.appendChild(el("small", ex.note));
    });
  } else if (what === "check") {
    box.appendChild(el("p", result.passed ? "✓ no errors" : "✗ errors found", result.passed ? "ok" : "bad"));
    box.appendChild(table(["severity", "check", "split", "finding"], (result.findings || []).map(f => [f.severity, f.check, f.split || "", f.message])));
  } else if (what === "plan") {
    const mem = result.memory || {};
    const rows = [
      ["parameters", fmt(result.parameters && result.parameters.total) + " (" + fmt(result.parameters && result.parameters.trainable) + " trainable)"],
      ["estimated peak memory", ((mem.total || 0) / 1e9).toFixed(2) + " GB of " + ((result.budget || 0) / 1e9).toFixed(1) + " GB (" + result.budget_source + ")"],
      ["fits", result.fits ? "yes" : "no"],
    ];
    const t = result.timing || {};
    for (const [k, v] of Object.entries(t)) if (typeof v !== "object") rows.push([k.replace(/_/g, " "), fmt(v)]);
    box.appendChild(table(["plan (`tuneforge plan`)", ""], rows));
  }
  return box;
}

// ------------------------------------------------------------------------------------ playground

function playgroundPage(root) {
  const url = "/api/runs/" + encodeURIComponent(root.dataset.run);
  const classify = $("#classify");
  if (classify) {
    classify.addEventListener("click", async () => {
      const out = $("#classify-result");
      say(out, "classifying (the first time loads both models)…", "busy");
      try {
        const texts = $("#classify-texts").value.split("\n").filter(t => t.trim());
        const r = await call("POST", url + "/classify", { texts });
        out.textContent = ""; out.className = "";
        const probs = d => r.labels.map(l => l + " " + (d.probabilities[l] * 100).toFixed(1) + "%").join(", ");
        out.appendChild(table(["text", "fine-tuned", "probabilities", "base model (zero-shot)", "probabilities"],
          r.results.map(x => [x.text, x.tuned.label, probs(x.tuned), x.base.label, probs(x.base)])));
      } catch (e) { say(out, errorText(e), "bad"); }
    });
    return;
  }
  const history = [];
  $("#chat-form").addEventListener("submit", async event => {
    event.preventDefault();
    const input = $("#chat-input");
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    const messages = { tuned: [...history, { role: "user", content: text }], base: [...history, { role: "user", content: text }] };
    for (const who of ["tuned", "base"]) $("#chat-" + who).appendChild(el("p", text, "user"));
    const max = parseInt($("#chat-max").value, 10) || 64;
    await Promise.all(["tuned", "base"].map(who => stream(url + "/chat", { who, messages: messages[who], max_tokens: max }, $("#chat-" + who))));
    history.push({ role: "user", content: text });
    history.push({ role: "assistant", content: $("#chat-tuned").lastChild.textContent });
  });
}

async function stream(url, body, box) {
  const answer = el("p", "", "assistant streaming");
  box.appendChild(answer);
  const response = await fetch(url, { method: "POST", headers: { "X-Tuneforge": "1", "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    answer.textContent = data.error || ("HTTP " + response.status); answer.className = "assistant bad"; return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      const kind = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (kind === "piece") answer.textContent += JSON.parse(data);
      else if (kind === "error") { answer.textContent += " [" + JSON.parse(data) + "]"; answer.classList.add("bad"); }
    }
  }
  answer.classList.remove("streaming");
  answer.classList.add("done");
}

// ------------------------------------------------------------------------------------ models

function modelsPage() {
  $all(".promote-button").forEach(button => button.addEventListener("click", async () => {
    const row = button.closest("tr");
    const out = $("#promote-result");
    say(out, "asking the promotion gate…", "busy");
    try {
      const r = await call("POST", "/api/models/" + encodeURIComponent(row.dataset.model) + "/" + row.dataset.version + "/promote", {
        stage: $(".promote-stage", row).value,
        tolerance: parseFloat($("#promote-tolerance").value) || 0,
        force: $("#promote-force").checked,
      });
      const against = r.compared_with ? " over " + r.compared_with + ": " + r.metric + " " + fmt(r.candidate) + " vs " + fmt(r.current) + " on " + r.evaluation_set + " (" + r.verdict + ")" : " (no current holder of the stage to compare with)";
      const forced = r.forced ? " (FORCED over the gate's refusal: recorded)" : "";
      say(out, "✓ promoted" + forced + " " + row.dataset.model + "@" + row.dataset.version + " to " + r.stage + against, "ok");
      setTimeout(() => location.reload(), 1500);
    } catch (e) { say(out, "✗ " + errorText(e), "bad"); }
  }));
}

// ------------------------------------------------------------------------------------ start

document.addEventListener("DOMContentLoaded", () => {
  runsPage();
  const run = $("#run"); if (run) runPage(run);
  const compare = $("#compare"); if (compare) comparePage(compare);
  if ($("#recipe-yaml")) newRunPage();
  const playground = $("#playground"); if (playground) playgroundPage(playground);
  if ($("table.models")) modelsPage();
  document.body.addEventListener("click", async event => {
    const button = event.target.closest(".cancel-job");
    if (!button) return;
    try { await call("POST", "/api/jobs/" + button.dataset.job + "/cancel"); } catch (e) { alert(errorText(e)); }
    htmx.trigger("#jobs", "load");
  });
});
