"""The web interface over HTTP under a real uvicorn: sign-in, headers, pages, the
exact preview, the calendar against ``engage calendar --json``, the report seam."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html import unescape
from pathlib import Path
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
import pytest

from engage.config import Config, load_config
from engage.db import make_engine
from engage.web.ui import create_ui
from engage.web.ui.auth import SESSION_COOKIE, hash_password
from engage.web.ui.report import (
    CampaignFigures,
    Figure,
    Group,
    SeriesPoint,
    outbox_report,
)
from engage.web.ui.security import PAGE_CSP

from .helpers import SECRET
from .uihelpers import (
    PASSWORD,
    UI_NOW,
    XSS_NAME,
    LiveServer,
    cli,
    login_form_token,
    make_shop,
    signed_in,
)


def shop_config(cfg: Path, **secrets: str) -> Config:
    env = {"ENGAGE_SECRET_KEY": SECRET, "ENGAGE_UI_PASSWORD": PASSWORD, **secrets}
    return load_config(cfg, environ={k: v for k, v in env.items() if v})


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shop(tmp_path_factory.mktemp("ui-shop") / "shop")


@pytest.fixture(scope="module")
def server(shop: Path) -> Iterator[LiveServer]:
    config = shop_config(shop)
    engine = make_engine(config.db_url)
    app = create_ui(config, engine, clock=lambda: UI_NOW)
    assert app is not None
    app.state.ui.estimate_wait = 60.0  # a small shop: every estimate on the first load
    with LiveServer(app) as srv:
        yield srv
    engine.dispose()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    c = signed_in(server.url)
    yield c
    c.close()


# -- sign-in ------------------------------------------------------------------------
def test_off_without_a_password_and_says_so_once(
    shop: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="engage.web.ui")
    config = load_config(shop, environ={"ENGAGE_SECRET_KEY": SECRET})
    assert create_ui(config, make_engine(config.db_url)) is None
    off = [r for r in caplog.records if getattr(r, "event", "") == "ui_off"]
    assert len(off) == 1 and "ENGAGE_UI_PASSWORD" in off[0].getMessage()


def test_every_page_needs_a_session(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as anon:
        for path in ("/", "/campaigns", "/campaigns/early-bird", "/customers/c001",
                     "/customers?q=c001", "/report",
                     "/campaigns/early-bird/preview.html?customer=c001"):
            r = anon.get(path)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/login?next="), path
            assert "c001" not in r.text
        # a forged or altered cookie is no session
        anon.cookies.set(SESSION_COOKIE, "YWRtaW4|1|x|y.AAAA")
        assert anon.get("/").status_code == 303


def test_sign_in_sets_a_signed_httponly_lax_cookie(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as c:
        token = login_form_token(c)
        r = c.post("/login", data={"csrf": token, "password": PASSWORD, "next": "/report"})
        assert r.status_code == 303 and r.headers["location"] == "/report"
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE))
        attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "path", "max-age"} <= attrs
        assert "samesite=lax" in cookie.lower()
        assert "secure" not in attrs  # plain http on 127.0.0.1; https gets Secure
        assert c.get("/report").status_code == 200
        # the cookie's value is signed: one character changed is no session
        value = c.cookies[SESSION_COOKIE]
        c.cookies.set(SESSION_COOKIE, value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1])
        assert c.get("/report").status_code == 303


def test_sign_in_needs_the_forms_csrf_token_and_the_password(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as c:
        token = login_form_token(c)
        assert c.post("/login", data={"password": PASSWORD}).status_code == 403
        assert c.post("/login", data={"csrf": "forged", "password": PASSWORD}).status_code == 403
        bad = c.post("/login", data={"csrf": token, "password": "wrong"})
        assert bad.status_code == 401 and "Wrong" in bad.text
        assert SESSION_COOKIE not in c.cookies
    with httpx.Client(base_url=server.url) as other:  # someone else's token is no good
        assert other.post("/login", data={"csrf": token, "password": PASSWORD}).status_code == 403


def test_sign_in_only_redirects_within_the_site(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as c:
        for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            token = login_form_token(c)
            r = c.post("/login", data={"csrf": token, "password": PASSWORD, "next": target})
            assert r.status_code == 303 and r.headers["location"] == "/", target


def test_sign_out_needs_its_csrf_token(server: LiveServer) -> None:
    c = signed_in(server.url)
    assert c.post("/logout", data={"csrf": "nope"}).status_code == 403
    assert c.get("/").status_code == 200
    page = c.get("/").text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token
    r = c.post("/logout", data={"csrf": token.group(1)})
    assert r.status_code == 303
    assert c.get("/").status_code == 303
    c.close()


def test_repeated_failures_are_throttled(shop: Path) -> None:
    config = shop_config(shop)
    app = create_ui(config, make_engine(config.db_url), clock=lambda: UI_NOW)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url) as c:
        for _ in range(10):
            token = login_form_token(c)
            assert c.post("/login", data={"csrf": token, "password": "guess"}).status_code == 401
        token = login_form_token(c)
        r = c.post("/login", data={"csrf": token, "password": PASSWORD})
        assert r.status_code == 429 and SESSION_COOKIE not in c.cookies


def test_named_users_with_hashed_passwords(shop: Path) -> None:
    users = f"ana:{hash_password('ana-secret-1')},\nbo:{hash_password('bo-secret-22')}"
    config = shop_config(shop, ENGAGE_UI_PASSWORD="", ENGAGE_UI_USERS=users)
    app = create_ui(config, make_engine(config.db_url), clock=lambda: UI_NOW)
    with LiveServer(app) as srv:
        with httpx.Client(base_url=srv.url) as c:
            assert 'name="user"' in c.get("/login").text
            token = login_form_token(c)
            r = c.post("/login", data={"csrf": token, "user": "ana", "password": "bo-secret-22"})
            assert r.status_code == 401
        c = signed_in(srv.url, "bo-secret-22", user="bo")
        assert "Sign out" in c.get("/").text and ">bo<" in c.get("/").text
        c.close()


def test_a_new_password_signs_out_old_sessions(shop: Path, server: LiveServer) -> None:
    old = signed_in(server.url)
    config = shop_config(shop, ENGAGE_UI_PASSWORD="a brand new password")
    app = create_ui(config, make_engine(config.db_url), clock=lambda: UI_NOW)
    with LiveServer(app) as srv:
        r = httpx.get(srv.url + "/", cookies={SESSION_COOKIE: old.cookies[SESSION_COOKIE]})
        assert r.status_code == 303
    old.close()


def test_bad_users_setting_is_a_clear_error(shop: Path) -> None:
    from engage.errors import ConfigError

    config = shop_config(shop, ENGAGE_UI_USERS="ana:plaintext")
    with pytest.raises(ConfigError, match="ENGAGE_UI_USERS entry 1 is not name:HASH"):
        create_ui(config, make_engine(config.db_url))


# -- headers -------------------------------------------------------------------------
def test_security_headers_on_every_response(server: LiveServer, client: httpx.Client) -> None:
    anon = httpx.Client(base_url=server.url)
    responses = [
        anon.get("/login"), anon.get("/"), anon.get("/static/app.css"), client.get("/"),
        client.get("/campaigns/early-bird"), client.get("/customers/c001"), client.get("/report"),
        client.get("/campaigns/nope"), client.get("/nowhere"),
    ]
    for r in responses:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["content-security-policy"] == PAGE_CSP, r.url
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        assert "'unsafe-inline'" not in r.headers["content-security-policy"]
    for r in responses[3:7]:
        assert r.headers["cache-control"] == "no-store"  # customer data stays out of caches
    anon.close()


def test_unknown_things_get_404_json_for_api_clients(client: httpx.Client) -> None:
    r = client.get("/customers/nobody", headers={"Accept": "application/json"})
    assert r.status_code == 404 and r.json() == {"error": "no customer 'nobody'"}
    r = client.get("/campaigns/nope")
    assert r.status_code == 404 and "no campaign named" in r.text and "<html" in r.text
    assert client.get("/?tz=Mars/Olympus").status_code == 400
    assert client.get("/?view=year").status_code == 400
    assert client.get("/campaigns/early-bird?at=yesterday").status_code == 400


# -- calendar ----------------------------------------------------------------------------
EVENT = re.compile(
    r'<li class="ev [^"]*" data-campaign="([^"]+)" data-at="([^"]+)"(?: data-estimate="(\d+)")?'
)
DAY = re.compile(r'<td class="day[^"]*" data-date="([^"]+)"')


def events_by_day(html: str) -> dict[str, list[tuple[str, str, int | None]]]:
    """data-date of each day cell -> (campaign, at, estimate) of its events."""
    out: dict[str, list[tuple[str, str, int | None]]] = {}
    cells = DAY.split(html)[1:]
    for day, body in zip(cells[::2], cells[1::2], strict=True):
        out[day] = [(c, at, int(n) if n else None) for c, at, n in EVENT.findall(body)]
    return out


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Paris", "Asia/Kolkata"])
def test_month_view_shows_exactly_what_engage_calendar_computes(
    shop: Path, client: httpx.Client, zone: str
) -> None:
    r = client.get("/", params={"date": "2026-03-15", "tz": zone})
    assert r.status_code == 200
    assert 'data-pending="0"' in r.text
    days = events_by_day(r.text)
    shown_first, shown_last = min(days), max(days)
    grid_end = datetime.combine(date.fromisoformat(shown_last) + timedelta(days=1),
                                datetime.min.time(), ZoneInfo(zone)).astimezone(UTC)
    cal = json.loads(cli(shop, "calendar", "--json", "--at", UI_NOW.isoformat(), "--days", "45"))
    expected = {
        (e["campaign"], e["at"], e["estimated_audience"])
        for e in cal
        if datetime.fromisoformat(e["at"].replace("Z", "+00:00")) < grid_end
    }
    upcoming = {
        ev for evs in days.values() for ev in evs
        if datetime.fromisoformat(ev[1].replace("Z", "+00:00")) >= UI_NOW
    }
    assert upcoming == expected
    assert len(expected) > 60  # four campaigns over a month: the comparison has teeth
    # every event sits on its local day in the viewer's zone, DST or not
    for day, evs in days.items():
        for _, at, _ in evs:
            local = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(ZoneInfo(zone))
            assert local.date().isoformat() == day
    # the disabled campaign is not on the calendar; the month starts on a Sunday (en_US)
    assert all(c != "scripty" for evs in days.values() for c, _, _ in evs)
    assert date.fromisoformat(shown_first).weekday() == 6


def test_dst_days_are_marked_and_today_is_current(client: httpx.Client) -> None:
    html = client.get("/", params={"date": "2026-03-01"}).text
    assert re.search(r'data-date="2026-03-08"[^>]*>\s*<div class="date">.*?23 h day', html, re.S)
    assert re.search(r'data-date="2026-03-04" aria-current="date"', html)
    paris = client.get("/", params={"date": "2026-03-01", "tz": "Europe/Paris"}).text
    assert re.search(r'data-date="2026-03-29"[^>]*>\s*<div class="date">.*?23 h day', paris, re.S)
    assert "23 h day" not in re.search(r'data-date="2026-03-08".*?</td>', paris, re.S).group(0)
    autumn = client.get("/", params={"date": "2026-11-01", "view": "week"}).text
    assert "25 h day" in autumn
    # the week view names the zone of each time: the spring week has both
    spring = client.get("/", params={"date": "2026-03-09", "view": "week"}).text
    assert "01:00 EST" in spring and "08:00 EDT" in spring  # sunday-utc, 06:00 and 12:00 UTC


def test_week_view_shows_the_spring_forward_week(shop: Path, client: httpx.Client) -> None:
    html = client.get("/", params={"date": "2026-03-09", "view": "week"}).text
    days = events_by_day(html)
    assert sorted(days) == [f"2026-03-{d:02d}" for d in range(8, 15)]
    early = [at for evs in days.values() for c, at, _ in evs if c == "early-bird"]
    # 02:30 New York: 07:30 UTC before the change, 06:30 UTC after it
    assert "2026-03-09T06:30:00Z" in early and "2026-03-14T06:30:00Z" in early
    cal = json.loads(cli(shop, "calendar", "--json", "--at", "2026-03-08T05:00:00Z", "--days", "7"))
    want = sorted(e["at"] for e in cal if e["campaign"] == "early-bird")
    assert sorted(early) == want


def test_past_days_show_what_the_outbox_did(client: httpx.Client) -> None:
    html = client.get("/", params={"date": "2026-03-01"}).text
    cell = re.search(r'data-campaign="early-bird" data-at="2026-03-02T07:30:00Z".*?</li>', html, re.S)
    assert cell
    text = unescape(re.sub(r"<[^>]+>", " ", cell.group(0)))
    # delivered 3 + sent 2 + bounced 1 were sent; 1 planned waits; 1 held out; 1 failed
    assert "sent 6" in text and "waiting 1" in text and "held out 1" in text and "failed 1" in text
    # a past occurrence nobody planned, and a run on no schedule (engage send --at)
    missed = re.search(r'data-campaign="early-bird" data-at="2026-03-03T07:30:00Z".*?</li>', html, re.S)
    assert missed and "not run" in missed.group(0)
    adhoc = re.search(r'data-campaign="winback-30d" data-at="2026-03-03T18:05:00Z".*?</li>', html, re.S)
    assert adhoc and "ad hoc" in adhoc.group(0) and "sent 1" in adhoc.group(0)


# -- campaign page ---------------------------------------------------------------------
def test_campaign_page_yaml_validation_runs_and_dry_run(shop: Path, client: httpx.Client) -> None:
    html = client.get("/campaigns/early-bird").text
    assert "30 2 * * *" in html and "Next occurrences" in html
    assert "Mar 5, 2026 02:30 EST" in html  # the next occurrence, in the config zone
    assert "Valid" in html
    dry = client.get("/campaigns/early-bird", params={"dry": "1", "at": "2026-03-04T10:00"}).text
    counts = json.loads(
        cli(shop, "dry-run", "early-bird", "--at", "2026-03-04T10:00", "--json")
    )["counts"]
    assert f"{counts['matched']} in the audience" in dry
    for reason in ("held_out", "no_consent", "reentry", "frequency_cap"):
        if counts.get(reason):
            label = reason.replace("_", " ")
            row = re.search(rf"<th scope=\"row\">{label}</th>.*?<td class=\"num\">(\d+)", dry, re.S)
            assert row and int(row.group(1)) == counts[reason], reason


def test_a_campaign_file_that_does_not_load_shows_its_errors(shop: Path, client: httpx.Client) -> None:
    bad = shop.parent / "campaigns" / "broken.yaml"
    bad.write_text("name: broken\nschedule: {cron: \"61 * * * *\"}\naudience: {quiet_for: 3x}\n"
                   "channels: [email]\ntemplate: winback\n")
    try:
        page = client.get("/campaigns/broken")
        assert page.status_code == 200
        assert "campaigns/broken.yaml:2" in unescape(page.text)
        assert "campaigns/broken.yaml:3" in unescape(page.text)
        assert "does not run until they are fixed" in page.text
        assert "broken.yaml" in client.get("/").text  # the calendar says a file is broken
    finally:
        bad.unlink()


def test_preview_html_is_the_exact_bytes_of_engage_preview(shop: Path, client: httpx.Client) -> None:
    at = "2026-03-04T15:00:00Z"
    for campaign, customer in (("early-bird", "c007"), ("paris-weekly", "c004"), ("scripty", "c007")):
        want = json.loads(cli(shop, "preview", campaign, "--customer", customer, "--at", at,
                              "--channel", "email", "--json"))["email"]["html"]
        r = client.get(f"/campaigns/{campaign}/preview.html",
                       params={"customer": customer, "at": at, "channel": "email"})
        assert r.status_code == 200
        assert r.content == want.encode("utf-8")
        csp = r.headers["content-security-policy"]
        assert csp.endswith("sandbox") and "script-src" not in csp and "default-src 'none'" in csp
        assert r.headers["x-frame-options"] == "SAMEORIGIN"


def test_preview_shows_subject_text_and_sms_escaped(shop: Path, client: httpx.Client) -> None:
    page = client.get("/campaigns/early-bird", params={"customer": "c007", "channel": "sms",
                                                        "at": "2026-03-04T15:00:00Z"}).text
    want = json.loads(cli(shop, "preview", "early-bird", "--customer", "c007", "--at",
                          "2026-03-04T15:00:00Z", "--channel", "sms", "--json"))["sms"]
    body = re.search(r'<pre class="sms-body">(.*?)</pre>', page, re.S)
    assert body and unescape(body.group(1)) == want["body"]
    assert f"{want['segments']} segment" in page and want["encoding"] in page
    assert XSS_NAME not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    email = client.get("/campaigns/early-bird", params={"customer": "c007",
                                                         "at": "2026-03-04T15:00:00Z"}).text
    assert 'sandbox referrerpolicy' in email and "<iframe" in email
    assert XSS_NAME not in email


def test_random_customer_preview_picks_someone_in_the_audience(client: httpx.Client) -> None:
    page = client.get("/campaigns/paris-weekly", params={"random": "1"}).text
    chosen = re.search(r'id="pv-customer" name="customer" value="(c\d+)"', page)
    assert chosen and "would be" in page


# -- customers --------------------------------------------------------------------------
def test_customer_search_by_id_email_and_phone(client: httpx.Client) -> None:
    for q in ("c012", "c012@example.com", "C012@EXAMPLE.COM", "+12025550012", "(202) 555-0012"):
        r = client.get("/customers", params={"q": q})
        assert r.status_code == 303 and r.headers["location"] == "/customers/c012", q
    none = client.get("/customers", params={"q": "nobody@example.com"})
    assert none.status_code == 200 and "No customer has" in none.text


def test_customer_page_timeline_points_and_decisions(shop: Path, client: httpx.Client) -> None:
    page = client.get("/customers/c007").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and XSS_NAME not in page
    assert "O&#39;Brien &amp; &lt;b&gt;Sons&lt;/b&gt;" in page
    assert "delivered" in page and "winback-30d" in page  # the message it got
    assert "expired" in page  # the old lot
    decisions = re.findall(r'<a href="/campaigns/([a-z0-9-]+)\?customer=c007#preview">.*?</tr>', page, re.S)
    assert set(decisions) == {"early-bird", "paris-weekly", "sunday-utc", "winback-30d"}
    # what early-bird would do now agrees with a dry run of just now
    dry = json.loads(cli(shop, "dry-run", "early-bird", "--at", UI_NOW.isoformat(), "--json",
                         "--limit", "1000"))
    mine = [d for d in dry["decisions"] if d["customer_id"] == "c007"]
    row = re.search(r'early-bird\?customer=c007#preview">.*?</tr>', page, re.S).group(0)
    if mine:
        assert mine[0]["decision"] in row
        if mine[0]["reason"]:
            assert mine[0]["reason"].replace("_", " ") in row
    else:
        assert "not in the audience" in row


# -- report ----------------------------------------------------------------------------------
def test_report_page_shows_the_figures_of_engage_report(shop: Path, client: httpx.Client) -> None:
    """The default report source is ``engage report``'s library: the funnel, the
    shop figures and the daily activity of the same local days."""
    page = client.get("/report", params={"from": "2026-03-01", "to": "2026-03-04"}).text
    assert re.search(r'id="total-sent">7<', page)  # 6 early-bird + 1 winback
    assert re.search(r'id="total-delivered">4<', page)
    table = re.search(r'id="daily-table">.*?</table>', page, re.S).group(0)
    assert "2026-03-02</td><td class=\"num\">6</td><td class=\"num\">3<" in table
    row = re.search(r'<tr data-campaign="early-bird">.*?</tr>', page, re.S).group(0)
    cells = [unescape(c) for c in re.findall(r'<td class="num">(.*?)</td>', row)]
    assert cells[:7] == ["8", "6", "3", "1", "1", "0", "1"]
    assert "come from <code>engage report</code>" not in page and "Source: engage report" in page
    report = json.loads(cli(shop, "report", "--from", "2026-03-01", "--to", "2026-03-04", "--json"))
    figures = dict(re.findall(
        r'data-figure="([\w.]+)"><span class="label">[^<]*</span><span class="value">([^<]*)<', page
    ))
    shop_ = report["shop"]
    assert figures["customers.total"] == f"{shop_['customers']['total']:,}"
    assert figures["purchases.orders"] == f"{shop_['purchases']['orders']:,}"
    rate = shop_["retention"]["rate"]
    assert figures["retention.rate"] == ("–" if rate is None else f"{rate:.1f}%")


def test_report_page_without_the_library_shows_the_outbox(shop: Path) -> None:
    config = shop_config(shop)
    app = create_ui(config, make_engine(config.db_url), clock=lambda: UI_NOW,
                    report_source=outbox_report)
    with LiveServer(app) as srv:
        c = signed_in(srv.url)
        page = c.get("/report", params={"from": "2026-03-01", "to": "2026-03-04"}).text
        c.close()
    assert re.search(r'id="total-sent">7<', page)
    assert "come from <code>engage report</code>" in page


def test_report_page_draws_what_a_report_source_gives(shop: Path) -> None:
    def source(engine, config, start, end, zone):  # type: ignore[no-untyped-def]
        base = outbox_report(engine, config, start, end, zone)
        base.campaigns = [
            CampaignFigures("early-bird", planned=900, sent=880, delivered=850, held_out=100,
                            recipients=Group(880, 88, 0.10, (0.08, 0.12)),
                            holdout=Group(100, 5, 0.05, (0.02, 0.11)),
                            lift=0.05, lift_ci=(0.001, 0.09), relative_lift=1.0,
                            revenue=Decimal("1234.50")),
            CampaignFigures("sunday-utc", planned=10, sent=10, note="not enough data"),
        ]
        base.shop = [Figure("retention", "Retention rate", 41.5, "%"),
                     Figure("aov", "Average order value", Decimal("52.10"), "money")]
        base.series = {"retention": [SeriesPoint(start.date() + timedelta(days=i), 40 + i)
                                     for i in range(5)]}
        base.complete = True
        base.source = "test source"
        return base

    config = shop_config(shop)
    app = create_ui(config, make_engine(config.db_url), clock=lambda: UI_NOW,
                    report_source=source)
    with LiveServer(app) as srv:
        c = signed_in(srv.url)
        page = c.get("/report").text
        c.close()
    assert "Conversion: recipients vs holdout" in page and "Lift (percentage points)" in page
    assert "early-bird · recipients: 10.0% (8.0% – 12.0%)" in unescape(page)
    assert "+5.0 pts" in page and "[+0.1, +9.0]" in page and "not enough data" in page
    assert "41.5%" in page and "52.10 USD" in page and "1,234.50 USD" in page
    assert "Retention rate over the period" in page and "<polyline" in page
    assert "come from <code>engage report</code>" not in page and "test source" in page


# -- mounting into engage serve's app ------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "/ui"])
def test_mounted_in_a_parent_app_after_its_api_routes(shop: Path, prefix: str) -> None:
    """What ``engage.web.create_app`` does: its own routes first, the interface last."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    config = shop_config(shop)
    ui = create_ui(config, make_engine(config.db_url), clock=lambda: UI_NOW)
    assert ui is not None

    async def healthz(request: object) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/healthz", healthz), Mount(prefix or "/", app=ui)])
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/healthz").json() == {"ok": True}
        assert "content-security-policy" not in c.get("/healthz").headers  # not the UI's
        r = c.get(f"{prefix}/customers/c001")
        assert r.status_code == 303
        assert r.headers["location"] == f"{prefix}/login?" + urlencode(
            {"next": f"{prefix}/customers/c001"}
        )
        login = c.get(f"{prefix}/login")
        assert f'href="{prefix}/static/app.css"' in login.text
        assert c.get(f"{prefix}/static/app.css").status_code == 200
        token = login_form_token_at(c, prefix)
        r = c.post(f"{prefix}/login", data={"csrf": token, "password": PASSWORD,
                                            "next": f"{prefix}/customers/c001"})
        assert r.status_code == 303 and r.headers["location"] == f"{prefix}/customers/c001"
        page = c.get(f"{prefix}/customers/c001", headers={"Accept": "text/html"})
        assert page.status_code == 200 and f'href="{prefix}/campaigns/early-bird' in page.text
        assert 'aria-current="page">Customers' in page.text


def login_form_token_at(client: httpx.Client, prefix: str) -> str:
    page = client.get(f"{prefix}/login").text
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found
    return found.group(1)
