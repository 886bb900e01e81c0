// The history page: the journal's last batches (/api/history, as `cellctl history --json`)
// as a table, each batch linking to its HTML report (/history/{batch}/report).

import { el, fill, fmtDuration, getJson, live, onChange, say, start, view } from "./common.js";

const LAST = 50;

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

async function load() {
  const rows = await getJson(`/api/history?last=${LAST}`);
  if (rows === null) return;
  if (!rows.length) {
    fill(view(), el("p", { class: "none", text: "The journal has no batch yet." }));
    return;
  }
  const refresh = el("button", { type: "button", text: "Refresh" });
  refresh.addEventListener("click", load);
  const head = ["Batch", "Recipe", "Outcome", "Start", "Duration", "Parts", "Operator"];
  fill(
    view(),
    el("div", { class: "buttons" }, refresh),
    el("div", { class: "table-wrap" },
      el("table", {},
        el("caption", { class: "muted", text: `The last ${LAST} batches, newest first; a batch's name opens its report.` }),
        el("thead", {}, el("tr", {}, head.map((t) => el("th", { scope: "col", text: t })))),
        el("tbody", {}, rows.map((b) => el("tr", {},
          el("td", {}, el("a", { href: `/history/${encodeURIComponent(b.batch)}/report`, text: b.batch })),
          el("td", { text: b.recipe ? `${b.recipe} v${b.version ?? "?"}` : "—" }),
          el("td", {}, el("span", { class: `outcome ${b.outcome}`, text: b.outcome })),
          el("td", { text: when(b.start) }),
          el("td", { class: "num", text: fmtDuration(b.duration) }),
          el("td", { class: "num", text: b.parts_made ?? "—" }),
          el("td", { text: b.operator ?? "—" }),
        ))))),
  );
}

// The page follows the event stream too (the connection state, the cell's name), and reads
// the history again when a batch ends.
let lastState = "";
onChange((what) => {
  if (!live.status || what === "tick") return;
  const state = live.status.state;
  if (state !== lastState) {
    const ended = ["Complete", "Stopped", "Aborted"].includes(state) && lastState !== "";
    lastState = state;
    if (ended) load();
  }
});

start().then(load).catch((error) => say("error", error.message));
