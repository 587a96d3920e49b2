// JSAE graph viewer: reads data/graph-metadata.json, data/{slug}.json and data/features/{scan}/{feature}.json
// (the attribution-graph file format written by sae_lens_jsae.graph / sae_lens_jsae.latents).
// Plain DOM + SVG, no libraries; all data goes in through textContent / setAttribute.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const state = { graph: null, nodes: new Map(), clicked: null };

function el(tag, attrs = {}, text = null, ns = null) {
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== null) e.textContent = text;
  return e;
}
const svgEl = (tag, attrs = {}, text = null) => el(tag, attrs, text, SVG_NS);
const fmt = (v) => (v === null || v === undefined ? "–" : Math.abs(v) >= 100 || Math.abs(v) < 0.01 ? Number(v).toExponential(2) : Number(v).toFixed(3));

async function getJSON(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function showTip(evt, text) {
  const tip = document.getElementById("tooltip");
  tip.textContent = text;
  tip.hidden = false;
  tip.style.left = evt.clientX + 14 + "px";
  tip.style.top = evt.clientY + 10 + "px";
}
function hideTip() { document.getElementById("tooltip").hidden = true; }

function nodeLabel(n) {
  if (n.feature_type.includes("error")) return n.clerp;
  const side = n.layer === "0" ? "input" : "output";
  return `${side} latent ${n.latent ?? n.feature} @ token ${n.ctx_idx}`;
}

function nodeTip(n) {
  const lines = [nodeLabel(n), `activation ${fmt(n.activation)}`];
  if (n.influence !== null && n.influence !== undefined) lines.push(`share of graph |attribution| ${fmt(n.influence)}`);
  if (n.edge_sum !== undefined) {
    lines.push(`Σ incoming J·s_x ${fmt(n.edge_sum)}`, `actual change (latents off) ${fmt(n.ablation_change)}`, `input-error edge ${fmt(n.error_attribution)}`);
  }
  return lines.join("\n");
}

function renderTokens(g) {
  const box = document.getElementById("tokens");
  box.replaceChildren();
  g.metadata.prompt_tokens.forEach((t, i) => box.appendChild(el("span", { class: "tok", id: `tok-${i}`, title: `position ${i}` }, t)));
}

function renderSummary(g) {
  const c = (g.metadata.info || {}).completeness;
  const s = document.getElementById("summary");
  s.textContent = c ? `edges explain ${fmt(c.edge_share_of_activation)} of output activation · linearisation error ${fmt(c.linearisation_error)} · ` +
    `latent share of attribution ${fmt(c.feature_share)} · kept ${fmt(c.kept_fraction)} of |attribution| · ${g.nodes.length} nodes, ${g.links.length} edges` : "";
}

function renderGraph(g) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  state.nodes.clear();
  const T = g.metadata.prompt_tokens.length;
  const cols = Array.from({ length: T }, () => ({ "0": [], "1": [] }));
  for (const n of g.nodes) {
    state.nodes.set(n.node_id, n);
    cols[n.ctx_idx][n.layer === "0" ? "0" : "1"].push(n);
  }
  const step = 14, pad = 16;
  const widths = cols.map((c) => Math.max(46, pad + step * Math.max(c["0"].length, c["1"].length)));
  const xs = [];
  widths.reduce((x, w, i) => { xs[i] = x; return x + w; }, 10);
  const width = xs[T - 1] + widths[T - 1] + 10, yOut = 40, yIn = 230, height = 290;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const pos = new Map();
  cols.forEach((c, t) => {
    for (const [layer, y] of [["1", yOut], ["0", yIn]]) {
      c[layer].sort((a, b) => (b.feature_type.includes("error") ? -1 : 0) - (a.feature_type.includes("error") ? -1 : 0) || (b.activation || 0) - (a.activation || 0));
      c[layer].forEach((n, i) => pos.set(n.node_id, [xs[t] + pad / 2 + step * i + 5, y]));
    }
    svg.appendChild(svgEl("text", { x: xs[t] + 4, y: height - 12 }, g.metadata.prompt_tokens[t].slice(0, 8)));
    svg.appendChild(svgEl("line", { x1: xs[t], y1: 20, x2: xs[t], y2: height - 25, stroke: "#eee" }));
  });
  svg.appendChild(svgEl("text", { x: 2, y: 14 }, "output latents (layer 1)"));
  svg.appendChild(svgEl("text", { x: 2, y: yIn + 24 }, "input latents (layer 0)"));
  const maxW = Math.max(1e-12, ...g.links.map((l) => Math.abs(l.weight)));
  const edges = svgEl("g");
  const nodesG = svgEl("g");
  svg.append(edges, nodesG);
  for (const l of g.links) {
    const [x1, y1] = pos.get(l.source), [x2, y2] = pos.get(l.target);
    const w = 0.4 + 6 * Math.abs(l.weight) / maxW;
    const path = svgEl("path", {
      class: "edge", d: `M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2},${(y1 + y2) / 2} ${x2},${y2}`,
      stroke: l.weight >= 0 ? "#1f77b4" : "#d62728", "stroke-width": w.toFixed(2), "stroke-opacity": 0.6,
      "data-source": l.source, "data-target": l.target,
    });
    const src = state.nodes.get(l.source);
    path.addEventListener("mousemove", (e) => showTip(e,
      `${nodeLabel(src)} → ${nodeLabel(state.nodes.get(l.target))}\n` +
      (l.jacobian !== undefined ? `J = ${fmt(l.jacobian)}\ns_x = ${fmt(src.activation)}\n` : "") + `attribution = ${fmt(l.weight)}`));
    path.addEventListener("mouseleave", hideTip);
    edges.appendChild(path);
  }
  for (const n of g.nodes) {
    const [x, y] = pos.get(n.node_id);
    const err = n.feature_type.includes("error");
    const cls = `node ${err ? "err" : n.layer === "0" ? "in" : "out"}`;
    const shape = err ? svgEl("rect", { x: x - 5, y: y - 5, width: 10, height: 10, class: cls })
      : svgEl("circle", { cx: x, cy: y, r: 5.5, class: cls });
    shape.setAttribute("id", `node-${n.node_id}`);
    shape.setAttribute("data-node", n.node_id);
    shape.addEventListener("mousemove", (e) => showTip(e, nodeTip(n)));
    shape.addEventListener("mouseleave", hideTip);
    shape.addEventListener("click", () => clickNode(n.node_id));
    nodesG.appendChild(shape);
  }
}

function clickNode(id) {
  const n = state.nodes.get(id);
  state.clicked = id;
  document.querySelectorAll(".node.clicked").forEach((e) => e.classList.remove("clicked"));
  document.getElementById(`node-${id}`).classList.add("clicked");
  document.querySelectorAll(".edge").forEach((e) =>
    e.classList.toggle("faded", e.dataset.source !== id && e.dataset.target !== id));
  document.querySelectorAll(".tok.sel").forEach((e) => e.classList.remove("sel"));
  document.getElementById(`tok-${n.ctx_idx}`).classList.add("sel");
  if (n.feature_file) openLatent(n.feature_file);
}

function histogramSvg(h) {
  const svg = svgEl("svg", { width: 260, height: 90 });
  const max = Math.max(1, ...h.counts), bw = 240 / h.counts.length;
  h.counts.forEach((c, i) => svg.appendChild(svgEl("rect", { class: "bar", x: 10 + i * bw, y: 75 - 65 * c / max, width: bw - 1, height: 65 * c / max })));
  svg.appendChild(svgEl("text", { x: 10, y: 88 }, "0"));
  svg.appendChild(svgEl("text", { x: 200, y: 88 }, fmt(h.bin_edges[h.bin_edges.length - 1])));
  return svg;
}

function contextDiv(ex, actMax) {
  const div = el("div", { class: "ctx" });
  ex.tokens.forEach((t, i) => {
    const a = ex.tokens_acts_list[i];
    const span = el("span", { title: `activation ${fmt(a)}` }, t);
    if (a > 0) span.style.background = `rgba(255, 140, 0, ${Math.min(1, 0.12 + 0.88 * a / Math.max(actMax, 1e-12))})`;
    if (i === ex.train_token_ind) span.classList.add("at");
    div.appendChild(span);
  });
  return div;
}

async function openLatent(file) {
  const box = document.getElementById("latent");
  box.hidden = false;
  box.replaceChildren(el("p", {}, "loading…"));
  let page;
  try {
    page = await getJSON(`data/${file}`);
  } catch (e) {
    box.replaceChildren(el("p", { class: "missing" }, `No latent page at ${file}: run \`jsae latents\` into this folder.`));
    return;
  }
  const title = el("h2", { id: "latent-title" }, `${page.sae} latent ${page.latent} (layer ${page.layer}, feature ${page.index})`);
  const stats = el("p", {}, `active on ${(100 * page.activation_frequency).toFixed(3)}% of ${page.n_tokens} tokens · activation ${fmt(page.act_min)} – ${fmt(page.act_max)}`);
  const left = el("div");
  left.append(el("h3", {}, "Activation histogram"), histogramSvg(page.histogram));
  if (page.top_logits.length) {
    const t = el("table", { class: "small" });
    t.appendChild(el("tr")).append(el("th", {}, "top logits"), el("th", {}, ""), el("th", {}, "bottom logits"), el("th", {}, ""));
    page.top_logits.forEach((tok, i) => {
      const tr = el("tr");
      tr.append(el("td", {}, JSON.stringify(tok)), el("td", {}, fmt(page.top_logit_values[i])),
        el("td", {}, JSON.stringify(page.bottom_logits[i])), el("td", {}, fmt(page.bottom_logit_values[i])));
      t.appendChild(tr);
    });
    left.append(el("h3", {}, "Logit effect (direct path)"), t);
  }
  const right = el("div");
  right.appendChild(el("h3", {}, `Computational neighbours (${page.sae === "input" ? "output" : "input"} latents, corpus-averaged)`));
  const pt = el("table", { class: "small", id: "partners" });
  pt.appendChild(el("tr")).append(el("th", {}, "latent"), el("th", {}, "mean |J·s_x| per activation"), el("th", {}, "mean J"), el("th", {}, "co-active"));
  for (const p of page.partners) {
    const tr = el("tr");
    const a = el("a", { class: "partner" }, `${p.sae} ${p.latent}`);
    a.addEventListener("click", () => openLatent(p.feature_file));
    tr.append(el("td"), el("td", {}, fmt(p.mean_abs_attribution)), el("td", {}, fmt(p.mean_jacobian)), el("td", {}, String(p.co_active)));
    tr.firstChild.appendChild(a);
    pt.appendChild(tr);
  }
  right.appendChild(pt);
  const ctx = el("div", { id: "contexts" });
  ctx.appendChild(el("h3", {}, "Contexts"));
  for (const q of page.examples_quantiles) {
    ctx.appendChild(el("div", { class: "quantile" }, q.quantile_name));
    for (const ex of q.examples) ctx.appendChild(contextDiv(ex, page.act_max));
  }
  if (!page.examples_quantiles.length) ctx.appendChild(el("p", {}, "never active on the corpus"));
  const cols = el("div", { class: "cols" });
  cols.append(left, right);
  box.replaceChildren(title, stats, cols, ctx);
}

async function loadGraph(slug) {
  const g = await getJSON(`data/${encodeURIComponent(slug)}.json`);
  state.graph = g;
  renderTokens(g);
  renderSummary(g);
  renderGraph(g);
  document.getElementById("latent").hidden = true;
  document.body.dataset.graph = slug;  // tells a test the graph is drawn
}

async function main() {
  const select = document.getElementById("graph-select");
  let index;
  try {
    index = await getJSON("data/graph-metadata.json");
  } catch (e) {
    document.getElementById("summary").textContent = "no graph-metadata.json in the served folder (write graphs with `jsae graph`).";
    return;
  }
  for (const m of index.graphs) select.appendChild(el("option", { value: m.slug }, `${m.slug} — ${m.prompt.slice(0, 60)}`));
  const wanted = new URLSearchParams(location.search).get("slug");
  if (wanted && index.graphs.some((m) => m.slug === wanted)) select.value = wanted;
  select.addEventListener("change", () => loadGraph(select.value));
  if (index.graphs.length) await loadGraph(select.value);
}

main();
