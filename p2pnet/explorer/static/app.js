// The p2pnet explorer page: draws the graph as SVG, updates from server-sent events.
// Everything shown comes from the network, so it is inserted as text, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#1c7ed6", "#d9480f", "#2b8a3e", "#7048e8", "#e8590c", "#0c8599", "#c2255c",
  "#5f3dc4", "#495057", "#66a80f", "#f08c00", "#364fc7", "#a61e4d", "#087f5b", "#862e9c",
  "#d6336c"];
const state = {
  graph: { nodes: [], edges: [], mesh: {} }, selected: null, linkMode: "", elements: new Map(),
};

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function short(id) { return id.length > 14 ? id.slice(0, 6) + "…" + id.slice(-6) : id; }

// Rings: the explorer in the middle, bootstrap nodes on an inner ring, agents outside it.
// Positions depend only on the sorted IDs, so nodes do not jump when others come and go.
function layout(nodes) {
  const pos = new Map();
  const groups = { explorer: [], bootstrap: [], agent: [] };
  for (const n of nodes) (groups[n.role] || groups.agent).push(n);
  for (const g of Object.values(groups)) g.sort((a, b) => (a.id < b.id ? -1 : 1));
  const place = (list, radius, offset) => list.forEach((n, i) => {
    const a = offset + (2 * Math.PI * i) / Math.max(list.length, 1);
    pos.set(n.id, [radius * Math.cos(a), radius * Math.sin(a)]);
  });
  if (groups.explorer.length === 1) pos.set(groups.explorer[0].id, [0, 0]);
  else place(groups.explorer, 60, 0);
  place(groups.bootstrap, 170, -Math.PI / 2);
  // agents: as many rings as needed, 14 px apart along each ring
  let rest = groups.agent, radius = 320, ring = 0;
  while (rest.length) {
    const room = Math.max(8, Math.floor((2 * Math.PI * radius) / 14));
    place(rest.slice(0, room), radius, ring * 0.07);
    rest = rest.slice(room); radius += 24; ring += 1;
  }
  return pos;
}

function drawGraph() {
  const { nodes } = state.graph;
  const pos = layout(nodes);
  const many = nodes.length > 80;
  const edgesG = document.getElementById("edges");
  const nodesG = document.getElementById("nodes");
  edgesG.replaceChildren();
  const links = state.linkMode ? (state.graph.mesh[state.linkMode] || []) : state.graph.edges;
  edgesG.setAttribute("class", state.linkMode ? "mesh" : "");
  edgesG.setAttribute("data-count", String(links.length));
  for (const e of links) {
    const a = pos.get(e.source), b = pos.get(e.target);
    if (!a || !b) continue;
    edgesG.appendChild(el("svg:line", { x1: a[0], y1: a[1], x2: b[0], y2: b[1],
      "data-source": e.source, "data-target": e.target }));
  }
  // Nodes are kept by PeerID and updated in place, so a click never lands on a replaced one.
  const live = new Set(nodes.map((n) => n.id));
  for (const [id, g] of state.elements) {
    if (!live.has(id)) { g.remove(); state.elements.delete(id); }
  }
  for (const n of nodes) {
    const [x, y] = pos.get(n.id);
    const label = n.name || short(n.id);
    const look = `${n.role}|${label}|${many}`;
    let g = state.elements.get(n.id);
    if (!g || g.getAttribute("data-look") !== look) {
      const fresh = el("svg:g", { "data-peer-id": n.id, "data-look": look });
      fresh.appendChild(el("svg:circle", { r: many ? 5 : n.role === "agent" ? 10 : 13 }));
      fresh.appendChild(el("svg:title", {}, `${label} (${n.role})\n${n.id}`));
      if (!many) fresh.appendChild(el("svg:text", { x: 15, y: 4 }, label));
      fresh.addEventListener("click", () => select(n.id));
      if (g) g.replaceWith(fresh); else nodesG.appendChild(fresh);
      g = fresh;
      state.elements.set(n.id, g);
    }
    g.setAttribute("class", `node ${n.role}${n.id === state.selected ? " selected" : ""}`);
    g.setAttribute("data-role", n.role);
    g.setAttribute("transform", `translate(${x.toFixed(1)},${y.toFixed(1)})`);
  }
  const counts = { bootstrap: 0, agent: 0, explorer: 0 };
  for (const n of nodes) counts[n.role] = (counts[n.role] || 0) + 1;
  document.getElementById("counts").textContent =
    `${nodes.length} nodes: ${counts.bootstrap} bootstrap, ${counts.agent} agents, ` +
    `${counts.explorer} explorer · ${state.graph.edges.length} connections`;
  const select_ = document.getElementById("link-mode");
  const topics = Object.keys(state.graph.mesh).sort();
  const have = [...select_.options].map((o) => o.value).slice(1);
  if (have.join("\n") !== topics.join("\n")) {
    while (select_.options.length > 1) select_.remove(1);
    for (const t of topics) select_.appendChild(el("option", { value: t }, `mesh: ${t}`));
    select_.value = topics.includes(state.linkMode) ? state.linkMode : "";
  }
}

async function select(id) {
  state.selected = id;
  for (const g of document.querySelectorAll("#nodes .node")) {
    g.classList.toggle("selected", g.getAttribute("data-peer-id") === id);
  }
  await showDetails();
}

function row(dl, label, value, mono) {
  dl.appendChild(el("dt", {}, label));
  const dd = el("dd", mono ? { class: "mono" } : {}, value === null || value === undefined ||
    value === "" ? "—" : value);
  dl.appendChild(dd);
  return dd;
}

async function showDetails() {
  const box = document.getElementById("details");
  const id = state.selected;
  if (!id) return;
  let d;
  try {
    const resp = await fetch(`/api/nodes/${encodeURIComponent(id)}`);
    if (resp.status === 404) {
      box.replaceChildren(el("p", { class: "hint" }, `${short(id)} has left the network.`));
      return;
    }
    d = await resp.json();
  } catch (err) {
    return; // the stream status badge already says the explorer is unreachable
  }
  if (state.selected !== id) return;
  const dl = el("dl", { "data-details-of": d.id });
  row(dl, "Name", d.name);
  row(dl, "Role", d.role);
  row(dl, "PeerID", d.id, true);
  row(dl, "ETH address", d.ethAddress, true);
  row(dl, "Registry", d.registry === null ? "not reported" : d.registry);
  row(dl, "Agent version", d.agentVersion);
  row(dl, "Addresses", (d.addrs || []).join("\n"), true).style.whiteSpace = "pre-line";
  row(dl, "Topics", (d.topics || []).join(", "));
  row(dl, "Uptime", d.uptime === null ? null : `${Math.round(d.uptime)} s`);
  row(dl, "Messages in / out", d.messagesIn === null ? null : `${d.messagesIn} / ${d.messagesOut}`);
  row(dl, "Rejected", d.rejected);
  row(dl, "Connected peers", d.peers);
  row(dl, "Mesh sizes", Object.entries(d.mesh || {}).map(([t, n]) => `${t}: ${n}`).join(", "));
  row(dl, "DHT table size", d.dhtTableSize);
  const names = new Map(state.graph.nodes.map((n) => [n.id, n.name]));
  const scores = Object.entries(d.scores || {})
    .map(([p, s]) => `${names.get(p) || short(p)}: ${s}`);
  row(dl, "Peer scores", scores.join("\n")).style.whiteSpace = "pre-line";
  row(dl, "Protocols", (d.protocols || []).join("\n")).style.whiteSpace = "pre-line";
  row(dl, "Last heard", `${d.lastSeen} s ago (${(d.sources || []).join(", ")})`);
  box.replaceChildren(dl);
}

function drawRates(rates) {
  const svg = document.getElementById("rates");
  const legend = document.getElementById("rates-legend");
  svg.replaceChildren();
  legend.replaceChildren();
  const topics = Object.keys(rates.series);
  let max = 0, total = 0;
  for (const t of topics) {
    for (const v of rates.series[t]) max = Math.max(max, v);
    total += rates.totals[t] || 0;
  }
  svg.setAttribute("data-total", String(total));
  const W = 600, H = 180, top = Math.max(max, 0.2) * 1.15;
  topics.forEach((t, i) => {
    const s = rates.series[t];
    const step = W / Math.max(s.length - 1, 1);
    const pts = s.map((v, j) => `${(j * step).toFixed(1)},${(H - (v / top) * H).toFixed(1)}`);
    const color = PALETTE[i % PALETTE.length];
    svg.appendChild(el("svg:polyline", { points: pts.join(" "), stroke: color, "data-topic": t,
      "data-total": String(rates.totals[t] || 0) }));
    const item = el("span", {}, ` ${t} (${rates.totals[t] || 0}) `);
    item.prepend(el("i", { class: "dot", style: `background:${color}` }));
    legend.appendChild(item);
  });
  legend.appendChild(el("span", { class: "hint" },
    ` · peak ${max.toFixed(2)}/s · ${rates.bucketSeconds} s buckets`));
}

function drawAnnouncements(list) {
  const ol = document.getElementById("announcements");
  ol.replaceChildren();
  for (const a of list.slice().reverse().slice(0, 30)) {
    ol.appendChild(el("li", { "data-announcer": a.peerId },
      `${a.event} · ${a.name || short(a.peerId)} · ${a.ethAddress}`));
  }
}

function drawDht(servers) {
  const box = document.getElementById("dht");
  if (!servers.length) {
    box.replaceChildren(el("p", { class: "hint" }, "No DHT server crawled yet."));
    return;
  }
  let deepest = 0;
  for (const s of servers) for (const c of Object.keys(s.buckets)) deepest = Math.max(deepest, +c);
  const table = el("table");
  const head = el("tr");
  head.appendChild(el("th", {}, "server"));
  for (let c = 0; c <= deepest; c++) head.appendChild(el("th", { title: "common prefix length" }, c));
  head.appendChild(el("th", {}, "crawled"));
  table.appendChild(head);
  for (const s of servers) {
    const tr = el("tr", { "data-server": s.id });
    tr.appendChild(el("td", { class: "name" }, s.name || short(s.id)));
    for (let c = 0; c <= deepest; c++) {
      const peers = s.buckets[String(c)] || [];
      tr.appendChild(el("td", { class: peers.length ? "" : "empty",
        title: peers.join("\n") }, peers.length));
    }
    tr.appendChild(el("td", {}, s.crawledAgo === null ? "" : `${s.crawledAgo} s ago`));
    table.appendChild(tr);
  }
  box.replaceChildren(table);
}

function drawExplorer(info) {
  const banner = document.getElementById("bootstrap-status");
  const b = info.bootstrap;
  banner.setAttribute("data-state", b.state);
  if (b.state === "retrying" || b.state === "starting") {
    banner.hidden = false;
    banner.textContent = b.state === "starting" ? "Connecting to the bootstrap peers…" :
      `Bootstrap peers unreachable, retrying (attempt ${b.attempts}` +
      `${b.nextRetryIn === null ? "" : `, next in ${Math.ceil(b.nextRetryIn)} s`}): ${b.lastError}`;
  } else if (b.state === "none" && info.connectedPeers === 0) {
    banner.hidden = false;
    banner.textContent = "No bootstrap peers configured: pass --bootstrap-peers or an env file.";
  } else {
    banner.hidden = true;
  }
  if (info.ignoredStatuses) {
    document.getElementById("counts").title =
      `${info.ignoredStatuses} malformed status reports ignored; last: ${info.lastIgnored}`;
  }
}

function connect() {
  const badge = document.getElementById("stream-status");
  const source = new EventSource("/api/events");
  source.onopen = () => { badge.textContent = "live"; badge.className = "badge live"; };
  source.onerror = () => { badge.textContent = "reconnecting…"; badge.className = "badge"; };
  source.addEventListener("graph", (ev) => {
    state.graph = JSON.parse(ev.data);
    drawGraph();
    if (state.selected) showDetails();
  });
  source.addEventListener("rates", (ev) => drawRates(JSON.parse(ev.data)));
  source.addEventListener("announcements", (ev) => drawAnnouncements(JSON.parse(ev.data)));
  source.addEventListener("dht", (ev) => drawDht(JSON.parse(ev.data)));
  source.addEventListener("explorer", (ev) => drawExplorer(JSON.parse(ev.data)));
  source.addEventListener("statuses", () => { if (state.selected) showDetails(); });
}

document.getElementById("link-mode").addEventListener("change", (ev) => {
  state.linkMode = ev.target.value;
  drawGraph();
});
connect();
