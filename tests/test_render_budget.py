"""Templates cannot hang or explode (issue 13, item 5).

* Every render carries cheap bounds (``templating/budget.py``): work that
  depends on a customer's data (``range(customer.orders)``, ``"x" * n``) fails
  that one message fast instead of hanging or allocating gigabytes.
* ``engage validate`` and hot reload check templates in a child process with
  a time and memory limit (``templating/isolation.py``); a reload that fails
  keeps the last good templates and says why; at start-up a template over the
  budget is quarantined, so the daemon never jams.
* An HTML email over ``max_email_html_kb`` or an SMS over ``max_sms_segments``
  is a ``render_error`` with that reason, at send time and in dry-run.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from engage.db.models import Customer, Message
from engage.templating import Renderer, TemplateRenderError
from engage.templating.budget import MAX_OUTPUT, RANGE_BUDGET

from .installed import clean_env, engage
from .test_daemon_support import Project, campaign_yaml, cron_at, project, wait_for
from .test_templates import CAMPAIGN, NOW, email_files, make_config, person, renderer

# -- per-message bounds, in-process -----------------------------------------------------------

DATA_DRIVEN = [
    # nested loops whose size comes from the customer: fine for the sample, not for all
    "{% for i in range(customer.orders) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * (customer.orders * 1000000) }}",
    "{{ customer.orders ** 100000 }}",
    "{{ [0] * customer.orders * 1000000 }}",
    "{% set ns = namespace(n=customer.orders) %}{% for i in range(40) %}"
    "{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(customer.orders * 10) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "{{ ('%0' ~ customer.orders ~ '00000d') % 1 }}",
    "{{ ('{:>' ~ customer.orders ~ '00000}').format(1) }}",
    "{{ 'x'|center(customer.orders * 100000) }}",
    "{{ 'x\\ny'|indent(customer.orders * 100000) }}",
    "{{ ('%0' ~ customer.orders ~ '00000d')|format(1) }}",
    "{{ lipsum(customer.orders * 1000) }}",
    "{% for i in range(customer.orders) %}{% for j in range(100000) %}"
    "{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}{% endfor %}",
]


@pytest.mark.parametrize("expr", DATA_DRIVEN)
def test_data_driven_work_fails_that_message_fast(tmp_path: Path, expr: str) -> None:
    r = renderer(tmp_path, email_files("<p>{{ unsubscribe_url }}</p>" + expr))
    small = person(orders=0)  # what the sample customer might look like: fine
    r.render_email("t", CAMPAIGN, small, NOW)
    with pytest.raises(TemplateRenderError, match="too much work for one message"):
        r.render_email("t", CAMPAIGN, person(orders=20), NOW)


def test_ordinary_arithmetic_and_loops_still_work(tmp_path: Path) -> None:
    html = (
        "<p>{{ unsubscribe_url }}</p>"
        "{% for i in range(3) %}{{ i + 1 }}{% endfor %}|{{ points.balance * 2 }}|"
        "{{ '%05.1f' % 3.14159 }}|{{ '{:>6}'.format('ab') }}|{{ 2 ** 10 }}|"
        "{{ 'ab' * 3 }}|{{ [1, 2] + [3] }}|{{ 'x'|center(5) }}|{{ '%d items'|format(3) }}"
    )
    r = renderer(tmp_path, email_files(html))
    out = r.render_email("t", CAMPAIGN, person(), NOW).html
    assert "123|2500|003.1|    ab|1024|ababab|[1, 2, 3]|  x  |3 items" in out


def test_the_budget_is_per_message(tmp_path: Path) -> None:
    per_message = RANGE_BUDGET // 100_000 - 1  # range(100000) calls one message may make
    html = "<p>{{ unsubscribe_url }}</p>{% for i in range(%d) %}{% for j in range(100000) %}"
    html = html.replace("%d", str(per_message)) + "{% endfor %}{% endfor %}"
    r = renderer(tmp_path, email_files(html))
    for _ in range(3):  # each message gets a fresh budget
        r.render_email("t", CAMPAIGN, person(), NOW)


def test_output_is_cut_off(tmp_path: Path) -> None:
    html = "{% for i in range(100000) %}{% for j in range(9) %}{{ customer.name }}" * 1
    html = "<p>{{ unsubscribe_url }}</p>" + html + "{% endfor %}{% endfor %}"
    r = renderer(tmp_path, email_files(html))
    with pytest.raises(TemplateRenderError, match=f"writes more than {MAX_OUTPUT:,}"):
        r.render_email("t", CAMPAIGN, person(first_name="A" * 10), NOW)


def test_html_and_sms_caps_are_render_errors_with_the_reason(tmp_path: Path) -> None:
    files = email_files("<p>{{ unsubscribe_url }}</p>{{ customer.attributes.get('bio', '') }}")
    files["t/sms.j2"] = "Hi {{ customer.attributes.get('bio', '') }}"
    r = renderer(tmp_path, files, max_email_html_kb=2, max_sms_segments=2)
    r.render_email("t", CAMPAIGN, person(), NOW)
    r.render_sms("t", CAMPAIGN, person(), NOW)
    long_bio = person(attributes={"bio": "é" * 1200})  # 2,400 bytes of UTF-8
    with pytest.raises(
        TemplateRenderError, match=r"the HTML is 2\.4 KB, more than max_email_html_kb=2"
    ):
        r.render_email("t", CAMPAIGN, long_bio, NOW)
    with pytest.raises(
        TemplateRenderError, match=r"SMS takes 9 segments \(GSM-7\), more than max_sms_segments=2"
    ):
        r.render_sms("t", CAMPAIGN, long_bio, NOW)


def test_validate_fails_a_sample_email_over_the_html_cap(tmp_path: Path) -> None:
    files = email_files("<p>{{ unsubscribe_url }}</p>" + "x" * 3000)
    r = renderer(tmp_path, files, max_email_html_kb=2)
    problems = r.check([{"name": "big", "template": "t", "channels": ["email"]}])
    assert any("more than max_email_html_kb=2" in p.message for p in problems), problems


# -- validate: a child process with a time and a memory limit ---------------------------------

HANG = "{% for a in 'x' * 999999 %}{% for b in 'x' * 999999 %}{% endfor %}{% endfor %}"
GREEDY = (
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s|length }}"
)


def _project(tmp_path: Path) -> Path:
    engage("init", "proj", cwd=tmp_path)
    proj = tmp_path / "proj"
    config = proj / "config.yaml"
    text = config.read_text().replace(
        "template_check: {timeout: 10s, memory_mb: 512}",
        "template_check: {timeout: 1s, memory_mb: 128}",
    )
    assert "timeout: 1s" in text
    config.write_text(text)
    return proj


def _poison(proj: Path, folder: str, body: str) -> Path:
    path = proj / "templates" / folder / "email.html.j2"
    path.write_text(path.read_text().replace("{% block content %}", "{% block content %}" + body))
    return path


def test_validate_stops_a_template_that_hangs_and_checks_the_others(tmp_path: Path) -> None:
    proj = _project(tmp_path)
    _poison(proj, "winback", HANG)
    (proj / "templates" / "vip-thanks" / "subject.j2").write_text("{{ customer.nickname }}")
    proc = engage("validate", cwd=proj, env=clean_env(ENGAGE_SECRET_KEY="s" * 32), code=1)
    assert (
        "templates/winback/email.html.j2: rendering the email for the sample customer took "
        "longer than 1s (template_check.timeout)" in proc.stdout
    )
    # the check went on without winback: vip-thanks's own mistake is reported too
    assert "templates/vip-thanks/subject.j2:1: undefined: customer has no attribute" in proc.stdout


def test_validate_stops_a_template_that_eats_memory(tmp_path: Path) -> None:
    proj = _project(tmp_path)
    _poison(proj, "points-expiring", GREEDY)
    proc = engage("validate", cwd=proj, env=clean_env(ENGAGE_SECRET_KEY="s" * 32), code=1)
    assert (
        "templates/points-expiring/email.html.j2: rendering the email for the sample customer "
        "used more than 128 MB (template_check.memory_mb)" in proc.stdout
    )
    assert proc.stdout.strip().endswith("1 error"), proc.stdout


def test_a_quarantined_folder_fails_fast_at_render_time(tmp_path: Path) -> None:
    files = email_files("<p>{{ unsubscribe_url }}</p>" + HANG)
    r = renderer(tmp_path, files, template_check={"timeout": "1s"})
    problems = r.reload([{"name": "x", "template": "t", "channels": ["email"]}], initial=True)
    assert any("took longer than 1s" in p.message for p in problems)
    assert r.snapshot.quarantined.keys() == {"t"}
    with pytest.raises(TemplateRenderError, match="not rendered: rendering the email"):
        r.render_email("t", CAMPAIGN, person(), NOW)
    # a helper process rebuilding the renderer from the snapshot's sources keeps it
    copy = Renderer(make_config(tmp_path), sources=r.snapshot.sources)
    with pytest.raises(TemplateRenderError, match="not rendered"):
        copy.render_email("t", CAMPAIGN, person(), NOW)


# -- at send time and in dry-run, through engage ----------------------------------------------


def _bio_customers(p: Project, now: datetime) -> None:
    rows = [
        {
            "id": cid,
            "email": f"{cid}@example.com",
            "timezone": "UTC",
            "email_opt_in": True,
            "sms_opt_in": False,
            "attributes": {"bio": bio},
            "created_at": now - timedelta(days=400),
        }
        for cid, bio in (("short", "tea"), ("long", "Oolong " * 3000))
    ]
    with p.engine.begin() as conn:
        conn.execute(insert(Customer), rows)


def test_an_email_over_the_cap_is_a_render_error_at_send_and_in_dry_run(
    tmp_path: Path, db_url: str
) -> None:
    with project(tmp_path, db_url) as p:
        p.settings["max_email_html_kb"] = 10
        p.write_config()
        now = datetime.now(UTC)
        _bio_customers(p, now)
        _poison(p.dir, "winback", "<p>{{ customer.attributes.get('bio', '') }}</p>")
        p.write_campaign("bios", campaign_yaml("bios", cron_at(now)))
        engage("validate", cwd=p.dir, env=p.env)  # the sample customer has no bio
        dry = json.loads(engage("dry-run", "bios", "--json", cwd=p.dir, env=p.env).stdout)
        by = {d["customer_id"]: d for d in dry["decisions"]}
        assert by["short"]["decision"] == "send"
        assert by["long"]["reason"] == "render_error"
        assert "more than max_email_html_kb=10" in by["long"]["error"]
        engage("send", "bios", "--yes", cwd=p.dir, env=p.env)
        with p.engine.connect() as conn:
            rows = dict(conn.execute(select(Message.customer_id, Message.status)).all())
            [error] = conn.execute(
                select(Message.error).where(Message.customer_id == "long")
            ).scalars()
        assert rows == {"short": "sent", "long": "render_error"}
        assert re.search(r"the HTML is 2\d\.\d KB, more than max_email_html_kb=10 \(Gmail", error)
        assert len(p.fake.requests) == 1


# -- the daemon never jams --------------------------------------------------------------------


def test_hot_reload_of_a_template_that_hangs_keeps_the_last_good_one(tmp_path: Path) -> None:
    with project(tmp_path, f"sqlite:///{tmp_path / 'engage.db'}") as p:
        p.settings["template_check"] = {"timeout": "1s"}
        p.write_config()
        p.add_customers(5)
        later = cron_at(datetime.now(UTC) + timedelta(hours=12))
        p.write_campaign("alpha", campaign_yaml("alpha", later))
        d = p.start()
        wait_for("start-up", lambda: d.named("daemon_started"), daemons=[d])
        _poison(p.dir, "winback", HANG)
        kept = wait_for(
            "templates kept", lambda: d.named("templates_kept"), timeout=30, daemons=[d]
        )
        assert "took longer than 1s" in kept[0]["reason"]
        # the daemon keeps working with the last good templates
        p.write_campaign("alpha", campaign_yaml("alpha", cron_at(datetime.now(UTC))))
        wait_for("alpha sent", lambda: p.counts().get("sent") == 5, timeout=30, daemons=[d])
        assert p.stop(d) == 0


def test_a_template_over_budget_at_start_up_is_quarantined(tmp_path: Path) -> None:
    with project(tmp_path, f"sqlite:///{tmp_path / 'engage.db'}") as p:
        p.settings["template_check"] = {"timeout": "1s"}
        p.write_config()
        p.add_customers(5)
        slow = p.dir / "templates" / "slow"
        slow.mkdir()
        for name in ("subject.j2", "email.html.j2"):
            (slow / name).write_text((p.dir / "templates" / "winback" / name).read_text())
        _poison(p.dir, "slow", HANG)
        now = cron_at(datetime.now(UTC))
        p.write_campaign("good", campaign_yaml("good", now))
        p.write_campaign("stuck", campaign_yaml("stuck", now).replace("winback", "slow"))
        d = p.start()
        wait_for(
            "both done",
            lambda: p.counts() == {"sent": 5, "render_error": 5},
            timeout=60,
            daemons=[d],
        )
        problems = [e["msg"] for e in d.named("template_problem")]
        assert any("templates/slow/email.html.j2" in m and "longer than 1s" in m for m in problems)
        with p.engine.connect() as conn:
            errors = set(
                conn.execute(select(Message.error).where(Message.campaign == "stuck")).scalars()
            )
        assert len(errors) == 1 and "not rendered: rendering the email" in errors.pop()
        assert p.stop(d) == 0
