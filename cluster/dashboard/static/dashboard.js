// The Switchyard dashboard: polls /api/view and draws every panel with the vendored ECharts.
// Each panel's section gets data-rendered="true" once it shows data (tests and operators can tell an
// empty chart from a drawn one); window.switchyard holds the last data and the chart instances.
"use strict";

const state = { data: null, charts: {}, refreshS: 2, timer: null };
window.switchyard = state;

const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 3) => (v === null || v === undefined || Number.isNaN(v)) ? "-" : Number(v).toFixed(digits);
const bytes = (v) => {
  if (v === null || v === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let x = Number(v);
  while (Math.abs(x) >= 1024 && i < units.length - 1) { x /= 1024; i += 1; }
  return `${x.toFixed(i ? 1 : 0)} ${units[i]}`;
};
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function chart(name) {
  if (!state.charts[name]) state.charts[name] = echarts.init($(`chart-${name}`), null, { renderer: "canvas" });
  return state.charts[name];
}

function mark(panel, rendered) {
  document.querySelector(`[data-panel="${panel}"]`).dataset.rendered = rendered ? "true" : "false";
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// values: [rows][cols]; rows are layers (y), columns experts or GPUs (x).
function heatmapOption(values, xName, yName, xLabels, yLabels, highlight, grid) {
  const data = [];
  let top = 0;
  values.forEach((row, y) => row.forEach((v, x) => {
    top = Math.max(top, v);
    const item = { value: [x, y, v] };
    if (highlight && highlight.x === x && highlight.y === y) item.itemStyle = { borderColor: "#000", borderWidth: 2 };
    data.push(item);
  }));
  return {
    top,
    option: {
      animation: false, // labels are drawn at once (a fade-in would leave them faint in a screenshot)
      tooltip: { formatter: (p) => `${yName} ${yLabels[p.value[1]]}, ${xName} ${xLabels[p.value[0]]}: ${fmt(p.value[2], 1)}` },
      grid: grid || { left: 60, right: 90, top: 10, bottom: 40 },
      xAxis: { type: "category", name: xName, nameLocation: "middle", nameGap: 24, data: xLabels, splitArea: { show: true } },
      yAxis: { type: "category", name: yName, nameLocation: "middle", nameGap: 40, data: yLabels, splitArea: { show: true } },
      visualMap: { min: 0, max: top || 1, calculable: true, orient: "vertical", right: 0, top: "middle", itemHeight: 140, formatter: (v) => fmt(v, 0) },
      series: [{ name: "load", type: "heatmap", data, emphasis: { itemStyle: { borderColor: "#333", borderWidth: 1 } } }],
    },
  };
}

const range = (n, prefix = "") => Array.from({ length: n }, (_, i) => `${prefix}${i}`);
const sum = (rows) => rows.flat().reduce((a, b) => a + b, 0);

function drawSummary(d) {
  $("model").textContent = `${d.model.family} ${d.model.num_layers}x${d.model.num_experts} top-${d.model.top_k}`;
  $("epoch").textContent = d.epoch;
  $("engine-epochs").textContent = d.engine_epochs.join(", ");
  $("window").textContent = d.window.seconds ? `${d.window.seconds} s, ${fmt(d.window.num_tokens, 0)} tokens`
    : d.window.tokens ? `newest ${d.window.tokens} tokens (${fmt(d.window.num_tokens, 0)})` : `since loading, ${fmt(d.window.num_tokens, 0)} tokens`;
  $("balancedness").textContent = fmt(d.balancedness);
  $("cross-node").textContent = bytes(d.traffic.cross_node_bytes);
  $("updated").textContent = new Date(d.taken_at * 1000).toLocaleTimeString();
  $("status").textContent = d.stale ? `showing the last reading: ${d.stale}` : "";
}

function drawExpertHeatmap(d) {
  const L = d.model.num_layers; const E = d.model.num_experts;
  const h = d.hottest;
  const { option, top } = heatmapOption(d.expert_load, "expert", "layer", range(E), range(L), { x: h.expert, y: h.layer });
  chart("expert-heatmap").setOption(option, true);
  mark("expert-heatmap", top > 0);
}

function drawGpuHeatmap(d) {
  const L = d.model.num_layers; const G = d.topology.num_gpus;
  const gpuLabels = range(G).map((g) => `${g} (n${d.node_of_gpu[g]})`);
  const { option, top } = heatmapOption(d.gpu_load, "GPU (node)", "layer", gpuLabels, range(L), null,
    [{ left: 60, right: "40%", top: 10, bottom: 40 }, { left: "63%", right: 100, top: 10, bottom: 40 }]);
  option.xAxis = [option.xAxis, { type: "value", gridIndex: 1, min: 0, max: 1, name: "balancedness", nameLocation: "middle", nameGap: 24 }];
  option.yAxis = [option.yAxis, { type: "category", gridIndex: 1, data: range(L), axisLabel: { show: false } }];
  option.visualMap.seriesIndex = 0;
  option.series.push({ name: "balancedness", type: "bar", xAxisIndex: 1, yAxisIndex: 1, data: d.layer_balancedness,
    label: { show: L <= 16, position: "right", formatter: (p) => fmt(p.value, 2) } });
  chart("gpu-heatmap").setOption(option, true);
  mark("gpu-heatmap", top > 0);
}

function drawGpuLoad(d) {
  const G = d.topology.num_gpus;
  const totals = range(G).map((_, g) => d.gpu_load.reduce((a, row) => a + row[g], 0));
  chart("gpu-load").setOption({
    animation: false,
    tooltip: { trigger: "axis" },
    grid: { left: 60, right: 20, top: 10, bottom: 40 },
    xAxis: { type: "category", data: range(G).map((g) => `GPU ${g} (n${d.node_of_gpu[g]})`) },
    yAxis: { type: "value", name: "tokens" },
    series: [{ name: "load", type: "bar", data: totals, itemStyle: { color: "#3b6fd4" } }],
  }, true);
  mark("gpu-load", totals.some((v) => v > 0));
}

function drawPlan(d) {
  const G = d.topology.num_gpus;
  let html = "<table><thead><tr><th>layer</th>";
  for (let g = 0; g < G; g += 1) html += `<th>GPU ${g}<br>node ${d.node_of_gpu[g]}</th>`;
  html += "</tr></thead><tbody>";
  d.plan.forEach((gpus, layer) => {
    html += `<tr><th>${layer}</th>`;
    gpus.forEach((slots) => {
      html += `<td class="experts">${slots.map((s) => (s.replicas > 1
        ? `<span class="replica" title="${s.replicas} replicas">${s.expert}&times;${s.replicas}</span>` : `${s.expert}`)).join(" ")}</td>`;
    });
    html += "</tr>";
  });
  $("plan-table").innerHTML = `${html}</tbody></table>`;
  mark("plan", d.plan.length > 0);
}

function drawTraffic(d) {
  const N = d.topology.num_nodes;
  const nodes = heatmapOption(d.traffic.node_bytes, "to workers on node", "engines on node", range(N), range(N), null,
    { left: 70, right: 90, top: 10, bottom: 40 });
  nodes.option.tooltip.formatter = (p) => `node ${p.value[1]} -> node ${p.value[0]}: ${bytes(p.value[2])}`;
  nodes.option.series[0].label = { show: true, color: "#000", fontSize: 13, fontWeight: "bold", textBorderWidth: 0, formatter: (p) => bytes(p.value[2]) };
  chart("node-traffic").setOption(nodes.option, true);
  mark("node-traffic", nodes.top > 0);
  const engines = d.traffic.engine_gpu_bytes;
  const gpu = heatmapOption(engines, "expert worker (GPU)", "engine (node)", range(d.topology.num_gpus),
    engines.map((_, e) => `${e} (n${d.traffic.engine_nodes[e]})`), null, { left: 70, right: 90, top: 10, bottom: 40 });
  gpu.option.tooltip.formatter = (p) => `engine ${p.value[1]} <-> GPU ${p.value[0]}: ${bytes(p.value[2])}`;
  chart("engine-traffic").setOption(gpu.option, true);
  mark("engine-traffic", gpu.top > 0);
}

function lines(name, series, unit) {
  const s = state.data.series;
  const has = series.some((x) => x.values.some((v) => v !== null && v > 0));
  chart(name).setOption({
    animation: false,
    tooltip: { trigger: "axis" },
    legend: { top: 0 },
    grid: { left: 60, right: 20, top: 28, bottom: 30 },
    xAxis: { type: "time" },
    yAxis: { type: "value", name: unit },
    series: series.map((x) => ({ name: x.name, type: "line", showSymbol: false, connectNulls: false,
      data: x.values.map((v, i) => [s.t[i] * 1000, v]) })),
  }, true);
  mark(name, has);
}

function drawSeries(d) {
  const s = d.series;
  lines("rates", [{ name: "requests/s", values: s.request_rate }, { name: "tokens/s", values: s.token_rate }], "per s");
  lines("ttft", [{ name: "p50", values: s.ttft_p50 }, { name: "p99", values: s.ttft_p99 }], "s");
  lines("itl", [{ name: "p50", values: s.itl_p50 }, { name: "p99", values: s.itl_p99 }], "s");
  const queues = s.queue_depths.map((values, e) => ({ name: `engine ${e}`, values }));
  lines("queues", queues, "requests");
  // Queue depths are 0 when idle: the panel has data as soon as it has samples.
  mark("queues", s.t.length > 0 && queues.length > 0);
}

function change(before, after) {
  if (before === null || after === null || before === undefined || after === undefined || before === 0) return "";
  const pct = (100 * (after - before)) / before;
  return ` (${pct >= 0 ? "+" : ""}${pct.toFixed(1)}%)`;
}

// layer_time_s is shown in microseconds (the simulated MoE time of the evaluated tokens).
const scaled = (key, v) => (key === "layer_time_s" && v !== null && v !== undefined ? v * 1e6 : v);

function figurePair(before, after, key, digits = 3) {
  const b = scaled(key, before ? before[key] : null); const a = scaled(key, after ? after[key] : null);
  return `${fmt(b, digits)} &rarr; ${fmt(a, digits)}${change(b, a)}`;
}

// The balance feedback's level a plan's overload was priced at (a proposal's or a rebalance event's
// `feedback_level`): null where the feedback priced nothing, absent in events of earlier versions.
const feedbackText = (level) => (level === null || level === undefined ? "" : `; overload priced at balance feedback level ${level}`);
// The statistics a plan was made on (a proposal's or a rebalance event's `memory`), as the CLI says it
// (`proposal.memory_text`); events recorded before resampled draws were reported have no `resampled`.
const memoryText = (m) => `the last ${m.windows} window(s), each older one weighted ${m.decay} of the next`
  + (m.resampled ? `, as ${m.resampled.windows} windows drawn from their runs of ${m.resampled.run_tokens} tokens` : "");

function drawHistory(d) {
  const rows = d.rebalances;
  let html = "<table><thead><tr><th>time</th><th>kind</th><th>epochs</th><th>policy</th><th>copies</th><th>bytes</th>"
    + "<th>seconds</th><th>predicted balancedness</th><th>predicted GPUs/token</th><th>predicted remote nodes/token</th>"
    + "<th>predicted MoE time (&micro;s)</th><th>observed cross-node B/token</th><th>observed balancedness</th></tr></thead><tbody>";
  rows.forEach((r) => {
    const o = r.observed;
    html += `<tr class="rebalance"><td>${new Date(r.timestamp * 1000).toLocaleTimeString()}</td><td>${esc(r.kind)}</td>`
      + `<td>${r.from_epoch} &rarr; ${r.epoch}</td><td>${esc(r.policy)}${r.memory ? ` on ${memoryText(r.memory)}` : ""}${feedbackText(r.feedback_level)}</td><td>${r.copies}</td><td>${bytes(r.bytes_copied)}</td>`
      + `<td>${fmt(r.apply_seconds, 2)}</td><td class="predicted">${figurePair(r.predicted_before, r.predicted_after, "balancedness")}</td>`
      + `<td>${figurePair(r.predicted_before, r.predicted_after, "gpus_per_token")}</td>`
      + `<td>${figurePair(r.predicted_before, r.predicted_after, "remote_nodes_per_token")}</td>`
      + `<td>${figurePair(r.predicted_before, r.predicted_after, "layer_time_s", 2)}</td>`
      + `<td class="observed">${o ? `${fmt(o.cross_node_bytes_per_token_before, 0)} &rarr; ${fmt(o.cross_node_bytes_per_token_after, 0)}`
        + change(o.cross_node_bytes_per_token_before, o.cross_node_bytes_per_token_after) : "pending"}</td>`
      + `<td>${o ? fmt(o.balancedness) : "pending"}</td></tr>`;
  });
  html += "</tbody></table>";
  html += `<p class="note">Active epoch ${d.epoch}; engines dispatch under ${d.engine_epochs.map((e, i) => `engine ${i}: ${e}`).join(", ")}.`
    + (d.failed_rebalances ? ` ${d.failed_rebalances} attempt(s) failed and moved nothing.` : "") + "</p>";
  $("history-table").innerHTML = rows.length ? html : `<p class="note">No rebalance yet.</p>${html.slice(html.indexOf("<p"))}`;
  mark("history", rows.length > 0);
}

function drawPolicies(d) {
  const select = $("dry-run-policy");
  if (select.options.length) return;
  d.policies.forEach((p) => { const o = document.createElement("option"); o.value = p; o.textContent = p; select.appendChild(o); });
  select.value = d.policies.includes("affinity") ? "affinity" : d.policies[0];
}

async function dryRun(event) {
  event.preventDefault();
  const params = new URLSearchParams({ policy: $("dry-run-policy").value });
  const moves = $("dry-run-max-moves").value;
  if (moves !== "") params.set("max_moves", moves);
  $("dry-run-result").innerHTML = '<p class="note">planning...</p>';
  try {
    const r = await getJSON(`/api/dry-run?${params}`);
    let html = "<table><thead><tr><th>figure</th><th>current</th><th>proposed</th><th>change</th></tr></thead><tbody>";
    [["balancedness", "balancedness"], ["gpus_per_token", "GPUs/token"], ["remote_nodes_per_token", "remote nodes/token"],
      ["layer_time_s", "MoE time (&micro;s)"]].forEach(([k, label]) => {
      const c = scaled(k, r.current[k]); const p = scaled(k, r.proposed[k]);
      html += `<tr><td>${label}</td><td>${fmt(c)}</td><td>${fmt(p)}</td><td>${change(c, p)}</td></tr>`;
    });
    html += `</tbody></table><p class="note">policy ${esc(r.policy)} from epoch ${r.epoch}: ${r.replicas_moved} replica(s) to copy `
      + `(per layer: ${r.replicas_moved_per_layer.join(", ")}), ${bytes(r.bytes_to_copy)}; window ${fmt(r.window_tokens, 0)} tokens`
      + (r.memory ? ` (${memoryText(r.memory)})` : "")
      + feedbackText(r.feedback_level) + ".</p>";
    $("dry-run-result").innerHTML = html;
    mark("dry-run", true);
  } catch (error) {
    $("dry-run-result").innerHTML = `<p class="note loss">${esc(error.message)}</p>`;
    mark("dry-run", false);
  }
}

async function refresh() {
  try {
    const d = await getJSON("/api/view");
    state.data = d;
    state.refreshS = d.refresh_s;
    drawSummary(d); drawExpertHeatmap(d); drawGpuHeatmap(d); drawGpuLoad(d); drawPlan(d); drawTraffic(d);
    drawSeries(d); drawHistory(d); drawPolicies(d);
    document.body.dataset.updated = String(d.taken_at);
  } catch (error) {
    $("status").textContent = `could not refresh: ${error.message}`;
  }
  state.timer = setTimeout(refresh, state.refreshS * 1000);
}

$("dry-run-form").addEventListener("submit", dryRun);
window.addEventListener("resize", () => Object.values(state.charts).forEach((c) => c.resize()));
refresh();
