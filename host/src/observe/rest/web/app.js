// The page of a running Weir job. It polls the job's REST API (Flink's paths and field
// names) and draws the job graph coloured by back pressure, the checkpoint history and,
// for a checkpoint clicked in the table, every subtask's stages with the slowest marked.
// No framework and no build step: the server embeds this file as it is, and the page
// loads nothing from anywhere else.
"use strict";

// Two seconds: the back-pressure rates behind the colours are over the last five
// seconds, so a faster poll would only redraw the same figures.
const POLL_MS = 2000;
// Checkpoints the charts remember, beyond the ten the server keeps in its history.
const CHART_POINTS = 60;
const SVG_NS = "http://www.w3.org/2000/svg";

const view = {
  jobId: null,
  job: null,
  checkpoints: null,
  // Per vertex, in the job's order: its back-pressure body, or null when it failed.
  pressure: [],
  // Checkpoint id -> the figures the charts draw, kept across polls.
  seen: new Map(),
  // The checkpoint clicked in the table, and its subtasks once fetched.
  selected: null,
  detail: null,
};

// ---------------------------------------------------------------------------------
// Small helpers: elements, formatting, fetching.

function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function byId(id) {
  return document.getElementById(id);
}

function formatMs(ms) {
  if (ms === null || ms === undefined || ms < 0) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.round((ms % 60000) / 1000)} s`;
}

function formatUptime(ms) {
  if (ms === null || ms === undefined || ms < 0) return "–";
  const total = Math.floor(ms / 1000);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = total % 60;
  if (hours > 0) return `${hours} h ${String(minutes).padStart(2, "0")} min`;
  if (minutes > 0) return `${minutes} min ${String(seconds).padStart(2, "0")} s`;
  return `${seconds} s`;
}

function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || bytes < 0) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

function formatTime(ms) {
  if (!ms || ms < 0) return "–";
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function formatPercent(ratio) {
  if (ratio === null || ratio === undefined || Number.isNaN(ratio)) return "–";
  return `${Math.round(ratio * 100)} %`;
}

function truncate(text, chars) {
  return text.length <= chars ? text : `${text.slice(0, Math.max(1, chars - 1))}…`;
}

class ApiError extends Error {}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (Array.isArray(body.errors) && body.errors.length > 0) message = body.errors.join("; ");
    } catch (_) {
      // Not the API's JSON error: the status line says enough.
    }
    throw new ApiError(message);
  }
  return response.json();
}

// ---------------------------------------------------------------------------------
// Polling.

async function poll() {
  try {
    if (!view.jobId) {
      const overview = await getJson("/jobs/overview");
      view.jobId = overview.jobs[0].jid;
    }
    const base = `/jobs/${view.jobId}`;
    const [job, checkpoints] = await Promise.all([getJson(base), getJson(`${base}/checkpoints`)]);
    const pressure = await Promise.all(
      job.vertices.map((v) => getJson(`${base}/vertices/${v.id}/backpressure`).catch(() => null)),
    );
    view.job = job;
    view.checkpoints = checkpoints;
    view.pressure = pressure;
    remember(checkpoints);
    renderJob();
    renderGraph();
    renderFlameChoices();
    renderCheckpoints();
    await refreshDetail();
    setConnection(null);
  } catch (error) {
    setConnection(error);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function setConnection(error) {
  const node = byId("connection");
  if (error) {
    node.textContent = `Cannot reach the job: ${error.message}`;
    node.classList.add("lost");
  } else {
    node.textContent = `Updated ${formatTime(Date.now())}`;
    node.classList.remove("lost");
  }
}

function remember(checkpoints) {
  for (const c of checkpoints.history) {
    view.seen.set(c.id, {
      id: c.id,
      status: c.status,
      end_to_end_duration: c.end_to_end_duration,
      state_size: c.state_size,
    });
  }
  const ids = [...view.seen.keys()].sort((a, b) => a - b);
  for (const id of ids.slice(0, Math.max(0, ids.length - CHART_POINTS))) view.seen.delete(id);
}

// ---------------------------------------------------------------------------------
// The job: name, state, uptime.

function renderJob() {
  const job = view.job;
  byId("job-name").textContent = job.name;
  const state = byId("job-state");
  state.textContent = job.state;
  state.className = `state state-${job.state}`;
  byId("job-uptime").textContent = formatUptime(job.duration);
  byId("job-start").textContent = formatTime(job["start-time"]);
  byId("job-id").textContent = job.jid;
  document.title = `${job.name} · Weir`;
  const failure = byId("failure");
  if (job["failure-cause"]) {
    failure.textContent = `The job failed: ${job["failure-cause"]}`;
    failure.hidden = false;
  } else {
    failure.hidden = true;
  }
}

// ---------------------------------------------------------------------------------
// The job graph.

const BOX = { width: 264, height: 92, gapX: 88, gapY: 28, pad: 8 };

// Places each vertex in a column by its longest path from a source (topological
// order, left to right) and in a row by its order in the job. Pure: vertices are
// `{id}`, inputs maps an id to the ids it reads from.
function layoutGraph(vertices, inputs) {
  const ids = new Set(vertices.map((v) => v.id));
  const column = new Map();
  const visiting = new Set();
  const depth = (id) => {
    if (column.has(id)) return column.get(id);
    if (visiting.has(id)) return 0;
    visiting.add(id);
    const ups = (inputs.get(id) || []).filter((u) => ids.has(u));
    const d = ups.length === 0 ? 0 : 1 + Math.max(...ups.map(depth));
    visiting.delete(id);
    column.set(id, d);
    return d;
  };
  vertices.forEach((v) => depth(v.id));
  const rows = [];
  const placed = new Map();
  for (const v of vertices) {
    const c = column.get(v.id);
    const r = rows[c] || 0;
    rows[c] = r + 1;
    placed.set(v.id, {
      x: BOX.pad + c * (BOX.width + BOX.gapX),
      y: BOX.pad + r * (BOX.height + BOX.gapY),
      column: c,
      row: r,
    });
  }
  const columns = rows.length;
  const height = Math.max(...rows.map((n) => n || 0), 1);
  const edges = [];
  for (const v of vertices) {
    for (const [i, from] of (inputs.get(v.id) || []).entries()) {
      if (placed.has(from)) edges.push({ from, to: v.id, index: i });
    }
  }
  return {
    placed,
    edges,
    width: 2 * BOX.pad + columns * BOX.width + Math.max(0, columns - 1) * BOX.gapX,
    height: 2 * BOX.pad + height * BOX.height + (height - 1) * BOX.gapY,
  };
}

// Flink's vertex figures from its back-pressure body: the worst level and the busiest
// and most back-pressured subtask.
function pressureOf(body) {
  if (!body || !Array.isArray(body.subtasks) || body.subtasks.length === 0) {
    return { level: "unknown", busy: null, backPressured: null };
  }
  return {
    level: body["backpressure-level"] || "unknown",
    busy: Math.max(...body.subtasks.map((s) => s.busyRatio)),
    backPressured: Math.max(...body.subtasks.map((s) => s.ratio)),
  };
}

function renderGraph() {
  const job = view.job;
  const nodes = new Map(job.plan.nodes.map((n) => [n.id, n]));
  const inputs = new Map(
    job.vertices.map((v) => [v.id, ((nodes.get(v.id) || {}).inputs || []).map((i) => i.id)]),
  );
  const ships = new Map();
  for (const n of job.plan.nodes) {
    for (const i of n.inputs || []) ships.set(`${i.id}>${n.id}`, i.ship_strategy);
  }
  const layout = layoutGraph(job.vertices, inputs);
  const picture = svg("svg", {
    width: layout.width,
    height: layout.height,
    viewBox: `0 0 ${layout.width} ${layout.height}`,
    role: "img",
    "aria-label": "Job graph",
  });
  picture.append(
    svg(
      "defs",
      {},
      svg(
        "marker",
        {
          id: "arrow",
          viewBox: "0 0 10 10",
          refX: 9,
          refY: 5,
          markerWidth: 7,
          markerHeight: 7,
          orient: "auto-start-reverse",
        },
        svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "edge-head" }),
      ),
    ),
  );
  for (const edge of layout.edges) {
    const a = layout.placed.get(edge.from);
    const b = layout.placed.get(edge.to);
    const x1 = a.x + BOX.width;
    const y1 = a.y + BOX.height / 2;
    const x2 = b.x - 2;
    const y2 = b.y + BOX.height / 2;
    const bend = Math.max(24, (x2 - x1) / 2);
    picture.append(
      svg("path", {
        class: "edge",
        d: `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`,
        "marker-end": "url(#arrow)",
        dataset: { from: edge.from, to: edge.to },
      }),
      svg(
        "text",
        { class: "edge-label", x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, "text-anchor": "middle" },
        ships.get(`${edge.from}>${edge.to}`) || "",
      ),
    );
  }
  job.vertices.forEach((vertex, i) => {
    const at = layout.placed.get(vertex.id);
    const p = pressureOf(view.pressure[i]);
    const description = ((nodes.get(vertex.id) || {}).description || "").replace(/^[^(]*\((.*)\)$/, "$1");
    const track = BOX.width - 28;
    picture.append(
      svg(
        "g",
        {
          class: `vertex level-${p.level}`,
          transform: `translate(${at.x}, ${at.y})`,
          dataset: { vertexId: vertex.id, name: vertex.name, level: p.level },
        },
        svg("title", {}, `${vertex.name}: ${description}\nstatus ${vertex.status}`),
        svg("rect", { class: "box", width: BOX.width, height: BOX.height, rx: 8 }),
        svg("text", { class: "v-name", x: 14, y: 24 }, truncate(vertex.name, 20)),
        svg(
          "text",
          { class: "v-level", x: BOX.width - 14, y: 24, "text-anchor": "end" },
          p.level === "unknown" ? "–" : p.level.toUpperCase(),
        ),
        svg("text", { class: "v-desc", x: 14, y: 43 }, truncate(description, 38)),
        svg(
          "text",
          { class: "v-figures", x: 14, y: 64 },
          `×${vertex.parallelism}  ·  busy ${formatPercent(p.busy)}  ·  back-pressured ${formatPercent(p.backPressured)}`,
        ),
        svg("rect", { class: "busy-track", x: 14, y: 74, width: track, height: 5, rx: 2.5 }),
        svg("rect", {
          class: "busy-bar",
          x: 14,
          y: 74,
          width: Math.max(0, Math.min(1, p.busy || 0)) * track,
          height: 5,
          rx: 2.5,
        }),
      ),
    );
  });
  byId("graph").replaceChildren(picture);
}

// ---------------------------------------------------------------------------------
// Checkpoint history: counts, charts, table.

function renderCheckpoints() {
  const cps = view.checkpoints;
  const counts = cps.counts;
  const latest = cps.latest.completed;
  byId("checkpoint-counts").replaceChildren(
    h("strong", {}, counts.completed),
    " completed · ",
    h("strong", {}, counts.failed),
    " failed · ",
    h("strong", {}, counts.in_progress),
    " in progress",
    counts.restored > 0 ? ` · restored ${counts.restored} time${counts.restored === 1 ? "" : "s"}` : "",
    latest ? ` · latest completed #${latest.id}, ${formatMs(latest.end_to_end_duration)}` : "",
  );
  const points = [...view.seen.values()].sort((a, b) => a.id - b.id);
  byId("chart-duration").replaceChildren(barChart(points, (p) => p.end_to_end_duration, formatMs));
  byId("chart-size").replaceChildren(barChart(points, (p) => p.state_size, formatBytes));

  byId("history").tBodies[0].replaceChildren(...historyRows(cps.history, view.selected));
  byId("history-empty").hidden = cps.history.length > 0;
}

// The table's rows of `history` (the API's checkpoints, newest first): one a checkpoint,
// and under a failed one a row with its failure message.
function historyRows(history, selected) {
  const rows = [];
  for (const c of history) {
    const failed = c.status === "FAILED" && c.failure_message;
    rows.push(
      h(
        "tr",
        {
          class: `checkpoint${c.id === selected ? " selected" : ""}${failed ? " has-failure" : ""}`,
          dataset: { checkpointId: c.id, status: c.status },
          onclick: () => select(c.id),
        },
        h("td", { class: "num" }, c.id),
        h("td", {}, h("span", { class: `status status-${c.status}` }, c.status.replace("_", " "))),
        h("td", {}, formatTime(c.trigger_timestamp)),
        h("td", { class: "num" }, formatMs(c.end_to_end_duration)),
        h("td", { class: "num" }, formatBytes(c.state_size)),
        h("td", { class: "num" }, formatBytes(c.checkpointed_size)),
        h("td", { class: "num" }, `${c.num_acknowledged_subtasks}/${c.num_subtasks}`),
      ),
    );
    if (failed) {
      rows.push(
        h(
          "tr",
          { class: "failure-row", dataset: { checkpointId: c.id } },
          h("td", { colspan: 7, class: "failure-message" }, c.failure_message),
        ),
      );
    }
  }
  return rows;
}

// A bar per checkpoint, oldest on the left, coloured by status, on a scale from zero
// to the largest value.
function barChart(points, valueOf, format) {
  const width = 520;
  const height = 132;
  const left = 64;
  const bottom = 20;
  const top = 8;
  const plot = { w: width - left - 8, h: height - top - bottom };
  const picture = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height });
  const max = Math.max(1, ...points.map((p) => valueOf(p) || 0));
  for (const f of [0, 0.5, 1]) {
    const y = top + plot.h * (1 - f);
    picture.append(
      svg("line", { class: "grid", x1: left, x2: left + plot.w, y1: y, y2: y }),
      svg("text", { class: "axis-label", x: left - 6, y: y + 3, "text-anchor": "end" }, format(max * f)),
    );
  }
  if (points.length === 0) return picture;
  const slot = plot.w / Math.max(points.length, 10);
  const barWidth = Math.max(2, slot * 0.7);
  points.forEach((p, i) => {
    const value = Math.max(0, valueOf(p) || 0);
    const barHeight = Math.max(value > 0 ? 1 : 0, (value / max) * plot.h);
    const x = left + i * slot + (slot - barWidth) / 2;
    picture.append(
      svg(
        "rect",
        {
          class: `bar bar-${p.status}${p.id === view.selected ? " selected" : ""}`,
          x,
          y: top + plot.h - barHeight,
          width: barWidth,
          height: barHeight,
          rx: 1.5,
          dataset: { checkpointId: p.id },
        },
        svg("title", {}, `#${p.id} ${p.status}: ${format(value)}`),
      ),
    );
  });
  const first = points[0];
  const last = points[points.length - 1];
  picture.append(
    svg("text", { class: "axis-label", x: left, y: height - 4 }, `#${first.id}`),
    svg(
      "text",
      { class: "axis-label", x: left + (points.length - 0.5) * slot, y: height - 4, "text-anchor": "middle" },
      points.length > 1 ? `#${last.id}` : "",
    ),
  );
  return picture;
}

// ---------------------------------------------------------------------------------
// One checkpoint's subtasks: which operator, subtask and stage made it slow.

function select(id) {
  view.selected = id;
  view.detail = null;
  renderCheckpoints();
  renderDetail();
  refreshDetail();
}

// Fetches the selected checkpoint's subtasks of every vertex: once when it is
// selected, and again on each poll while it is still in progress.
async function refreshDetail() {
  const id = view.selected;
  if (id === null || !view.job) return;
  if (view.detail && view.detail.id === id && view.detail.status !== "IN_PROGRESS") return;
  const base = `/jobs/${view.jobId}/checkpoints/details/${id}/subtasks`;
  const parts = await Promise.all(
    view.job.vertices.map((vertex) =>
      getJson(`${base}/${vertex.id}`).then(
        (body) => ({ vertex, body }),
        (error) => ({ vertex, error: error.message }),
      ),
    ),
  );
  if (view.selected !== id) return;
  const inHistory = view.checkpoints.history.find((c) => c.id === id);
  view.detail = {
    id,
    status: inHistory ? inHistory.status : parts.find((p) => p.body)?.body.status,
    failure: inHistory ? inHistory.failure_message : null,
    parts,
  };
  renderDetail();
}

const STAGES = [
  ["start delay", (s) => s.start_delay],
  ["alignment", (s) => s.alignment.duration],
  ["sync", (s) => s.checkpoint.sync],
  ["async", (s) => s.checkpoint.async],
];

// The acknowledged subtask with the longest end-to-end duration over every vertex,
// and the stage it spent the most time in. Pure: parts are `{vertex, body}`.
function slowest(parts) {
  let worst = null;
  for (const part of parts) {
    if (!part.body) continue;
    for (const s of part.body.subtasks) {
      if (s.status !== "completed") continue;
      if (worst === null || s.end_to_end_duration > worst.endToEnd) {
        worst = { vertexId: part.vertex.id, vertex: part.vertex.name, index: s.index, endToEnd: s.end_to_end_duration, subtask: s };
      }
    }
  }
  if (worst === null) return null;
  let stage = 0;
  STAGES.forEach(([, value], i) => {
    if (value(worst.subtask) > STAGES[stage][1](worst.subtask)) stage = i;
  });
  return { ...worst, stage: STAGES[stage][0], stageIndex: stage, stageMs: STAGES[stage][1](worst.subtask) };
}

function renderDetail() {
  const detail = view.detail;
  const hint = byId("detail-hint");
  const verdict = byId("verdict");
  const container = byId("detail");
  if (view.selected === null) {
    hint.hidden = false;
    verdict.hidden = true;
    container.replaceChildren();
    return;
  }
  hint.hidden = true;
  byId("detail-title").textContent = `Checkpoint #${view.selected}`;
  if (!detail || detail.id !== view.selected) {
    verdict.hidden = true;
    container.replaceChildren(h("p", { class: "hint" }, "Loading…"));
    return;
  }
  const worst = slowest(detail.parts);
  const lines = [];
  if (detail.failure) lines.push(`It failed: ${detail.failure}`);
  if (worst) {
    lines.push(
      `Slowest: ${worst.vertex}, subtask ${worst.index}, ${formatMs(worst.endToEnd)} end to end; ` +
        `most of it in ${worst.stage} (${formatMs(worst.stageMs)}).`,
    );
  } else {
    lines.push("No subtask has acknowledged this checkpoint.");
  }
  verdict.textContent = lines.join(" ");
  verdict.hidden = false;
  container.replaceChildren(...detail.parts.map((part) => vertexPart(part, worst)));
}

function vertexPart(part, worst) {
  const heading = h("h3", {}, part.vertex.name);
  if (part.error) {
    return h("div", { class: "vertex-part" }, heading, h("p", { class: "hint" }, part.error));
  }
  const body = part.body;
  heading.append(
    h(
      "span",
      { class: "sub" },
      `${body.num_acknowledged_subtasks}/${body.num_subtasks} acknowledged · ` +
        `${formatMs(body.end_to_end_duration)} end to end · ${formatBytes(body.state_size)} state`,
    ),
  );
  const rows = body.subtasks.map((s) => {
    if (s.status !== "completed") {
      return h(
        "tr",
        { class: "pending", dataset: { subtask: s.index } },
        h("td", { class: "num" }, s.index),
        h("td", {}, "pending or failed"),
        h("td", { colspan: 7 }, ""),
      );
    }
    const isWorst = worst && worst.vertexId === part.vertex.id && worst.index === s.index;
    const cell = (i, text) =>
      h("td", { class: isWorst && i === worst.stageIndex ? "num slowest-stage" : "num" }, text);
    return h(
      "tr",
      { class: isWorst ? "slowest" : "", dataset: { subtask: s.index } },
      h("td", { class: "num" }, s.index, isWorst ? h("span", { class: "mark" }, "slowest") : null),
      h("td", {}, "completed"),
      ...STAGES.map(([, f], i) => cell(i, formatMs(f(s)))),
      h("td", { class: isWorst ? "num slowest-total" : "num" }, formatMs(s.end_to_end_duration)),
      h("td", { class: "num" }, formatBytes(s.state_size)),
      h("td", { class: "num" }, formatBytes(s.checkpointed_size)),
    );
  });
  return h(
    "div",
    { class: "vertex-part", dataset: { vertexId: part.vertex.id } },
    heading,
    h(
      "table",
      { class: "table subtasks" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { class: "num" }, "Subtask"),
          h("th", {}, "Status"),
          h("th", { class: "num" }, "Start delay"),
          h("th", { class: "num" }, "Alignment"),
          h("th", { class: "num" }, "Sync"),
          h("th", { class: "num" }, "Async"),
          h("th", { class: "num" }, "End to end"),
          h("th", { class: "num" }, "State size"),
          h("th", { class: "num" }, "Checkpointed"),
        ),
      ),
      h("tbody", {}, rows),
    ),
  );
}

// ---------------------------------------------------------------------------------
// Flame graph: `GET /jobs/:jobid/vertices/:vertexid/flamegraph` answers Flink's
// `{endTimestamp, data: {name, value, children}}`, with `endTimestamp` -3 while the
// server samples; the page asks again each second until the graph is there.

// The operators that run WebAssembly, as the choices of the flame graph's select.
function renderFlameChoices() {
  const select = byId("flame-vertex");
  if (!select || select.options.length > 0 || !view.job) return;
  for (const node of view.job.plan.nodes) {
    if (!String(node.description).includes("(Operator:")) continue;
    const vertex = view.job.vertices.find((v) => v.id === node.id);
    select.append(h("option", { value: node.id }, vertex ? vertex.name : node.id));
  }
  byId("flame-sample").disabled = select.options.length === 0;
}

async function sampleFlameGraph() {
  const vertex = byId("flame-vertex").value;
  const hint = byId("flame-hint");
  const button = byId("flame-sample");
  if (!vertex || !view.jobId) return;
  button.disabled = true;
  hint.textContent = "Sampling…";
  try {
    const path = `/jobs/${view.jobId}/vertices/${vertex}/flamegraph`;
    for (let tries = 0; tries < 60; tries++) {
      const graph = await getJson(path);
      if (graph.endTimestamp > 0) {
        renderFlameGraph(graph, byId("flame"));
        hint.textContent = `${graph.data.value} samples, taken until ${formatTime(graph.endTimestamp)}.`;
        return;
      }
      await new Promise((done) => setTimeout(done, 1000));
    }
    hint.textContent = "No flame graph came within a minute.";
  } catch (error) {
    hint.textContent = `No flame graph: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

const FLAME_ROW = 18;

// Draws a flame graph body as an icicle chart: the root across the top, each frame's
// callees in the row below it, each as wide as its share of the root's samples.
// Returns the SVG; with `target`, shows it there in place of what it held.
function renderFlameGraph(data, target, width = 960) {
  const root = data && data.data;
  const total = root && root.value > 0 ? root.value : 0;
  const frames = [];
  let depth = 0;
  const place = (node, x, level) => {
    const w = total > 0 ? (node.value / total) * width : 0;
    if (w < 0.5) return;
    frames.push({ node, x, w, level });
    depth = Math.max(depth, level + 1);
    let offset = x;
    for (const child of node.children || []) {
      place(child, offset, level + 1);
      offset += total > 0 ? (child.value / total) * width : 0;
    }
  };
  if (total > 0) place(root, 0, 0);
  const height = Math.max(1, depth) * FLAME_ROW + 4;
  const picture = svg("svg", {
    class: "flamegraph",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    dataset: { endTimestamp: data && data.endTimestamp !== undefined ? data.endTimestamp : "" },
  });
  if (frames.length === 0) {
    picture.append(svg("text", { class: "axis-label", x: 4, y: 13 }, "No samples."));
  }
  for (const f of frames) {
    const share = ((f.node.value / total) * 100).toFixed(1);
    const label = truncate(f.node.name, Math.floor((f.w - 8) / 7));
    picture.append(
      svg(
        "g",
        { class: "frame", dataset: { name: f.node.name, value: f.node.value, depth: f.level } },
        svg("title", {}, `${f.node.name}: ${f.node.value} samples, ${share} %`),
        svg("rect", {
          x: f.x,
          y: f.level * FLAME_ROW,
          width: Math.max(0, f.w - 1),
          height: FLAME_ROW - 1,
          rx: 2,
          fill: flameColour(f.node.name),
        }),
        f.w >= 40
          ? svg(
              "text",
              { x: f.x + 4, y: f.level * FLAME_ROW + 13, "font-size": 11, fill: "#1d2733" },
              label,
            )
          : null,
      ),
    );
  }
  if (target) target.replaceChildren(picture);
  return picture;
}

// A warm colour that stays the same for the same frame name.
function flameColour(name) {
  let hash = 0;
  for (let i = 0; i < name.length; i += 1) hash = (hash * 31 + name.charCodeAt(i)) >>> 0;
  return `hsl(${10 + (hash % 40)}, 78%, ${66 + (hash % 12)}%)`;
}

// ---------------------------------------------------------------------------------

byId("flame-sample").addEventListener("click", sampleFlameGraph);
poll();
