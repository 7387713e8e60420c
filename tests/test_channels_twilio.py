"""The twilio channel, driven through the real Twilio SDK against FakeTwilio."""

from __future__ import annotations

import base64
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from engage.config import Config, load_config
from engage.delivery.channels import build_channel
from engage.delivery.channels.base import Outgoing
from engage.delivery.channels.twilio import RedirectingHttpClient
from engage.errors import (
    AmbiguousSendError,
    ConfigError,
    PermanentSendError,
    ProviderAuthError,
    TransientSendError,
)
from engage.testing import FakeTwilio

SID = "AC" + "1234abcd" * 4
TOKEN = "tw-secret-token-5e8f"
TO = "+15551234567"


def make_config(
    tmp_path: Path, url: str, *, env: dict[str, str] | None = None, **twilio: object
) -> Config:
    settings = {"api_base": url, **twilio}
    if "messaging_service_sid" not in settings:
        settings.setdefault("from_number", "+15557654321")
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"channels": {"sms": "twilio", "twilio": settings}})
    )
    environ = {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN} if env is None else env
    return load_config(tmp_path / "config.yaml", environ=environ)


def sms(
    message_id: int = 7,
    to: str = TO,
    text: str = "Your 500 points expire Friday. Reply STOP to opt out",
) -> Outgoing:
    return Outgoing(
        message_id=message_id, channel="sms", to=to, campaign="points-expiring", text=text
    )


@pytest.fixture
def tw():
    with FakeTwilio(account_sid=SID, auth_token=TOKEN) as fake:
        yield fake


def test_sends_the_exact_form_with_basic_auth_and_keeps_the_sid(tw, tmp_path):
    config = make_config(
        tmp_path, tw.url, status_callback="https://engage.example.com/webhooks/twilio/status"
    )
    result = build_channel(config, "sms").send(sms())

    [req] = tw.requests
    assert (req.method, req.path) == ("POST", f"/2010-04-01/Accounts/{SID}/Messages.json")
    expected_auth = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    assert req.headers["authorization"] == expected_auth
    assert req.body == {
        "To": TO,
        "From": "+15557654321",
        "Body": "Your 500 points expire Friday. Reply STOP to opt out",
        "StatusCallback": "https://engage.example.com/webhooks/twilio/status",
    }
    assert result.provider == "twilio"
    assert result.provider_id == req.provider_id
    assert result.provider_id.startswith("SM")


def test_messaging_service_instead_of_a_from_number(tw, tmp_path):
    config = make_config(tmp_path, tw.url, messaging_service_sid="MG" + "0" * 32)
    build_channel(config, "sms").send(sms(text="Hi"))
    assert tw.requests[0].body == {"To": TO, "Body": "Hi", "MessagingServiceSid": "MG" + "0" * 32}


def test_21610_unsubscribed_recipient_suppresses_sms(tw, tmp_path):
    channel = build_channel(make_config(tmp_path, tw.url), "sms")
    tw.script(400, code=21610)
    with pytest.raises(PermanentSendError) as info:
        channel.send(sms())
    assert info.value.code == "21610"
    assert info.value.suppress_reason == "sms_stop"


def test_rfc9457_service_errors_are_mapped_too(tw, tmp_path):
    """twilio >= 9.10 raises TwilioServiceException (not a TwilioRestException) for these."""
    channel = build_channel(make_config(tmp_path, tw.url), "sms")
    problem = {
        "type": "https://www.twilio.com/docs/errors/21610",
        "title": "Attempt to send to unsubscribed recipient",
        "status": 400,
        "code": 21610,
    }
    tw.script(400, body=problem)
    with pytest.raises(PermanentSendError) as info:
        channel.send(sms())
    assert (info.value.code, info.value.suppress_reason) == ("21610", "sms_stop")


@pytest.mark.parametrize("code", [21211, 21614])
def test_invalid_numbers_suppress_as_invalid_address(tw, tmp_path, code):
    channel = build_channel(make_config(tmp_path, tw.url), "sms")
    tw.script(400, code=code, message=f"The 'To' number {TO} is not a valid phone number.")
    with pytest.raises(PermanentSendError) as info:
        channel.send(sms())
    assert info.value.code == str(code)
    assert info.value.suppress_reason == "invalid_address"
    assert TO not in str(info.value)  # PII masked


def test_fake_rejects_a_malformed_number_like_twilio(tw, tmp_path):
    channel = build_channel(make_config(tmp_path, tw.url), "sms")
    with pytest.raises(PermanentSendError) as info:
        channel.send(sms(to="555-CALL-NOW"))
    assert (info.value.code, info.value.suppress_reason) == ("21211", "invalid_address")


def test_20429_is_transient(tw, tmp_path):
    channel = build_channel(make_config(tmp_path, tw.url), "sms")
    tw.script(400, code=20429)
    with pytest.raises(TransientSendError) as info:
        channel.send(sms())
    assert info.value.code == "20429"


def test_http_429_with_retry_after_is_transient(tw, tmp_path):
    channel = build_channel(make_config(tmp_path, tw.url), "sms")
    tw.script(429, retry_after=3)
    with pytest.raises(TransientSendError) as info:
        channel.send(sms())
    assert info.value.retry_after == 3.0
    assert channel.send(sms(8)).provider_id  # back to normal


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_transient(tw, tmp_path, status):
    channel = build_channel(make_config(tmp_path, tw.url), "sms")
    tw.script(status, code=30001)
    with pytest.raises(TransientSendError):
        channel.send(sms())


def test_other_client_errors_are_permanent_without_suppression(tw, tmp_path):
    channel = build_channel(make_config(tmp_path, tw.url), "sms")
    tw.script(400, code=21408, message="Permission to send an SMS has not been enabled")
    with pytest.raises(PermanentSendError) as info:
        channel.send(sms())
    assert info.value.code == "21408"
    assert info.value.suppress_reason is None


def test_wrong_credentials_are_an_auth_error_and_never_echoed(tmp_path):
    wrong = "tw-wrong-token-0000"
    with FakeTwilio(account_sid=SID, auth_token=TOKEN) as tw:
        config = make_config(
            tmp_path, tw.url, env={"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": wrong}
        )
        channel = build_channel(config, "sms")
        with pytest.raises(ProviderAuthError) as info:
            channel.send(sms())
    assert tw.requests[0].status == 401
    assert info.value.code == "20003"
    for text in (str(info.value), repr(info.value), repr(channel)):
        assert wrong not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_hanging_provider_hits_the_timeout_and_may_have_the_message(tw, tmp_path):
    channel = build_channel(make_config(tmp_path, tw.url, timeout=0.5), "sms")
    tw.script("hang", seconds=30)
    started = time.monotonic()
    with pytest.raises(AmbiguousSendError) as info:
        channel.send(sms())
    assert info.value.code == "timeout"
    assert time.monotonic() - started < 5  # the SDK's default would wait 30 s
    assert len(tw.requests) == 1


def test_an_answer_after_the_timeout_or_a_drop_is_ambiguous(tw, tmp_path):
    channel = build_channel(make_config(tmp_path, tw.url, timeout=0.3), "sms")
    tw.script(201, delay=1.0)
    with pytest.raises(AmbiguousSendError) as late:
        channel.send(sms())
    tw.script("drop")
    with pytest.raises(AmbiguousSendError) as dropped:
        channel.send(sms(8))
    assert (late.value.code, dropped.value.code) == ("timeout", "network")
    assert TO not in str(dropped.value)
    assert channel.send(sms(9)).provider_id
    deadline = time.monotonic() + 5
    while len(tw.requests) < 3 and time.monotonic() < deadline:  # the late answer is logged
        time.sleep(0.05)
    assert sorted(r.status or 0 for r in tw.requests) == [0, 201, 201]


def test_a_connect_timeout_is_transient_and_marked_not_sent(tmp_path):
    from .test_channels_sendgrid import full_backlog

    with full_backlog() as url:
        channel = build_channel(make_config(tmp_path, url, timeout=0.3), "sms")
        with pytest.raises(TransientSendError) as info:
            channel.send(sms())
    assert info.value.code == "connect"


def test_unreachable_host_is_transient_and_marked_not_sent(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    channel = build_channel(make_config(tmp_path, f"http://127.0.0.1:{port}"), "sms")
    with pytest.raises(TransientSendError) as info:
        channel.send(sms())
    assert info.value.code == "connect"


def test_twilio_edge_and_region_in_the_environment_are_ignored(tw, tmp_path, monkeypatch):
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    channel = build_channel(make_config(tmp_path, tw.url), "sms")
    assert channel.send(sms()).provider_id
    assert len(tw.requests) == 1


def test_regional_hosts_are_rewritten_to_api_base():
    http = RedirectingHttpClient("http://127.0.0.1:8080/proxy/", timeout=1)
    path = f"/2010-04-01/Accounts/{SID}/Messages.json"
    for host in ("api.twilio.com", "api.us1.twilio.com", "api.dublin.ie1.twilio.com"):
        assert http.rewrite(f"https://{host}{path}?x=1") == f"http://127.0.0.1:8080/proxy{path}?x=1"
    other = "https://messaging.twilio.com/v1/Services"
    assert http.rewrite(other) == other
    http.close()


def test_missing_secrets_are_config_errors_naming_the_variables(tmp_path):
    config = make_config(tmp_path, "http://127.0.0.1:9", env={})
    with pytest.raises(ConfigError) as info:
        build_channel(config, "sms")
    assert "TWILIO_ACCOUNT_SID" in str(info.value) and "TWILIO_AUTH_TOKEN" in str(info.value)
    config = make_config(tmp_path, "http://127.0.0.1:9", env={"TWILIO_ACCOUNT_SID": SID})
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN") as info:
        build_channel(config, "sms")
    assert "TWILIO_ACCOUNT_SID" not in str(info.value)


def test_a_sender_is_required(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"channels": {"sms": "twilio"}}))
    config = load_config(
        tmp_path / "config.yaml", environ={"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN}
    )
    with pytest.raises(ConfigError, match="from_number or messaging_service_sid"):
        build_channel(config, "sms")


def test_concurrent_sends_from_8_threads_arrive_once(tw, tmp_path):
    channel = build_channel(make_config(tmp_path, tw.url), "sms")
    results: dict[int, str | None] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(ids: range) -> None:
        for i in ids:
            try:
                r = channel.send(sms(i, to=f"+1555000{i:04d}", text=f"msg {i}"))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                continue
            with lock:
                results[i] = r.provider_id

    threads = [
        threading.Thread(target=worker, args=(range(t * 25, t * 25 + 25),)) for t in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    channel.close()
    assert errors == []
    bodies = sorted(int(r.body["Body"].split()[1]) for r in tw.requests)
    assert bodies == list(range(200))
    for r in tw.requests:
        i = int(r.body["Body"].split()[1])
        assert r.body["To"] == f"+1555000{i:04d}"
        assert results[i] == r.provider_id
    assert len(set(results.values())) == 200
