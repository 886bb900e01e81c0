"""Recipes: the model of a recipe file (one module per step kind in `steps`), its loading with
every problem located, its checks against the cell, its identity, parameters and plan.

A step holds exactly one of `set`, `wait`, `call`, `delay`, `repeat`, `parallel`, `prompt`
(`set` may carry a `wait`: write, then wait).

The literal rule — every value in a recipe that is not a name, a duration or a text for the
operator is an *expression*: `set:` values, `wait` (its `until`), `if`, `repeat`, call `args`
and `expect`. A YAML number or true/false is the constant it shows; a YAML text is parsed as an
expression, so a fixed text is written in quotes *inside* it::

    set:
      conveyor.speed_rpm: 1200           # a constant
      press.setpoint_kN: force_kN * 0.9  # an expression over a parameter
      batch.lot: "'LOT-42'"              # the text LOT-42 for a string tag

Hence `conveyor.speed_rpm: many` is an unknown name and `conveyor.run: "'yes please'"` a
string written to a bool: both are errors naming the tag.

A repeat's `index` name counts the rounds 1, 2, … N. A name bound by `result`, a prompt's
`answer` or a repeat's `index` is usable by the steps after it in its block (and inside
nested blocks); names bound in a parallel branch are usable after the parallel step; names
bound in a repeat body or by a step that may be skipped (`if`, `on_error: skip`) are not
usable after it.
"""

from __future__ import annotations

from cellctl.recipe.fields import ExpressionField, to_expression
from cellctl.recipe.load import (
    cell_file_for,
    check_recipe_file,
    load_recipe,
    load_recipe_document,
    recipe_from_document,
)
from cellctl.recipe.located import model_problems, raw_at, step_label, under_alias
from cellctl.recipe.model import (
    Defaults,
    LoadedRecipe,
    Recipe,
    RecipeIdentity,
    iter_steps,
    parse_parameters,
    step_ids,
)
from cellctl.recipe.steps import (
    STEP_MODELS,
    AnyStep,
    CallStep,
    DelayStep,
    OnError,
    ParallelStep,
    PromptStep,
    RepeatStep,
    SetStep,
    Step,
    StepBase,
    StepKindError,
    Wait,
    WaitStep,
    step_kind,
)
from cellctl.recipe.typed import Answer, Parameter, ParameterType

__all__ = [
    "STEP_MODELS",
    "Answer",
    "AnyStep",
    "CallStep",
    "Defaults",
    "DelayStep",
    "ExpressionField",
    "LoadedRecipe",
    "OnError",
    "ParallelStep",
    "Parameter",
    "ParameterType",
    "PromptStep",
    "Recipe",
    "RecipeIdentity",
    "RepeatStep",
    "SetStep",
    "Step",
    "StepBase",
    "StepKindError",
    "Wait",
    "WaitStep",
    "cell_file_for",
    "check_recipe_file",
    "iter_steps",
    "load_recipe",
    "load_recipe_document",
    "model_problems",
    "parse_parameters",
    "raw_at",
    "recipe_from_document",
    "step_ids",
    "step_kind",
    "step_label",
    "to_expression",
    "under_alias",
]
