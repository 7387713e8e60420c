"""The development channels (file, console) and the channel factory."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
import yaml

from engage.config import Config, load_config
from engage.delivery.channels import build_channel, build_channels
from engage.delivery.channels.base import Outgoing
from engage.delivery.channels.console import ConsoleChannel
from engage.delivery.channels.file import FileDropChannel
from engage.errors import ConfigError, PermanentSendError

UNSUB = "<https://engage.example.com/u/tok123>"


def make_config(tmp_path: Path, channels: dict, env: dict[str, str] | None = None) -> Config:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"channels": channels}))
    return load_config(tmp_path / "config.yaml", environ=env or {})


def email(message_id: int = 42, **kw: object) -> Outgoing:
    fields: dict = {
        "message_id": message_id,
        "channel": "email",
        "to": "jane@example.com",
        "campaign": "winback-30d",
        "subject": "Wir vermissen Sie, Jürgen ✨",
        "html": "<p>Come back for <b>10%</b> off</p>",
        "text": "Come back for 10% off",
        "headers": {
            "List-Unsubscribe": UNSUB,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
    fields.update(kw)
    return Outgoing(**fields)


def test_email_becomes_a_parseable_eml_with_both_parts(tmp_path):
    config = make_config(
        tmp_path,
        {
            "file": {"dir": "out/mail"},
            "sendgrid": {"from_email": "shop@example.com", "from_name": "Example Shop"},
        },
    )
    channel = build_channel(config, "email")
    result = channel.send(email())

    assert result.provider == "file"
    assert result.provider_id == "42-winback-30d-email.eml"
    path = tmp_path / "out" / "mail" / result.provider_id
    msg = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert msg["To"] == "jane@example.com"
    assert msg["From"] == "Example Shop <shop@example.com>"
    assert msg["Subject"] == "Wir vermissen Sie, Jürgen ✨"
    assert msg["Date"].datetime.tzinfo is not None
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@example.com>")
    assert msg["List-Unsubscribe"] == UNSUB
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content().strip() == "Come back for 10% off"
    assert parts[1].get_content().strip() == "<p>Come back for <b>10%</b> off</p>"
    assert [p.name for p in path.parent.iterdir()] == [result.provider_id]  # no temp files left


def test_date_comes_from_the_injected_clock(tmp_path):
    at = datetime(2026, 3, 1, 15, 30, tzinfo=UTC)
    channel = FileDropChannel(tmp_path, "email", clock=lambda: at)
    name = channel.send(email(text="")).provider_id
    msg = BytesParser(policy=policy.default).parsebytes((tmp_path / name).read_bytes())
    assert msg["Date"].datetime == at
    assert msg.get_content_type() == "text/html"  # HTML only: no empty text part


def test_sms_becomes_a_txt_with_to_and_from_lines(tmp_path):
    config = make_config(tmp_path, {"twilio": {"from_number": "+15557654321"}})
    channel = build_channel(config, "sms")
    out = Outgoing(
        message_id=7,
        channel="sms",
        to="+15551234567",
        campaign="points expiring/EU",
        text="Hi Jürgen. Reply STOP to opt out",
    )
    result = channel.send(out)
    assert result.provider_id == "7-points_expiring_EU-sms.txt"
    content = (tmp_path / "outbox" / result.provider_id).read_text()
    assert content == "To: +15551234567\nFrom: +15557654321\n\nHi Jürgen. Reply STOP to opt out\n"


def test_header_injection_is_a_permanent_error(tmp_path):
    channel = FileDropChannel(tmp_path, "email")
    with pytest.raises(PermanentSendError):
        channel.send(email(subject="Hello\nBcc: everyone@example.com"))
    assert list(tmp_path.iterdir()) == []


def test_concurrent_file_sends_from_8_threads(tmp_path):
    channel = FileDropChannel(tmp_path, "email")

    def worker(t: int) -> None:
        for i in range(t * 25, t * 25 + 25):
            channel.send(email(i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{i}-winback-30d-email.eml" for i in range(200))


def test_console_output_from_threads_does_not_interleave():
    stream = io.StringIO()
    channel = ConsoleChannel("sms", stream=stream)
    body = "line one\nline two\nline three"

    def worker(t: int) -> None:
        for i in range(t * 50, t * 50 + 50):
            channel.send(
                Outgoing(message_id=i, channel="sms", to="+15551234567", campaign="c", text=body)
            )

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    blocks = stream.getvalue().split("--- ")[1:]
    assert len(blocks) == 400
    for block in blocks:
        head, rest = block.split("\n", 1)
        assert head.startswith("sms #") and head.endswith("[c] to +15551234567")
        assert rest == body + "\n"


def test_console_email_shows_subject_and_unsubscribe(capsys):
    result = ConsoleChannel("email").send(email())
    out = capsys.readouterr().out
    assert "Subject: Wir vermissen Sie" in out and f"List-Unsubscribe: {UNSUB}" in out
    assert result.provider_id == "console-42"


def test_factory_defaults_to_file_channels(tmp_path):
    channels = build_channels(make_config(tmp_path, {}))
    assert {k: (c.provider, c.kind) for k, c in channels.items()} == {
        "email": ("file", "email"),
        "sms": ("file", "sms"),
    }


def test_factory_builds_console_and_providers(tmp_path):
    env = {"SENDGRID_API_KEY": "SG.x", "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t"}
    config = make_config(
        tmp_path,
        {"email": "sendgrid", "sms": "twilio", "twilio": {"from_number": "+15557654321"}},
        env,
    )
    channels = build_channels(config)
    assert (channels["email"].provider, channels["sms"].provider) == ("sendgrid", "twilio")
    assert build_channel(make_config(tmp_path, {"sms": "console"}), "sms").provider == "console"


def test_factory_reports_every_missing_secret_at_once(tmp_path):
    config = make_config(
        tmp_path, {"email": "sendgrid", "sms": "twilio", "twilio": {"from_number": "+15557654321"}}
    )
    with pytest.raises(ConfigError) as info:
        build_channels(config)
    for name in ("SENDGRID_API_KEY", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        assert name in str(info.value)
