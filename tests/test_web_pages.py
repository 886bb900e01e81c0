"""The web view's HTML (cellctl.web.pages): every page's shell (lang, viewport, the CSRF meta,
the page's module, the nav, no inline script, no external URL), escaping of what a user
controls, the login page, and the PackML diagram drawn from the state table: its 17 states,
every transition, and the Stop and Abort boxes holding exactly the states those leave."""

from __future__ import annotations

import itertools
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cellctl.control.packml import STATE_COMPLETE, TRANSITIONS, Command, State
from cellctl.web import pages

STATIC = Path(pages.__file__).parent / "static"
HOSTILE = '"><script>alert(1)</script>&'


class Tree(HTMLParser):
    """Every start tag with its attributes, in order, and the text of a few elements."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: dict[str, list[str]] = {}
        self._open: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop() != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self._open:
            self.texts.setdefault(self._open[-1], []).append(data)

    def all(self, tag: str, **wanted: str) -> list[dict[str, str | None]]:
        """The attributes of every `tag` whose attributes include `wanted`."""
        return [
            a
            for t, a in self.tags
            if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in wanted.items())
        ]

    def text(self, tag: str) -> str:
        """The text directly in every `tag`, joined."""
        return "".join(self.texts.get(tag, []))


def me(user: str | None = "ann", role: str = "operator", csrf: str = "t0k3n") -> dict[str, object]:
    """The `me` object the server hands to render()."""
    return {"user": user, "role": role, "csrf": csrf}


@pytest.mark.parametrize("page", list(pages.PAGES))
def test_each_page_has_its_shell(page: str) -> None:
    html = pages.render(page, me())
    assert html.startswith("<!DOCTYPE html>")
    tree = Tree(html)
    assert tree.all("html", lang="en")
    assert tree.all("meta", name="viewport")
    assert tree.all("meta", name="csrf-token", content="t0k3n")
    assert tree.all("link", rel="stylesheet", href="/static/app.css")
    assert tree.text("title").startswith(pages.PAGES[page][1])
    # The page's own module, and no script of any other kind (a strict CSP stays possible).
    scripts = tree.all("script")
    assert scripts == [{"type": "module", "src": f"/static/{page}.js"}]
    assert (STATIC / f"{page}.js").is_file()
    # The nav: the five pages, the current one marked.
    links = [
        a["href"] for a in tree.all("a") if a.get("href") in {p for p, _ in pages.PAGES.values()}
    ]
    assert set(links) == {path for path, _ in pages.PAGES.values()}
    assert [a["href"] for a in tree.all("a", aria_current="page")] == [pages.PAGES[page][0]]
    assert tree.all("main", id="main")
    assert tree.all("div", id="view")
    assert tree.all("div", id="messages", role="alert")
    # The user, role and a logout form carrying the session's CSRF token.
    assert "ann" in html and "(operator)" in html
    assert tree.all("form", method="post", action="/logout")
    assert tree.all("input", type="hidden", name="csrf", value="t0k3n")
    # No URL leaves the server, and nothing styles inline.
    for _, attrs in tree.tags:
        for key in ("href", "src", "action"):
            value = attrs.get(key)
            assert value is None or value.startswith(("/", "#")), (key, value)
        assert "style" not in attrs
        assert not any(k.startswith("on") for k in attrs)


def test_what_a_user_controls_is_escaped() -> None:
    html = pages.render("tags", me(user=HOSTILE, role=HOSTILE, csrf=HOSTILE))
    assert "<script>alert" not in html
    tree = Tree(html)
    assert len(tree.all("script")) == 1
    # Escaped, not mangled: the browser reads the very token back.
    assert tree.all("meta", name="csrf-token", content=HOSTILE)
    assert tree.all("input", name="csrf", value=HOSTILE)
    assert HOSTILE in "".join(tree.texts["span"])


def test_anonymous_gets_a_login_link_not_a_logout_form() -> None:
    tree = Tree(pages.render("cell", me(user=None, role="admin")))
    assert not tree.all("form", action="/logout")
    assert tree.all("a", href="/login")
    assert "anonymous" in tree.text("span")


def test_an_unknown_page_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown page 'admin'"):
        pages.render("admin", me())


def test_the_login_page() -> None:
    tree = Tree(pages.login_page(None, "pre"))
    assert tree.all("form", method="post", action="/login")
    assert tree.all("input", type="hidden", name="csrf", value="pre")
    assert tree.all("meta", name="csrf-token", content="pre")
    for field, kind in (("user", "text"), ("password", "password")):
        assert tree.all("input", id=field, name=field, type=kind)
        assert tree.all("label", **{"for": field})
    assert tree.all("button", type="submit")
    assert not tree.all("p", role="alert") and not tree.all("script")
    refused = Tree(pages.login_page(f"wrong password {HOSTILE}", "pre"))
    assert refused.all("p", role="alert")
    assert HOSTILE in refused.text("p")
    assert "<script>alert" not in pages.login_page(HOSTILE, HOSTILE)


# -- the PackML diagram -------------------------------------------------------------------------


def diagram() -> Tree:
    """The cell page's diagram, parsed."""
    tree = Tree(pages.render("cell", me()))
    assert tree.all("svg", id="packml", role="img")
    return tree


def test_the_diagram_has_the_17_states_once_each() -> None:
    shown = [a["data-state"] for a in diagram().all("g") if "data-state" in a]
    assert sorted(shown) == sorted(s.value for s in State)
    assert len(shown) == 17


def test_the_diagram_draws_every_transition_of_the_table() -> None:
    drawn: set[tuple[str, str, str]] = set()
    for attrs in diagram().all("g"):
        if "data-command" not in attrs:
            continue
        for source in str(attrs["data-from"]).split():
            drawn.add((source, str(attrs["data-command"]), str(attrs["data-to"])))
    table = {(s.value, c.value, t.value) for (s, c), t in TRANSITIONS.items()}
    table |= {(s.value, "SC", t.value) for s, t in STATE_COMPLETE.items()}
    assert drawn == table


@pytest.mark.parametrize("command", list(pages.GROUPED))
def test_a_grouped_commands_box_holds_exactly_the_states_it_leaves(command: Command) -> None:
    region = pages.GROUPED[command]
    for state in State:
        leaves = (state, command) in TRANSITIONS
        assert pages.inside(pages.centre(state), region) == leaves, state


def test_the_state_boxes_neither_overlap_nor_leave_the_picture() -> None:
    half_w, half_h = pages.BOX_W / 2, pages.BOX_H / 2
    for a, b in itertools.combinations(State, 2):
        (ax, ay), (bx, by) = pages.centre(a), pages.centre(b)
        assert abs(ax - bx) >= pages.BOX_W + 10 or abs(ay - by) >= pages.BOX_H + 10, (a, b)
    for state in State:
        x, y = pages.centre(state)
        assert half_w <= x <= pages.WIDTH - half_w and half_h <= y <= pages.HEIGHT - half_h


# -- the static files ---------------------------------------------------------------------------


def test_the_static_files_reach_nothing_outside_and_write_no_html() -> None:
    files = sorted(STATIC.iterdir())
    names = {f.name for f in files}
    assert {"app.css", "common.js", "favicon.svg"} <= names
    for file in files:
        text = file.read_text(encoding="utf-8")
        # Only the SVG namespace may name a URL: nothing is fetched from outside.
        urls = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (file.name, urls)
        if file.suffix == ".js":
            # Text only through textContent and text nodes: a tag value may hold "<script>".
            assert "innerHTML" not in text and "insertAdjacentHTML" not in text, file.name
            assert "eval(" not in text and "new Function" not in text, file.name
            imports = re.findall(r"from \"([^\"]+)\"", text)
            assert all(i.startswith("./") for i in imports), (file.name, imports)
