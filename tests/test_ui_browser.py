"""The web interface in headless Chromium (Playwright driving Debian's chromium).

One browser for the module, a handful of pages. Every test watches for
JavaScript dialogs: none may ever open (the hostile customer name and the
template with a script both try). Screenshots of every page land in the
pytest temp folder (``ui-screenshots*``), at desktop and phone widths.

Without Chromium (a developer laptop) these tests skip; under CI they fail.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engage.db import make_engine
from engage.web.ui import create_ui

from .test_ui_http import shop_config
from .uihelpers import PASSWORD, UI_NOW, XSS_NAME, LiveServer, cli, make_shop

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str:
    path = os.environ.get("ENGAGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium (.ci/run installs it with apt)")
        pytest.skip("browser tests need Chromium (apt-get install chromium, or set ENGAGE_CHROMIUM)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must have playwright (pip install -e '.[test]')")
        pytest.skip("browser tests need the playwright package (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shop(tmp_path_factory.mktemp("ui-browser-shop") / "shop")


@pytest.fixture(scope="module")
def server(shop: Path) -> Iterator[LiveServer]:
    config = shop_config(shop)
    engine = make_engine(config.db_url)
    app = create_ui(config, engine, clock=lambda: UI_NOW)
    assert app is not None
    app.state.ui.estimate_wait = 60.0
    with LiveServer(app) as srv:
        yield srv
    engine.dispose()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-screenshots")


class Watched:
    """A page whose JavaScript dialogs are recorded (and dismissed)."""

    def __init__(self, page: Any, base: str, shots: Path, tag: str):
        self.page = page
        self.base = base
        self.shots = shots
        self.tag = tag
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def go(self, path: str) -> Any:
        response = self.page.goto(self.base + path)
        assert response is not None and response.ok, (path, response and response.status)
        return response

    def shot(self, name: str) -> None:
        frames = self.page.locator("iframe")
        if frames.count():  # a sandboxed frame paints in its own process: let it
            frames.first.scroll_into_view_if_needed()
            self.page.wait_for_timeout(400)
        self.page.screenshot(path=str(self.shots / f"{self.tag}-{name}.png"), full_page=True)


def _sign_in(w: Watched) -> None:
    w.page.goto(w.base + "/")
    assert w.page.url.startswith(w.base + "/login?next=")
    w.shot("login")
    w.page.get_by_label("Password").fill(PASSWORD)
    w.page.get_by_role("button", name="Sign in").click()
    w.page.wait_for_url(w.base + "/")


@pytest.fixture(scope="module")
def desktop(browser: Any, server: LiveServer, shots: Path) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    w = Watched(context.new_page(), server.url, shots, "desktop")
    _sign_in(w)
    yield w
    context.close()


@pytest.fixture(autouse=True)
def _no_dialog_ever(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for name in ("desktop", "phone"):
        if name in request.fixturenames:
            w = request.getfixturevalue(name)
            assert w.dialogs == [], f"a dialog opened: {w.dialogs}"
            assert w.errors == [], f"script errors: {w.errors}"


def test_sign_in_is_required(browser: Any, server: LiveServer, shots: Path) -> None:
    context = browser.new_context()
    w = Watched(context.new_page(), server.url, shots, "anon")
    for path in ("/", "/customers/c007", "/campaigns/early-bird"):
        w.page.goto(server.url + path)
        assert "/login?next=" in w.page.url
        assert w.page.get_by_role("heading", name="Sign in").is_visible()
    w.page.get_by_label("Password").fill("not the password")
    w.page.get_by_role("button", name="Sign in").click()
    assert w.page.get_by_role("alert").inner_text() == "Wrong user name or password."
    cookies = {c["name"]: c for c in context.cookies()}
    assert "engage_session" not in cookies
    w.page.get_by_label("Password").fill(PASSWORD)
    w.page.get_by_role("button", name="Sign in").click()
    w.page.wait_for_url(server.url + "/campaigns/early-bird")
    session = {c["name"]: c for c in context.cookies()}["engage_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    assert w.page.evaluate("document.cookie") == ""  # scripts cannot read it
    assert w.dialogs == []
    context.close()


def test_calendar_shows_the_occurrences_of_engage_calendar(
    desktop: Watched, shop: Path
) -> None:
    desktop.go("/?date=2026-03-01")
    desktop.shot("calendar-month")
    shown = desktop.page.eval_on_selector_all(
        "li.ev",
        "els => els.map(e => [e.dataset.campaign, e.dataset.at, e.dataset.estimate || null,"
        " e.closest('td').dataset.date])",
    )
    last_day = max(d for _, _, _, d in shown)
    cal = json.loads(cli(shop, "calendar", "--json", "--at", UI_NOW.isoformat(), "--days", "40"))
    ends = desktop.page.eval_on_selector_all("td.day", "els => els.map(e => e.dataset.date)")
    assert ends[-1] >= last_day
    from datetime import date, timedelta
    from zoneinfo import ZoneInfo

    grid_end = datetime.combine(date.fromisoformat(ends[-1]) + timedelta(days=1),
                                datetime.min.time(), ZoneInfo("America/New_York"))
    want = sorted(
        (e["campaign"], e["at"], str(e["estimated_audience"]))
        for e in cal
        if datetime.fromisoformat(e["at"].replace("Z", "+00:00")) < grid_end.astimezone(UTC)
    )
    got = sorted(
        (c, at, est) for c, at, est, _ in shown
        if datetime.fromisoformat(at.replace("Z", "+00:00")) >= UI_NOW
    )
    assert got == want
    # today is marked, and the US spring-forward Sunday says it is short
    today = desktop.page.locator("td[aria-current=date]")
    assert today.get_attribute("data-date") == "2026-03-04"
    assert "23 h day" in desktop.page.locator("td[data-date='2026-03-08']").inner_text()
    # the week view of the change, then the next month through the pager
    desktop.go("/?view=week&date=2026-03-08")
    desktop.shot("calendar-week")
    times = desktop.page.locator("td[data-date='2026-03-08'] .time").all_inner_texts()
    assert any(t.endswith("EST") for t in times) and any(t.endswith("EDT") for t in times)
    desktop.page.get_by_role("link", name="Next week").click()
    assert "date=2026-03-15" in desktop.page.url


def test_preview_iframe_holds_exactly_engage_previews_html(
    desktop: Watched, shop: Path
) -> None:
    at = "2026-03-04T15:00:00Z"
    want = json.loads(cli(shop, "preview", "paris-weekly", "--customer", "c004", "--at", at,
                          "--channel", "email", "--json"))["email"]
    with desktop.page.expect_response(lambda r: "/preview.html?" in r.url) as got:
        desktop.go(f"/campaigns/paris-weekly?customer=c004&channel=email&at={at}")
    assert got.value.body() == want["html"].encode("utf-8")
    frame = desktop.page.locator("iframe.email-frame")
    assert frame.get_attribute("sandbox") == ""
    desktop.page.frame_locator("iframe.email-frame").locator("body").wait_for()
    assert desktop.page.locator(".subject").inner_text() == want["subject"]
    desktop.page.get_by_text("Text part").click()
    assert desktop.page.locator("pre.text-part").inner_text().strip() == want["text"].strip()
    desktop.shot("campaign-preview")
    # SMS: the body, its segments and encoding, as engage preview says
    sms = json.loads(cli(shop, "preview", "early-bird", "--customer", "c003", "--at", at,
                         "--channel", "sms", "--json"))["sms"]
    desktop.go(f"/campaigns/early-bird?customer=c003&channel=sms&at={at}")
    assert desktop.page.locator("pre.sms-body").inner_text() == sms["body"]
    assert f"{sms['segments']} segment" in desktop.page.locator("dl.headers").inner_text()


def test_a_script_in_a_template_cannot_run_in_the_preview(desktop: Watched) -> None:
    at = "2026-03-04T15:00:00Z"
    with desktop.page.expect_response(lambda r: "/preview.html?" in r.url) as got:
        desktop.go(f"/campaigns/scripty?customer=c001&at={at}")
    assert b"<script>" in got.value.body()  # the script is there, exactly as rendered ...
    body = desktop.page.frame_locator("iframe.email-frame").locator("body")
    body.wait_for()
    assert "Hi Customer1" in body.inner_text()
    desktop.page.wait_for_timeout(300)
    # ... and did not run: no dialog, no attribute set by it
    html_el = desktop.page.frame_locator("iframe.email-frame").locator("html")
    assert html_el.get_attribute("data-ran") is None
    desktop.shot("campaign-scripty")
    # opened directly (not framed) the preview is still sandboxed by its CSP
    desktop.go(f"/campaigns/scripty/preview.html?customer=c001&at={at}")
    desktop.page.wait_for_timeout(300)
    assert desktop.page.locator("html").get_attribute("data-ran") is None
    assert desktop.dialogs == []


def test_hostile_customer_name_is_text_on_every_page(desktop: Watched) -> None:
    at = "2026-03-04T15:00:00Z"
    pages = {
        "customer": "/customers/c007",
        "search": "/customers?q=c007%40example.com",
        "dry-run": f"/campaigns/early-bird?dry=1&render=1&at={at}",
        "preview-email": f"/campaigns/early-bird?customer=c007&channel=email&at={at}",
        "preview-sms": f"/campaigns/early-bird?customer=c007&channel=sms&at={at}",
        "report": "/report?from=2026-03-01&to=2026-03-04",
        "calendar": "/?date=2026-03-01",
    }
    for name, path in pages.items():
        desktop.go(path)
        desktop.page.wait_for_load_state("load")
        if name != "calendar" and name != "report":
            assert XSS_NAME in (desktop.page.locator("main").text_content() or ""), name
        assert desktop.page.locator("img[src='x']").count() == 0, name
        for frame in desktop.page.frames:
            assert frame.locator("img[src='x']").count() == 0 or frame != desktop.page.main_frame
        if name in ("customer", "dry-run"):
            desktop.shot(name)
    assert desktop.dialogs == []
    assert desktop.page.locator("h1.customer-name").count() == 0  # last page: calendar
    desktop.go("/customers/c007")
    assert desktop.page.locator("h1.customer-name").inner_text() == (
        XSS_NAME + " O'Brien & <b>Sons</b>"
    )


def test_report_page_draws_its_chart(desktop: Watched) -> None:
    desktop.go("/report?from=2026-02-20&to=2026-03-10")
    assert desktop.page.locator("svg.columns rect.s0").count() == 19
    assert desktop.page.locator("#total-sent").inner_text() == "7"
    desktop.shot("report")


def test_keyboard_reaches_the_content(desktop: Watched) -> None:
    desktop.go("/")
    desktop.page.keyboard.press("Tab")
    assert desktop.page.evaluate("document.activeElement.textContent") == "Skip to content"
    desktop.page.keyboard.press("Enter")
    assert desktop.page.evaluate("document.activeElement.id") == "main"
    # every form control has a label
    unlabelled = desktop.page.eval_on_selector_all(
        "main input:not([type=hidden]), main select, header input:not([type=hidden])",
        "els => els.filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))"
        ".map(e => e.name)",
    )
    assert unlabelled == []


PHONE_PAGES = {
    "calendar": "/?date=2026-03-01",
    "week": "/?view=week&date=2026-03-08",
    "campaigns": "/campaigns",
    "campaign": "/campaigns/early-bird?dry=1&render=1&customer=c003&at=2026-03-04T15:00:00Z",
    "customer": "/customers/c007",
    "report": "/report?from=2026-02-20&to=2026-03-10",
}


@pytest.fixture(scope="module")
def phone(browser: Any, server: LiveServer, shots: Path, desktop: Watched) -> Iterator[Watched]:
    context = browser.new_context(
        viewport={"width": 375, "height": 812},
        storage_state=desktop.page.context.storage_state(),
        is_mobile=True,
        has_touch=True,
    )
    w = Watched(context.new_page(), server.url, shots, "phone")
    yield w
    context.close()


@pytest.mark.parametrize("name", list(PHONE_PAGES))
def test_pages_work_at_375_px(phone: Watched, name: str) -> None:
    phone.go(PHONE_PAGES[name])
    width = phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"{name} scrolls sideways: {width}px"
    assert phone.page.locator("h1").first.is_visible()
    assert phone.page.get_by_role("link", name="Calendar").is_visible()
    if name == "campaign":
        phone.page.frame_locator("iframe.email-frame").locator("body").wait_for()
    if name == "calendar":  # an agenda: days with occurrences, each readable
        first = phone.page.locator("li.ev").first
        box = first.bounding_box()
        assert box is not None and box["width"] > 250
    phone.shot(name)
