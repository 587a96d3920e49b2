// JSAE graph viewer: reads data/graph-metadata.json, data/{slug}.json and data/features/{scan}/{feature}.json
// (the attribution-graph file format written by sae_lens_jsae.graph / sae_lens_jsae.latents).
// Plain DOM + SVG, no libraries; all data goes in through textContent / setAttribute.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const state = { graph: null, panels: [], token: null };  // graph: the first panel's (scripts read it)

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
  if (n.feature < 0) return n.clerp;
  const side = n.sae || (n.layer === "0" ? "input" : "output");
  return `${side} latent ${n.latent ?? n.feature} @ token ${n.ctx_idx}`;
}

function nodeTip(n) {
  const lines = [nodeLabel(n), `activation ${fmt(n.activation)}`];
  if (n.influence !== null && n.influence !== undefined) lines.push(`share of graph |attribution| ${fmt(n.influence)}`);
  if (n.edge_sum !== undefined) {
    lines.push(`Σ incoming J·s_x ${fmt(n.edge_sum)}`, `actual change (latents off) ${fmt(n.ablation_change)}`, `input-error edge ${fmt(n.error_attribution)}`);
    if (n.bias_attribution !== undefined) lines.push(`bias edge ${fmt(n.bias_attribution)}`);
  }
  return lines.join("\n");
}

// ---- panels: one graph each; several graphs of one prompt side by side, sharing the token selection ----

function modelName(g) { return (g.metadata.info || {}).model || g.metadata.slug; }
const isSpecial = (n) => n.feature < 0;  // error and bias nodes

function renderTokens(tokens) {
  const box = document.getElementById("tokens");
  box.replaceChildren();
  tokens.forEach((t, i) => {
    const span = el("span", { class: "tok", id: `tok-${i}`, "data-token": i, title: `position ${i}: click for this token's graph alone` }, t);
    span.addEventListener("click", () => selectToken(state.token === i ? null : i));
    box.appendChild(span);
  });
}

function selectToken(t) {
  state.token = t;
  document.querySelectorAll(".tok.sel").forEach((e) => e.classList.remove("sel"));
  if (t !== null) document.getElementById(`tok-${t}`).classList.add("sel");
  document.getElementById("all-tokens").hidden = t === null;
  document.getElementById("panels").classList.toggle("by-token", t !== null);
  state.panels.forEach(renderPanel);
  document.body.dataset.token = t === null ? "all" : String(t);  // tells a test every panel is redrawn
}

function fullSummary(g, shown) {
  const c = (g.metadata.info || {}).completeness;
  const rule = (g.metadata.info || {}).pruning;
  return (rule ? `pruning: ${rule} · ` : "") + (c ? `edges explain ${fmt(c.edge_share_of_activation)} of layer-1 activation · linearisation error ` +
    `${fmt(c.linearisation_error)} · latent share of attribution ${fmt(c.feature_share)} · kept ${fmt(c.kept_fraction)} of |attribution| · ` : "") +
    `${shown.nodes.length} nodes, ${shown.links.length} edges`;
}

function tokenSummary(g, t, shown) {
  const outs = shown.nodes.filter((n) => n.layer === "1" && !isSpecial(n));
  const ins = shown.nodes.filter((n) => n.layer === "0" && !isSpecial(n));
  const into = shown.links.filter((l) => outs.some((n) => n.node_id === l.target)).length;
  return `token ${t} ${JSON.stringify(g.metadata.prompt_tokens[t])}: ${outs.length} layer-1 latents, ${ins.length} layer-0 latents, ` +
    `${shown.links.length} edges (${outs.length ? (into / outs.length).toFixed(2) : "–"} per layer-1 latent)`;
}

function shownPart(g, t) {
  if (t === null) return { nodes: g.nodes, links: g.links };
  const nodes = g.nodes.filter((n) => n.ctx_idx === t);
  const ids = new Set(nodes.map((n) => n.node_id));
  return { nodes, links: g.links.filter((l) => ids.has(l.source) && ids.has(l.target)) };
}

function makePanel(g, k) {
  const box = el("div", { class: "panel", "data-panel": k, "data-slug": g.metadata.slug });
  const head = el("h2", { class: "panel-title" }, modelName(g));
  const layers = (g.metadata.info || {}).layers || {};
  const sub = el("p", { class: "panel-layers" }, `top: ${layers["1"] || "layer 1"} · bottom: ${layers["0"] || "layer 0"}`);
  const summary = el("p", { class: "panel-summary" });
  const wrap = el("div", { class: "graph-wrap" });
  wrap.appendChild(svgEl("svg", { class: "graph" }));
  box.append(head, sub, summary, wrap);
  return { graph: g, k, box, svg: wrap.firstChild, summary, nodes: new Map(g.nodes.map((n) => [n.node_id, n])) };
}

function renderPanel(p) {
  const shown = shownPart(p.graph, state.token);
  p.summary.textContent = state.token === null ? fullSummary(p.graph, shown) : tokenSummary(p.graph, state.token, shown);
  p.svg.replaceChildren();
  p.svg.setAttribute("data-token", state.token === null ? "all" : String(state.token));
  const pos = state.token === null ? layoutAll(p, shown) : layoutToken(p, shown);
  drawEdgesAndNodes(p, shown, pos);
}

function sortColumn(ns) {
  return ns.sort((a, b) => (isSpecial(b) ? 1 : 0) - (isSpecial(a) ? 1 : 0) || (b.activation || 0) - (a.activation || 0));
}

function layoutAll(p, shown) {
  const g = p.graph, svg = p.svg;
  const T = g.metadata.prompt_tokens.length;
  const cols = Array.from({ length: T }, () => ({ "0": [], "1": [] }));
  for (const n of shown.nodes) cols[n.ctx_idx][n.layer === "0" ? "0" : "1"].push(n);
  const step = 14, pad = 16;
  const widths = cols.map((c) => Math.max(46, pad + step * Math.max(c["0"].length, c["1"].length)));
  const xs = [];
  widths.reduce((x, w, i) => { xs[i] = x; return x + w; }, 10);
  const width = xs[T - 1] + widths[T - 1] + 10, yOut = 40, yIn = 230, height = 290;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const pos = new Map();
  cols.forEach((c, t) => {
    for (const [layer, y] of [["1", yOut], ["0", yIn]]) sortColumn(c[layer]).forEach((n, i) => pos.set(n.node_id, [xs[t] + pad / 2 + step * i + 5, y]));
    svg.appendChild(svgEl("text", { x: xs[t] + 4, y: height - 12 }, g.metadata.prompt_tokens[t].slice(0, 8)));
    svg.appendChild(svgEl("line", { x1: xs[t], y1: 20, x2: xs[t], y2: height - 25, stroke: "#eee" }));
  });
  svg.appendChild(svgEl("text", { x: 2, y: 14 }, "layer 1"));
  svg.appendChild(svgEl("text", { x: 2, y: yIn + 24 }, "layer 0"));
  return pos;
}

function layoutToken(p, shown) {
  // one token's bipartite graph: layer-1 latents on top, layer-0 latents below, each labelled with its index
  const svg = p.svg;
  const rows = { "1": sortColumn(shown.nodes.filter((n) => n.layer === "1")), "0": sortColumn(shown.nodes.filter((n) => n.layer === "0")) };
  const step = 22, yOut = 50, yIn = 250, height = 300;
  const width = Math.max(260, 40 + step * Math.max(rows["0"].length, rows["1"].length));
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const pos = new Map();
  for (const [layer, y] of [["1", yOut], ["0", yIn]]) {
    rows[layer].forEach((n, i) => {
      const x = 25 + step * i;
      pos.set(n.node_id, [x, y]);
      const label = isSpecial(n) ? (n.feature_type.includes("error") ? "err" : "bias") : String(n.latent ?? n.feature);
      const ly = layer === "1" ? y - 10 : y + 16;
      svg.appendChild(svgEl("text", { x, y: ly, transform: `rotate(-60 ${x} ${ly})`, class: "label" }, label));
    });
  }
  const latents = (layer) => rows[layer].filter((n) => !isSpecial(n)).length;
  svg.appendChild(svgEl("text", { x: 2, y: 12 }, `layer 1 (${latents("1")} latents)`));
  svg.appendChild(svgEl("text", { x: 2, y: height - 4 }, `layer 0 (${latents("0")} latents)`));
  return pos;
}

function drawEdgesAndNodes(p, shown, pos) {
  const maxW = Math.max(1e-12, ...shown.links.map((l) => Math.abs(l.weight)));
  const edges = svgEl("g"), nodesG = svgEl("g");
  p.svg.append(edges, nodesG);
  for (const l of shown.links) {
    const [x1, y1] = pos.get(l.source), [x2, y2] = pos.get(l.target);
    const path = svgEl("path", {
      class: "edge", d: `M${x1},${y1} C${x1},${(y1 + y2) / 2} ${x2},${(y1 + y2) / 2} ${x2},${y2}`,
      stroke: l.weight >= 0 ? "#1f77b4" : "#d62728", "stroke-width": (0.4 + 6 * Math.abs(l.weight) / maxW).toFixed(2), "stroke-opacity": 0.6,
      "data-source": l.source, "data-target": l.target,
    });
    const src = p.nodes.get(l.source);
    path.addEventListener("mousemove", (e) => showTip(e,
      `${nodeLabel(src)} → ${nodeLabel(p.nodes.get(l.target))}\n` +
      (l.jacobian !== undefined ? `J = ${fmt(l.jacobian)}\ns_x = ${fmt(src.activation)}\n` : "") + `attribution = ${fmt(l.weight)}`));
    path.addEventListener("mouseleave", hideTip);
    edges.appendChild(path);
  }
  for (const n of shown.nodes) {
    const [x, y] = pos.get(n.node_id);
    const cls = `node ${isSpecial(n) ? "err" : n.layer === "0" ? "in" : "out"}`;
    const shape = isSpecial(n) ? svgEl("rect", { x: x - 5, y: y - 5, width: 10, height: 10, class: cls })
      : svgEl("circle", { cx: x, cy: y, r: 5.5, class: cls });
    shape.setAttribute("data-node", n.node_id);
    shape.addEventListener("mousemove", (e) => showTip(e, nodeTip(n)));
    shape.addEventListener("mouseleave", hideTip);
    shape.addEventListener("click", () => clickNode(p, n.node_id));
    nodesG.appendChild(shape);
  }
}

function clickNode(p, id) {
  const n = p.nodes.get(id);
  document.querySelectorAll(".node.clicked").forEach((e) => e.classList.remove("clicked"));
  p.svg.querySelector(`[data-node="${CSS.escape(id)}"]`).classList.add("clicked");
  p.svg.querySelectorAll(".edge").forEach((e) => e.classList.toggle("faded", e.dataset.source !== id && e.dataset.target !== id));
  document.querySelectorAll(".tok.hl").forEach((e) => e.classList.remove("hl"));
  document.getElementById(`tok-${n.ctx_idx}`).classList.add("hl");
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

async function loadGraphs(value) {
  // value: one slug, or several joined by "," (one prompt's graphs side by side)
  const slugs = value.split(",");
  const graphs = await Promise.all(slugs.map((s) => getJSON(`data/${encodeURIComponent(s)}.json`)));
  state.graph = graphs[0];
  state.panels = graphs.map(makePanel);
  document.getElementById("panels").replaceChildren(...state.panels.map((p) => p.box));
  renderTokens(graphs[0].metadata.prompt_tokens);
  const same = graphs.every((g) => JSON.stringify(g.metadata.prompt_tokens) === JSON.stringify(graphs[0].metadata.prompt_tokens));
  document.getElementById("summary").textContent = graphs.length > 1
    ? `${graphs.length} models side by side${same ? "" : " — their tokens differ: the token strip is the first graph's"}` : "";
  selectToken(null);
  document.getElementById("latent").hidden = true;
  document.body.dataset.graph = value;  // tells a test the graphs are drawn
}

function graphChoices(graphs) {
  // every prompt drawn by several models, side by side, then each graph alone
  const byPrompt = new Map();
  for (const m of graphs) byPrompt.set(m.prompt, [...(byPrompt.get(m.prompt) || []), m]);
  const groups = [...byPrompt.values()].filter((ms) => ms.length > 1)
    .map((ms) => [ms.map((m) => m.slug).join(","), `side by side: ${ms.map((m) => (m.info || {}).model || m.slug).join(" | ")} — ${ms[0].prompt.slice(0, 50)}`]);
  return groups.concat(graphs.map((m) => [m.slug, `${m.slug} — ${m.prompt.slice(0, 60)}`]));
}

async function main() {
  const select = document.getElementById("graph-select");
  document.getElementById("all-tokens").addEventListener("click", () => selectToken(null));
  let index;
  try {
    index = await getJSON("data/graph-metadata.json");
  } catch (e) {
    document.getElementById("summary").textContent = "no graph-metadata.json in the served folder (write graphs with `jsae graph`).";
    return;
  }
  const choices = graphChoices(index.graphs);
  for (const [value, label] of choices) select.appendChild(el("option", { value }, label));
  const q = new URLSearchParams(location.search);
  const wanted = q.get("slugs") || q.get("slug");
  if (wanted && wanted.split(",").every((s) => index.graphs.some((m) => m.slug === s))) {
    if (!choices.some(([v]) => v === wanted)) select.appendChild(el("option", { value: wanted }, `side by side: ${wanted}`));
    select.value = wanted;
  }
  select.addEventListener("change", () => loadGraphs(select.value));
  if (choices.length) await loadGraphs(select.value);
}

main();
