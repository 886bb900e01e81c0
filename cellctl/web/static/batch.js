// The batch page: the recipe (name, version, hash) and its parameters, the step tree with the
// running step, elapsed and worst-case time, a wait's condition with its tags' live values,
// breakpoints and stepping (engineers), and a prompt as a form typed by what it wants.

import {
  el, fill, fmtDuration, fmtValue, keep, live, may, now, onChange, pressed, say, start, view,
} from "./common.js";

const parts = {};

function layout() {
  parts.recipe = el("section", { class: "panel", "aria-labelledby": "h-recipe" });
  parts.time = el("section", { class: "panel", "aria-labelledby": "h-time" });
  parts.prompt = el("section", { "aria-labelledby": "h-prompt" });
  parts.stepping = el("section", { "aria-labelledby": "h-stepping" });
  parts.wait = el("section", { "aria-labelledby": "h-wait" });
  parts.steps = el("section", { class: "panel wide", "aria-labelledby": "h-steps" });
  fill(view(), parts.prompt, parts.stepping, parts.recipe, parts.time, parts.wait, parts.steps);
}

// -- what a prompt wants -------------------------------------------------------------------

const NUM = String.raw`-?\d+(?:\.\d+)?(?:e[+-]?\d+)?`;
const NUMBER = new RegExp(
  String.raw`^a (whole number|number)(?: in (${NUM})\.\.(${NUM})| of at least (${NUM})| of at most (${NUM}))?(?: (.+))?$`,
);

/** The form input a prompt's `wants` text calls for (the service's words, as
 * cellctl.recipe.typed.describe_range writes them): {kind: number|choice|bool|text, ...}. */
export function parseWants(wants) {
  const text = String(wants || "").trim();
  if (text.startsWith("one of ")) {
    const choices = [];
    const quoted = /'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"/g;
    for (const match of text.slice(7).matchAll(quoted)) {
      const raw = match[1] !== undefined ? match[1] : match[2];
      choices.push(raw.replace(/\\(.)/g, "$1"));
    }
    if (choices.length) return { kind: "choice", choices };
  }
  if (text.startsWith("true or false")) return { kind: "bool" };
  const number = NUMBER.exec(text);
  if (number) {
    const [, which, low, high, least, most, unit] = number;
    const min = low ?? least;
    const max = high ?? most;
    return {
      kind: "number",
      integer: which === "whole number",
      min: min === undefined ? null : Number(min),
      max: max === undefined ? null : Number(max),
      unit: unit || "",
    };
  }
  return { kind: "text", any: text === "any text" };
}

/** Why a typed value is not what a number input wants, or "" when it is. */
function numberProblem(input, wanted) {
  const text = input.value.trim();
  if (!/^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$/i.test(text)) return "write a number";
  const value = Number(text);
  if (wanted.integer && !Number.isInteger(value)) return "write a whole number";
  if (wanted.min !== null && value < wanted.min) return `at least ${wanted.min}`;
  if (wanted.max !== null && value > wanted.max) return `at most ${wanted.max}`;
  return "";
}

function promptForm(prompt) {
  const wanted = parseWants(prompt.wants);
  const id = "prompt-answer";
  let input;
  if (wanted.kind === "choice" || wanted.kind === "bool") {
    const choices = wanted.kind === "bool" ? ["true", "false"] : wanted.choices;
    input = el(
      "select",
      { id, name: "value", required: true, dataset: { focus: id } },
      el("option", { value: "", text: "— choose —" }),
      choices.map((c) => el("option", { value: c, text: c })),
    );
  } else if (wanted.kind === "number") {
    input = el("input", {
      id,
      name: "value",
      type: "number",
      inputmode: wanted.integer ? "numeric" : "decimal",
      step: wanted.integer ? "1" : "any",
      min: wanted.min,
      max: wanted.max,
      required: true,
      dataset: { focus: id },
    });
  } else {
    input = el("input", { id, name: "value", type: "text", required: !wanted.any, dataset: { focus: id } });
  }
  const problem = el("p", { class: "problem", id: "prompt-problem", "aria-live": "polite" });
  input.setAttribute("aria-describedby", "prompt-wants prompt-problem");
  const button = el("button", { type: "submit", class: "primary", text: "Answer", dataset: { focus: "answer" } });
  const form = el(
    "form",
    { class: "inline-form", novalidate: true },
    el(
      "div",
      { class: "field" },
      el("label", { for: id, text: "Answer" }),
      input,
      el("span", { class: "hint", id: "prompt-wants", text: `Wants ${prompt.wants}` }),
      problem,
    ),
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    // Checked here for a quick word; the service checks again and says what is wrong.
    let why = "";
    if (wanted.kind === "number") why = numberProblem(input, wanted);
    else if (input.required && !input.value.trim()) why = "choose or write an answer";
    problem.textContent = why;
    if (why) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    input.removeAttribute("aria-invalid");
    await pressed(button, { action: "answer", name: prompt.step_id, value: input.value.trim() });
  });
  return form;
}

function renderPrompt(status) {
  const prompt = status.prompt;
  keep(parts.prompt, JSON.stringify([prompt, may("operator")]), () => {
    parts.prompt.className = prompt ? "panel prompt-box wide" : "";
    if (!prompt) return [];
    return [
      el("h2", { id: "h-prompt", text: `Prompt at step ${prompt.step_id}` }),
      el("p", { class: "text", text: prompt.text }),
      may("operator") ? promptForm(prompt) : el("p", { class: "none", text: "An operator answers it." }),
    ];
  });
}

// -- stepping and breakpoints (engineers) ----------------------------------------------------

function stepButton(choice, text, cls = "primary") {
  const button = el("button", { type: "button", class: cls, text, dataset: { focus: `step-${choice}` } });
  button.addEventListener("click", () => pressed(button, { action: "step", value: choice }));
  return button;
}

function renderStepping(status) {
  const engineer = may("engineer");
  const canPause = engineer && !status.paused && status.mode === "Maintenance"
    && ["Execute", "Idle", "Held", "Stopped"].includes(status.state) && !!status.batch;
  keep(parts.stepping, JSON.stringify([status.paused, engineer, canPause]), () => {
    parts.stepping.className = status.paused || canPause ? "panel wide" : "";
    if (status.paused) {
      return [
        el("h2", { id: "h-stepping", text: `Paused before ${status.paused}` }),
        engineer
          ? el("div", { class: "buttons" },
            stepButton("run", "Run this step"),
            stepButton("skip", "Skip this step", ""),
            stepButton("continue", "Continue to the end"))
          : el("p", { class: "none", text: "An engineer steps on." }),
      ];
    }
    if (canPause) {
      return [
        el("h2", { id: "h-stepping", text: "Stepping" }),
        el("div", { class: "buttons" }, stepButton("run", "Pause before each step", "")),
      ];
    }
    return [];
  });
}

/** A step row's step id (breakpoints are set by id): the row's `id`, else the id its label
 * names ("step 'pick'"); null for a step without one. */
function stepId(row) {
  if (row.id) return row.id;
  const match = /^step (['"])(.*)\1$/.exec(row.label);
  return match ? match[2] : null;
}

function renderSteps(status, detail) {
  const engineer = may("engineer");
  const breaks = status.breakpoints || [];
  keep(parts.steps, JSON.stringify([detail && detail.steps, detail && detail.running, breaks, engineer]), () => {
    const heading = el("h2", { id: "h-steps", text: "Steps" });
    if (!detail) return [heading, el("p", { class: "none", text: "No batch is loaded." })];
    const rows = detail.steps.map((row) => {
      const id = stepId(row);
      const running = row.path === detail.running || row.state === "running";
      const item = el(
        "li",
        { class: `${row.state}${row.path === detail.running ? " running" : ""}` },
        el("span", { class: "mono", text: row.path }),
        el("span", { class: "label", text: row.label }),
        el("span", { class: "st", text: row.path === detail.running ? "running now" : row.state }),
        el("span", { class: "detail", text: row.detail }),
        row.worst_case !== null ? el("span", { class: "worst", text: `≤ ${fmtDuration(row.worst_case)}` }) : null,
        id && breaks.includes(id) ? el("span", { class: "bp", text: "breakpoint" }) : null,
      );
      if (running) item.setAttribute("aria-current", "step");
      // CSSOM, not a style attribute: a strict CSP allows it.
      item.style.setProperty("--depth", String(row.depth));
      if (engineer && id) {
        const has = breaks.includes(id);
        const button = el("button", {
          type: "button",
          class: "small",
          text: has ? "Remove breakpoint" : "Add breakpoint",
          "aria-label": `${has ? "Remove breakpoint at" : "Add breakpoint at"} ${id}`,
          dataset: { focus: `bp-${id}` },
        });
        button.addEventListener("click", () =>
          pressed(button, { action: has ? "break_rm" : "break_add", name: id }));
        item.append(button);
      }
      return item;
    });
    return [heading, el("ol", { class: "steps" }, rows)];
  });
}

// -- the recipe, the time, the wait ----------------------------------------------------------

function renderRecipe(status) {
  keep(parts.recipe, JSON.stringify([status.recipe, status.recipe_version, status.recipe_sha256,
    status.parameters, status.batch, status.state]), () => {
    const heading = el("h2", { id: "h-recipe", text: "Recipe" });
    if (!status.recipe) {
      return [heading, el("p", {}, "No recipe is loaded: ", el("a", { href: "/recipes", text: "load one" }), ".")];
    }
    const facts = el("dl", { class: "facts" });
    const add = (term, value, cls) => facts.append(el("dt", { text: term }), el("dd", { class: cls, text: value }));
    add("Recipe", status.recipe);
    add("Version", String(status.recipe_version));
    add("SHA-256", status.recipe_sha256, "mono hash");
    add("Batch", status.batch);
    add("State", status.state);
    const params = Object.entries(status.parameters || {});
    const table = params.length
      ? el("table", {},
        el("thead", {}, el("tr", {}, el("th", { text: "Parameter" }), el("th", { text: "Value" }))),
        el("tbody", {}, params.map(([k, v]) => el("tr", {}, el("td", { class: "mono", text: k }), el("td", { text: v })))))
      : el("p", { class: "none", text: "No parameters." });
    return [heading, facts, el("h2", { text: "Parameters" }), table];
  });
}

function renderTime(status, detail) {
  keep(parts.time, "time", () => [
    el("h2", { id: "h-time", text: "Time" }),
    el("dl", { class: "facts" },
      el("dt", { text: "Elapsed" }), el("dd", { id: "elapsed" }),
      el("dt", { text: "Worst case" }), el("dd", { id: "worst" }),
      el("dt", { text: "Produced" }), el("dd", { id: "produced" })),
  ]);
  const started = detail && detail.started_at;
  parts.time.querySelector("#elapsed").textContent = started ? fmtDuration(now() - started) : "not started";
  parts.time.querySelector("#worst").textContent = detail && detail.worst_case !== null
    ? fmtDuration(detail.worst_case) : "unbounded (a wait without a timeout)";
  parts.time.querySelector("#produced").textContent = `${status.produced} made, ${status.rejected} rejected`;
}

function renderWait(detail) {
  const wait = detail && detail.wait;
  keep(parts.wait, JSON.stringify(wait), () => {
    parts.wait.className = wait ? "panel" : "";
    if (!wait) return [];
    return [
      el("h2", { id: "h-wait", text: "Waiting for" }),
      el("p", { class: "mono", text: wait.condition }),
      el("table", {},
        el("thead", {}, el("tr", {}, el("th", { text: "Tag" }), el("th", { text: "Value" }), el("th", { text: "Quality" }))),
        el("tbody", {}, wait.tags.map((tag) =>
          el("tr", { dataset: { tag } }, el("td", { class: "mono", text: tag }), el("td", { class: "v" }), el("td", { class: "q" }))))),
    ];
  });
  for (const row of parts.wait.querySelectorAll("tr[data-tag]")) {
    const tag = live.tags[row.dataset.tag];
    const unit = tag && tag.unit ? ` ${tag.unit}` : "";
    row.querySelector(".v").textContent = tag ? fmtValue(tag.value) + unit : "—";
    const q = row.querySelector(".q");
    q.textContent = tag ? tag.quality : "unknown";
    q.className = `q ${tag ? tag.quality : "bad"}`;
  }
}

function render(what) {
  const { status, detail } = live;
  if (!status) return;
  if (!parts.recipe) layout();
  if (what !== "tick" && what !== "tags") {
    document.title = `Batch ${status.batch || "—"} · ${status.state} — cellctl`;
    renderPrompt(status);
    renderStepping(status);
    renderRecipe(status);
    renderSteps(status, detail);
  }
  renderTime(status, detail);
  renderWait(detail);
}

onChange(render);
start().catch((error) => say("error", error.message));
