"""Campaign files: the schema, located errors (all at once), and ``engage validate``.

Every test writes real YAML files into a temporary project and reads them
through the real loader; error messages are compared in full, because
``file:line:col: field: message`` is what a marketer acts on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from engage.campaigns.loader import (
    check_campaigns,
    collect_campaigns,
    load_campaign_file,
    load_campaigns,
)
from engage.campaigns.schema import Campaign
from engage.campaigns.validate import validate_path, validate_project
from engage.config import Config, load_config
from engage.errors import ValidationFailed

from .installed import ENGAGE as INSTALLED_ENGAGE

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ("winback", "points-expiring", "vip-thanks")

GOOD = """\
name: winback
schedule:
  cron: "0 10 * * *"
  timezone: America/New_York
audience:
  quiet_for: 30d
channels: [email]
template: winback
"""


class Project:
    """A temporary project folder: config.yaml, campaigns/, templates/<name>/."""

    def __init__(self, root: Path):
        self.root = root
        (root / "campaigns").mkdir()
        # the real example templates: `validate` renders them too
        shutil.copytree(ROOT / "templates", root / "templates")
        (root / "config.yaml").write_text(
            "timezone: Europe/Paris\npublic_url: https://engage.test\n"
            "shop: {name: Test, postal_address: '1 Main St, Town'}\n"
        )

    @property
    def config(self) -> Config:
        return load_config(self.root / "config.yaml")

    def write(self, name: str, text: str) -> Path:
        path = self.root / "campaigns" / name
        path.write_text(textwrap.dedent(text))
        return path

    def problems(self) -> list[str]:
        return [str(p) for p in check_campaigns(self.config)]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(tmp_path)  # messages show paths relative to here
    return Project(tmp_path)


def replace(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


# ------------------------------------------------------------------ good files


def test_a_full_campaign_loads_with_every_field(project: Project) -> None:
    project.write(
        "winback.yaml",
        """\
        name: winback-30d
        description: We miss you
        enabled: true
        schedule:
          cron: "0 10 * * *"
          timezone: America/New_York
          start: 2026-01-01
          end: null
        audience:
          quiet_for: 30d
          active_within: P365D
          points_expiring_within: 2w
          min_expiring_points: 100
          min_points_balance: 0
          min_orders: 1
          max_orders: 10
          min_lifetime_value: 99.90
          tiers: [silver, gold]
          where: {country: [US, CA], vip: true, visits: 3, score: 0.5}
          signed_up_within: 12h
          last_order_within: 90m
        channels: [email, sms]
        template: winback
        reentry: 14d
        holdout: 10%
        priority: 70
        send_window: {start: "09:00", end: "20:00"}
        exempt_from_frequency_cap: true
        utm: {source: engage, medium: email, campaign: winback-30d}
        transactional: false
        """,
    )
    [c] = load_campaigns(project.config)
    assert c.name == "winback-30d"
    assert c.schedule.start == date(2026, 1, 1) and c.schedule.end is None
    a = c.audience
    assert a.quiet_for == timedelta(days=30) and a.active_within == timedelta(days=365)
    assert a.points_expiring_within == timedelta(weeks=2) and a.min_expiring_points == 100
    assert a.signed_up_within == timedelta(hours=12)
    assert a.last_order_within == timedelta(minutes=90)
    assert a.min_lifetime_value == Decimal("99.90")
    # The SQL compiler dispatches on the Python type of each value: keep them.
    assert a.where == {"country": ["US", "CA"], "vip": True, "visits": 3, "score": 0.5}
    assert [type(v) for v in a.where.values()] == [list, bool, int, float]
    assert c.reentry == timedelta(days=14) and c.holdout == pytest.approx(0.10)
    assert c.send_window is not None and str(c.send_window.start) == "09:00:00"
    assert c.path == project.root / "campaigns" / "winback.yaml"


def test_defaults_name_from_file_and_timezone_from_config(project: Project) -> None:
    project.write(
        "points.yaml",
        """\
        schedule: {cron: "30 9 * * *"}
        audience: {}
        channels: [sms]
        template: points-expiring
        """,
    )
    [c] = load_campaigns(project.config)
    assert c.name == "points"
    assert c.schedule.timezone == "Europe/Paris"
    assert c.reentry == "after_activity" and c.holdout == 0 and c.priority == 50
    assert c.enabled and not c.transactional and c.marketing
    assert c.audience.model_dump(exclude_none=True) == {}  # empty audience: everyone


@pytest.mark.parametrize(
    ("written", "share"), [("10%", 0.1), ('"10%"', 0.1), ("0.1", 0.1), ("0", 0.0), ("2.5%", 0.025)]
)
def test_holdout_spellings(project: Project, written: str, share: float) -> None:
    project.write("winback.yaml", GOOD + f"holdout: {written}\n")
    assert load_campaigns(project.config)[0].holdout == pytest.approx(share)


@pytest.mark.parametrize(
    ("written", "value"),
    [("once", "once"), ("after_activity", "after_activity"), ("2w", timedelta(weeks=2))],
)
def test_reentry_spellings(project: Project, written: str, value: object) -> None:
    project.write("winback.yaml", GOOD + f"reentry: {written}\n")
    assert load_campaigns(project.config)[0].reentry == value


def test_campaigns_are_sorted_by_name_and_yml_counts(project: Project) -> None:
    project.write("b.yaml", replace(GOOD, "name: winback", "name: zeta"))
    project.write("a.yml", replace(GOOD, "name: winback", "name: alpha"))
    project.write(".draft.yaml", "not: [valid")  # hidden files are ignored
    assert [c.name for c in load_campaigns(project.config)] == ["alpha", "zeta"]


def test_the_example_campaigns_in_the_repo_load(project: Project) -> None:
    shutil.rmtree(project.root / "campaigns")
    shutil.copytree(ROOT / "campaigns", project.root / "campaigns")
    if all((ROOT / "templates" / t).is_dir() for t in TEMPLATES):  # the real ones, when present
        shutil.rmtree(project.root / "templates")
        shutil.copytree(ROOT / "templates", project.root / "templates")
    campaigns = {c.name: c for c in load_campaigns(project.config)}
    assert sorted(campaigns) == [
        "detractor-recovery", "points-expiring", "vip-thanks", "winback-30d"
    ]

    winback = campaigns["winback-30d"]
    assert winback.audience.quiet_for == timedelta(days=30)
    assert winback.audience.active_within == timedelta(days=365)
    assert winback.audience.min_orders == 1
    assert winback.channels == ["email", "sms"] and winback.template == "winback"
    assert winback.reentry == "after_activity" and winback.holdout == pytest.approx(0.1)

    points = campaigns["points-expiring"]
    assert points.audience.points_expiring_within == timedelta(days=14)
    assert points.audience.min_expiring_points == 100
    assert points.channels == ["email", "sms"] and points.template == "points-expiring"
    assert points.reentry == timedelta(days=14) and points.priority == 80

    vip = campaigns["vip-thanks"]
    assert vip.audience.tiers == ["gold", "platinum"]
    assert vip.audience.last_order_within == timedelta(days=30)
    assert vip.channels == ["email"] and vip.template == "vip-thanks"
    assert vip.reentry == "once" and vip.priority == 30

    detractors = campaigns["detractor-recovery"]
    assert detractors.audience.nps_at_most == 6 and detractors.audience.nps_at_least is None
    assert detractors.audience.nps_within == timedelta(days=90)
    assert detractors.channels == ["sms", "email"] and detractors.template == "detractor-recovery"
    assert detractors.holdout == pytest.approx(0.2) and detractors.reentry == timedelta(days=90)


def test_the_json_schema_has_no_path() -> None:
    schema = Campaign.model_json_schema()
    assert "path" not in schema["properties"]
    assert {"schedule", "audience", "channels", "template"} <= set(schema["required"])


# ------------------------------------------------------------------ bad files


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "quiet_for: 30d",
            "quiet_for: thirty",
            "campaigns/winback.yaml:6:14: audience.quiet_for: not a duration: 'thirty' "
            "(use 30d, 12h, 2w, 90m or ISO-8601 like P30D)",
        ),
        (
            "quiet_for: 30d",
            "quiet_for: -3d",
            "campaigns/winback.yaml:6:14: audience.quiet_for: not a duration: '-3d' "
            "(use 30d, 12h, 2w, 90m or ISO-8601 like P30D)",
        ),
        (
            "quiet_for: 30d",
            "quiet_for: 0d",
            "campaigns/winback.yaml:6:14: audience.quiet_for: must be a positive duration",
        ),
        (
            "quiet_for: 30d",
            "quiet_fr: 30d",
            "campaigns/winback.yaml:6:3: audience.quiet_fr: unknown key (did you mean quiet_for?)",
        ),
        (
            "template: winback",
            "template: winback\ncolour: blue",
            "campaigns/winback.yaml:9:1: colour: unknown key",
        ),
        (
            "quiet_for: 30d",
            "quiet_for: 30d\n  min_orders: many",
            "campaigns/winback.yaml:7:15: audience.min_orders: Input should be a valid integer",
        ),
        (
            "channels: [email]",
            "channels: [email, fax]",
            "campaigns/winback.yaml:7:19: channels[1]: Input should be 'email' or 'sms'",
        ),
        (
            "channels: [email]",
            "channels: email",
            "campaigns/winback.yaml:7:11: channels: Input should be a valid list",
        ),
        (
            '"0 10 * * *"',
            '"0 25 * * *"',
            "campaigns/winback.yaml:3:9: schedule.cron: bad cron '0 25 * * *': "
            "hour: 25 is out of range 0-23",
        ),
        (
            '"0 10 * * *"',
            '"0 10 * *"',
            "campaigns/winback.yaml:3:9: schedule.cron: bad cron '0 10 * *': expected 5 fields "
            "(minute hour day-of-month month day-of-week), got 4",
        ),
        (
            "template: winback",
            "template: winbak",
            "campaigns/winback.yaml:8:11: template: unknown template 'winbak': no folder "
            "templates/winbak "
            "(known: detractor-recovery, points-expiring, vip-thanks, winback)",
        ),
        (
            "America/New_York",
            "Mars/Olympus",
            "campaigns/winback.yaml:4:13: schedule.timezone: unknown time zone 'Mars/Olympus' "
            "(use an IANA name such as Europe/Paris)",
        ),
        (
            "schedule:\n",
            "path: /etc/passwd\nschedule:\n",
            "campaigns/winback.yaml:2:1: path: unknown key",
        ),
        (
            "template: winback",
            "template: winback\nholdout: 10",
            "campaigns/winback.yaml:9:10: holdout: must be at least 0% and below 100% "
            "(write 10% or 0.1, not 10), got 10",
        ),
        (
            "template: winback",
            "template: winback\nreentry: sometimes",
            "campaigns/winback.yaml:9:10: reentry: expected once, after_activity or a duration "
            "such as 14d, got 'sometimes'",
        ),
        (
            "template: winback",
            "template: winback\nutm: {sorce: engage}",
            "campaigns/winback.yaml:9:6: utm: unknown UTM parameter 'sorce' "
            "(use source, medium, campaign, term, content)",
        ),
        (
            "  timezone: America/New_York",
            "  timezone: America/New_York\n  start: 2026-02-30",
            "campaigns/winback.yaml:5:10: schedule.start: not a date: '2026-02-30' "
            "(use YYYY-MM-DD)",
        ),
    ],
)
def test_each_mistake_is_reported_at_its_place(
    project: Project, old: str, new: str, expected: str
) -> None:
    project.write("winback.yaml", replace(GOOD, old, new))
    assert project.problems() == [expected]
    with pytest.raises(ValidationFailed) as info:
        load_campaigns(project.config)
    assert str(info.value) == expected


def test_yaml_syntax_error(project: Project) -> None:
    project.write("winback.yaml", replace(GOOD, "  timezone", " timezone"))
    assert project.problems() == [
        "campaigns/winback.yaml:4:2: invalid YAML: while parsing a block mapping: "
        "expected <block end>, but found '<block mapping start>'"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "campaigns/winback.yaml:1:1: empty campaign file"),
        (
            "- a list\n",
            "campaigns/winback.yaml:1:1: a campaign file must be a mapping "
            "(name:, schedule:, audience:, ...)",
        ),
    ],
)
def test_files_that_are_not_a_mapping(project: Project, text: str, expected: str) -> None:
    project.write("winback.yaml", text)
    assert project.problems() == [expected]


def test_missing_keys_are_required(project: Project) -> None:
    project.write("winback.yaml", "name: winback\n")
    assert project.problems() == [
        "campaigns/winback.yaml:1:1: schedule: required",
        "campaigns/winback.yaml:1:1: audience: required",
        "campaigns/winback.yaml:1:1: channels: required",
        "campaigns/winback.yaml:1:1: template: required",
    ]


def test_an_empty_audience_must_be_explicit(project: Project) -> None:
    project.write("winback.yaml", replace(GOOD, "audience:\n  quiet_for: 30d\n", "audience:\n"))
    assert project.problems() == [
        "campaigns/winback.yaml:5:10: audience: empty: list conditions, "
        "or write audience: {} to target everyone"
    ]


def test_a_bad_file_name_explains_where_the_name_came_from(project: Project) -> None:
    project.write("Win Back.yaml", replace(GOOD, "name: winback\n", ""))
    assert project.problems() == [
        "campaigns/Win Back.yaml:1:1: name: 'Win Back' is not a valid name (lowercase letters, "
        "digits, - and _, starting with a letter or digit, at most 100 characters) "
        "(taken from the file name; rename the file or set name:)"
    ]


@pytest.mark.parametrize(
    ("audience", "expected"),
    [
        (
            "min_orders: 3\n  max_orders: 1",
            "campaigns/winback.yaml:7:15: audience.max_orders: must be at least min_orders (3)",
        ),
        (
            "min_expiring_points: 50",
            "campaigns/winback.yaml:6:24: audience.min_expiring_points: "
            "only valid together with points_expiring_within",
        ),
        (
            "min_expiring_points: 0\n  points_expiring_within: 14d",
            "campaigns/winback.yaml:6:24: audience.min_expiring_points: "
            "Input should be greater than or equal to 1",
        ),
        (
            "quiet_for: 30d\n  active_within: 30d",
            "campaigns/winback.yaml:7:18: audience.active_within: must be longer than quiet_for "
            "(30d), or nobody can match",
        ),
        (
            "tiers: []",
            "campaigns/winback.yaml:6:10: audience.tiers: an empty list matches nobody "
            "(leave tiers out to allow any tier)",
        ),
        (
            "where: {country: []}",
            "campaigns/winback.yaml:6:10: audience.where: country: an empty list matches nobody",
        ),
        (
            "where: {country: {us: 1}}",
            "campaigns/winback.yaml:6:10: audience.where: country: expected text, a number, "
            "true/false or a list of those, got {'us': 1}",
        ),
        (
            "min_lifetime_value: lots",
            "campaigns/winback.yaml:6:23: audience.min_lifetime_value: "
            "expected an amount such as 250 or 99.90, got 'lots'",
        ),
        (
            "nps_at_most: 11",
            "campaigns/winback.yaml:6:16: audience.nps_at_most: "
            "Input should be less than or equal to 10",
        ),
        (
            "nps_at_least: -1",
            "campaigns/winback.yaml:6:17: audience.nps_at_least: "
            "Input should be greater than or equal to 0",
        ),
        (
            "nps_at_most: low",
            "campaigns/winback.yaml:6:16: audience.nps_at_most: Input should be a valid integer",
        ),
        (
            "nps_at_most: 6\n  nps_at_least: 9",
            "campaigns/winback.yaml:7:17: audience.nps_at_least: "
            "must be at most nps_at_most (6), or nobody can match",
        ),
        (
            "nps_within: 90d",
            "campaigns/winback.yaml:6:15: audience.nps_within: "
            "only valid together with nps_at_most or nps_at_least",
        ),
        (
            "nps_at_most: 6\n  nps_within: 0d",
            "campaigns/winback.yaml:7:15: audience.nps_within: must be a positive duration",
        ),
    ],
)
def test_cross_field_rules_point_at_the_later_field(
    project: Project, audience: str, expected: str
) -> None:
    project.write("winback.yaml", replace(GOOD, "quiet_for: 30d", audience))
    assert project.problems() == [expected]


def test_schedule_end_before_start(project: Project) -> None:
    text = replace(GOOD, "  timezone: America/New_York", "  start: 2026-05-01\n  end: 2026-04-01")
    project.write("winback.yaml", text)
    assert project.problems() == [
        "campaigns/winback.yaml:5:8: schedule.end: end (2026-04-01) is before start (2026-05-01)"
    ]


def test_duplicate_channels_and_empty_channels(project: Project) -> None:
    project.write(
        "a.yaml", replace(GOOD, "[email]", "[sms, sms]").replace("name: winback", "name: a")
    )
    project.write("b.yaml", replace(GOOD, "[email]", "[]").replace("name: winback", "name: b"))
    assert project.problems() == [
        "campaigns/a.yaml:7:11: channels: each channel may appear only once",
        "campaigns/b.yaml:7:11: channels: list at least one channel: email, sms",
    ]


def test_duplicate_names_are_reported_at_both_places(project: Project) -> None:
    project.write("winback.yaml", GOOD)
    project.write("copy.yaml", "# a copy\n" + GOOD)
    project.write("winback.yml", replace(GOOD, "name: winback\n", ""))  # defaulted name
    assert project.problems() == [
        "campaigns/copy.yaml:2:7: name: duplicate campaign name 'winback' "
        "(also in campaigns/winback.yaml:1:7, campaigns/winback.yml:1:1)",
        "campaigns/winback.yaml:1:7: name: duplicate campaign name 'winback' "
        "(also in campaigns/copy.yaml:2:7, campaigns/winback.yml:1:1)",
        "campaigns/winback.yml:1:1: name: duplicate campaign name 'winback' "
        "(also in campaigns/copy.yaml:2:7, campaigns/winback.yaml:1:7)",
    ]
    assert collect_campaigns(project.config).campaigns == []


def test_every_error_of_every_file_at_once(project: Project) -> None:
    project.write("a.yaml", replace(GOOD, "name: winback", "name: a").replace("30d", "thirty"))
    project.write("good.yaml", replace(GOOD, "name: winback", "name: fine"))
    project.write(
        "z.yaml",
        replace(GOOD, "name: winback", "name: z")
        .replace('"0 10 * * *"', '"0 10 * * 9"')
        .replace("template: winback", "template: nope\nextra: 1"),
    )
    expected = [
        "campaigns/a.yaml:6:14: audience.quiet_for: not a duration: 'thirty' "
        "(use 30d, 12h, 2w, 90m or ISO-8601 like P30D)",
        "campaigns/z.yaml:3:9: schedule.cron: bad cron '0 10 * * 9': "
        "day-of-week: 9 is out of range 0-7",
        "campaigns/z.yaml:8:11: template: unknown template 'nope': no folder templates/nope "
        "(known: detractor-recovery, points-expiring, vip-thanks, winback)",
        "campaigns/z.yaml:9:1: extra: unknown key",
    ]
    with pytest.raises(ValidationFailed) as info:
        load_campaigns(project.config)
    assert [str(p) for p in info.value.problems] == expected
    assert str(info.value) == "\n".join(expected)
    # The daemon keeps running what is good.
    result = collect_campaigns(project.config)
    assert [c.name for c in result.campaigns] == ["fine"]
    assert [p.name for p in result.failed_files] == ["a.yaml", "z.yaml"]


def test_load_campaign_file_and_absolute_paths_outside_cwd(
    project: Project, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = project.write("winback.yaml", replace(GOOD, "30d", "soon"))
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    with pytest.raises(ValidationFailed) as info:
        load_campaign_file(path, project.config)
    assert str(info.value).startswith(f"{path}:6:14: audience.quiet_for: not a duration: 'soon'")
    path.write_text(GOOD)
    assert load_campaign_file(path, project.config).name == "winback"


def test_missing_folders(project: Project) -> None:
    shutil.rmtree(project.root / "templates")
    shutil.rmtree(project.root / "campaigns")
    assert [str(p) for p in validate_project(project.config)] == [
        "templates: templates folder not found",
        "campaigns: campaigns folder not found",
    ]
    (project.root / "campaigns").mkdir()
    project.write("winback.yaml", GOOD)
    assert project.problems() == [
        "campaigns/winback.yaml:8:11: template: unknown template 'winback': "
        "the templates folder templates does not exist"
    ]


def test_validate_path_reports_a_bad_config_file(project: Project) -> None:
    (project.root / "config.yaml").write_text("timezone: Mars/Olympus\n")
    report = validate_path(project.root / "config.yaml")
    assert not report.ok
    assert [str(p) for p in report.problems] == [
        f"{project.root / 'config.yaml'}:1:11: timezone: unknown time zone 'Mars/Olympus' "
        "(use an IANA name such as Europe/Paris)"
    ]
    assert report.summary() == "1 error"


def test_a_removed_setting_says_what_became_of_it(project: Project) -> None:
    (project.root / "config.yaml").write_text("dispatch:\n  helper_process: true\n")
    report = validate_path(project.root / "config.yaml")
    assert [str(p) for p in report.problems] == [
        f"{project.root / 'config.yaml'}:2:3: dispatch.helper_process: removed: dispatch now "
        "hides provider latency with dispatch.workers requests in flight in one process "
        "(docs/operations.md); delete this line"
    ]


# ------------------------------------------------------------- engage validate


def engage(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    env["ENGAGE_SECRET_KEY"] = "test-secret-key-0123456789abcdef"
    return subprocess.run(
        [INSTALLED_ENGAGE, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_validate_good_project(project: Project) -> None:
    project.write("winback.yaml", GOOD)
    project.write("points.yaml", replace(GOOD, "name: winback", "name: points"))
    run = engage(project.root, "validate")
    assert (run.returncode, run.stdout, run.stderr) == (0, "2 campaigns OK\n", "")
    run = engage(project.root, "validate", "--json")
    assert run.returncode == 0 and json.loads(run.stdout) == []


def test_cli_validate_bad_project(project: Project) -> None:
    project.write("winback.yaml", replace(GOOD, "quiet_for: 30d", "quiet_fr: 30d"))
    project.write("syntax.yaml", "name: [unclosed\n")
    run = engage(project.root, "validate")
    assert run.returncode == 1
    assert run.stdout.splitlines() == [
        "campaigns/syntax.yaml:2:1: invalid YAML: while parsing a flow sequence: "
        "expected ',' or ']', but got '<stream end>'",
        "campaigns/winback.yaml:6:3: audience.quiet_fr: unknown key (did you mean quiet_for?)",
        "2 errors",
    ]
    assert "Traceback" not in run.stderr
    run = engage(project.root, "validate", "--json")
    assert run.returncode == 1
    problems = json.loads(run.stdout)
    assert problems[1] == {
        "path": "campaigns/winback.yaml",
        "line": 6,
        "col": 3,
        "field": "audience.quiet_fr",
        "message": "unknown key (did you mean quiet_for?)",
        "severity": "error",
    }


def test_cli_validate_bad_config_and_missing_config(project: Project) -> None:
    (project.root / "config.yaml").write_text("timezone: [\n")
    run = engage(project.root, "validate")
    assert run.returncode == 1
    assert run.stdout.startswith("config.yaml:2:1: invalid YAML")
    assert run.stdout.endswith("1 error\n")
    assert "Traceback" not in run.stderr
    run = engage(project.root, "--config", "nope.yaml", "validate")
    assert (run.returncode, run.stdout) == (
        1,
        "nope.yaml: config file not found: nope.yaml\n1 error\n",
    )
