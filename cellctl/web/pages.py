"""The web view's HTML: the shell of each page (nav, the user and a logout form, the CSRF meta,
the page's JS module) and the login page, and the PackML diagram as inline SVG built from the
state table (cellctl.control.packml), so the picture can never disagree with the controller.

Everything put into the HTML goes through `html.escape`. No inline script and no inline style
attribute (a strict Content-Security-Policy stays possible), no external URL.
"""

from __future__ import annotations

import functools
import html
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from cellctl.control.packml import STATE_COMPLETE, TRANSITIONS, Command, State

#: The pages: name -> (path, title). The nav lists them in this order.
PAGES: Mapping[str, tuple[str, str]] = {
    "cell": ("/", "Cell"),
    "batch": ("/batch", "Batch"),
    "tags": ("/tags", "Tags"),
    "recipes": ("/recipes", "Recipes"),
    "history": ("/history", "History"),
}


def _e(text: object) -> str:
    """Text made safe for HTML content and attribute values."""
    return html.escape(str(text), quote=True)


def _head(title: str, csrf: str, module: str | None) -> str:
    """The document's head: charset, viewport, title, CSRF meta, icon, style, module."""
    script = f'<script type="module" src="/static/{_e(module)}.js"></script>\n' if module else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="csrf-token" content="{_e(csrf)}">\n'
        f"<title>{_e(title)} — cellctl</title>\n"
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">\n'
        '<link rel="stylesheet" href="/static/app.css">\n'
        f"{script}</head>\n"
    )


def _nav(page: str, me: Mapping[str, Any]) -> str:
    """The top bar: the five pages (the current one marked), who is logged in, log out."""
    current = ' aria-current="page"'
    links = "".join(
        f'<li><a href="{_e(path)}"{current if name == page else ""}>{_e(title)}</a></li>'
        for name, (path, title) in PAGES.items()
    )
    user, role = me.get("user"), me.get("role", "")
    if user is None:
        # Anonymous: the automatic login of loopback without users, or a viewer session given
        # without a form; a person with an account logs in from here.
        who = f'<span class="who-name">anonymous</span> <span class="role">({_e(role)})</span>'
        session = '<a class="login-link" href="/login">Log in</a>'
    else:
        who = f'<span class="who-name">{_e(user)}</span> <span class="role">({_e(role)})</span>'
        session = (
            '<form class="logout" method="post" action="/logout">'
            f'<input type="hidden" name="csrf" value="{_e(me.get("csrf", ""))}">'
            '<button type="submit">Log out</button></form>'
        )
    return (
        '<header class="top">\n'
        '<a class="brand" href="/"><img src="/static/favicon.svg" alt="" width="28" height="28">'
        '<span id="cell-name">cellctl</span></a>\n'
        f'<nav aria-label="Pages"><ul>{links}</ul></nav>\n'
        f'<div class="who"><span class="who-text">{who}</span>{session}</div>\n'
        '<p id="conn" class="conn" role="status">connecting…</p>\n'
        "</header>\n"
    )


def render(page: str, me: Mapping[str, Any]) -> str:
    """The HTML of one page (cell, batch, tags, recipes, history) for the user `me`
    ({"user", "role", "csrf"}); its JS module fills <main> from /api/state and /api/events."""
    if page not in PAGES:
        raise ValueError(f"unknown page {page!r} (pages: {', '.join(PAGES)})")
    title = PAGES[page][1]
    body = packml_svg() if page == "cell" else ""
    return (
        _head(title, str(me.get("csrf", "")), page) + f'<body data-page="{_e(page)}">\n'
        '<a class="skip" href="#main">Skip to content</a>\n'
        + _nav(page, me)
        + '<div id="messages" class="messages" role="alert"></div>\n'
        f'<main id="main" tabindex="-1">\n<h1>{_e(title)}</h1>\n{body}'
        '<div id="view" class="view" aria-busy="true"><p class="loading">Loading…</p></div>\n'
        "<noscript><p>This page needs JavaScript: it shows the cell live.</p></noscript>\n"
        "</main>\n</body>\n</html>\n"
    )


def login_page(reason: str | None, csrf: str) -> str:
    """The login form (fields user, password and the pre-session token csrf), with the
    reason of a refused login when there is one."""
    said = f'<p class="refusal" role="alert">{_e(reason)}</p>\n' if reason else ""
    return (
        _head("Log in", csrf, None) + '<body data-page="login">\n<main id="main" class="login">\n'
        '<h1><img src="/static/favicon.svg" alt="" width="36" height="36"> cellctl</h1>\n'
        + said
        + '<form method="post" action="/login" class="login-form">\n'
        f'<input type="hidden" name="csrf" value="{_e(csrf)}">\n'
        '<label for="user">User</label>\n'
        '<input id="user" name="user" type="text" autocomplete="username" autocapitalize="none"'
        ' spellcheck="false" required autofocus>\n'
        '<label for="password">Password</label>\n'
        '<input id="password" name="password" type="password" autocomplete="current-password"'
        " required>\n"
        '<button type="submit">Log in</button>\n'
        "</form>\n</main>\n</body>\n</html>\n"
    )


# -- the PackML diagram -----------------------------------------------------------------------

S = State

#: Where each state sits: (column, row), the layout of the standard PackML figure: the
#: running line Idle → Starting → Execute → Completing → Complete, the hold loop above Execute
#: and the suspend loop below it, Stopped/Stopping and Clearing/Aborted/Aborting at the bottom.
LAYOUT: Mapping[State, tuple[int, int]] = {
    S.RESETTING: (0, 0),
    S.UNHOLDING: (1, 0),
    S.HELD: (2, 0),
    S.HOLDING: (3, 0),
    S.IDLE: (0, 1),
    S.STARTING: (1, 1),
    S.EXECUTE: (2, 1),
    S.COMPLETING: (3, 1),
    S.COMPLETE: (4, 1),
    S.UNSUSPENDING: (1, 2),
    S.SUSPENDED: (2, 2),
    S.SUSPENDING: (3, 2),
    S.STOPPED: (0, 3),
    S.STOPPING: (4, 3),
    S.CLEARING: (0, 4),
    S.ABORTED: (2, 4),
    S.ABORTING: (4, 4),
}

COL, ROW = 215, 100  # grid pitch
BOX_W, BOX_H = 164, 50  # a state's box
LEFT, TOP = 120, 120  # the first box's centre
GAP_X, GAP_Y = (COL - BOX_W) / 2, (ROW - BOX_H) / 2  # half the space between boxes

Point = tuple[float, float]
Rect = tuple[float, float, float, float]  # x0, y0, x1, y1


def centre(state: State) -> Point:
    """The centre of a state's box."""
    col, row = LAYOUT[state]
    return LEFT + col * COL, TOP + row * ROW


def _x(col: float) -> float:
    return LEFT + col * COL


def _y(row: float) -> float:
    return TOP + row * ROW


#: The region of the states Stop leaves (one box around them, as the standard figure draws it).
STOP_REGION: Sequence[Rect] = (
    (
        _x(0) - BOX_W / 2 - 14,
        _y(0) - BOX_H / 2 - 78,
        _x(4) + BOX_W / 2 + 14,
        _y(2) + BOX_H / 2 + 30,
    ),
)
#: The region of the states Abort leaves: the Stop region, Stopped, Stopping and Clearing.
ABORT_REGION: Sequence[Rect] = (
    (
        _x(0) - BOX_W / 2 - 40,
        _y(0) - BOX_H / 2 - 92,
        _x(4) + BOX_W / 2 + 28,
        _y(3) + BOX_H / 2 + 14,
    ),
    (_x(0) - BOX_W / 2 - 40, _y(3), _x(0) + BOX_W / 2 + 28, _y(4) + BOX_H / 2 + 14),
)
#: The commands drawn once from a region's edge instead of once per state (the standard
#: figure's way; every (state, command) pair is still named in the arrow's data-from).
GROUPED: Mapping[Command, Sequence[Rect]] = {Command.STOP: STOP_REGION, Command.ABORT: ABORT_REGION}

_L, _T = BOX_W / 2, BOX_H / 2
#: Routes that would cross a box if drawn straight: (from, label, to) -> the points between.
WAYPOINTS: Mapping[tuple[State, str, State], Sequence[Point]] = {
    (S.COMPLETE, "Reset", S.RESETTING): ((_x(4), _y(0) - _T - 50), (_x(0), _y(0) - _T - 50)),
    (S.STOPPED, "Reset", S.RESETTING): (
        (_x(0) - _L - 27, _y(3)),
        (_x(0) - _L - 27, _y(0) - 8),
    ),
    (S.UNHOLDING, "Hold", S.HOLDING): ((_x(1), _y(0) - _T - 22), (_x(3), _y(0) - _T - 22)),
    (S.SUSPENDING, "Hold", S.HOLDING): ((_x(3) + COL / 2, _y(2)), (_x(3) + COL / 2, _y(0))),
    (S.SUSPENDED, "Hold", S.HOLDING): (
        (_x(2) + COL / 2, _y(1) + ROW / 2),
        (_x(2) + COL / 2, _y(0) + ROW / 2),
    ),
    (S.UNSUSPENDING, "Hold", S.HOLDING): (
        (_x(1) + COL / 2, _y(1) + ROW / 2),
        (_x(1) + COL / 2, _y(0) + ROW / 2),
    ),
    (S.STARTING, "Hold", S.HOLDING): ((_x(1) + 30, _y(0) + ROW / 2),),
}
#: Where a grouped command's arrow leaves its region and the points on its way.
GROUP_ROUTES: Mapping[Command, Sequence[Point]] = {
    Command.STOP: ((_x(4), STOP_REGION[0][3]), (_x(4), _y(3) - _T)),
    Command.ABORT: (
        (ABORT_REGION[0][2], _y(2)),
        (ABORT_REGION[0][2] + 34, _y(2)),
        (ABORT_REGION[0][2] + 34, _y(4)),
        (_x(4) + _L, _y(4)),
    ),
}
#: The hold transitions of the 2015 model's optional extension (dashed, as OPC 30050 draws
#: them): Hold from anything but Execute.
EXTENSION = frozenset(
    (state, Command.HOLD) for state, command in TRANSITIONS if command is Command.HOLD
) - {(S.EXECUTE, Command.HOLD)}

WIDTH = _x(4) + BOX_W / 2 + 120
HEIGHT = _y(4) + BOX_H / 2 + 64


def inside(point: Point, region: Sequence[Rect]) -> bool:
    """Whether a point lies in a region (a union of rectangles)."""
    x, y = point
    return any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in region)


def _edge(state: State, toward: Point) -> Point:
    """Where the line from a state's centre toward a point leaves its box."""
    cx, cy = centre(state)
    dx, dy = toward[0] - cx, toward[1] - cy
    if dx == 0 and dy == 0:
        return cx, cy
    scale = min(
        _L / abs(dx) if dx else float("inf"),
        _T / abs(dy) if dy else float("inf"),
    )
    return cx + dx * scale, cy + dy * scale


#: Commands whose name goes under the boxes when their arrow is too short to carry it.
LABEL_BELOW = frozenset({Command.UNSUSPEND.value})


def _label(label: str, points: Sequence[Point]) -> str:
    """A command's name beside the middle of its arrow's longest segment (above a level one,
    to the right of an upright one); a short level arrow between two boxes has it above (or
    below) the boxes."""
    pairs = list(itertools.pairwise(points))
    (x0, y0), (x1, y1) = max(pairs, key=lambda p: abs(p[1][0] - p[0][0]) + abs(p[1][1] - p[0][1]))
    x, y = (x0 + x1) / 2, (y0 + y1) / 2
    if y0 == y1 and abs(x1 - x0) < 9 * len(label) + 12:
        y = y + _T + 20 if label in LABEL_BELOW else y - _T - 2
        return f'<text class="cmd" x="{x:.0f}" y="{y:.0f}">{_e(label)}</text>'
    if abs(x1 - x0) < abs(y1 - y0):
        return f'<text class="cmd upright" x="{x + 6:.0f}" y="{y + 5:.0f}">{_e(label)}</text>'
    return f'<text class="cmd" x="{x:.0f}" y="{y - 7:.0f}">{_e(label)}</text>'


def _arrow(
    sources: Sequence[State], label: str, target: State, points: Sequence[Point], *, dashed: bool
) -> str:
    """One arrow: a <g> naming its transitions (data-from, data-command, data-to), its path,
    a title for a pointer's hover and, for a command, its name beside it."""
    path = " ".join(f"{'M' if i == 0 else 'L'}{x:.0f},{y:.0f}" for i, (x, y) in enumerate(points))
    froms = " ".join(s.value for s in sources)
    named = ", ".join(s.value for s in sources)
    cls = "transition" + (" extension" if dashed else "") + (" sc" if label == "SC" else "")
    said = "state complete" if label == "SC" else label
    text = _label(label, points) if label != "SC" and not dashed else ""
    return (
        f'<g class="{cls}" data-from="{_e(froms)}" data-command="{_e(label)}" '
        f'data-to="{_e(target.value)}"><title>{_e(named)} → {_e(said)} → {_e(target.value)}'
        f'</title><path d="{path}" marker-end="url(#arrow)"/>{text}</g>'
    )


def _state_box(state: State) -> str:
    """One state: a <g data-state> with its box and name, and what shows only when it is lit
    (a second outline and a ▶ marker: never colour alone)."""
    cx, cy = centre(state)
    cls = "state" + (" acting" if state in STATE_COMPLETE else "")
    return (
        f'<g class="{cls}" data-state="{_e(state.value)}">'
        f'<rect class="halo" x="{cx - _L - 6:.0f}" y="{cy - _T - 6:.0f}" width="{BOX_W + 12}" '
        f'height="{BOX_H + 12}" rx="14"/>'
        f'<rect class="box" x="{cx - _L:.0f}" y="{cy - _T:.0f}" width="{BOX_W}" '
        f'height="{BOX_H}" rx="10"/>'
        f'<text class="marker" x="{cx - _L + 12:.0f}" y="{cy + 7:.0f}">▶</text>'
        f'<text class="name" x="{cx:.0f}" y="{cy + 7:.0f}">{_e(state.value)}</text></g>'
    )


def _region_path(region: Sequence[Rect]) -> str:
    """The outline of a region of one or two rectangles (the second hanging below the first's
    left part, as the Abort region does)."""
    if len(region) == 1:
        x0, y0, x1, y1 = region[0]
        return f"M{x0:.0f},{y0:.0f} H{x1:.0f} V{y1:.0f} H{x0:.0f} Z"
    (x0, y0, x1, y1), (_, _, bx1, by1) = region
    return f"M{x0:.0f},{y0:.0f} H{x1:.0f} V{y1:.0f} H{bx1:.0f} V{by1:.0f} H{x0:.0f} Z"


@functools.cache
def packml_svg() -> str:
    """The PackML state diagram as inline SVG: every state a <g data-state="…"> (the page's
    module lights the current one: class "lit", a second outline and a ▶ marker), every transition
    of the table an arrow <g data-from data-command data-to> (Stop and Abort once each from the
    region of the states they leave; "SC" for state complete)."""
    arrows: list[str] = []
    for command in GROUPED:
        sources = [s for (s, c) in TRANSITIONS if c is command]
        targets = {TRANSITIONS[s, command] for s in sources}
        assert len(targets) == 1, f"{command} leads to several states"
        arrows.append(
            _arrow(sources, command.value, targets.pop(), GROUP_ROUTES[command], dashed=False)
        )
    drawn: list[tuple[State, str, State]] = [
        (s, c.value, t) for (s, c), t in TRANSITIONS.items() if c not in GROUPED
    ]
    drawn += [(s, "SC", t) for s, t in STATE_COMPLETE.items()]
    for source, label, target in drawn:
        between = list(WAYPOINTS.get((source, label, target), ()))
        first = between[0] if between else centre(target)
        last = between[-1] if between else centre(source)
        points = [_edge(source, first), *between, _edge(target, last)]
        dashed = label == Command.HOLD.value and (source, Command.HOLD) in EXTENSION
        arrows.append(_arrow([source], label, target, points, dashed=dashed))
    regions = (
        f'<path class="region abort-region" d="{_region_path(ABORT_REGION)}"/>'
        f'<path class="region stop-region" d="{_region_path(STOP_REGION)}"/>'
    )
    states = "".join(_state_box(s) for s in State)
    legend_y = HEIGHT - 18
    legend = (
        f'<text class="legend" x="{LEFT - BOX_W / 2 - 40:.0f}" y="{legend_y:.0f}">'
        "Solid: a command (named) or state complete (unnamed). Dashed: Hold, the 2015 model's "
        "optional extension. Stop and Abort leave every state in their box.</text>"
    )
    return (
        '<figure class="packml">\n'
        f'<svg id="packml" viewBox="0 0 {WIDTH:.0f} {HEIGHT:.0f}" role="img" '
        'aria-labelledby="packml-title" focusable="false">'
        '<title id="packml-title">PackML state diagram</title>'
        "<defs>"
        # In user space: a thicker line (the transitions legal now) keeps its arrowhead's size.
        '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="12" '
        'markerHeight="12" markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z"/></marker>'
        "</defs>"
        f"{regions}{''.join(arrows)}{states}{legend}</svg>\n"
        '<figcaption id="packml-caption">The PackML state machine; the current state is '
        "outlined twice and marked ▶.</figcaption>\n</figure>\n"
    )
