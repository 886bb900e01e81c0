"""Broken recipes: `cellctl validate` exits 1 and names every fault at its exact line and column.

Each recipe is written beside a copy of tests/recipes/cell.yaml, the small cell these checks
are written against (every tag type, ro and rw tags, a scaled and a string tag, methods).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cellctl.cli import run
from cellctl.errors import Problem
from cellctl.recipe import check_recipe_file
from tests.located import Expect, col_of, expect

CELL = Path(__file__).resolve().parent / "recipes" / "cell.yaml"

# Three lines every case builds on: the first step is on line 4.
HEAD = "recipe: t\nversion: 1\nsteps:\n"
# Parameters on lines 4..8, steps from line 10.
PARAMS = """\
recipe: t
version: 1
parameters:
  speed: {type: int, default: 100, min: 0, max: 70000}
  force: {type: float, default: 10, min: 0, max: 20}
  loose: {type: float, default: 1}
  parts: {type: int, default: 3, min: 1}
  lot:   {type: str, default: LOT-1}
steps:
"""


CASES: dict[str, tuple[str, list[Expect]]] = {
    # --- the file and its YAML ---------------------------------------------------------------
    "yaml-syntax": (
        HEAD + "  - {id: a, set: {plc.run: true}\n  - {id: b, delay: 1s}\n",
        [expect(5, "- {id: b", "yaml-syntax", "YAML syntax error")],
    ),
    "empty-file": ("# a recipe, some day\n", [expect(1, "#", "empty", "empty")]),
    "duplicate-key-in-set": (
        HEAD + "  - id: a\n    set:\n      plc.run: true\n      plc.run: false\n",
        [expect(7, "plc.run", "duplicate-key", "step 'a': set:", "'plc.run'", "first at line 6")],
    ),
    "unknown-top-level-key": (
        "recipe: t\nversion: 1\nstep:\n  - {delay: 1s}\n",
        [
            expect(1, "recipe", "missing", "missing required key 'steps'"),
            expect(3, "step:", "unknown-key", "'step'", "did you mean 'steps'"),
        ],
    ),
    "missing-steps-and-version": (
        "# the mapping starts on line 2\nrecipe: t\ndescription: nothing yet\n",
        [
            expect(2, "recipe", "missing", "missing required key 'version'"),
            expect(2, "recipe", "missing", "missing required key 'steps'"),
        ],
    ),
    "empty-steps": (
        "recipe: t\nversion: 1\nsteps: []\n",
        [expect(3, "[]", "too_short", "steps", "needs at least one step")],
    ),
    "version-not-a-number": (
        "recipe: t\nversion: three\nsteps:\n  - {delay: 1s}\n",
        [expect(2, "three", "int_type", "version", "'three'")],
    ),
    "bad-recipe-name": (
        "recipe: press fit!\nversion: 1\nsteps:\n  - {delay: 1s}\n",
        [expect(1, "press", "bad-name", "recipe name 'press fit!'")],
    ),
    # --- parameters --------------------------------------------------------------------------
    "parameter-unknown-type": (
        "recipe: t\nversion: 1\nparameters:\n  n: {type: integer, default: 3}\n"
        "steps:\n  - {delay: 1s}\n",
        [expect(4, "integer", "literal_error", "parameter n", "type", "'integer'")],
    ),
    "parameter-default-out-of-range": (
        "recipe: t\nversion: 1\nparameters:\n"
        "  force_kN: {type: float, default: 22.0, min: 5, max: 20, unit: kN}\n"
        "steps:\n  - {delay: 1s}\n",
        [expect(4, "22.0", "bad-default", "parameter force_kN", "22.0", "5..20 kN")],
    ),
    "parameter-default-wrong-type": (
        "recipe: t\nversion: 1\nparameters:\n  parts: {type: int, default: 2.5}\n"
        "  fast: {type: bool, default: 'yes'}\nsteps:\n  - {delay: 1s}\n",
        [
            expect(4, "2.5", "bad-default", "parameter parts", "whole number"),
            expect(5, "'yes'", "bad-default", "parameter fast", "true or false"),
        ],
    ),
    "parameter-enum-without-choices": (
        "recipe: t\nversion: 1\nparameters:\n  mode:\n    type: enum\n    default: fast\n"
        "steps:\n  - {delay: 1s}\n",
        [expect(5, "type", "missing", "parameter mode", "choices")],
    ),
    "parameter-default-not-a-choice": (
        "recipe: t\nversion: 1\nparameters:\n"
        "  mode: {type: enum, choices: [fast, slow], default: medium}\n"
        "steps:\n  - {delay: 1s}\n",
        [expect(4, "medium", "bad-default", "parameter mode", "'medium'", "'fast', 'slow'")],
    ),
    "parameter-keys-that-do-not-apply": (
        "recipe: t\nversion: 1\nparameters:\n"
        "  flag: {type: bool, min: 0}\n  n: {type: int, choices: [a]}\n"
        "  m: {type: int, min: 5, max: 1}\nsteps:\n  - {delay: 1s}\n",
        [
            expect(4, "0}", "bad-key", "parameter flag", "min applies to int and float"),
            expect(5, "[a]", "bad-key", "parameter n", "choices apply to enum"),
            expect(6, "1}", "bad-value", "parameter m", "max 1 is below min 5"),
        ],
    ),
    "parameter-named-like-a-keyword": (
        "recipe: t\nversion: 1\nparameters:\n  and: {type: int, default: 1}\n"
        "steps:\n  - {delay: 1s}\n",
        [expect(4, "and", "bad-name", "'and' is reserved")],
    ),
    # --- step shapes -------------------------------------------------------------------------
    "unknown-key-in-step": (
        HEAD + "  - {id: w, wait: plc.ready, timout: 1s}\n",
        [
            expect(4, "timout", "unknown-key", "step 'w'", "'timout'", "did you mean 'timeout'"),
        ],
    ),
    "ambiguous-step": (
        HEAD + "  - {id: a, set: {plc.run: true}, call: arm.home, timeout: 1s}\n",
        [expect(4, "call", "step-kind", "step 'a'", "both 'set' and 'call'")],
    ),
    "unknown-step-kind": (
        HEAD + "  - {id: a, move: arm}\n  - id: b\n    sett: {plc.run: true}\n",
        [
            expect(4, "move", "step-kind", "step 'a'", "unknown key 'move'", "set, wait"),
            expect(6, "sett", "step-kind", "step 'b'", "'sett'", "did you mean 'set'"),
        ],
    ),
    "step-is-not-a-mapping": (
        HEAD + "  - plc.run\n",
        [expect(4, "plc.run", "step-kind", "step #1", "a step is a mapping")],
    ),
    "missing-id": (
        HEAD + "  - {set: {plc.run: true}}\n  - {wait: plc.ready, timeout: 1s}\n"
        "  - {prompt: Load the fixture}\n  - {delay: 1s}\n",
        [
            expect(4, "{set", "missing", "step #1", "missing required key 'id'"),
            expect(5, "{wait", "missing", "step #2", "missing required key 'id'"),
            expect(6, "{prompt", "missing", "step #3", "missing required key 'id'"),
        ],
    ),
    "duplicate-id-in-a-nested-step": (
        HEAD + "  - {id: go, set: {plc.run: true}}\n  - repeat: 2\n    steps:\n"
        "      - {id: go, set: {plc.run: false}}\n",
        [expect(7, "go,", "duplicate-id", "step 'go'", "used twice", "first at line 4")],
    ),
    "duplicate-id-after-a-nested-step": (
        HEAD + "  - repeat: 2\n    steps:\n      - {id: go, set: {plc.run: false}}\n"
        "  - {id: go, set: {plc.run: true}}\n",
        [expect(7, "go,", "duplicate-id", "step 'go'", "used twice", "first at line 6")],
    ),
    "wait-changed-tags": (
        HEAD + "  - {id: w, wait: {until: plc.ready, changed: [plc.cuont]}, timeout: 1s}\n"
        "  - {id: e, wait: {until: plc.ready, changed: []}, timeout: 1s}\n"
        "  - {id: t, wait: {until: plc.ready, changed: [plc.count, plc.count]}, timeout: 1s}\n",
        [
            expect(4, "plc.cuont", "unknown-tag", "step 'w'", "changed", "'plc.count'"),
            expect(5, "[]", "empty", "step 'e'", "wait.changed", "no tags listed"),
            expect(6, "[plc", "bad-value", "step 't'", "plc.count is listed twice"),
        ],
    ),
    "wait-changed-own-write": (
        # The step's own write moves the tag: its change says nothing of the machine's answer.
        HEAD + "  - {id: s, set: {plc.count: 1}, wait: {until: plc.ready, changed: [plc.count]}, "
        "timeout: 1s}\n",
        [expect(4, "plc.count]", "own-write", "step 's'", "plc.count is written by this step")],
    ),
    "wait-mapping-shape": (
        HEAD + "  - {id: w, wait: {until: 'plc.ready and', chaged: [plc.count]}, timeout: 1s}\n"
        "  - {id: m, set: {plc.run: true}, wait: {changed: [plc.count]}, timeout: 1s}\n",
        [
            expect(4, "plc.ready and'", "expression", "step 'w'", "wait.until", "syntax"),
            expect(4, "chaged", "unknown-key", "step 'w'", "did you mean 'changed'"),
            expect(5, "{changed", "missing", "step 'm'", "missing required key 'until'"),
        ],
    ),
    "call-expect": (
        HEAD + "  - {id: h, call: arm.home, expect: result, timeout: 1s}\n"
        "  - {id: m, call: arm.measure, expect: 'result > plc.pressure', timeout: 1s}\n"
        "  - {id: n, call: arm.measure, expect: 'result + 1', timeout: 1s}\n"
        "  - {id: r, call: arm.measure, expect: 'reslt > 1', timeout: 1s}\n",
        [
            expect(4, "result", "no-result", "step 'h'", "arm.home returns nothing"),
            expect(5, "plc.pressure", "expect-reads-tag", "step 'm'", "reads tag plc.pressure"),
            expect(6, "'result + 1'", "type-mismatch", "step 'n'", "must be a condition"),
            expect(7, "reslt", "expression", "step 'r'", "unknown name 'reslt'"),
        ],
    ),
    "bad-step-id": (
        HEAD + "  - {id: 'press it', set: {plc.run: true}}\n",
        [expect(4, "'press it'", "bad-name", "step id 'press it'")],
    ),
    "wait-and-call-without-timeout": (
        HEAD + "  - {id: w, wait: plc.ready}\n  - {id: h, call: arm.home}\n"
        "  - {id: s, set: {plc.run: true}, wait: plc.ready}\n",
        [
            expect(4, "wait", "missing-timeout", "step 'w'", "a wait needs a timeout"),
            expect(5, "call", "missing-timeout", "step 'h'", "a call needs a timeout"),
            expect(6, "wait", "missing-timeout", "step 's'", "a wait needs a timeout"),
        ],
    ),
    "bad-durations": (
        HEAD + "  - {id: w, wait: plc.ready, timeout: 10}\n  - {delay: soon}\n  - {delay: 0s}\n",
        [
            expect(4, "10}", "bad-duration", "step 'w'", "timeout", "needs a unit"),
            expect(5, "soon", "bad-duration", "step #2", "delay", "'soon'"),
            expect(6, "0s", "greater_than", "step #3", "delay", "greater than 0"),
        ],
    ),
    "on-error-shapes": (
        HEAD + "  - {id: a, set: {plc.run: true}, on_error: {action: hold, count: 2}}\n"
        "  - {id: b, set: {plc.run: true}, on_error: panic}\n",
        [
            expect(4, "{action", "bad-key", "step 'a'", "count and delay apply to retry"),
            expect(5, "panic", "literal_error", "step 'b'", "on_error", "'panic'"),
        ],
    ),
    "parallel-with-one-branch": (
        HEAD + "  - parallel:\n      - [{delay: 1s}]\n",
        [expect(5, "- [", "too_short", "step #1", "parallel", "needs at least two branches")],
    ),
    # --- writes: tags, access, types, ranges -------------------------------------------------
    "unknown-tag": (
        HEAD + "  - {id: a, set: {plc.rnu: true}}\n",
        [expect(4, "plc.rnu", "unknown-tag", "step 'a'", "'plc.rnu'", "did you mean 'plc.run'")],
    ),
    "write-to-read-only-tag": (
        HEAD + "  - {id: a, set: {plc.ready: true}}\n",
        [expect(4, "plc.ready", "read-only", "step 'a'", "set plc.ready", "device plc")],
    ),
    "unknown-name-written-to-uint16": (
        HEAD + "  - {id: a, set: {plc.speed: many}}\n",
        [expect(4, "many", "expression", "step 'a'", "set plc.speed", "unknown name 'many'")],
    ),
    "text-written-to-bool": (
        HEAD + '  - {id: a, set: {plc.run: "yes please"}}\n'
        "  - {id: b, set: {plc.run: \"'yes please'\"}}\n",
        [
            expect(4, "please", "expression", "step 'a'", "set plc.run", "syntax error"),
            expect(5, '"', "type-mismatch", "step 'b'", "set plc.run", "(bool)", "is a text"),
        ],
    ),
    "number-written-to-bool-and-text": (
        HEAD + "  - {id: a, set: {plc.run: 1, plc.lot: 42}}\n",
        [
            expect(4, "1,", "type-mismatch", "step 'a'", "set plc.run", "is a number"),
            expect(4, "42", "type-mismatch", "set plc.lot", "(string)", "\"'LOT-42'\""),
        ],
    ),
    "constants-out-of-range": (
        HEAD + "  - {id: a, set: {plc.speed: 70000, plc.limited: 3001, plc.speed: -1}}\n",
        [
            expect(4, "plc.speed: -1", "duplicate-key", "step 'a': set:", "'plc.speed'"),
            expect(4, "70000", "out-of-range", "set plc.speed", "70000", "uint16"),
            expect(4, "3001", "out-of-range", "set plc.limited", "above the maximum 3000"),
        ],
    ),
    "fraction-to-integer-tag": (
        HEAD + "  - {id: a, set: {plc.speed: 2.5}}\n",
        [expect(4, "2.5", "out-of-range", "set plc.speed", "whole number")],
    ),
    "scaled-tag-raw-range": (
        HEAD + "  - {id: a, set: {plc.temp_C: 4000}}\n",
        [expect(4, "4000", "out-of-range", "set plc.temp_C", "raw value", "int16")],
    ),
    "text-too-long-for-string-tag": (
        HEAD + "  - {id: a, set: {plc.lot: \"'LOT-123456789'\"}}\n",
        [expect(4, '"', "out-of-range", "set plc.lot", "string")],
    ),
    "parameter-range-does-not-fit-tag": (
        PARAMS + "  - {id: a, set: {plc.speed: speed, plc.limited: speed // 20}}\n",
        [
            expect(10, "speed,", "out-of-range", "set plc.speed", "parameter speed", "70000"),
            expect(10, "speed //", "out-of-range", "set plc.limited", "3500", "maximum 3000"),
        ],
    ),
    "float-parameter-to-integer-tag": (
        PARAMS + "  - {id: a, set: {plc.speed: force * 2, plc.count: round(force * 2)}}\n",
        [expect(10, "force * 2,", "not-whole", "set plc.speed", "whole numbers", "round")],
    ),
    "unbounded-parameter-to-bounded-tag": (
        PARAMS + "  - {id: a, set: {plc.count: parts, plc.force: loose, plc.limited: loose}}\n",
        [
            expect(10, "parts,", "unbounded", "set plc.count", "give parameter parts a max"),
            expect(10, "loose}", "not-whole", "set plc.limited", "whole numbers"),
            expect(10, "loose}", "unbounded", "set plc.limited", "give parameter loose a min"),
        ],
    ),
    "text-parameter-to-number-tag": (
        PARAMS + "  - {id: a, set: {plc.speed: lot, plc.lot: lot}}\n",
        [expect(10, "lot,", "type-mismatch", "set plc.speed", "takes a number", "is a text")],
    ),
    # --- expressions -------------------------------------------------------------------------
    "wait-is-not-a-condition": (
        HEAD + "  - {id: w, wait: plc.pressure * 2, timeout: 1s}\n",
        [expect(4, "plc.pressure", "type-mismatch", "step 'w'", "wait", "is a number")],
    ),
    "if-with-a-type-error": (
        PARAMS + "  - {id: a, if: 'lot > 3', set: {plc.run: true}}\n",
        [expect(10, "lot >", "expression", "step 'a'", "if", "cannot compare a string")],
    ),
    "expression-that-reaches-for-python": (
        HEAD + "  - {id: a, wait: \"__import__('os').system('x')\", timeout: 1s}\n"
        "  - {id: b, wait: plc.ready.__class__, timeout: 1s}\n"
        "  - {id: c, set: {plc.speed: 9 ** 999999}}\n",
        [
            expect(4, "__import__", "expression", "step 'a'", "wait", "not allowed"),
            expect(5, "plc.ready.__class__", "expression", "step 'b'", "'_'"),
            expect(6, "9 **", "expression", "step 'c'", "set plc.speed", "'**'"),
        ],
    ),
    "wait-on-unknown-tag": (
        HEAD + "  - {id: w, wait: 'plc.redy and arm.busy', timeout: 1s}\n",
        [expect(4, "plc.redy", "expression", "step 'w'", "'plc.redy'", "did you mean")],
    ),
    # --- calls -------------------------------------------------------------------------------
    "unknown-method": (
        HEAD + "  - {id: c, call: arm.pik, timeout: 1s}\n  - {id: d, call: plc.run, timeout: 1s}\n",
        [
            expect(4, "arm.pik", "unknown-method", "step 'c'", "did you mean 'arm.pick'"),
            expect(5, "plc.run", "unknown-method", "step 'd'", "it is a tag"),
        ],
    ),
    "call-args-checked": (
        HEAD + "  - {id: c, call: arm.pick, args: {slot: 2.5, sped: 1}, timeout: 1s}\n"
        "  - {id: d, call: arm.pick, args: {slot: \"'one'\", speed: 1}, timeout: 1s}\n",
        [
            expect(4, "args", "missing-arg", "step 'c'", "speed (float64)"),
            expect(4, "2.5", "out-of-range", "step 'c'", "arg slot", "int32"),
            expect(4, "sped", "unknown-arg", "step 'c'", "'sped'", "did you mean 'speed'"),
            expect(5, '"', "type-mismatch", "step 'd'", "arg slot", "takes a number"),
        ],
    ),
    "call-arg-out-of-range": (
        HEAD + "  - {id: c, call: arm.pick, args: {slot: 3000000000, speed: 1}, timeout: 1s}\n",
        [expect(4, "3000000000", "out-of-range", "arg slot", "int32")],
    ),
    "result-of-a-method-that-returns-nothing": (
        HEAD + "  - {id: h, call: arm.home, result: done, timeout: 1s}\n",
        [expect(4, "done", "no-result", "step 'h'", "arm.home returns nothing")],
    ),
    "result-name-collisions": (
        PARAMS + "  - {id: m, call: arm.measure, result: force, timeout: 1s}\n"
        "  - {id: n, call: arm.measure, result: mm, timeout: 1s}\n"
        "  - {id: o, call: arm.measure, result: mm, timeout: 1s}\n",
        [
            expect(10, "force", "duplicate-name", "step 'm'", "'force' is a parameter"),
            expect(12, "mm", "duplicate-name", "step 'o'", "already bound by step 'n'", "11"),
        ],
    ),
    "result-used-with-the-wrong-type": (
        HEAD + "  - {id: m, call: arm.measure, result: mm, timeout: 1s}\n"
        "  - {id: s, set: {plc.run: mm}}\n",
        [expect(5, "mm", "type-mismatch", "step 's'", "set plc.run", "is a number")],
    ),
    "name-used-before-it-is-bound": (
        HEAD + "  - {id: s, set: {plc.force: mm}}\n"
        "  - {id: m, if: plc.ready, call: arm.measure, result: mm, timeout: 1s}\n"
        "  - {id: t, set: {plc.force: mm}}\n",
        [
            expect(4, "mm", "not-bound", "step 's'", "'mm'", "step 'm' (line 5)"),
            expect(6, "mm", "not-bound", "step 't'", "'mm'", "step 'm' (line 5)"),
        ],
    ),
    # --- blocks ------------------------------------------------------------------------------
    "repeat-count-must-be-a-number": (
        PARAMS + "  - repeat: lot\n    steps: [{delay: 1s}]\n"
        "  - repeat: -1\n    steps: [{delay: 1s}]\n"
        "  - repeat: parts\n    steps: [{delay: 1s}]\n",
        [
            expect(10, "lot", "type-mismatch", "step #1", "repeat", "takes a number"),
            expect(12, "-1", "out-of-range", "step #2", "repeat", "-1"),
            expect(14, "parts", "unbounded", "step #3", "give parameter parts a max"),
        ],
    ),
    "repeat-index-only-inside-the-loop": (
        HEAD + "  - repeat: 3\n    index: round_no\n    steps:\n"
        "      - {id: a, set: {plc.speed: round_no * 100}}\n"
        "  - {id: b, set: {plc.speed: round_no}}\n",
        [expect(8, "round_no", "not-bound", "step 'b'", "'round_no'", "line 5")],
    ),
    "parallel-branches-write-one-tag": (
        HEAD + "  - id: both\n    parallel:\n      - [{id: p1, set: {plc.run: true}}]\n"
        "      - - {id: p2, delay: 1s}\n        - {id: p3, set: {plc.run: false}}\n",
        [expect(8, "plc.run", "parallel-conflict", "step 'p3'", "'both'", "step 'p1', line 6")],
    ),
    "broken-block-still-checks-its-steps": (
        HEAD + "  - repeat: 2\n    times: 3\n    steps:\n      - {id: a, set: {plc.rnu: true}}\n",
        [
            expect(5, "times", "unknown-key", "step #1", "'times'"),
            expect(7, "plc.rnu", "unknown-tag", "step 'a'", "'plc.rnu'"),
        ],
    ),
    "prompt-answer-typed": (
        HEAD + "  - {id: q, prompt: Parts left?, answer: {name: left, type: count}}\n"
        "  - {id: r, prompt: OK?, answer: {name: ok, type: bool}}\n"
        "  - {id: s, set: {plc.speed: ok}}\n",
        [
            expect(4, "count", "literal_error", "step 'q'", "answer.type", "'count'"),
            expect(6, "ok", "type-mismatch", "step 's'", "set plc.speed", "is a condition"),
        ],
    ),
    "block-style-step": (
        PARAMS
        + """\
  - id: press
    set:
      plc.force: force
      plc.setpoint: 3
      plc.limited: speed * 2
    wait: >-
      plc.ready and
      plc.pressure > 'high'
    timeout: 2s
""",
        [
            expect(13, "plc.setpoint", "unknown-tag", "step 'press'", "'plc.setpoint'"),
            expect(14, "speed", "out-of-range", "set plc.limited", "140000"),
            expect(15, ">-", "expression", "step 'press'", "wait", "cannot compare"),
        ],
    ),
    "enum-compared-with-a-text-that-is-no-choice": (
        "recipe: t\nversion: 1\nparameters:\n"
        "  tool: {type: enum, choices: [A12, B7], default: A12}\nsteps:\n"
        "  - {id: q, prompt: Tool?, answer: {name: fitted, type: enum, choices: [A12, B7]}}\n"
        "  - {id: a, if: \"tool == 'A21' or 'B7' != fitted\", set: {plc.run: true}}\n"
        "  - {id: b, if: \"fitted == 'b7'\", set: {plc.run: true}}\n",
        [
            expect(7, "'A21'", "bad-choice", "step 'a'", "'A21'", "tool", "did you mean 'A12'"),
            expect(8, "'b7'", "bad-choice", "step 'b'", "'b7'", "fitted", "'A12', 'B7'"),
        ],
    ),
    # --- retry ------------------------------------------------------------------------------
    "retry-of-a-write-that-is-not-idempotent": (
        HEAD + "  - {id: c, set: {plc.count: plc.count + 1}, on_error: retry}\n",
        [expect(4, "retry", "retry-not-idempotent", "step 'c'", "plc.count", "not idempotent")],
    ),
    "retry-of-a-call-and-of-a-block": (
        HEAD + "  - {id: h, call: arm.home, timeout: 1s, on_error: {action: retry, count: 3}}\n"
        "  - repeat: 2\n    on_error: retry\n    steps:\n"
        "      - {id: s, set: {plc.speed: plc.limited, plc.limited: 3}}\n",
        [
            expect(4, "{action", "retry-not-idempotent", "step 'h'", "the call arm.home"),
            expect(6, "retry", "retry-not-idempotent", "step #2", "plc.speed", "in step 's'"),
        ],
    ),
    # --- corner cases: empty keys, block retries, duplicates, long durations, aliases, … ------
    "empty-default-timeout": (
        "recipe: t\nversion: 1\ndefaults:\n  timeout:\nsteps:\n"
        "  - {id: w, wait: plc.ready}\n  - {id: h, call: arm.home}\n",
        [
            expect(4, "timeout", "bad-duration", "defaults: timeout", "no duration given"),
            expect(6, "wait", "missing-timeout", "step 'w'", "a wait needs a timeout"),
            expect(7, "call", "missing-timeout", "step 'h'", "a call needs a timeout"),
        ],
    ),
    "null-default-timeout": (
        "recipe: t\nversion: 1\ndefaults: {timeout: null}\nsteps:\n  - {id: a, wait: plc.ready}\n",
        [
            expect(3, "timeout", "bad-duration", "defaults: timeout", "no duration given"),
            expect(5, "wait", "missing-timeout", "step 'a'", "a wait needs a timeout"),
        ],
    ),
    "empty-if-wait-and-timeout": (
        HEAD + "  - {id: i, if: , set: {plc.run: true}}\n"
        "  - {id: s, set: {plc.run: true}, wait: , timeout: 1s}\n"
        "  - {id: w, wait: plc.ready, timeout: }\n",
        [
            expect(4, "if", "expression", "step 'i'", "if", "no expression given"),
            expect(5, "wait", "expression", "step 's'", "wait", "no expression given"),
            expect(6, "timeout", "bad-duration", "step 'w'", "timeout", "no duration given"),
        ],
    ),
    "retry-of-a-block-whose-steps-read-each-others-tags": (
        HEAD + "  - repeat: 1\n    on_error: {action: retry, count: 3}\n    steps:\n"
        "      - {id: s1, set: {plc.count: plc.speed + 1}}\n"
        "      - {id: s2, set: {plc.speed: plc.count}}\n"
        "  - id: calls\n    repeat: 1\n    on_error: retry\n    steps:\n"
        "      - {id: h, call: arm.home, timeout: 1s}\n",
        [
            expect(
                5,
                "{action",
                "retry-not-idempotent",
                "step #1",
                "plc.count",
                "reads plc.speed",
                "which the block writes",
                "in step 's1'",
            ),
            expect(11, "retry", "retry-not-idempotent", "step 'calls'", "call arm.home"),
        ],
    ),
    "duplicate-keys-inside-steps": (
        HEAD + "  - {id: s, set: {plc.run: true}, set: {plc.run: false}}\n"
        "  - id: b\n    set:\n      plc.run: true\n      plc.run: false\n"
        "  - {id: c, set: {plc.run: true}, on_error: {action: skip, action: hold}}\n",
        [
            expect(4, "set: {plc.run: false", "duplicate-key", "step 's':", "'set'", "line 4"),
            expect(8, "plc.run", "duplicate-key", "step 'b': set:", "'plc.run'", "line 7"),
            expect(9, "action: hold", "duplicate-key", "step 'c': on_error:", "'action'"),
        ],
    ),
    "duplicate-key-in-a-parameter": (
        "recipe: t\nversion: 1\nparameters:\n  n: {type: int, min: 0, min: 1, default: 1}\n"
        "steps:\n  - {delay: 1s}\n",
        [expect(4, "min: 1", "duplicate-key", "parameter n:", "'min'", "first at line 4")],
    ),
    "durations-longer-than-a-week": (
        HEAD + "  - {delay: 99999999999999999999999999999h}\n"
        "  - {delay: " + "9" * 400 + "h}\n"
        "  - {id: w, wait: plc.ready, timeout: 10081m}\n"
        "  - {delay: １２s}\n",
        [
            expect(4, "999", "bad-duration", "step #1", "delay", "longer than 7 days"),
            expect(5, "999", "bad-duration", "step #2", "delay", "longer than 7 days"),
            expect(6, "10081m", "bad-duration", "step 'w'", "timeout", "longer than 7 days"),
            expect(7, "１２s", "bad-duration", "step #4", "delay", "'１２s'"),
        ],
    ),
    "aliases-in-steps": (
        HEAD + "  - &s {id: a, delay: 1s}\n  - *s\n"
        "  - &t {id: b, set: {plc.rnu: true}}\n  - *t\n"
        "  - {id: c, set: {plc.speed: &v 5}}\n  - {id: d, set: {plc.limited: *v}}\n",
        [
            expect(5, "*s", "alias", "step #2", "aliases (*s) are not allowed", "the step"),
            expect(6, "plc.rnu", "unknown-tag", "step 'b'", "'plc.rnu'"),
            expect(7, "*t", "alias", "step #4", "aliases (*t) are not allowed"),
            expect(9, "*v", "alias", "step 'd': set plc.limited", "(*v)", "the value"),
        ],
    ),
    "empty-set": (
        HEAD + "  - {id: a, set: {}}\n",
        [expect(4, "{}", "too_short", "step 'a'", "set", "needs at least one tag")],
    ),
    "date-and-binary-given-as-expressions": (
        HEAD + "  - {id: b, wait: 2001-12-14, timeout: 1s}\n"
        "  - {id: c, wait: !!binary aGVsbG8=, timeout: 1s}\n",
        [
            expect(4, "2001", "expression", "step 'b'", "wait", "got the date 2001-12-14"),
            expect(5, "!!binary", "expression", "step 'c'", "wait", "got binary data"),
        ],
    ),
    "enum-with-choices-that-are-not-texts": (
        "recipe: t\nversion: 1\nparameters:\n"
        "  mode: {type: enum, choices: [1, two], default: 1}\nsteps:\n  - {delay: 1s}\n",
        [expect(4, "1,", "string_type", "parameter mode", "choices.0", "valid string")],
    ),
    "answer-range-does-not-fit-the-tag": (
        PARAMS
        + "  - {id: q, prompt: How many?, answer: {name: n, type: int, min: 0, max: 70000}}\n"
        "  - {id: m, prompt: More?, answer: {name: m, type: int, min: 0}}\n"
        "  - {id: a, set: {plc.speed: n, plc.limited: speed + n, plc.count: m}}\n",
        [
            expect(
                12,
                "n,",
                "out-of-range",
                "step 'a'",
                "set plc.speed",
                "answer n may be 70000",
                "(its max)",
            ),
            expect(
                12,
                "speed + n",
                "out-of-range",
                "set plc.limited",
                "from the range of answer n, parameter speed",
            ),
            expect(12, "m}", "unbounded", "set plc.count", "give answer m a max"),
        ],
    ),
}


def validate(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, list[str]]:
    """Exit code and stderr lines of `cellctl validate PATH`, run in-process."""
    capsys.readouterr()
    code = run(["validate", str(path)])
    return code, capsys.readouterr().err.splitlines()


def problems_of(path: Path) -> list[Problem]:
    """The located problems with their codes (what `validate --json` prints)."""
    return check_recipe_file(path)


def write_recipe(directory: Path, name: str, data: bytes) -> Path:
    shutil.copyfile(CELL, directory / "cell.yaml")
    path = directory / f"{name}.yaml"
    path.write_bytes(data)
    return path


def test_there_are_enough_broken_recipes() -> None:
    assert len(CASES) >= 35


@pytest.mark.parametrize("name", list(CASES))
def test_broken_recipe(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    text, expected = CASES[name]
    path = write_recipe(tmp_path, name, text.encode())
    code, lines = validate(capsys, path)
    shown = "\n".join(lines)
    assert code == 1, shown
    assert len(lines) == len(expected), shown
    for want in expected:
        prefix = f"{path}:{want.line}:{col_of(text, want.line, want.at)}: "
        matching = [line for line in lines if line.startswith(prefix)]
        assert matching, f"nothing at {prefix}\n{shown}"
        assert any(all(word in line for word in want.says) for line in matching), (
            f"{want.says} not said at {prefix}\n{shown}"
        )
    codes = sorted((p.line, p.col, p.code) for p in problems_of(path))
    wanted = sorted((w.line, col_of(text, w.line, w.at), w.code) for w in expected)
    assert codes == wanted, shown


def test_file_that_is_not_utf8_is_refused_at_line_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_recipe(tmp_path, "latin1", "recipe: caf\xe9\nversion: 1\n".encode("latin-1"))
    code, lines = validate(capsys, path)
    assert code == 1
    assert lines == [f"{path}:1:12: file is not UTF-8 text (save it as UTF-8)"]


def test_file_over_the_size_limit_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_recipe(tmp_path, "huge", HEAD.encode() + b"# padding\n" * 110_000)
    code, lines = validate(capsys, path)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(f"{path}:1:1: ")
    assert "larger than" in lines[0]


def test_alias_bomb_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = write_recipe(tmp_path, "bomb", ("\n".join(rows) + "\n").encode())
    code, lines = validate(capsys, path)
    assert code == 1
    assert len(lines) == 1 and "aliases expand" in lines[0]


def test_recipe_without_a_cell_file_beside_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "lonely.yaml"
    path.write_text(HEAD + "  - {delay: 1s}\n")
    code, lines = validate(capsys, path)
    assert code == 1
    assert lines == [
        f"{path}:1:1: no cell file beside the recipe ({tmp_path / 'cell.yaml'} not found); "
        "give it with --cell"
    ]


def test_a_broken_cell_file_is_reported_in_the_cell_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_recipe(tmp_path, "r", (HEAD + "  - {delay: 1s}\n").encode())
    cell = tmp_path / "cell.yaml"
    cell.write_text("cell: t\ndevices:\n  m: {driver: memory, pol: 1s}\n")
    code, lines = validate(capsys, path)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(f"{cell}:3:")
    assert "'pol'" in lines[0]


def test_every_problem_of_a_file_is_reported_at_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = (
        HEAD
        + "  - {id: a, set: {plc.rnu: true}}\n  - {id: a, wait: plc.ready}\n"
        + "  - {id: c, call: arm.pik, timeout: 1s}\n"
    )
    path = write_recipe(tmp_path, "many", text.encode())
    assert [(p.line, p.code) for p in problems_of(path)] == [
        (4, "unknown-tag"),
        (5, "duplicate-id"),
        (5, "missing-timeout"),
        (6, "unknown-method"),
    ]


def test_a_broken_cell_file_does_not_hide_the_recipes_own_problems(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = (
        HEAD
        + "  - {id: a, set: {plc.rnu: true}, timout: 1s}\n"
        + "  - {id: a, delay: 10}\n"
        + '  - {id: w, wait: "plc.ready and", timeout: 1s}\n'
        + "  - {id: x, wait: plc.ready}\n"
    )
    path = write_recipe(tmp_path, "r", text.encode())
    cell = tmp_path / "cell.yaml"
    cell.write_text("cell: t\ndevices:\n  m: {driver: memory, pol: 1s}\n")
    code, lines = validate(capsys, path)
    shown = "\n".join(lines)
    assert code == 1
    assert lines[0].startswith(f"{cell}:3:") and "'pol'" in lines[0], shown

    def at(line: int, found: str) -> str:
        return f"{path}:{line}:{col_of(text, line, found)}: "

    wanted = [
        (at(4, "timout"), "step 'a': unknown key 'timout'"),
        (at(5, "a,"), "step 'a': id used twice (first at line 4)"),
        (at(5, "10}"), "step 'a': delay: duration 10 needs a unit"),
        (at(6, "plc.ready"), "step 'w': wait: syntax error"),
        (at(7, "wait"), "step 'x': a wait needs a timeout"),
    ]
    assert len(lines) == 1 + len(wanted), shown
    for line, (prefix, says) in zip(lines[1:], wanted, strict=True):
        assert line.startswith(prefix) and says in line, shown
    # What needs the cell (the tag plc.rnu) waits for a valid cell file.
    assert "plc.rnu" not in shown


def test_a_recipe_without_its_cell_file_still_reports_its_own_problems(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "lonely.yaml"
    path.write_text(HEAD + "  - {id: a, set: {plc.rnu: true}, timout: 1s}\n")
    code, lines = validate(capsys, path)
    assert code == 1
    assert lines[0].startswith(f"{path}:1:1: no cell file beside the recipe")
    assert lines[1:] == [f"{path}:4:35: step 'a': unknown key 'timout' (did you mean 'timeout'?)"]


def test_plan_refuses_a_wait_whose_default_timeout_is_empty(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = (
        "recipe: t\nversion: 1\ndefaults: {timeout: null}\nsteps:\n  - {id: a, wait: plc.ready}\n"
    )
    path = write_recipe(tmp_path, "r", text.encode())
    capsys.readouterr()
    code = run(["plan", str(path)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert f"{path}:3:{col_of(text, 3, 'timeout')}: defaults: timeout: no duration given" in err
    assert f"{path}:5:{col_of(text, 5, 'wait')}: step 'a': a wait needs a timeout" in err


@pytest.mark.parametrize(
    ("assignment", "name"),
    [
        ("parts=１２", "parts"),
        ("force=１２", "force"),
        ("force=1_0", "force"),
        ("parts=٣", "parts"),
    ],
)
def test_parameter_values_take_ascii_digits_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, assignment: str, name: str
) -> None:
    path = write_recipe(tmp_path, "p", (PARAMS + "  - {delay: 1s}\n").encode())
    capsys.readouterr()
    code = run(["validate", str(path), "-p", assignment])
    lines = capsys.readouterr().err.splitlines()
    assert code == 1
    line = next(n for n, row in enumerate(PARAMS.splitlines(), 1) if row.startswith(f"  {name}:"))
    assert len(lines) == 1 and lines[0].startswith(f"{path}:{line}:3: -p: parameter {name}: ")
    assert repr(assignment.partition("=")[2]) in lines[0]
