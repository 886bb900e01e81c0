// The cell page: the PackML state lit in the diagram and written large, the mode, the
// commands legal now (operator and above), the active trips and Acknowledge, why the batch
// stopped, the safe state and what was written, and the mode change (engineers).

import {
  el, fill, fmtAge, fmtTime, fmtValue, keep, live, may, onChange, pressed, start, view,
} from "./common.js";

/** The nine commands in the order the buttons show them. */
const COMMANDS = ["Reset", "Start", "Stop", "Hold", "Unhold", "Suspend", "Unsuspend", "Abort", "Clear"];
const DANGER = new Set(["Stop", "Abort"]);
const MODES = ["Production", "Maintenance", "Manual"];

const parts = {};

function layout() {
  parts.now = el("section", { class: "state-now", "aria-label": "State now" });
  parts.commands = el("section", { class: "panel", "aria-labelledby": "h-commands" });
  parts.trips = el("section", { class: "panel", "aria-labelledby": "h-trips" });
  parts.stop = el("section", { class: "panel", "aria-labelledby": "h-batch" });
  parts.safe = el("section", { class: "panel", "aria-labelledby": "h-safe" });
  parts.mode = el("section", { class: "panel", "aria-labelledby": "h-mode" });
  fill(view(), parts.now, parts.commands, parts.trips, parts.stop, parts.safe, parts.mode);
}

function lightDiagram(state, legal) {
  for (const node of document.querySelectorAll("#packml [data-state]")) {
    const lit = node.dataset.state === state;
    node.classList.toggle("lit", lit);
    if (lit) node.setAttribute("aria-current", "step");
    else node.removeAttribute("aria-current");
  }
  for (const arrow of document.querySelectorAll("#packml .transition")) {
    const from = arrow.dataset.from.split(" ");
    const command = arrow.dataset.command;
    const next = from.includes(state) && (command === "SC" || legal.includes(command));
    arrow.classList.toggle("next", next);
  }
  const title = document.getElementById("packml-title");
  if (title) title.textContent = `PackML state diagram: now ${state}`;
}

/** Whether Unhold needs a choice: Held with a step that failed or whose writes the safe
 * state undid (the command layer refuses a plain Unhold then). */
function unholdNeedsChoice(status, detail) {
  if (status.state !== "Held" || !detail) return false;
  return detail.steps.some((s) => s.state === "failed" || s.state === "interrupted");
}

function commandButton(command, choice) {
  const text = choice ? `${command}: ${choice} the step` : command;
  const button = el("button", {
    type: "button",
    class: DANGER.has(command) ? "danger" : "primary",
    text,
    dataset: { focus: `${command}:${choice || ""}` },
  });
  const body = { action: "command", command };
  if (choice) body.choice = choice;
  button.addEventListener("click", () => pressed(button, body));
  return button;
}

function renderNow(status) {
  keep(parts.now, JSON.stringify([status.state, status.mode, status.batch, status.step]), () => [
    el("span", { class: "label", text: "State" }),
    el("span", { class: "value", id: "state-text", text: status.state }),
    el("span", { class: "mode", text: `Mode: ${status.mode}` }),
    status.step ? el("span", { class: "mode", text: `Step: ${status.step}` }) : null,
  ]);
}

function renderCommands(status, detail) {
  const legal = status.legal || [];
  const choice = legal.includes("Unhold") && unholdNeedsChoice(status, detail);
  const key = JSON.stringify([legal, choice, may("operator")]);
  keep(parts.commands, key, () => {
    const heading = el("h2", { id: "h-commands", text: "Commands" });
    if (!may("operator")) {
      return [heading, el("p", { class: "none", text: "Your role may not give commands." })];
    }
    const buttons = [];
    for (const command of COMMANDS) {
      if (!legal.includes(command)) continue;
      if (command === "Unhold" && choice) {
        buttons.push(commandButton(command, "retry"), commandButton(command, "skip"));
      } else {
        buttons.push(commandButton(command));
      }
    }
    const note = choice
      ? el("p", { text: "A step failed or the safe state undid its writes: retry it or skip it." })
      : null;
    if (!buttons.length) {
      return [heading, el("p", { class: "none", text: "No command is legal now." })];
    }
    return [heading, note, el("div", { class: "buttons" }, buttons)];
  });
}

function renderTrips(status) {
  const trips = status.trips || [];
  keep(parts.trips, JSON.stringify([trips, may("operator")]), () => {
    const heading = el("h2", { id: "h-trips", text: `Trips (${trips.length})` });
    if (!trips.length) return [heading, el("p", { class: "none", text: "No trip." })];
    const ack = may("operator")
      ? el("button", { type: "button", class: "primary", text: "Acknowledge", dataset: { focus: "ack" } })
      : null;
    if (ack) ack.addEventListener("click", () => pressed(ack, { action: "ack" }));
    return [heading, el("ul", { class: "trips" }, trips.map((t) => el("li", { text: t }))), ack];
  });
}

function renderStop(status) {
  const key = JSON.stringify([status.batch, status.recipe, status.recipe_version, status.stop_reason,
    status.produced, status.rejected, status.prompt, status.paused]);
  keep(parts.stop, key, () => {
    const facts = el("dl", { class: "facts" });
    const add = (term, value) => facts.append(el("dt", { text: term }), el("dd", { text: value }));
    add("Batch", status.batch || "none loaded");
    if (status.recipe) add("Recipe", `${status.recipe} v${status.recipe_version}`);
    add("Produced", `${status.produced} made, ${status.rejected} rejected`);
    if (status.stop_reason) add("Stopped because", status.stop_reason);
    if (status.prompt) add("Prompt waiting", status.prompt.text);
    if (status.paused) add("Paused before", status.paused);
    const more = status.prompt || status.paused
      ? el("p", {}, el("a", { href: "/batch", text: "Answer or step on the batch page" }))
      : null;
    return [el("h2", { id: "h-batch", text: "Batch" }), facts, more];
  });
}

function renderSafe(detail) {
  const safe = detail ? detail.safe_state : null;
  keep(parts.safe, JSON.stringify(safe), () => {
    const heading = el("h2", { id: "h-safe", text: "Safe state" });
    if (!safe) return [heading, el("p", { class: "none", text: "Not written in this batch." })];
    const rows = safe.results.map((r) =>
      el(
        "tr",
        {},
        el("td", { class: "mono", text: r.tag }),
        el("td", { text: fmtValue(r.value) }),
        el("td", { class: r.error ? "q bad" : "q good", text: r.error ? `failed: ${r.error}` : "written" }),
      ),
    );
    return [
      heading,
      el("p", {}, `Written ${fmtTime(safe.at)} (`, el("span", { class: "age", dataset: { at: safe.at } }), " ago): ", safe.reason),
      el(
        "div",
        { class: "table-wrap" },
        el(
          "table",
          {},
          el("thead", {}, el("tr", {}, el("th", { text: "Tag" }), el("th", { text: "Value" }), el("th", { text: "Result" }))),
          el("tbody", {}, rows),
        ),
      ),
    ];
  });
  for (const age of parts.safe.querySelectorAll(".age")) age.textContent = fmtAge(Number(age.dataset.at));
}

function renderMode(status) {
  keep(parts.mode, JSON.stringify([status.mode, may("engineer")]), () => {
    const heading = el("h2", { id: "h-mode", text: "Mode" });
    if (!may("engineer")) return [heading, el("p", { text: status.mode })];
    const select = el(
      "select",
      { id: "mode-select", name: "mode", dataset: { focus: "mode-select" } },
      MODES.map((m) => el("option", { value: m, selected: m === status.mode, text: m })),
    );
    const button = el("button", { type: "submit", class: "primary", text: "Set mode", dataset: { focus: "mode-set" } });
    const form = el(
      "form",
      { class: "inline-form" },
      el("div", { class: "field" }, el("label", { for: "mode-select", text: "Mode" }), select),
      button,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      pressed(button, { action: "mode", value: select.value });
    });
    return [heading, el("p", { text: `Now: ${status.mode}. The mode changes in Stopped, Idle, Complete or Aborted.` }), form];
  });
}

function render(what) {
  const { status, detail } = live;
  if (!status) return;
  if (!parts.now) layout();
  if (what === "tick") {
    for (const age of parts.safe.querySelectorAll(".age")) age.textContent = fmtAge(Number(age.dataset.at));
    return;
  }
  lightDiagram(status.state, status.legal || []);
  document.title = `${status.state} · ${status.cell} — cellctl`;
  renderNow(status);
  renderCommands(status, detail);
  renderTrips(status);
  renderStop(status);
  renderSafe(detail);
  renderMode(status);
}

onChange(render);
start();
