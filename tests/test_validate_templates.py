"""`engage validate` renders every template: sandbox escapes and missing variables fail it."""

from __future__ import annotations

from pathlib import Path

from engage.campaigns.validate import validate_path

from .helpers import make_config


def _project(tmp_path: Path) -> Path:
    make_config(tmp_path)  # copies the repo's campaigns/ and templates/
    (tmp_path / "config.yaml").write_text(
        "shop: {name: T, postal_address: '1 Main St, Town'}\npublic_url: https://e.test\n"
    )
    return tmp_path / "config.yaml"


def test_shipped_project_validates(tmp_path: Path) -> None:
    report = validate_path(_project(tmp_path))
    assert report.ok, [str(p) for p in report.problems]
    assert report.campaigns == 4


def test_python_internals_and_file_reads_are_rejected(tmp_path: Path) -> None:
    cfg = _project(tmp_path)
    evil = tmp_path / "templates" / "winback" / "subject.j2"
    evil.write_text("{{ ''.__class__.__mro__ }}")
    html = tmp_path / "templates" / "vip-thanks" / "email.html.j2"
    html.write_text("{% include '/etc/passwd' %}{{ unsubscribe_url }}")
    report = validate_path(cfg)
    assert not report.ok
    text = "\n".join(str(p) for p in report.errors)
    assert "templates/winback/subject.j2:1" in text and "__class__" in text
    assert "templates/vip-thanks/email.html.j2" in text
    assert "root:" not in text  # the file was never read


def test_missing_variable_is_found_before_the_campaign_runs(tmp_path: Path) -> None:
    cfg = _project(tmp_path)
    sms = tmp_path / "templates" / "winback" / "sms.j2"
    sms.write_text("Hi {{ customer.frist_name }}, come back!")
    report = validate_path(cfg)
    assert any("sms.j2:1" in str(p) and "frist_name" in str(p) for p in report.errors)
