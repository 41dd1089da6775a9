// The recsys console: reads only the service's public JSON endpoints (issue #19).
"use strict";

const api = (path) => new URL("../" + path, window.location.href).toString();
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function getJson(path) {
  const response = await fetch(api(path), { headers: { accept: "application/json" } });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const why = body && (body.detail || body.error);
    throw new Error(typeof why === "string" ? why : "HTTP " + response.status);
  }
  return body;
}

function badge(kind, text) {
  return el("span", { class: "badge " + kind, text: text || kind });
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  s = Number(s);
  if (s < 90) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  if (m < 90) return m + " min " + Math.round(s - m * 60) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}

function fmtAge(s) {
  if (s === null || s === undefined) return "unknown";
  s = Math.max(0, Number(s));
  if (s < 3600) return Math.round(s / 60) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " days";
}

function fmtNum(v, digits) {
  if (v === null || v === undefined || v === "") return "–";
  if (typeof v === "number") return digits === undefined ? v.toLocaleString("en") : v.toFixed(digits);
  return String(v);
}

function showError(target, what, error) {
  target.replaceChildren(el("p", { class: "error", role: "alert", text: what + ": " + error.message }));
}

// --- live version --------------------------------------------------------------------------

function facts(rows) {
  const dl = el("dl", { class: "facts" });
  for (const [name, value] of rows) dl.append(el("dt", { text: name }), el("dd", {}, value));
  return dl;
}

async function loadLive() {
  const target = $("live");
  try {
    const live = await getJson("v1/versions/live");
    const metrics = live.metrics || {};
    const shown = ["precision@5", "recall@5", "map@5", "ndcg@5", "coverage"]
      .filter((k) => typeof metrics[k] === "number")
      .map((k) => k + " " + metrics[k].toFixed(4)).join(" · ");
    const rows = [
      ["Version", el("code", { text: live.version })],
      ["Age", fmtAge(live.age_seconds) + (live.generated_at ? " (generated " + live.generated_at + ")" : "")],
      ["Users", fmtNum(live.users)],
      ["Gate metrics", shown || "–"],
      ["Data days", live.first_day !== null && live.first_day !== undefined
        ? live.first_day + " – " + live.last_day
        : "–"],
      ["Data source", live.data_source || "–"],
      ["Previous version", live.previous_version ? el("code", { text: live.previous_version }) : "none"],
      ["Run", live.run_id || "–"],
    ];
    const experiment = live.experiment;
    if (experiment && Object.keys(experiment).length) {
      rows.push(["A/B experiment", Object.entries(experiment).map(([k, v]) => k + ": " + v).join(" · ")]);
    } else {
      rows.push(["A/B experiment", "none running"]);
    }
    target.replaceChildren(facts(rows));
  } catch (error) {
    showError(target, "No live version", error);
  }
}

// --- run history ---------------------------------------------------------------------------

const STATUS_COLOURS = {
  published: "#1a7f37", "dry-run": "#6e7781", "gate-refused": "#cf222e", failed: "#cf222e",
};

function runsChart(runs) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 900, height = 150, pad = 26;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const ordered = runs.slice().reverse(); // oldest left, newest right
  svg.setAttribute("aria-label", `Duration of the last ${runs.length} runs (bars) and the gate's P@5 (dots)`);
  const maxSeconds = Math.max(1, ...ordered.map((r) => Number(r.seconds) || 0));
  const values = ordered.map((r) => r.gate_value).filter((v) => typeof v === "number");
  const maxP = Math.max(0.05, ...values) * 1.15;
  const slot = Math.min((width - 2 * pad) / Math.max(ordered.length, 1), 40); // a few runs: thin bars
  const add = (tag, attrs, title) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (title) { const t = document.createElementNS(ns, "title"); t.textContent = title; node.append(t); }
    svg.append(node);
    return node;
  };
  add("line", { x1: pad, x2: width - pad, y1: height - pad, y2: height - pad, stroke: "#c8ced8" });
  const points = [];
  ordered.forEach((run, i) => {
    const h = ((Number(run.seconds) || 0) / maxSeconds) * (height - 2 * pad);
    const x = pad + i * slot + slot * 0.15;
    add("rect", {
      x: x.toFixed(1), y: (height - pad - h).toFixed(1), width: (slot * 0.7).toFixed(1),
      height: Math.max(h, 1).toFixed(1), fill: STATUS_COLOURS[run.status] || "#6e7781", rx: 2,
    }, `${run.started_at || ""} ${run.status}: ${fmtSeconds(run.seconds)}`);
    if (typeof run.gate_value === "number") {
      const y = height - pad - (run.gate_value / maxP) * (height - 2 * pad);
      points.push([x + slot * 0.35, y, run.gate_value]);
    }
  });
  if (points.length > 1) {
    add("polyline", {
      points: points.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" "),
      fill: "none", stroke: "#1f6feb", "stroke-width": 2,
    });
  }
  for (const [x, y, v] of points) {
    add("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 4, fill: "#1f6feb" }, "P@5 " + v.toFixed(4));
  }
  const label = add("text", { x: pad, y: 14, "font-size": 12, fill: "#5b6474" });
  label.textContent = `max ${fmtSeconds(maxSeconds)}`;
  return svg;
}

function legend() {
  const item = (colour, text) => el("span", {}, el("span", { class: "swatch", style: "background:" + colour }), text);
  return el("p", { class: "legend" },
    item("#1a7f37", "published"), item("#6e7781", "dry run"), item("#cf222e", "refused / failed"),
    item("#1f6feb", "gate P@5"));
}

async function loadRuns() {
  const body = $("runs-table").tBodies[0];
  const chart = $("runs-chart");
  try {
    const { runs } = await getJson("v1/runs");
    if (!runs.length) {
      chart.replaceChildren();
      body.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No runs recorded yet." })));
      return;
    }
    chart.replaceChildren(legend(), runsChart(runs));
    body.replaceChildren(...runs.map((run) => el("tr", { class: "run", "data-status": run.status },
      el("td", { text: (run.started_at || "").replace("T", " ").replace("+00:00", "") }),
      el("td", { title: run.error || null }, badge(run.status || "unknown")),
      el("td", { class: "num", text: fmtSeconds(run.seconds) }),
      el("td", { class: "num", text: fmtNum(run.users) }),
      el("td", { class: "num", text: typeof run.gate_value === "number" ? run.gate_value.toFixed(4) : (run.gate || "–") }),
      el("td", {}, run.version ? el("code", { text: run.version }) : "–"),
    )));
  } catch (error) {
    showError(chart, "Run history unavailable", error);
    body.replaceChildren();
  }
}

// --- items (lookup and popular) ------------------------------------------------------------

function reasonText(v) {
  // The machine-readable reasons of explain=true (docs/api.md), in words for people.
  if (!v || typeof v !== "object" || Array.isArray(v)) return v;
  const plural = (n, word) => n + " " + word + (n === 1 ? "" : "s");
  switch (v.code) {
    case "repeat":
      return "Bought " + plural(v.times, "time") + ", last " + plural(v.last_days, "day") + " ago";
    case "bought_with":
      return v.item_id ? "Often bought with #" + v.item_id : "Often bought with this customer's items";
    case "als":
      return "Bought by customers with similar baskets";
    case "trending":
      return "Trending in recent weeks";
    case "popular":
      return "Popular with many customers";
    default:
      return v.text || v.reason || v.label || JSON.stringify(v);
  }
}

function reasonOf(body, item, index, detail) {
  // Reasons appear with explain=true (issue #18); accept the shapes it may take.
  const pick = reasonText;
  if (detail) {
    if (detail.reason) return pick(detail.reason);
    if (Array.isArray(detail.reasons)) return detail.reasons.map(pick).join("; ");
  }
  const reasons = body && body.reasons;
  if (Array.isArray(reasons)) return pick(reasons[index]);
  if (reasons && typeof reasons === "object") return pick(reasons[item]);
  return null;
}

function itemList(body, items, details) {
  const byId = new Map((details || []).map((d) => [d.item_id, d]));
  const list = el("ol", { class: "items" });
  items.forEach((item, index) => {
    const d = byId.get(item) || {};
    const name = [d.brand, d.sub_category || d.category].filter(Boolean).join(" ") || "item " + item;
    const attrs = [
      ["department", d.department], ["category", d.category], ["brand", d.brand],
      ["size", d.package_size],
    ].filter(([, v]) => v).map(([k, v]) => k + ": " + v).join(" · ");
    const reason = reasonOf(body, item, index, d);
    list.append(el("li", { class: "item", "data-item": item },
      el("span", { class: "rank", text: index + 1 + "." }),
      el("span", { class: "name" }, name, el("span", { class: "muted small", text: "  #" + item })),
      el("span", { class: "attrs", text: attrs || "no attributes published" }),
      reason ? el("span", { class: "reason", text: "Why: " + reason }) : null,
    ));
  });
  return list;
}

async function loadPopular() {
  const target = $("popular");
  try {
    const popular = await getJson("v1/popular");
    target.replaceChildren(itemList(null, popular.items, popular.details));
  } catch (error) {
    showError(target, "Popular list unavailable", error);
  }
}

async function lookup(userId) {
  const target = $("lookup-result");
  if (!/^[0-9]{1,19}$/.test(userId)) {
    target.replaceChildren(el("p", { class: "error", role: "alert", text: "A customer id is a whole number, e.g. 1364." }));
    return;
  }
  target.replaceChildren(el("p", { class: "muted", text: "Looking up " + userId + "…" }));
  const url = new URL(window.location.href);
  url.searchParams.set("user", userId);
  window.history.replaceState(null, "", url);
  try {
    const body = await getJson(`v1/recommendations/${userId}?k=10&details=true&explain=true`);
    const head = el("div", { class: "result-head" },
      el("strong", { text: "Customer " + body.user_id }),
      body.source === "fallback"
        ? badge("fallback", "fallback: unknown customer, popular items shown")
        : badge("personal", "personal"),
      el("span", { class: "muted small", text: "version " + body.version }));
    target.replaceChildren(head, itemList(body, body.items, body.details));
  } catch (error) {
    showError(target, "Lookup failed", error);
  }
}

function init() {
  const form = $("lookup-form");
  const input = $("user-id");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    lookup(input.value.trim());
  });
  const user = new URLSearchParams(window.location.search).get("user");
  if (user) {
    input.value = user;
    lookup(user.trim());
  }
  loadLive();
  loadRuns();
  loadPopular();
}

document.addEventListener("DOMContentLoaded", init);
