// The tags page: every tag with its value, unit, quality (written, not only coloured) and
// age, a trend of the last 5 minutes kept in this browser from the live updates, and Force /
// Unforce on writable tags for engineers. Rows are updated in place: 5,000 tags stay cheap
// and the keyboard focus stays where it is.

import {
  el, fill, fmtAge, fmtValue, live, may, onChange, pressed, say, start, svg, view,
} from "./common.js";

const TREND_SECONDS = 300;
const TREND_POINTS = 600; // per tag, at most: a fast tag keeps its last 600 changes
const rows = new Map(); // tag -> {row, cells…}
const trends = new Map(); // tag -> [[at, number], …]
let body = null;
let filter = "";
let built = false;

function numberOf(value) {
  if (typeof value === "boolean") return value ? 1 : 0;
  if (typeof value === "number" && Number.isFinite(value)) return value;
  return null;
}

function remember(name, tag) {
  const y = numberOf(tag.value);
  if (y === null || !tag.at) return;
  let points = trends.get(name);
  if (!points) trends.set(name, (points = []));
  const last = points[points.length - 1];
  if (last && last[0] === tag.at) return;
  points.push([tag.at, y]);
  if (points.length > TREND_POINTS) points.splice(0, points.length - TREND_POINTS);
}

function sparkline(name) {
  const w = 120;
  const h = 28;
  const horizon = Date.now() / 1000 - TREND_SECONDS;
  const all = trends.get(name) || [];
  while (all.length > 1 && all[1][0] < horizon) all.shift();
  const points = all;
  const picture = svg("svg", { class: "spark", viewBox: `0 0 ${w} ${h}`, role: "img" });
  if (points.length < 2) {
    picture.setAttribute("aria-label", "no trend yet");
    picture.append(svg("text", { class: "none", x: 2, y: 18, text: "—" }));
    return picture;
  }
  const ys = points.map((p) => p[1]);
  const low = Math.min(...ys);
  const high = Math.max(...ys);
  const t0 = Math.max(points[0][0], horizon);
  const t1 = Math.max(points[points.length - 1][0], Date.now() / 1000);
  const span = Math.max(t1 - t0, 1);
  const scaleY = high > low ? (h - 4) / (high - low) : 0;
  // A step line: a value holds until the next one.
  let previous = null;
  const coords = [];
  for (const [at, y] of points) {
    const x = ((Math.max(at, t0) - t0) / span) * w;
    const py = high > low ? h - 2 - (y - low) * scaleY : h / 2;
    if (previous !== null) coords.push(`${x.toFixed(1)},${previous}`);
    coords.push(`${x.toFixed(1)},${py.toFixed(1)}`);
    previous = py.toFixed(1);
  }
  coords.push(`${w},${previous}`);
  picture.append(svg("polyline", { points: coords.join(" ") }));
  picture.setAttribute("aria-label", `last 5 minutes: from ${low} to ${high}`);
  return picture;
}

function forceForm(name, cells) {
  const id = `force-${name}`;
  const input = el("input", { id, type: "text", name: "value", required: true, class: "small-input" });
  const go = el("button", { type: "submit", class: "small primary", text: "Force" });
  const cancel = el("button", { type: "button", class: "small", text: "Cancel" });
  const form = el("form", { class: "inline-form" },
    el("label", { for: id, text: `Value for ${name}` }), input, go, cancel);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!input.value.trim()) {
      input.focus();
      return;
    }
    const answer = await pressed(go, { action: "force", name, value: input.value.trim() });
    if (answer && answer.accepted) {
      showActions(name, cells, true);
      cells.actions.querySelector("button")?.focus();
    }
  });
  cancel.addEventListener("click", () => {
    showActions(name, cells, true);
    cells.actions.querySelector("button")?.focus();
  });
  return [form, input];
}

/** The row's buttons; an open force form stays (an update never takes what is being typed)
 * unless `reset`. */
function showActions(name, cells, reset = false) {
  const tag = live.tags[name];
  const forced = !!(live.status && live.status.forced && name in live.status.forced);
  const key = `${!!(tag && tag.writable)}:${forced}:${may("engineer")}`;
  if (!reset && (cells.actions.dataset.form === "open" || cells.actions.dataset.key === key)) return;
  cells.actions.dataset.key = key;
  cells.actions.dataset.form = "";
  const children = [];
  if (may("engineer") && tag && tag.writable) {
    const force = el("button", { type: "button", class: "small", text: "Force…", "aria-label": `Force ${name}` });
    force.addEventListener("click", () => {
      const [form, input] = forceForm(name, cells);
      cells.actions.dataset.form = "open";
      cells.actions.replaceChildren(form);
      input.focus();
    });
    children.push(force);
    if (forced) {
      const unforce = el("button", { type: "button", class: "small", text: "Unforce", "aria-label": `Unforce ${name}` });
      unforce.addEventListener("click", () => pressed(unforce, { action: "unforce", name }));
      children.push(unforce);
    }
  }
  cells.actions.replaceChildren(...children);
}

function addRow(name) {
  const cells = {
    name: el("td", { class: "mono", text: name }),
    value: el("td", { class: "num" }),
    unit: el("td"),
    quality: el("td"),
    age: el("td", { class: "num" }),
    trend: el("td"),
    actions: el("td"),
  };
  cells.row = el("tr", { dataset: { tag: name } }, Object.values(cells));
  rows.set(name, cells);
  return cells;
}

function update(name) {
  const tag = live.tags[name];
  const cells = rows.get(name);
  if (!tag || !cells) return;
  const forced = live.status && live.status.forced ? live.status.forced[name] : undefined;
  cells.value.replaceChildren(fmtValue(tag.value));
  if (forced !== undefined) cells.value.append(" ", el("span", { class: "forced", text: `forced ${forced}` }));
  cells.unit.textContent = tag.unit || "";
  cells.quality.replaceChildren(el("span", { class: `q ${tag.quality}`, text: tag.quality }));
  if (tag.error) cells.quality.append(el("div", { class: "muted", text: tag.error }));
  cells.age.textContent = fmtAge(tag.at);
  cells.trend.replaceChildren(sparkline(name));
  showActions(name, cells);
}

function applyFilter() {
  for (const [name, cells] of rows) cells.row.hidden = filter !== "" && !name.toLowerCase().includes(filter);
}

function build() {
  const search = el("input", { id: "tag-filter", type: "search", placeholder: "part of a name" });
  search.addEventListener("input", () => {
    filter = search.value.trim().toLowerCase();
    applyFilter();
  });
  body = el("tbody");
  fill(
    view(),
    el("div", { class: "field filter" }, el("label", { for: "tag-filter", text: "Show tags named" }), search),
    el("div", { class: "table-wrap" },
      el("table", {},
        el("caption", { class: "muted", text: "Trend: the last 5 minutes this page has seen." }),
        el("thead", {}, el("tr", {}, ["Tag", "Value", "Unit", "Quality", "Age", "Trend", ""].map((t) => el("th", { scope: "col", text: t })))),
        body)),
  );
  built = true;
}

function render(what, names) {
  if (!live.status) return;
  if (!built) build();
  if (what === "tick") {
    for (const [name, cells] of rows) {
      const tag = live.tags[name];
      if (tag) cells.age.textContent = fmtAge(tag.at);
    }
    return;
  }
  const changed = what === "tags" ? names : Object.keys(live.tags);
  let added = false;
  for (const name of changed) {
    if (!rows.has(name)) {
      addRow(name);
      added = true;
    }
    remember(name, live.tags[name]);
    update(name);
  }
  if (added) {
    body.replaceChildren(...[...rows.keys()].sort().map((name) => rows.get(name).row));
    applyFilter();
  }
  if (what === "status") for (const name of rows.keys()) update(name);
}

onChange(render);
start().catch((error) => say("error", error.message));
