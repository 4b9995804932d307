// geowall's live page: decisions arrive as server-sent events (JSON); the
// page keeps bounded tables of them. Every value from the network (names,
// rules, apps) is shown with textContent, never parsed as HTML.
"use strict";

const HOUR = 3600 * 1000;
const MAX_ROWS = 5000;
const MAX_ALERTS = 200;
const token = decodeURIComponent(location.hash.slice(1));
const rows = new Map();   // app|destination|address -> row
const recent = [];        // {t, app, where, up, down, relayed, blocked, opened} for the last hour
const questions = new Map(); // prompt -> {li, flows}
const MAX_QUESTIONS = 256;
let keeps = false;         // whether answers "always" can be kept (/api/info)
let counts = { events: 0, blocked: 0, leaks: 0, skipped: 0 };
let sortKey = "dest", sortUp = true, dirty = true;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function bytes(n) {
  if (!n) return "0";
  const u = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

// The countries one layer names for a destination.
function layerCountries(where, layer) {
  if (!where) return [];
  if (layer === "geo") return [...new Set(Object.values(where.geo || {}).filter(Boolean))];
  if (layer === "network") return where.network && where.network.country ? [where.network.country] : [];
  const o = where[layer];
  return o && o.country ? [o.country] : [];
}

function onEvent(e) {
  // A flow's `closed` event is no decision: it brings the flow's bytes,
  // once for its whole life, and repeats the block of a blocked flow.
  const closed = e.kind === "closed";
  if (!closed) counts.events++;
  if (e.kind === "skipped") { counts.skipped += e.count; return; }
  if (e.kind === "update" || e.kind === "update-failed") {
    const text = e.kind === "update"
      ? `rules update: ${e.what} sequence ${e.sequence} (${e.installed})`
      : `update failed: ${e.what}: ${e.error}`;
    addAlert(text, e.kind === "update" ? "" : "block", e.time_ms);
    return;
  }
  const app = e.app || (e.uid !== undefined ? "uid " + e.uid : "unknown app");
  const dest = e.destination || e.server;
  if (e.kind === "answered") {
    settleQuestion(e.prompt);
    addAlert(`answered ${app} → ${dest}: ${e.action} (${e.answered}; rule ${e.rule})`, e.action === "block" ? "block" : "", e.time_ms);
    return;
  }
  if (e.kind === "asked") addQuestion(e, app, dest);
  const addr = e.proto === "dns" ? "" : String(e.server).replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  const key = app + "|" + dest + "|" + addr;
  let r = rows.get(key);
  if (!r) {
    if (rows.size >= MAX_ROWS) rows.delete(rows.keys().next().value);
    r = { app, dest, addr, flows: 0, up: 0, down: 0 };
    rows.set(key, r);
  }
  if (e.kind === "opened" || e.kind === "blocked" || e.kind === "dns-blocked") r.flows++;
  const up = closed ? e.bytes_up || 0 : 0, down = closed ? e.bytes_down || 0 : 0;
  r.up += up;
  r.down += down;
  r.cls = e.class; r.proto = e.protocol; r.enc = e.encrypted;
  // A relay's refused peer: the relay itself goes on.
  const refusal = e.kind === "peer-refused";
  if (!refusal && !closed) {
    r.verdict = e.kind === "cut" ? "cut" : e.action;
    r.rule = e.rule || "";
  }
  if (e.where) {
    r.geo = layerCountries(e.where, "geo").join(" ");
    r.network = layerCountries(e.where, "network").join(" ");
    r.owner = e.where.owner ? `${e.where.owner.operator} (${e.where.owner.country})` : "";
    r.vendor = e.where.vendor ? `${e.where.vendor.vendor} (${e.where.vendor.country})` : "";
  }
  const blocked = e.action === "block" && !closed;
  if (blocked) {
    counts.blocked++;
    // A later request or QUIC connection on the flow named another host.
    const later = refusal ? ` (peer ${(e.peers || []).join(", ")})`
      : e.hosts && e.hosts.length ? ` (then ${e.hosts[e.hosts.length - 1]})` : "";
    addAlert(`${e.kind} ${app} → ${dest}${later}: ${e.rule || "default"}${e.layer ? " (" + e.layer + ")" : ""}`, "block", e.time_ms);
  }
  if (e.leaks && e.leaks.length) {
    counts.leaks++;
    addAlert(`leak ${app} → ${dest}: ${e.leaks.join(", ")} in cleartext`, "leak", e.time_ms);
  }
  // A blocked or cut flow's bytes are its app's, not its country's: they
  // were not relayed there (a cut flow's, before the cut, were).
  const relayed = e.action !== "block";
  recent.push({ t: e.time_ms || Date.now(), app, where: e.where, up, down, relayed, blocked, opened: e.kind === "opened" });
  dirty = true;
}

// An ask rule's question: who wants to reach what, where it is, and the
// answers, each a POST with the token in its header.
function addQuestion(e, app, dest) {
  const known = questions.get(e.prompt);
  if (known) {
    known.flows++;
    known.count.textContent = `${known.flows} flows held`;
    return;
  }
  if (questions.size >= MAX_QUESTIONS) return;
  const li = el("li");
  const where = ["geo", "network", "owner", "vendor"]
    .map(l => [l, layerCountries(e.where, l).join(" ")])
    .filter(([, c]) => c)
    .map(([l, c]) => `${l} ${c}`)
    .join(", ");
  li.append(el("b", app), el("span", " wants to reach "), el("b", dest),
    el("span", ` (${e.server}${where ? "; " + where : ""}) `));
  const count = el("span", "1 flow held", "terms");
  li.append(el("br"), el("span", `rule "${e.rule}"; ${e.detail || ""}; `, "terms"), count, el("br"));
  const said = el("span", "", "error");
  for (const [label, allow, scope] of [
    ["Allow once", true, "once"], ["Allow for this app", true, "app"], ["Always allow", true, "always"],
    ["Block once", false, "once"], ["Block for this app", false, "app"], ["Always block", false, "always"],
  ]) {
    const b = el("button", label);
    b.type = "button";
    if (scope === "always") {
      b.dataset.scope = scope;
      offerAlways(b);
    }
    b.addEventListener("click", () => {
      post("/api/answer", { prompt: e.prompt, allow, scope })
        .then(() => settleQuestion(e.prompt))
        .catch(err => { said.textContent = " " + err.message; });
    });
    li.append(b);
  }
  li.append(said);
  document.getElementById("questions").append(li);
  questions.set(e.prompt, { li, flows: 1, count });
  document.getElementById("questions-section").hidden = false;
}

// "Always" needs an answers file to keep the answer in.
function offerAlways(b) {
  b.disabled = !keeps;
  b.title = keeps ? "" : "geowall keeps no answers file: start it with --state-dir or --answers";
}

function settleQuestion(prompt) {
  const q = questions.get(prompt);
  if (!q) return;
  q.li.remove();
  questions.delete(prompt);
  document.getElementById("questions-section").hidden = questions.size === 0;
}

// A control action: JSON, with the token in its header.
function post(path, body) {
  return fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Geowall-Token": token },
    body: JSON.stringify(body),
  }).then(r => r.json().then(j => {
    if (!r.ok) throw new Error(j.error || r.statusText);
    return j;
  }));
}

function addAlert(text, cls, t) {
  const list = document.getElementById("alerts");
  const li = el("li", new Date(t || Date.now()).toLocaleTimeString() + " " + text, cls);
  list.prepend(li);
  while (list.children.length > MAX_ALERTS) list.lastChild.remove();
}

function render() {
  if (!dirty) return;
  dirty = false;
  const now = Date.now();
  while (recent.length && recent[0].t < now - HOUR) recent.shift();
  document.getElementById("counts").textContent =
    `${counts.events} decisions, ${counts.blocked} blocked, ${counts.leaks} leaks` +
    (counts.skipped ? `, ${counts.skipped} skipped (page behind)` : "");

  // Countries of the chosen layer.
  const layer = document.getElementById("layer").value;
  const byCountry = new Map();
  for (const x of recent) {
    for (const c of layerCountries(x.where, layer)) {
      const t = byCountry.get(c) || { flows: 0, blocked: 0, bytes: 0 };
      if (x.opened) t.flows++;
      if (x.blocked) t.blocked++;
      if (x.relayed) t.bytes += x.up + x.down;
      byCountry.set(c, t);
    }
  }
  paintMap(byCountry, layer);
  const box = document.getElementById("countries");
  box.replaceChildren(...[...byCountry].sort((a, b) => b[1].flows + b[1].blocked - a[1].flows - a[1].blocked).map(([c, t]) => {
    const d = el("div", undefined, "country" + (t.blocked ? " blocked" : ""));
    d.append(el("b", c), el("span", `${t.flows} open · ${t.blocked} blocked`), el("div", bytes(t.bytes)));
    d.title = `${c}: ${t.flows} flows opened, ${t.blocked} blocked, ${bytes(t.bytes)} (${layer} layer)`;
    return d;
  }));

  // Apps.
  const byApp = new Map();
  for (const x of recent) {
    const t = byApp.get(x.app) || { flows: 0, blocked: 0, up: 0, down: 0 };
    if (x.opened) t.flows++;
    if (x.blocked) t.blocked++;
    t.up += x.up; t.down += x.down;
    byApp.set(x.app, t);
  }
  document.querySelector("#apps tbody").replaceChildren(...[...byApp].sort((a, b) => b[1].up + b[1].down - a[1].up - a[1].down).map(([a, t]) => {
    const tr = el("tr");
    tr.append(el("td", a), el("td", t.flows), el("td", t.blocked), el("td", bytes(t.up)), el("td", bytes(t.down)));
    return tr;
  }));

  // Flows.
  const f = document.getElementById("filter").value.trim().toLowerCase();
  const keys = ["app", "dest", "addr", "geo", "network", "owner", "vendor", "cls", "proto", "enc", "up", "down", "verdict", "rule"];
  let list = [...rows.values()];
  if (f) list = list.filter(r => keys.some(k => String(r[k] ?? "").toLowerCase().includes(f)));
  list.sort((a, b) => {
    const x = a[sortKey] ?? "", y = b[sortKey] ?? "";
    const c = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
    return sortUp ? c : -c;
  });
  document.querySelector("#flows tbody").replaceChildren(...list.slice(0, 1000).map(r => {
    const tr = el("tr", undefined, r.verdict === "block" || r.verdict === "cut" ? "block" : "");
    for (const k of keys) tr.append(el("td", k === "up" || k === "down" ? bytes(r[k]) : (r[k] ?? "")));
    return tr;
  }));
}

// The map (geowall's own world.svg: one path per country, its id the
// lowercase ISO code): blue where traffic went, red where something was
// blocked, darker for more.
let mapPaths = null;
function paintMap(byCountry, layer) {
  if (!mapPaths) return;
  const most = Math.max(1, ...[...byCountry.values()].map(t => t.flows + t.blocked));
  for (const [id, p] of mapPaths) {
    const t = byCountry.get(id.toUpperCase());
    p.setAttribute("class", t ? (t.blocked ? "blocked" : "traffic") : "");
    p.style.fillOpacity = t ? String(0.35 + 0.65 * (t.flows + t.blocked) / most) : "";
    let title = p.querySelector("title");
    if (!title) { title = document.createElementNS("http://www.w3.org/2000/svg", "title"); p.prepend(title); }
    title.textContent = (p.getAttribute("aria-label") || id.toUpperCase()) +
      (t ? `: ${t.flows} flows opened, ${t.blocked} blocked, ${bytes(t.bytes)} (${layer} layer, last hour)` : "");
  }
}

function loadMap() {
  fetch("/world.svg").then(r => r.text()).then(text => {
    const svg = new DOMParser().parseFromString(text, "image/svg+xml").documentElement;
    const box = document.getElementById("map");
    box.replaceChildren(document.importNode(svg, true));
    mapPaths = new Map([...box.querySelectorAll("path[id]")].map(p => [p.id, p]));
    dirty = true;
  }).catch(() => { document.getElementById("map").textContent = "(no map)"; });
}

function connect() {
  const state = document.getElementById("state");
  const src = new EventSource("/api/events?token=" + encodeURIComponent(token));
  src.onopen = () => { state.textContent = "live"; };
  src.onerror = () => { state.textContent = "disconnected: retrying…"; };
  src.onmessage = m => { try { onEvent(JSON.parse(m.data)); } catch (_) { /* not ours */ } };
}

document.addEventListener("DOMContentLoaded", () => {
  for (const th of document.querySelectorAll("#flows th[data-k]")) {
    th.addEventListener("click", () => {
      sortUp = sortKey === th.dataset.k ? !sortUp : true;
      sortKey = th.dataset.k;
      dirty = true;
    });
  }
  document.getElementById("filter").addEventListener("input", () => { dirty = true; });
  document.getElementById("layer").addEventListener("change", () => { dirty = true; });
  document.getElementById("reload").addEventListener("click", () => {
    const said = document.getElementById("said");
    post("/api/reload", {})
      .then(j => { said.className = ""; said.textContent = "rules reloaded: " + j.reloaded; })
      .catch(err => { said.className = "error"; said.textContent = err.message; });
  });
  if (!token) {
    document.getElementById("state").textContent = "open the address geowall printed (it carries the token)";
    return;
  }
  loadMap();
  connect();
  fetch("/api/info", { headers: { "X-Geowall-Token": token } })
    .then(r => r.json())
    .then(j => {
      keeps = !!j.answers_file;
      document.getElementById("state").title = `policy ${j.policy}`;
      document.querySelectorAll("#questions button[data-scope]").forEach(offerAlways);
    })
    .catch(() => {});
  setInterval(render, 500);
});
