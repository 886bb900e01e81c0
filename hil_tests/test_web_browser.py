"""The web view (`cellctl serve --http`) in a real browser: Debian's chromium, headless, driven
by Playwright for Python through `executable_path` (never `playwright install`).

The demo cell runs on its simulators in this process (so that a test can break the light
curtain, as `cellctl demo --fault light-curtain` does); `cellctl serve` runs in a child against
them, with a users file of a viewer, an operator and an engineer. Every page a test opens is
watched: a console error, an uncaught exception, a failed request or an HTTP error (the
favicon's 404 too) fails the test, except the refusals a test provokes on purpose. Screenshots
of every page at both sizes go to $CELLCTL_ARTIFACTS (default hil_tests/artifacts/).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    Request,
    Response,
    expect,
    sync_playwright,
)

from cellctl.cell import ModbusTcpDevice
from cellctl.service.passwords import hash_password
from cellctl.service.users import RoleName, UsersFile, save_users
from cellctl.testing import Served, serve
from cellctl.web.app import PAGE_PATHS
from hil_tests.conftest import tool_missing
from hil_tests.service_support import DEMO_CELL, ROOT, ServiceChild, service_in_child
from hil_tests.support import with_room

CHROMIUM = Path("/usr/bin/chromium")
#: Chromium's flags: no sandbox (root in CI), no GPU, no network or first-run work of its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Where the screenshots go (CI keeps them as artifacts).
ARTIFACTS = Path(os.environ.get("CELLCTL_ARTIFACTS") or ROOT / "hil_tests" / "artifacts")
#: The panel PC and the tablet.
SIZES = ((1280, 800), (768, 1024))
#: The five pages: name -> path.
PAGES = {name: path for path, name in PAGE_PATHS.items()}
#: The users file's users: name -> (role, password).
USERS: dict[str, tuple[RoleName, str]] = {
    "vera": ("viewer", "pw-vera-1"),
    "olga": ("operator", "pw-olga-1"),
    "erik": ("engineer", "pw-erik-1"),
}
#: A cheap scrypt cost: each test logs in.
CHEAP_N = 2**4
#: The simulators' speed-up: press-fit's two parts in about 6 s, time enough to hold the
#: batch from the page on a loaded machine.
SPEED = 2.0
#: Seconds for what a page shows after an action of the test (a loaded 2-core machine).
SHOWN = with_room(5.0)
#: Seconds for a whole batch (press-fit with 2 parts, changeover) to reach its end.
BATCH = with_room(20.0)


# -- the cell, the service and the browser ----------------------------------------------------


@dataclass
class Bench:
    """The demo cell on its simulators, the service against them, its web view's URL."""

    served: Served
    service: ServiceChild
    url: str


def write_users(path: Path) -> Path:
    """The users file of USERS; anonymous visitors refused (every page goes to /login)."""
    users = UsersFile()
    for name, (role, password) in USERS.items():
        users = users.added(name, role, hash_password(password, n=CHEAP_N), path)
    save_users(path, users)
    return path


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's chromium: skipped where it is missing, failed where CI requires it."""
    if not os.access(CHROMIUM, os.X_OK):
        tool_missing("browser", f"{CHROMIUM} is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def bench(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """The demo cell's simulators here, `cellctl serve --http` in a child against them.

    Started before Playwright: its sync API keeps an asyncio loop running on this thread, and
    the testing kit's wait_until, seeing a running loop, would return a coroutine instead of
    waiting."""
    folder = tmp_path_factory.mktemp("web")
    users = write_users(folder / "users.yaml")
    (folder / "sim").mkdir()
    with serve(DEMO_CELL, folder / "sim", speed=SPEED) as served:
        args = ("--users", str(users), "--recipes", str(DEMO_CELL.parent))
        with service_in_child(
            folder / "service", *args, cell=served.cell_file, sim=False, http=True
        ) as service:
            assert service.web is not None
            yield Bench(served, service, service.web)
            assert service.stop() == 0, service.out + service.err


@pytest.fixture(scope="module")
def browser(chromium: Path, bench: Bench) -> Iterator[Browser]:
    """The browser, headless, one for the module (each test opens its own contexts)."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


# -- pages, watched ---------------------------------------------------------------------------


@dataclass
class Watch:
    """What went wrong on the pages of one browser context: console errors, uncaught
    exceptions, failed requests, HTTP errors; each refusal the test provokes on purpose is
    named first (`provoke`) and left out."""

    problems: list[str] = field(default_factory=list)
    #: (path, status) of the refusals provoked on purpose.
    provoked: set[tuple[str, int]] = field(default_factory=set)

    def provoke(self, path: str, status: int) -> None:
        """The test is about to provoke HTTP `status` from `path`: not a problem."""
        self.provoked.add((path, status))

    def _expected(self, url: str, status: int) -> bool:
        return any(url.endswith(path) and status == code for path, code in self.provoked)

    def attach(self, page: Page) -> None:
        """Watch a page."""
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"exception: {error}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type not in ("error", "assert"):
            return
        # Chromium logs each HTTP error as "Failed to load resource: the server responded
        # with a status of 403 (Forbidden)", at the resource's URL.
        status = re.search(r"status of (\d{3})", message.text)
        url = message.location.get("url", "")
        if status and self._expected(url, int(status[1])):
            return
        self.problems.append(f"console.{message.type}: {message.text} ({url})")

    def _failed(self, request: Request) -> None:
        # Leaving a page ends its event stream: the browser aborts that request.
        if request.url.endswith("/api/events") and request.failure == "net::ERR_ABORTED":
            return
        self.problems.append(f"failed: {request.method} {request.url}: {request.failure}")

    def _response(self, response: Response) -> None:
        if response.status >= 400 and not self._expected(response.url, response.status):
            request = response.request
            self.problems.append(f"HTTP {response.status}: {request.method} {response.url}")


@dataclass
class Visitor:
    """One person's browser: a context of its own, a page, what went wrong on it."""

    bench: Bench
    context: BrowserContext
    page: Page
    watch: Watch

    def go(self, name: str) -> Page:
        """Open one of the five pages; wait until it follows the event stream and has shown
        what it fetches (leaving it earlier would abort a request: a failure here)."""
        self.page.goto(self.bench.url + PAGES[name])
        expect(self.page.locator("#conn")).to_have_text("live", timeout=SHOWN * 1000)
        expect(self.page.locator("#view")).not_to_have_attribute("aria-busy", "true")
        return self.page

    def tab(self) -> Page:
        """Another page in the same context (the same session), watched too."""
        page = self.context.new_page()
        self.watch.attach(page)
        return page

    def log_in(self, user: str) -> None:
        """Log in through the form, as a person does; the cell page follows."""
        page = self.page
        page.goto(self.bench.url + "/")
        expect(page).to_have_url(self.bench.url + "/login")
        page.get_by_label("User").fill(user)
        page.get_by_label("Password").fill(USERS[user][1])
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(self.bench.url + "/")
        expect(page.locator("#conn")).to_have_text("live", timeout=SHOWN * 1000)

    def post(self, body: dict[str, Any], status: int) -> dict[str, Any]:
        """A hand-made POST /api/request from the page, with the page's own CSRF token; its
        answer, after checking its HTTP status (provoked: not a problem)."""
        self.watch.provoke("/api/request", status)
        answer: dict[str, Any] = self.page.evaluate(
            """async (body) => {
                const token = document.querySelector('meta[name="csrf-token"]').content;
                const response = await fetch("/api/request", {
                    method: "POST",
                    headers: {"Content-Type": "application/json", "X-CSRF-Token": token},
                    body: JSON.stringify(body),
                });
                return {status: response.status, body: await response.json()};
            }""",
            body,
        )
        assert answer["status"] == status, answer
        return dict(answer["body"])

    def state(self) -> dict[str, Any]:
        """GET /api/state with the page's session."""
        state: dict[str, Any] = self.page.evaluate(
            'async () => (await fetch("/api/state", {cache: "no-store"})).json()'
        )
        return state

    def check_clean(self) -> None:
        """No console error, exception, failed request or unprovoked HTTP error so far."""
        assert self.watch.problems == [], "\n".join(self.watch.problems)


@pytest.fixture
def visit(browser: Browser, bench: Bench) -> Iterator[Callable[..., Visitor]]:
    """Open a new browser context (a person), at a size; each closed after the test."""
    contexts: list[BrowserContext] = []

    def open_one(width: int = 1280, height: int = 800) -> Visitor:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(SHOWN * 1000)
        contexts.append(context)
        watch = Watch()
        page = context.new_page()
        watch.attach(page)
        return Visitor(bench, context, page, watch)

    yield open_one
    for context in contexts:
        context.close()


def state_text(page: Page) -> Locator:
    """The cell page's large state text."""
    return page.locator("#state-text")


def press(page: Page, button: str) -> None:
    """Press a button of the page by its name, once it is enabled."""
    page.get_by_role("button", name=button, exact=True).click()


def load(visitor: Visitor, recipe: str, **parameters: str) -> None:
    """Load a recipe from the recipes page's form, these parameters typed in."""
    page = visitor.go("recipes")
    card = page.get_by_role("region", name=recipe)
    for name, value in parameters.items():
        card.get_by_label(name, exact=False).fill(value)
    card.get_by_role("button", name=f"Load {recipe}").click()
    expect(card.get_by_role("link", name="Go to the batch")).to_be_visible()


def reset_and_start(visitor: Visitor) -> Page:
    """Reset and Start from the cell page's buttons; the cell page, in Execute or beyond."""
    page = visitor.go("cell")
    press(page, "Reset")
    expect(state_text(page)).to_have_text("Idle", timeout=SHOWN * 1000)
    press(page, "Start")
    expect(state_text(page)).not_to_have_text("Idle", timeout=SHOWN * 1000)
    return page


def step_row(page: Page, path: str) -> Locator:
    """The batch page's row of the step at `path` ("2.3")."""
    exact = re.compile(f"^{re.escape(path)}$")
    return page.locator("ol.steps > li").filter(has=page.locator("span.mono", has_text=exact))


# -- the tests --------------------------------------------------------------------------------


def test_an_operator_runs_press_fit_through_a_hold_to_complete_and_opens_its_report(
    visit: Callable[..., Visitor],
) -> None:
    olga = visit()
    olga.log_in("olga")
    expect(olga.page.locator(".who")).to_contain_text("olga (operator)")
    load(olga, "press-fit", parts="2")

    # The batch page in a second tab of the same session, live before the batch starts.
    batch = olga.tab()
    batch.goto(olga.bench.url + "/batch")
    expect(batch.get_by_role("region", name="Recipe")).to_contain_text("press-fit")
    expect(batch.get_by_role("region", name="Steps")).to_contain_text("pending")

    cell = reset_and_start(olga)
    # A step running, then done.
    running = batch.locator("ol.steps > li").filter(
        has=batch.locator("span.st", has_text="running now")
    )
    expect(running).to_have_count(1)
    path = running.locator("span.mono").inner_text()
    expect(step_row(batch, path)).to_have_class(re.compile(r"\bdone\b"))

    # Hold from the cell page: Held, and the safe state with what was written.
    press(cell, "Hold")
    expect(state_text(cell)).to_have_text("Held", timeout=SHOWN * 1000)
    safe = cell.get_by_role("region", name="Safe state")
    expect(safe).to_contain_text("Holding")
    for tag in ("conveyor.run", "conveyor.speed_rpm", "press.cycle_start"):
        expect(safe.get_by_role("row").filter(has_text=tag)).to_contain_text("written")

    # Unhold (retrying the step the hold interrupted, when there is one): Complete.
    cell.get_by_role("button", name=re.compile(r"^Unhold")).first.click()
    expect(state_text(cell)).to_have_text("Complete", timeout=BATCH * 1000)
    batch_id = olga.state()["status"]["batch"]
    assert batch_id

    # The history lists it; its name opens its report.
    history = olga.go("history")
    history.get_by_role("link", name=batch_id, exact=True).click()
    expect(history).to_have_url(re.compile(f"/history/{re.escape(batch_id)}/report$"))
    expect(history.locator("body")).to_contain_text(batch_id)
    olga.check_clean()


def test_a_viewer_has_no_command_button_and_a_hand_made_request_is_refused(
    visit: Callable[..., Visitor],
) -> None:
    # A batch loaded by an operator: Reset is legal, for those whose role may give it.
    olga = visit()
    olga.log_in("olga")
    load(olga, "press-fit", parts="1")
    olga.check_clean()

    vera = visit()
    vera.log_in("vera")
    assert "Reset" in vera.state()["status"]["legal"]
    for name in PAGES:
        page = vera.go(name)
        buttons = {b.inner_text().strip() for b in page.get_by_role("button").all()}
        # Logging out, refreshing the history, dismissing a message: no command.
        assert buttons <= {"Log out", "Refresh", "Dismiss"}, (name, buttons)
    cell = vera.go("cell")
    expect(cell.get_by_role("region", name="Commands")).to_contain_text(
        "Your role may not give commands."
    )

    before = vera.state()["status"]
    for body in (
        {"action": "command", "command": "Reset"},
        {"action": "load", "name": "press-fit", "parameters": ["parts=1"]},
    ):
        answer = vera.post(body, 403)
        assert (answer["accepted"], answer["kind"]) == (False, "role"), answer
    after = vera.state()["status"]
    kept = ("state", "batch", "recipe", "parameters", "forced", "mode")
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}
    vera.check_clean()


def test_an_operator_has_no_force_button_and_a_hand_made_force_is_refused(
    visit: Callable[..., Visitor],
) -> None:
    # An engineer has one on a writable tag: the operator's missing button is the role's.
    erik = visit()
    erik.log_in("erik")
    tags = erik.go("tags")
    expect(tags.get_by_role("button", name="Force conveyor.speed_rpm")).to_be_visible()
    erik.check_clean()

    olga = visit()
    olga.log_in("olga")
    tags = olga.go("tags")
    expect(tags.locator('tr[data-tag="conveyor.speed_rpm"]')).to_contain_text("good")
    expect(tags.get_by_role("button", name=re.compile("Force"))).to_have_count(0)
    answer = olga.post({"action": "force", "name": "conveyor.speed_rpm", "value": "100"}, 403)
    assert (answer["accepted"], answer["kind"]) == (False, "role"), answer
    assert olga.state()["status"]["forced"] == {}
    olga.check_clean()


def test_a_changeover_prompt_is_answered_in_the_batch_pages_form(
    visit: Callable[..., Visitor],
) -> None:
    olga = visit()
    olga.log_in("olga")
    load(olga, "changeover")  # tool A12, the default
    batch = olga.tab()
    batch.goto(olga.bench.url + "/batch")
    expect(batch.get_by_role("region", name="Recipe")).to_contain_text("changeover")
    reset_and_start(olga)

    prompt = batch.get_by_role("region", name="Prompt at step swap-tool")
    expect(prompt).to_contain_text("Swap the press tool", timeout=BATCH * 1000)
    answer = prompt.get_by_label("Answer")
    sent: list[str] = []
    batch.on("request", lambda r: sent.append(r.url) if r.url.endswith("/api/request") else None)
    # Nothing chosen: the form says so and sends nothing.
    prompt.get_by_role("button", name="Answer").click()
    expect(prompt.locator("#prompt-problem")).to_have_text("choose or write an answer")
    expect(answer).to_have_attribute("aria-invalid", "true")
    assert sent == []
    # A tool that is none of the choices, hand-made: the service refuses it, still waiting.
    olga.post({"action": "answer", "name": "swap-tool", "value": "Z9"}, 400)
    expect(prompt).to_be_visible()
    # The fitted tool: accepted, and the batch goes on to its end.
    answer.select_option("A12")
    prompt.get_by_role("button", name="Answer").click()
    expect(prompt).to_have_count(0)
    assert sent == [olga.bench.url + "/api/request"]
    swap = batch.locator("ol.steps > li").filter(has_text="step 'swap-tool'")
    expect(swap).to_have_class(re.compile(r"\bdone\b"))
    cell = olga.go("cell")
    expect(state_text(cell)).to_have_text("Complete", timeout=BATCH * 1000)
    olga.check_clean()


def test_a_light_curtain_trip_shows_on_the_cell_page_within_the_bound(
    visit: Callable[..., Visitor], bench: Bench
) -> None:
    olga = visit()
    olga.log_in("olga")
    cell = olga.go("cell")
    trips = cell.get_by_role("region", name=re.compile(r"^Trips"))
    # A cleared trip left unacknowledged before (a device slow to answer on an overloaded
    # machine: comm-loss) would hide whether the page shows the new one.
    if trips.get_by_role("button", name="Acknowledge").count():
        press(cell, "Acknowledge")
    expect(trips).to_contain_text("No trip.")
    # The light curtain is an input of the conveyor, read every `poll`.
    conveyor = bench.served.cell.devices["conveyor"]
    assert isinstance(conveyor, ModbusTcpDevice)
    bound = with_room(0.2 + conveyor.poll)
    trip = trips.get_by_role("listitem").filter(has_text="light-curtain")
    raised = time.monotonic()
    bench.served.fault("conveyor", "light-curtain")
    try:
        expect(trip).to_be_visible(timeout=bound * 2000)
        shown = time.monotonic() - raised
    finally:
        bench.served.fault("conveyor", "light-curtain", on=False)
    assert shown <= bound, f"the trip showed {shown:.2f} s after the fault (bound {bound:.2f} s)"
    # Cleared, it stays until acknowledged.
    expect(trip).to_contain_text("cleared, not acknowledged")
    press(cell, "Acknowledge")
    expect(trips).to_contain_text("No trip.")
    olga.check_clean()


def test_every_page_at_both_sizes_without_console_errors_with_screenshots(
    visit: Callable[..., Visitor],
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    wanted = [ARTIFACTS / f"{n}-{w}x{h}.png" for n in [*PAGES, "login"] for w, h in SIZES]
    for old in wanted:  # none left from an earlier run
        old.unlink(missing_ok=True)
    for width, height in SIZES:
        erik = visit(width, height)  # the engineer sees the most: forms, force, stepping
        erik.page.goto(erik.bench.url + "/login")
        expect(erik.page.get_by_role("button", name="Log in")).to_be_visible()
        erik.page.screenshot(path=ARTIFACTS / f"login-{width}x{height}.png")
        erik.log_in("erik")
        for name in PAGES:
            page = erik.go(name)
            # Nothing wider than the screen: no sideways scrolling on the panel or the tablet.
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{name} at {width}x{height} is {overflow} px too wide"
            page.screenshot(path=ARTIFACTS / f"{name}-{width}x{height}.png")
        # The icon the pages name, and /favicon.ico, which a browser asks for where a page
        # names none (the batch's report) and headless chromium never asks for.
        for icon in {erik.page.locator('link[rel="icon"]').get_attribute("href"), "/favicon.ico"}:
            got = erik.page.request.get(erik.bench.url + str(icon))
            assert got.ok and got.headers["content-type"].startswith("image/"), (icon, got.status)
        erik.check_clean()
    assert [shot.name for shot in wanted if not shot.is_file()] == []


def test_the_login_and_a_command_work_from_the_keyboard_alone(
    visit: Callable[..., Visitor],
) -> None:
    """A panel without a mouse: Tab to each field and button, Enter to act, focus visible."""
    olga = visit()
    page = olga.page
    page.goto(olga.bench.url + "/")
    expect(page).to_have_url(olga.bench.url + "/login")
    # Typed faster than a person: let the page's own requests (its icon) end first, or the
    # login's navigation cuts one short.
    page.wait_for_load_state("networkidle")

    def tab_to(matches: str, what: str) -> None:
        """Press Tab until the focused element matches the JS test `matches` (bounded)."""
        for _ in range(60):
            page.keyboard.press("Tab")
            if page.evaluate(f"() => {{ const e = document.activeElement; return {matches}; }}"):
                outline = page.evaluate(
                    "() => getComputedStyle(document.activeElement).outlineStyle"
                )
                assert outline not in ("", "none"), f"{what}: focus not visible ({outline})"
                return
        raise AssertionError(f"{what} is not reachable with Tab")

    tab_to("e.tagName === 'INPUT' && e.name === 'user'", "the user field")
    page.keyboard.type("olga")
    tab_to("e.tagName === 'INPUT' && e.name === 'password'", "the password field")
    page.keyboard.type(USERS["olga"][1])
    page.keyboard.press("Enter")
    expect(page).to_have_url(olga.bench.url + "/")
    # The cell page shown whole (its fetches done) before the next page is opened.
    expect(page.locator("#conn")).to_have_text("live", timeout=SHOWN * 1000)
    expect(page.locator("#view")).not_to_have_attribute("aria-busy", "true")
    load(olga, "press-fit", parts="1")  # a loaded batch: Reset is legal
    cell = olga.go("cell")
    tab_to("e.tagName === 'BUTTON' && e.textContent.trim() === 'Reset'", "the Reset button")
    cell.keyboard.press("Enter")
    expect(state_text(cell)).to_have_text("Idle", timeout=SHOWN * 1000)
    olga.check_clean()
