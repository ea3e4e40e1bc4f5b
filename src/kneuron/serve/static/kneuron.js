// kneuron serve: the charts (ECharts, served from /static/vendor) and the live probes of each page.
"use strict";

function esc(text) {
  return String(text).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function num(value, digits) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  return Number(value).toPrecision(digits || 4).replace(/\.?0+(e|$)/, "$1");
}
function pct(value) {
  if (value === null || value === undefined || !isFinite(value)) return "–";
  return (value >= 0 ? "+" : "") + (value * 100).toFixed(1) + "%";
}
function neuronLink(name) { return `<a href="/neuron/${esc(name)}">${esc(name)}</a>`; }
function showError(where, message) { where.innerHTML = `<p class="error">${esc(message)}</p>`; }

async function postJson(url, body) {
  const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  let data;
  try { data = await response.json(); } catch (e) { data = {error: `The server answered ${response.status}.`}; }
  if (!response.ok) throw new Error(data.error || `The server answered ${response.status}.`);
  return data;
}
async function getJson(url) {
  const response = await fetch(url);
  let data;
  try { data = await response.json(); } catch (e) { data = {error: `The server answered ${response.status}.`}; }
  if (!response.ok) throw new Error(data.error || `The server answered ${response.status}.`);
  return data;
}

function chart(element) {
  if (!element || typeof echarts === "undefined") return null;
  return echarts.init(element, null, {renderer: "canvas"});
}

function layerChart() {
  const element = document.getElementById("layer-chart"), source = document.getElementById("layer-data");
  if (!element || !source) return;
  const rows = JSON.parse(source.textContent);
  const c = chart(element);
  if (!c) return;
  c.setOption({
    grid: {left: 40, right: 10, top: 10, bottom: 40}, tooltip: {trigger: "axis"},
    xAxis: {type: "category", data: rows.map(r => r.layer), name: "layer", nameLocation: "middle", nameGap: 25},
    yAxis: {type: "value", name: "knowledge neurons"},
    series: [{type: "bar", data: rows.map(r => r.neurons), itemStyle: {color: "#1f5fbf"}}],
  });
}

function activationChart() {
  const element = document.getElementById("activation-chart"), source = document.getElementById("activation-data");
  if (!element || !source) return;
  const rows = JSON.parse(source.textContent).filter(r => r.activation !== null);
  if (!rows.length) { element.hidden = true; return; }
  const c = chart(element);
  if (!c) return;
  c.setOption({
    grid: {left: 50, right: 10, top: 10, bottom: 30}, tooltip: {trigger: "item", formatter: p => esc(rows[p.dataIndex].text) + "<br>activation " + num(p.value)},
    xAxis: {type: "category", data: rows.map((r, i) => i), name: "prompt", axisLabel: {show: false}},
    yAxis: {type: "value", name: "activation"},
    dataZoom: [{type: "inside"}, {type: "slider", height: 14, bottom: 2}],
    series: [{type: "bar", data: rows.map(r => r.activation), itemStyle: {color: "#67a9cf"}}],
  });
  c.on("click", p => { const r = rows[p.dataIndex]; window.location = `/fact/${encodeURIComponent(r.fact_id)}#prompt-${r.prompt}`; });
}

let cellsChart = null;
async function showCells(button) {
  const element = document.getElementById("cells-chart"), top = document.getElementById("cells-top");
  if (!element) return;
  top.innerHTML = '<p class="dim">loading…</p>';
  let data;
  try { data = await getJson(`/api/fact/${encodeURIComponent(button.dataset.fact)}/prompt/${button.dataset.idx}/cells`); }
  catch (e) { showError(top, e.message); return; }
  if (!cellsChart) cellsChart = chart(element);
  if (!cellsChart) return;
  const max = data.max || 1;
  cellsChart.setOption({
    title: {text: `prompt ${data.idx}: ${data.text}`, textStyle: {fontSize: 12}, left: 5, top: 2},
    grid: {left: 50, right: 80, top: 30, bottom: 60},
    tooltip: {formatter: p => `L${p.value[1]}.N${p.value[0]}<br>score ${num(p.value[2])}`},
    xAxis: {type: "value", min: 0, max: data.neurons - 1, name: "neuron", nameLocation: "middle", nameGap: 22},
    yAxis: {type: "value", min: -0.5, max: data.layers - 0.5, name: "layer", interval: Math.max(1, Math.ceil(data.layers / 15))},
    visualMap: {min: -max, max: max, dimension: 2, calculable: true, right: 5, top: 40, formatter: v => num(v, 2),
                inRange: {color: ["#2166ac", "#f7f7f7", "#b2182b"]}},
    dataZoom: [{type: "inside", xAxisIndex: 0}, {type: "inside", yAxisIndex: 0}, {type: "slider", xAxisIndex: 0, height: 14, bottom: 8}],
    series: [{type: "scatter", symbol: "rect", symbolSize: [4, Math.max(4, 300 / data.layers)], data: data.cells, large: true}],
  }, true);
  cellsChart.off("click");
  cellsChart.on("click", p => { window.location = `/neuron/L${p.value[1]}.N${p.value[0]}`; });
  const rows = data.top.map((best, layer) => best.length ? `<tr><td>${layer}</td><td class="l">${best.map(n => `${neuronLink(n.name)} <span class="dim">${num(n.score, 3)}</span>`).join(", ")}</td></tr>` : "").join("");
  top.innerHTML = (data.note ? `<p class="dim">${esc(data.note)}</p>` : "") +
    `<p class="dim">${data.cells.length} cells shown${data.capped ? " (the largest)" : ""}; maximum score ${num(data.max)}.</p>` +
    `<table id="cells-top-table"><thead><tr><th>layer</th><th class="l">top neurons by score</th></tr></thead><tbody>${rows}</tbody></table>`;
}

// a study's heatmaps on a fact's page (Study.fact_charts): {title, x, y, values: [[x, y, value]], caption}
function heatmaps() {
  document.querySelectorAll("div.heatmap").forEach(element => {
    let spec;
    try { spec = JSON.parse(element.dataset.heatmap); } catch (e) { return; }
    const c = chart(element);
    if (!c) return;
    const values = spec.values.map(v => v[2]);
    const high = Math.max(1e-12, ...values.map(Math.abs));
    const low = Math.min(0, ...values);
    c.setOption({
      title: {text: spec.title, textStyle: {fontSize: 12}, left: 5, top: 2},
      grid: {left: 170, right: 70, top: 30, bottom: 35},
      tooltip: {formatter: p => `${esc(spec.y[p.value[1]])}, layer ${esc(spec.x[p.value[0]])}<br>${num(p.value[2])}`},
      xAxis: {type: "category", data: spec.x, name: "layer", nameLocation: "middle", nameGap: 22},
      yAxis: {type: "category", data: spec.y, inverse: true},
      visualMap: {min: low < 0 ? -high : 0, max: high, dimension: 2, calculable: true, right: 5, top: 30, formatter: v => num(v, 2),
                  inRange: {color: low < 0 ? ["#2166ac", "#f7f7f7", "#b2182b"] : ["#f7f7f7", "#b2182b"]}},
      series: [{type: "heatmap", data: spec.values}],
    });
  });
}

function probeTable(data) {
  const rows = ["as_is", "suppressed", "amplified"].filter(k => data.conditions && data.conditions[k]).map(k => {
    const c = data.conditions[k];
    const change = k === "as_is" ? "" : pct(c.relative_change);
    const tops = (c.top || []).map(t => `<code>${esc(t.token)}</code> ${num(t.probability, 3)}`).join(" ");
    return `<tr data-condition="${k}"><td class="l">${k.replace("_", " ")}</td><td class="probability" data-value="${c.probability}">${num(c.probability, 4)}</td><td class="change" data-value="${c.relative_change === undefined ? "" : c.relative_change}">${change}</td><td data-value="${c.rank}">${c.rank}</td><td class="l">${tops}</td></tr>`;
  }).join("");
  const neurons = data.neurons.length ? `${data.neurons.length} neuron${data.neurons.length === 1 ? "" : "s"} (${data.neurons.slice(0, 12).map(neuronLink).join(", ")}${data.neurons.length > 12 ? ", …" : ""}), patched at the answer position; amplified ×${data.factor}.` : esc(data.note || "");
  return `<p class="dim">${esc(data.model)} reads <code>${esc(data.text)}</code>; answer ${esc(JSON.stringify(data.answer_tokens))}.</p>` +
    `<table id="probe-table"><thead><tr><th class="l">neurons</th><th>P(answer)</th><th>change</th><th>rank (1 = top)</th><th class="l">top ${(data.conditions.as_is.top || []).length}</th></tr></thead><tbody>${rows}</tbody></table>` +
    `<p class="dim">${neurons}</p>`;
}

function probeForm() {
  const form = document.getElementById("probe-form"), out = document.getElementById("probe-result");
  if (!form) return;
  form.addEventListener("submit", async event => {
    event.preventDefault();
    out.innerHTML = '<p class="dim" id="probe-wait">running…</p>';
    try {
      const data = await postJson("/api/probe", {prompt: form.prompt.value, answer: form.answer.value, neurons: form.neurons.value});
      out.innerHTML = probeTable(data);
    } catch (e) { showError(out, e.message); }
  });
}

async function vocabulary() {
  const element = document.getElementById("vocabulary");
  if (!element) return;
  try {
    const data = await getJson(`/api/neuron/${element.dataset.neuron}/vocabulary?sign=${element.dataset.sign}`);
    const list = items => items.map(t => `<code>${esc(t[1])}</code>`).join(" ");
    element.innerHTML = `<p>Computed from the model (sign ${data.sign > 0 ? "+" : "−"}, its activation's). Promotes: ${list(data.promoted)}.</p><p>Lowers: ${list(data.suppressed)}.</p>`;
  } catch (e) { showError(element, e.message); }
}

function findForm() {
  const form = document.getElementById("find-form");
  if (!form) return;
  const progress = document.getElementById("find-progress"), out = document.getElementById("find-result");
  form.addEventListener("submit", async event => {
    event.preventDefault();
    out.innerHTML = "";
    const prompts = form.prompts.value.split("\n").filter(t => t.trim());
    const save = form.save ? form.save.checked : false;
    let job;
    const body = {prompts: prompts, answer: form.answer.value, save: save};
    if (save) { body.subject = form.subject.value; body.relation = form.relation.value; }
    try { job = await postJson("/api/find", body); }
    catch (e) { showError(out, e.message); return; }
    progress.hidden = false;
    const bar = progress.querySelector(".bar"), label = progress.querySelector(".label");
    for (;;) {
      let state;
      try { state = await getJson(`/api/jobs/${job.job}`); } catch (e) { showError(out, e.message); break; }
      const [done, total] = state.progress || [0, prompts.length];
      bar.style.width = `${total ? 100 * done / total : 0}%`;
      label.textContent = `${state.status}: ${done} of ${total} prompts attributed`;
      if (state.status === "done") { out.innerHTML = findResult(state.result); break; }
      if (state.status === "failed") { showError(out, state.error); break; }
      await new Promise(resolve => setTimeout(resolve, 250));
    }
  });
}

function findResult(result) {
  const neurons = (result.neurons || []).map(n => `<tr><td class="l">${neuronLink(n.name)}</td><td data-value="${n.score}">${num(n.score)}</td></tr>`).join("");
  const probs = (result.probabilities || []).map(p => num(p, 3)).join(", ");
  const warnings = (result.warnings || []).map(w => `<p class="dim">warning: ${esc(w)}</p>`).join("");
  const saved = result.saved ? `<p id="find-saved">Saved to the atlas: ${esc(JSON.stringify(result.saved))}</p>` : "";
  return `<h2>Knowledge neurons (${(result.neurons || []).length})</h2>${warnings}` +
    `<table id="find-table"><thead><tr><th class="l">neuron</th><th>mean score</th></tr></thead><tbody>${neurons}</tbody></table>` +
    `<p class="dim">P(answer) per prompt: ${probs}; share used ${num(result.share_used, 3)}.</p>${saved}`;
}

document.addEventListener("DOMContentLoaded", () => {
  layerChart();
  activationChart();
  probeForm();
  findForm();
  vocabulary();
  heatmaps();
  document.querySelectorAll("button.show-cells").forEach(b => b.addEventListener("click", () => showCells(b)));
  const first = document.querySelector("button.show-cells");
  if (first) showCells(first);
  window.addEventListener("resize", () => document.querySelectorAll(".chart").forEach(e => { const c = typeof echarts !== "undefined" && echarts.getInstanceByDom(e); if (c) c.resize(); }));
});
