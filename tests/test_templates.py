"""Templates: sandbox, strictness, escaping, locale filters, SMS rules, validation."""

from __future__ import annotations

import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError

from engage.config import Config
from engage.customers.recipients import PointsSummary, Recipient
from engage.errors import ConfigError, Problem
from engage.templating import (
    CampaignInfo,
    Renderer,
    TemplateRenderError,
    count_segments,
    encoding_of,
    html_to_text,
    with_opt_out,
)
from engage.templating.htmltext import _swappable
from engage.templating.sms import GSM7_BASIC, GSM7_EXTENSION
from engage.unsubscribe import read_token

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-key-0123456789abcdef"
NOW = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
ADDRESS = "12 Leaf Lane\nPortland, OR 97201"
LAYOUT = (
    "<html><body>{% block content %}{% endblock %}"
    "<p>{{ shop.name }}<br>{{ shop.postal_address }}</p>"
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a>'
    "</body></html>"
)
CAMPAIGN = CampaignInfo("winback-30d", "We miss you", "t", {"source": "engage", "medium": "email"})


def make_config(base: Path, **over: object) -> Config:
    shop = {
        "name": "Tea & Co",
        "postal_address": ADDRESS,
        "currency": "EUR",
        "url": "https://tea.example",
    }
    shop.update(over.pop("shop", {}))  # type: ignore[arg-type]
    return Config(base_dir=base, shop=shop, secrets={"ENGAGE_SECRET_KEY": SECRET}, **over)  # type: ignore[arg-type]


def write(base: Path, files: dict[str, str]) -> None:
    for name, src in files.items():
        path = base / "templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(src, encoding="utf-8")


def renderer(tmp_path: Path, files: dict[str, str], **over: object) -> Renderer:
    write(tmp_path, files)
    return Renderer(make_config(tmp_path, **over))


def person(**over: object) -> Recipient:
    base = Recipient(
        customer_id="cust-42",
        email="alice@example.com",
        phone="+15551234567",
        first_name="Alice",
        last_name="Smith",
        timezone="America/New_York",
        locale="en_US",
        tier="gold",
        attributes={"discount_code": "ALICE10"},
        email_opt_in=True,
        sms_opt_in=True,
        created_at=NOW - timedelta(days=400),
        last_activity=NOW - timedelta(days=40, hours=1),
        orders=3,
        lifetime_value=Decimal("120.00"),
        points=PointsSummary(1250, 300, datetime(2026, 3, 5, 12, tzinfo=UTC)),
    )
    return replace(base, **over)  # type: ignore[arg-type]


def email_files(html: str, subject: str = "Hi {{ customer.name }}") -> dict[str, str]:
    return {"_layouts/base.html.j2": LAYOUT, "t/subject.j2": subject, "t/email.html.j2": html}


# -- sandbox ---------------------------------------------------------------

ATTACKS = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ customer.__dict__ }}",
    "{{ customer|attr('__class__') }}",
    "{{ '{0.__class__}'.format(customer) }}",
    "{{ customer.attributes.update({'x': 1}) }}",
    "{{ customer.attributes.setdefault('x', 1) }}",
    "{{ customer.attributes.pop('country') }}",
    "{{ '{c.__class__}'.format_map({'c': customer}) }}",
]


@pytest.mark.parametrize("source", ATTACKS)
def test_sandbox_blocks_python_internals(tmp_path: Path, source: str) -> None:
    r = renderer(tmp_path, {"t/sms.j2": "BEFORE " + source})
    with pytest.raises(TemplateRenderError) as info:
        r.render_sms("t", CAMPAIGN, person(), NOW)
    assert isinstance(info.value.__cause__, SecurityError)
    assert info.value.template == "templates/t/sms.j2" and info.value.line == 1


@pytest.mark.parametrize(
    "source",
    [
        "{% include '/etc/passwd' %}",
        "{% include '../secret.txt' %}",
        "{% extends '../secret.txt' %}",
        "{% extends '../../x' %}",
        "{% include 'SECRET_ABS' %}",
        "{% include 'link/secret.txt' %}",
        "{% import '../secret.txt' as s %}",
    ],
)
def test_loader_cannot_leave_the_templates_folder(tmp_path: Path, source: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    (tmp_path / "templates").mkdir()
    os.symlink(tmp_path, tmp_path / "templates" / "link")
    r = renderer(tmp_path, {"t/sms.j2": source.replace("SECRET_ABS", str(secret))})
    with pytest.raises(TemplateRenderError) as info:
        r.render_sms("t", CAMPAIGN, person(), NOW)
    assert "TOPSECRET" not in str(info.value)
    assert "template not found" in info.value.detail


def test_template_name_must_be_a_folder(tmp_path: Path) -> None:
    r = renderer(tmp_path, {"t/sms.j2": "hi"})
    with pytest.raises(TemplateRenderError):
        r.render_sms("../t", CAMPAIGN, person(), NOW)


# -- strictness and errors -------------------------------------------------


def test_typo_fails_with_file_and_line(tmp_path: Path) -> None:
    html = (
        '{% extends "_layouts/base.html.j2" %}\n{% block content %}\n'
        "<p>Hi</p>\n<p>{{ customer.frist_name }}</p>\n{% endblock %}"
    )
    r = renderer(tmp_path, email_files(html))
    with pytest.raises(TemplateRenderError) as info:
        r.render_email("t", CAMPAIGN, person(), NOW)
    err = info.value
    assert (err.template, err.line) == ("templates/t/email.html.j2", 4)
    assert "frist_name" in str(err) and str(err).startswith("templates/t/email.html.j2:4: ")
    assert "customer has no attribute" in str(err)


def test_error_in_layout_points_at_the_layout(tmp_path: Path) -> None:
    files = email_files('{% extends "_layouts/base.html.j2" %}')
    files["_layouts/base.html.j2"] = "<html>\n\n{{ shop.nmae }}</html>"
    r = renderer(tmp_path, files)
    with pytest.raises(TemplateRenderError) as info:
        r.render_email("t", CAMPAIGN, person(), NOW)
    assert (info.value.template, info.value.line) == ("templates/_layouts/base.html.j2", 3)


def test_syntax_error_has_line(tmp_path: Path) -> None:
    r = renderer(tmp_path, {"t/sms.j2": "ok\nok\n{% if %}"})
    with pytest.raises(TemplateRenderError) as info:
        r.render_sms("t", CAMPAIGN, person(), NOW)
    assert (info.value.template, info.value.line) == ("templates/t/sms.j2", 3)


def test_filter_error_is_a_render_error(tmp_path: Path) -> None:
    r = renderer(tmp_path, {"t/sms.j2": "\n{{ 'lots'|money }}"})
    with pytest.raises(TemplateRenderError, match="money expects a number") as info:
        r.render_sms("t", CAMPAIGN, person(), NOW)
    assert info.value.line == 2


def test_missing_channel_files_are_an_error(tmp_path: Path) -> None:
    r = renderer(tmp_path, {"t/sms.j2": "hi"})
    with pytest.raises(TemplateRenderError, match="email.html.j2|subject.j2"):
        r.render_email("t", CAMPAIGN, person(), NOW)
    r2 = renderer(tmp_path / "other", email_files("<p>hi</p>"))
    with pytest.raises(TemplateRenderError, match="sms.j2"):
        r2.render_sms("t", CAMPAIGN, person(), NOW)


def test_rendering_needs_the_secret_key(tmp_path: Path) -> None:
    write(tmp_path, {"t/sms.j2": "hi"})
    cfg = make_config(tmp_path).model_copy(update={"secrets": {}})
    with pytest.raises(ConfigError, match="ENGAGE_SECRET_KEY"):
        Renderer(cfg).render_sms("t", CAMPAIGN, person(), NOW)


# -- escaping and context --------------------------------------------------


def test_html_is_escaped_text_channels_are_not(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    files = email_files(
        "<p>Hi {{ customer.first_name }}</p>", subject="Hi {{ customer.first_name }} & co"
    )
    files["t/sms.j2"] = "Hi {{ customer.first_name }} & co"
    r = renderer(tmp_path, files)
    email = r.render_email("t", CAMPAIGN, person(first_name=evil), NOW)
    assert "<script>" not in email.html and "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert email.subject == f"Hi {evil} & co"
    assert evil in email.text  # plain text is not HTML: entities decoded
    sms = r.render_sms("t", CAMPAIGN, person(first_name=evil), NOW)
    assert sms.body.startswith(f"Hi {evil} & co\n")


def test_subject_is_one_line(tmp_path: Path) -> None:
    r = renderer(tmp_path, email_files("<p>x</p>", subject="Hi {{ customer.first_name }}\n"))
    email = r.render_email("t", CAMPAIGN, person(first_name="A\r\nBcc: x@evil.example"), NOW)
    assert email.subject == "Hi A Bcc: x@evil.example"


def test_context_values(tmp_path: Path) -> None:
    src = (
        "{{ customer.name }}|{{ customer.last_name }}|{{ days_quiet }}|{{ now.hour }}|"
        "{{ last_activity.tzinfo }}|{{ campaign.name }}|{{ shop.name }}|{{ points.balance }}|"
        "{{ points.expiring }}|{{ customer.attributes.discount_code }}|{{ unsubscribe_url }}"
    )
    r = renderer(tmp_path, {"t/sms.j2": src})
    body = r.render_sms("t", CAMPAIGN, person(first_name=None, last_name=None), NOW).body
    fields = body.split("\n")[0].split("|")
    assert fields[:10] == [
        "there",
        "",
        "40",
        "22",
        "America/New_York",
        "winback-30d",
        "Tea & Co",
        "1250",
        "300",
        "ALICE10",
    ]
    token = fields[10].removeprefix("https://engage.example.com/u/")
    claim = read_token(SECRET, token)
    assert (claim.customer_id, claim.channel, claim.campaign) == ("cust-42", "sms", "winback-30d")


LOCALES = {
    "en_US": (
        "America/New_York",
        "€1,234.50|Feb 28, 2026|2/28/26|February 28, 2026|2/28/26, 10:00\u202fPM|5|1,250",
    ),
    "de_DE": (
        "Europe/Berlin",
        "1.234,50\xa0€|01.03.2026|01.03.26|1. März 2026|01.03.26, 04:00|4|1.250",
    ),
    "ja_JP": (
        "Asia/Tokyo",
        "€1,234.50|2026/03/01|2026/03/01|2026年3月1日|2026/03/01 12:00|4|1,250",
    ),
}
FILTERS = (
    "{{ 1234.5|money }}|{{ now|date }}|{{ now|date('short') }}|{{ now|date('long') }}|"
    "{{ now|datetime('short') }}|{{ points.next_expiry|days_until }}|{{ points.balance|number }}"
)


@pytest.mark.parametrize("locale", sorted(LOCALES))
def test_filters_follow_customer_locale_and_zone(tmp_path: Path, locale: str) -> None:
    # 03:00 UTC on March 1st is still February 28th in New York.
    zone, expected = LOCALES[locale]
    r = renderer(tmp_path, {"t/sms.j2": FILTERS})
    body = r.render_sms("t", CAMPAIGN, person(locale=locale, timezone=zone), NOW).body
    assert body.split("\n")[0] == expected


def test_money_accepts_decimal_and_other_currency(tmp_path: Path) -> None:
    r = renderer(tmp_path, {"t/sms.j2": "{{ customer.lifetime_value|money }} {{ 5|money('USD') }}"})
    assert r.render_sms("t", CAMPAIGN, person(locale="de_DE"), NOW).body.startswith(
        "120,00\xa0€ 5,00\xa0$"
    )


def test_bad_locale_and_zone_in_data_fall_back_to_config(tmp_path: Path) -> None:
    r = renderer(tmp_path, {"t/sms.j2": "{{ now|date }}"}, timezone="Europe/Berlin", locale="de_DE")
    body = r.render_sms("t", CAMPAIGN, person(locale="xx_NOPE", timezone="Mars/Base"), NOW).body
    assert body.startswith("01.03.2026")


def test_date_of_none_is_an_error_not_an_empty_string(tmp_path: Path) -> None:
    r = renderer(tmp_path, {"t/sms.j2": "expires {{ points.next_expiry|date }}"})
    with pytest.raises(TemplateRenderError, match="date expects a date"):
        r.render_sms("t", CAMPAIGN, person(points=PointsSummary()), NOW)


def test_utm_filter(tmp_path: Path) -> None:
    src = (
        "{{ 'https://a.example/p?x=1&utm_source=keep#top'|utm }} {{ shop.url|utm(content='cta') }}"
    )
    r = renderer(tmp_path, {"t/sms.j2": src})
    body = r.render_sms("t", CAMPAIGN, person(), NOW).body.split("\n")[0]
    assert body == (
        "https://a.example/p?x=1&utm_source=keep&utm_medium=email#top "
        "https://tea.example/?utm_source=engage&utm_medium=email&utm_content=cta"
    )
    plain = r.render_sms("t", CampaignInfo("c"), person(), NOW).body.split("\n")[0]
    assert plain.split()[0] == "https://a.example/p?x=1&utm_source=keep#top"


def test_marketing_email_headers_and_transactional(tmp_path: Path) -> None:
    r = renderer(tmp_path, email_files('{% extends "_layouts/base.html.j2" %}'))
    email = r.render_email("t", CAMPAIGN, person(), NOW, message_ref="m-1")
    unsub = email.headers["List-Unsubscribe"]
    assert unsub.startswith("<https://engage.example.com/u/") and unsub.endswith(">")
    assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    claim = read_token(SECRET, unsub[1:-1].rsplit("/", 1)[1])
    assert (claim.customer_id, claim.channel) == ("cust-42", "email")
    assert unsub[1:-1] in email.html and unsub[1:-1] in email.text
    receipt = r.render_email("t", replace(CAMPAIGN, transactional=True), person(), NOW)
    assert "List-Unsubscribe" not in receipt.headers


def test_campaign_may_be_any_object(tmp_path: Path) -> None:
    class Campaign:
        name = "vip"
        description = "thanks"
        template = "t"
        utm = None
        transactional = False

    r = renderer(tmp_path, {"t/sms.j2": "{{ campaign.name }}: {{ campaign.description }}"})
    assert r.render_sms("t", Campaign(), person(), NOW).body.startswith("vip: thanks")


# -- text part -------------------------------------------------------------


def test_html_to_text() -> None:
    html = """<html><head><title>T</title><style>p{color:red}</style></head><body>
    <div style="display:none">preheader text</div>
    <h1>Hello&nbsp;Alice &amp; friends</h1>
    <p>Line one<br>line   two
       continues</p>
    <ul><li>First</li><li>Second</li></ul>
    <p><a href="https://x.example/a?b=1&amp;c=2">Shop now</a> or
    <a href="https://x.example/plain">https://x.example/plain</a>
    <a href="mailto:help@x.example">help@x.example</a>
    <a href="https://x.example/logo"><img src="l.png" alt="Logo"></a></p>
    <script>alert(1)</script>
    </body></html>"""
    assert html_to_text(html) == (
        "Hello\xa0Alice & friends\n\n"
        "Line one\nline two continues\n\n"
        "- First\n- Second\n\n"
        "Shop now (https://x.example/a?b=1&c=2) or https://x.example/plain help@x.example "
        "Logo (https://x.example/logo)"
    )


_URLISH = st.text(
    alphabet=st.sampled_from("abcAB09:/?#@!$()*+,;=._~%[]-&'\" <>\n\x01"), min_size=0, max_size=12
)


@given(
    url=st.builds(
        lambda scheme, tail: f"{scheme}x.example/u/{tail}",
        st.sampled_from(["https://", "http://", "#", "mailto:", "javascript:", "HTTPS://"]),
        _URLISH,
    ),
    slots=st.lists(
        st.sampled_from(
            [
                '<a href="{u}">Unsubscribe</a>',
                '<a href="{u}">{u}</a>',
                "<p>{u}</p>",
                '<div style="display:none">{u}</div>',
                '<a href="{u}"><img alt="x"></a>',
                "{u}x &amp; {u}\n",
                '<a href="{u}">\nlong\n</a>',
                '<p title="{u}">t</p>',
                # found in review: an entity running into the link, an encoded
                # copy of it, an unquoted or single-quoted href, a style
                "<p>Leave &et{u} now</p>",
                '<a href="&#104;{t}">{u}</a>',
                '<a href="{u}">https&colon;{r}</a>',
                "<a href={u}/>x</a><p>after</p>",
                "<a href='{u}'>y</a>",
                '<div style="background:url({u})">z</div>',
            ]
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_opaque_links_do_not_change_the_text(url: str, slots: list[str]) -> None:
    """The unsubscribe link is swapped for a placeholder while the text is
    derived, so its line comes from the memo; the text must be exactly what
    converting the HTML as it is gives, whatever the link holds."""
    rest = url.split(":", 1)[1] if ":" in url else url
    parts = {"u": url, "t": url[1:], "r": rest}
    html = "<html><body>" + "\n".join(slot.format(**parts) for slot in slots) + "</body></html>"
    assert html_to_text(html, opaque=(url,)) == html_to_text(html)


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ('<p>a < b &amp; c</p><p title="x>y">after</p>', "a < b & c\n\nafter"),
        ("<!-- note --><!DOCTYPE html><head><title>T</title>no end", "no end"),
        (
            '<div style="display: none"><div>nested</div><p>hidden</p></div>'
            '<p>shown <a href="#top">top</a></p>',
            "shown top",
        ),
        (
            "<table><tr><td>A</td><td>B</td></tr></table>\t<hr><br/>Last&middot;line",
            "A\n\nB\n\nLast·line",
        ),
        (
            '<a href="https://x.example/p"><img src="i.png" alt="Pic"> </a>'
            '<a href="javascript:alert(1)">js</a>',
            "Pic (https://x.example/p)js",
        ),
        ("<STYLE>p{}</STYLE ><SCRIPT>x()</script>Text<p/>More", "Text\n\nMore"),
        ("<p>Preis – 5&nbsp;€\n\tnur heute</p>", "Preis – 5\xa0€ nur heute"),
    ],
)
def test_html_to_text_edge_cases(html: str, text: str) -> None:
    # Stray "<", quoted ">" in attributes, unclosed elements, nested hidden
    # blocks, upper-case tags, non-Latin-1 text with tabs and newlines.
    assert html_to_text(html) == text


@pytest.mark.parametrize(
    ("html", "text"),
    [
        # a quoted attribute spanning lines (the converter cannot work line by line)
        (
            '<p>a</p>\n<a title="x\ny" href="https://x.example/z">Go</a>\n<p>b</p>',
            "a\n\nGo (https://x.example/z)\n\nb",
        ),
        (
            '<div style="display:none"><a title="x</td><a href="https://x/">\n</div>\n'
            '<span title="a>b">shown</span>',
            "",
        ),
        # a link whose label spans lines
        (
            '<p>Hi\n<a href="https://x.example/l">two\nlines</a>\n</p>',
            "Hi two lines (https://x.example/l)",
        ),
    ],
)
def test_html_to_text_across_lines_and_repeated(html: str, text: str) -> None:
    # Lines are memoised with the converter state: the second call (served
    # from the memo where lines repeat) must give the same text as the first.
    assert html_to_text(html) == text
    assert html_to_text(html) == text
    assert html_to_text("<div>" + html + "</div>") == text


@pytest.mark.parametrize("locale", ["en_US", "de_DE", "fr_FR", "en_IN", "de_CH", "ar_EG", "ja_JP"])
def test_number_filter_matches_babel(tmp_path: Path, locale: str) -> None:
    from babel.numbers import format_decimal

    values = [0, 7, 999, 1000, 12345, 1234567, 10**12 + 3]
    decimals = [Decimal("1250"), Decimal("1250.000"), Decimal("1.25E+3"), Decimal("-1250")]
    fractions = [Decimal("1234.5"), Decimal("-3"), 1234.5678]
    template = "|".join(
        [f"{{{{ {v}|number }}}}" for v in values]
        + ["{{ points.balance|number }}"]
        + [f"{{{{ customer.attributes.d{i}|number }}}}" for i in range(len(decimals + fractions))]
    )
    attrs = {f"d{i}": v for i, v in enumerate(decimals + fractions)}
    r = renderer(tmp_path, {"t/sms.j2": template}, sms_opt_out_line="")
    body = r.render_sms("t", CAMPAIGN, person(locale=locale, attributes=attrs), NOW).body
    expected = [format_decimal(Decimal(str(v)), locale=locale) for v in values]
    expected.append(format_decimal(1250, locale=locale))
    expected += [format_decimal(Decimal(str(v)), locale=locale) for v in decimals + fractions]
    assert body.split("|") == expected


def test_sandbox_still_guards_attributes_of_context_objects(tmp_path: Path) -> None:
    # Declared data fields are read directly; anything else on the same objects
    # still goes through the sandbox.
    r = renderer(tmp_path, {"t/sms.j2": "{{ (shop.name ~ '{0.__class__}').format(shop) }}"})
    with pytest.raises(TemplateRenderError):
        r.render_sms("t", CAMPAIGN, person(), NOW)
    r = renderer(tmp_path, {"t/sms.j2": "{{ customer.__class__ }}{{ shop.__dict__ }}"})
    with pytest.raises(TemplateRenderError):
        r.render_sms("t", CAMPAIGN, person(), NOW)
    r = renderer(tmp_path, {"t/sms.j2": "{{ customer.name }} {{ shop.name }} {{ points.balance }}"})
    assert r.render_sms("t", CAMPAIGN, person(), NOW).body.startswith("Alice Tea & Co 1250")
    # So do the read-only str and dict methods that take the same shortcut.
    source = "{{ shop.name.split()|last }} {{ customer.attributes.get('nope', 'none') }}"
    r = renderer(tmp_path, {"t/sms.j2": source})
    assert r.render_sms("t", CAMPAIGN, person(), NOW).body.startswith("Co none")


def test_explicit_text_template_wins(tmp_path: Path) -> None:
    files = email_files("<p>HTML body</p>")
    files["t/email.txt.j2"] = "Plain for {{ customer.name }} & co\n"
    r = renderer(tmp_path, files)
    email = r.render_email("t", CAMPAIGN, person(), NOW)
    assert email.text == "Plain for Alice & co\n"


# -- SMS -------------------------------------------------------------------

GSM_BASIC = sorted(GSM7_BASIC)
NON_GSM = st.characters(
    min_codepoint=0x20,
    blacklist_characters="".join(GSM7_BASIC | GSM7_EXTENSION),
    blacklist_categories=("Cs",),
)


@given(st.text(alphabet=st.sampled_from(GSM_BASIC), max_size=700))
def test_gsm7_segments(body: str) -> None:
    n = len(body)
    assert encoding_of(body) == "GSM-7"
    assert count_segments(body) == (1 if n <= 160 else math.ceil(n / 153))


@given(st.text(alphabet=st.sampled_from(GSM_BASIC), max_size=300), NON_GSM, st.integers(0, 300))
def test_any_non_gsm_char_means_ucs2(body: str, ch: str, at: int) -> None:
    text = body[:at] + ch + body[at:]
    assert encoding_of(text) == "UCS-2"
    units = len(text.encode("utf-16-le")) // 2
    expected = 1 if units <= 70 else math.ceil(units / 67)
    if ord(ch) <= 0xFFFF:
        assert count_segments(text) == expected
    else:  # a surrogate pair is never split, so packing may need one more part
        assert count_segments(text) in (expected, expected + 1)


@pytest.mark.parametrize(
    ("body", "encoding", "segments"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # extension characters take two septets
        ("€" * 81, "GSM-7", 2),
        ("a" * 152 + "€", "GSM-7", 1),
        ("a" * 159 + "{", "GSM-7", 2),
        ("é" * 160, "GSM-7", 1),
        ("ł" * 70, "UCS-2", 1),
        ("ł" * 71, "UCS-2", 2),
        ("ł" * 134, "UCS-2", 2),
        ("ł" * 135, "UCS-2", 3),
        ("😀" * 35, "UCS-2", 1),  # emoji are two UTF-16 units
        ("😀" * 36, "UCS-2", 2),
        ("a" * 66 + "😀" + "a" * 10, "UCS-2", 2),
    ],
)
def test_segment_examples(body: str, encoding: str, segments: int) -> None:
    assert encoding_of(body) == encoding
    assert count_segments(body) == segments


@given(st.text(max_size=200))
def test_opt_out_appended_exactly_once(body: str) -> None:
    line = "Reply STOP to opt out"
    once = with_opt_out(body, line)
    assert with_opt_out(once, line) == once
    assert "stop" in once.lower()
    if "stop" not in body.lower():
        assert once.endswith("\n" + line) or once == line
        assert once.count(line) == 1


@pytest.mark.parametrize(
    ("body", "appended"),
    [
        ("Sale today! Reply STOP to unsubscribe", False),
        ("Sale today! Text stop to quit", False),
        ("Sale today!\nSTOP to opt out", False),
        ("Sale today! reply stop to opt out", False),
        ("Don't stop shopping!", True),
        ("Sale today!", True),
    ],
)
def test_opt_out_detection(body: str, appended: bool) -> None:
    out = with_opt_out(body, "Reply STOP to opt out")
    assert out.endswith("\nReply STOP to opt out") is appended


def test_render_sms_counts_segments_after_the_opt_out_line(tmp_path: Path) -> None:
    r = renderer(tmp_path, {"t/sms.j2": "x" * 150 + "\n\n"})
    sms = r.render_sms("t", CAMPAIGN, person(), NOW)
    assert sms.body == "x" * 150 + "\nReply STOP to opt out"
    assert (sms.encoding, sms.segments) == ("GSM-7", 2)
    r2 = renderer(
        tmp_path / "b", {"t/sms.j2": "Hi {{ customer.name }} 😀"}, sms_opt_out_line="STOP=stop"
    )
    sms2 = r2.render_sms("t", CAMPAIGN, person(), NOW)
    assert sms2.body == "Hi Alice 😀\nSTOP=stop" and sms2.encoding == "UCS-2"


# -- check() (engage validate) ----------------------------------------------


def errors(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems if p.severity == "error"]


def warnings(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems if p.severity == "warning"]


def test_shipped_templates_are_clean() -> None:
    cfg = make_config(ROOT)
    r = Renderer(cfg)
    assert set(r.templates()) >= {"winback", "points-expiring", "vip-thanks"}
    assert r.check(now=NOW) == []
    for loc, (zone, _) in LOCALES.items():
        p = person(locale=loc, timezone=zone, first_name="Zoë", attributes={})
        for name, channels in r.templates().items():
            if "email" in channels:
                email = r.render_email(name, CampaignInfo(name, utm={"source": "engage"}), p, NOW)
                assert "12 Leaf Lane" in email.text and "/u/" in email.text and email.subject
                # the text part's unsubscribe line comes from the memo (see html_to_text)
                link = email.headers["List-Unsubscribe"].strip("<>")
                assert _swappable(email.html, link), (name, loc)
            if "sms" in channels:
                sms = r.render_sms(name, CampaignInfo(name), p, NOW)
                assert sms.segments <= cfg.max_sms_segments


def test_check_catches_missing_unsubscribe_and_address(tmp_path: Path) -> None:
    r = renderer(tmp_path, email_files("<p>Hello {{ customer.name }}</p>"))
    found = errors(r.check(now=NOW))
    assert (
        "templates/t/email.html.j2: a marketing email must link to {{ unsubscribe_url }}" in found
    )
    assert any(
        e.startswith("templates/t/email.html.j2: a marketing email must show the shop's postal")
        for e in found
    )
    # the same template is fine for a transactional campaign
    receipt = {"name": "receipt", "template": "t", "channels": ["email"], "transactional": True}
    assert errors(r.check([receipt], now=NOW)) == []


def test_check_fails_on_empty_postal_address(tmp_path: Path) -> None:
    r = renderer(
        tmp_path, email_files('{% extends "_layouts/base.html.j2" %}'), shop={"postal_address": ""}
    )
    assert errors(r.check(now=NOW)) == [
        "config.yaml: shop.postal_address: "
        "marketing email must show the shop's postal address, and it is empty"
    ]


def test_check_reports_render_errors_with_location(tmp_path: Path) -> None:
    files = email_files(
        '{% extends "_layouts/base.html.j2" %}\n{% block content %}{{ custmer.name }}{% endblock %}'
    )
    files["bad/sms.j2"] = "ok\n{% for x in %}"
    files["evil/sms.j2"] = "{{ ''.__class__ }}"
    r = renderer(tmp_path, files)
    found = errors(r.check([{"name": "c", "template": "bad", "channels": ["sms"]}], now=NOW))
    assert len(found) == 3, found  # one line per problem, not one per campaign as well
    assert "templates/t/email.html.j2:2: undefined: 'custmer' is undefined" in found
    assert any(e.startswith("templates/bad/sms.j2:2: syntax error") for e in found)
    assert any(e.startswith("templates/evil/sms.j2:1: not allowed in templates") for e in found)


def test_check_sms_segments(tmp_path: Path) -> None:
    r = renderer(tmp_path, {"two/sms.j2": "x" * 200, "long/sms.j2": "x" * 580, "ok/sms.j2": "Hi"})
    problems = r.check(now=NOW)
    assert errors(problems) == [
        "templates/long/sms.j2: SMS takes 4 segments, more than max_sms_segments=3"
    ]
    assert warnings(problems) == [
        "templates/two/sms.j2: warning: SMS takes 2 segments (each is billed)"
    ]


def test_check_campaign_channels_and_folders(tmp_path: Path) -> None:
    r = renderer(tmp_path, {"t/sms.j2": "Hi"}, public_url="http://localhost:8000")
    campaigns = [
        {"name": "a", "template": "t", "channels": ["email", "sms"]},
        {"name": "b", "template": "nope", "channels": ["sms"]},
    ]
    problems = r.check(campaigns, now=NOW)
    assert errors(problems) == [
        "templates/t/subject.j2: email needs subject.j2 in this template folder, and it is missing "
        "(campaign a)",
        "templates/nope: template folder not found (campaign b)",
    ]
    assert any("public_url" in w for w in warnings(problems))


# -- reload and threads ----------------------------------------------------


def test_reload_keeps_last_good_version(tmp_path: Path) -> None:
    r = renderer(tmp_path, {"t/sms.j2": "v1"})
    sms = tmp_path / "templates" / "t" / "sms.j2"
    sms.write_text("v2 {{ oops")
    assert errors(r.reload(now=NOW))
    assert r.render_sms("t", CAMPAIGN, person(), NOW).body.startswith("v1\n")
    sms.write_text("v3")
    assert errors(r.reload(now=NOW)) == []
    assert r.render_sms("t", CAMPAIGN, person(), NOW).body.startswith("v3\n")


def test_concurrent_renders_keep_their_own_customer(tmp_path: Path) -> None:
    write(tmp_path, {"t/sms.j2": FILTERS + "|{{ customer.id }}"})
    r = Renderer(make_config(tmp_path))
    people = [
        person(customer_id=f"c{i}", locale=loc, timezone=LOCALES[loc][0])
        for i in range(300)
        for loc in [sorted(LOCALES)[i % 3]]
    ]
    expected = [r.render_sms("t", CAMPAIGN, p, NOW).body for p in people]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: r.render_sms("t", CAMPAIGN, p, NOW).body, people))
    assert got == expected
    assert all(b.split("\n")[0].endswith(f"|c{i}") for i, b in enumerate(got))
    assert {b.split("|")[0] for b in got} == {"€1,234.50", "1.234,50\xa0€"}


def test_missing_templates_dir(tmp_path: Path) -> None:
    r = Renderer(make_config(tmp_path))
    assert errors(r.check(now=NOW)) == ["templates: no templates found"]
    shutil.rmtree(tmp_path, ignore_errors=True)
