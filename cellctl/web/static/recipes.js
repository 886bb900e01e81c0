// The recipes page: the released recipes of the cell (/api/recipes), each with a load form
// built from its parameters (type, range, unit, default; a choice as a select); a refusal's
// reason — the validator's problems, each with its file and line — shown as a list.

import { el, fill, getJson, live, may, onChange, pressed, reasonLines, say, start, view } from "./common.js";

let recipes = null;

function input(recipe, p) {
  const id = `p-${recipe.name}-${p.name}`;
  const hint = [
    p.type,
    p.min !== null && p.max !== null ? `${p.min}…${p.max}` : null,
    p.min !== null && p.max === null ? `≥ ${p.min}` : null,
    p.max !== null && p.min === null ? `≤ ${p.max}` : null,
    p.unit,
    p.default !== null && p.default !== undefined ? `default ${p.default}` : "required",
  ].filter(Boolean).join(", ");
  let control;
  const dflt = p.default === null || p.default === undefined ? "" : String(p.default);
  if (p.choices && p.choices.length) {
    control = el("select", { id, name: p.name },
      dflt === "" ? el("option", { value: "", text: "— choose —" }) : null,
      p.choices.map((c) => el("option", { value: String(c), selected: String(c) === dflt, text: String(c) })));
  } else if (p.type === "bool") {
    control = el("select", { id, name: p.name },
      ["true", "false"].map((v) => el("option", { value: v, selected: v === dflt, text: v })));
  } else if (p.type === "int" || p.type === "float") {
    control = el("input", {
      id, name: p.name, type: "number", value: dflt,
      step: p.type === "int" ? "1" : "any", min: p.min, max: p.max,
      inputmode: p.type === "int" ? "numeric" : "decimal",
    });
  } else {
    control = el("input", { id, name: p.name, type: "text", value: dflt });
  }
  control.setAttribute("aria-describedby", `${id}-hint`);
  if (dflt === "") control.required = true;
  return el("div", { class: "field" },
    el("label", { for: id }, p.name, p.unit ? ` (${p.unit})` : ""),
    control,
    el("span", { class: "hint", id: `${id}-hint`, text: hint + (p.description ? ` — ${p.description}` : "") }));
}

/** Why a form's value is not what its parameter takes, or "" (the service checks again). */
function problemOf(p, text) {
  if (text === "") return p.default === null || p.default === undefined ? `${p.name}: required` : "";
  if (p.type !== "int" && p.type !== "float") return "";
  if (!/^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$/i.test(text)) return `${p.name}: write a number`;
  const value = Number(text);
  if (p.type === "int" && !Number.isInteger(value)) return `${p.name}: write a whole number`;
  if (p.min !== null && value < p.min) return `${p.name}: at least ${p.min}`;
  if (p.max !== null && value > p.max) return `${p.name}: at most ${p.max}`;
  return "";
}

function card(recipe) {
  const problems = el("div", { class: "answer", "aria-live": "polite" });
  const children = [
    el("h2", { text: `${recipe.name} v${recipe.version}` }),
    recipe.description ? el("p", { text: recipe.description }) : null,
  ];
  if (!may("operator")) {
    children.push(el("p", { class: "none", text: "An operator loads it." }));
    return el("section", { class: "panel recipe" }, children);
  }
  const button = el("button", { type: "submit", class: "primary", text: `Load ${recipe.name}` });
  const form = el("form", { class: "load-form", novalidate: true },
    recipe.parameters.map((p) => input(recipe, p)), button, problems);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const parameters = [];
    const wrong = [];
    for (const p of recipe.parameters) {
      const text = form.elements[p.name].value.trim();
      const why = problemOf(p, text);
      if (why) wrong.push(why);
      else if (text !== "") parameters.push(`${p.name}=${text}`);
    }
    if (wrong.length) {
      fill(problems, el("ul", { class: "problems", role: "alert" }, wrong.map((w) => el("li", { text: w }))));
      return;
    }
    fill(problems);
    const answer = await pressed(button, { action: "load", name: recipe.name, parameters });
    if (answer && answer.accepted === false) {
      const [first, rest] = reasonLines(answer.reason);
      fill(problems, el("p", { class: "problem", text: first }),
        rest.length ? el("ul", { class: "problems" }, rest.map((line) => el("li", { text: line }))) : null);
    } else if (answer && answer.accepted) {
      fill(problems, el("p", {}, el("a", { href: "/batch", text: "Go to the batch" })));
    }
  });
  children.push(form);
  return el("section", { class: "panel recipe", "aria-label": recipe.name }, children);
}

async function load() {
  recipes = await getJson("/api/recipes");
  render();
}

function render() {
  if (!recipes || !live.me) return;
  if (view().dataset.built) return; // built once: a form being filled is never rebuilt
  view().dataset.built = "yes";
  if (!recipes.length) {
    fill(view(), el("p", { class: "none", text: "No released recipe: none of the recipe files validates against the cell." }));
    return;
  }
  fill(view(), el("div", { class: "recipes" }, recipes.map(card)));
}

onChange((what) => {
  if (what === "state") render();
});
start().then(load).catch((error) => say("error", error.message));
