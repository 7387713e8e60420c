"""The sendgrid channel, driven through the real SendGrid SDK against FakeSendGrid."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from engage.config import Config, load_config
from engage.delivery.channels import build_channel
from engage.delivery.channels.base import Outgoing
from engage.errors import (
    AmbiguousSendError,
    ConfigError,
    PermanentSendError,
    ProviderAuthError,
    TransientSendError,
)
from engage.testing import FakeSendGrid

KEY = "SG.test-key-7f3a"


def make_config(tmp_path: Path, url: str, *, key: str | None = KEY, **sendgrid: object) -> Config:
    settings = {"api_host": url, "from_email": "shop@example.com", **sendgrid}
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"channels": {"email": "sendgrid", "sendgrid": settings}})
    )
    env = {"SENDGRID_API_KEY": key} if key else {}
    return load_config(tmp_path / "config.yaml", environ=env)


def email(message_id: int = 42, to: str = "jane@example.com", **kw: object) -> Outgoing:
    fields: dict = {
        "message_id": message_id,
        "channel": "email",
        "to": to,
        "campaign": "winback-30d",
        "subject": "We miss you, Jane",
        "html": "<p>Come back for <b>10%</b> off</p>",
        "text": "Come back for 10% off",
        "headers": {
            "List-Unsubscribe": "<https://engage.example.com/u/tok123>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
    fields.update(kw)
    return Outgoing(**fields)


@contextmanager
def full_backlog() -> Iterator[str]:
    """A URL whose server never accepts: its listen queue is full, so a new
    connection attempt waits for the SYN-ACK until the client's timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue (Linux admits backlog + 1)
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(server.getsockname())
            fillers.append(c)
        time.sleep(0.1)
        yield "http://{}:{}".format(*server.getsockname())
    finally:
        for c in fillers:
            c.close()
        server.close()


@pytest.fixture
def sg():
    with FakeSendGrid(api_key=KEY) as fake:
        yield fake


def test_sends_the_exact_v3_payload_and_keeps_the_message_id(sg, tmp_path):
    config = make_config(
        tmp_path,
        sg.url,
        from_name="Example Shop",
        reply_to="help@example.com",
        categories=["marketing"],
    )
    channel = build_channel(config, "email")
    result = channel.send(email())

    [req] = sg.requests
    assert (req.method, req.path) == ("POST", "/v3/mail/send")
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.body == {
        "personalizations": [{"to": [{"email": "jane@example.com"}]}],
        "from": {"email": "shop@example.com", "name": "Example Shop"},
        "reply_to": {"email": "help@example.com"},
        "subject": "We miss you, Jane",
        "content": [
            {"type": "text/plain", "value": "Come back for 10% off"},
            {"type": "text/html", "value": "<p>Come back for <b>10%</b> off</p>"},
        ],
        "headers": {
            "List-Unsubscribe": "<https://engage.example.com/u/tok123>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        "custom_args": {"engage_message_id": "42"},
        "categories": ["engage", "winback-30d", "marketing"],
    }
    assert result.provider == "sendgrid"
    assert result.provider_id == req.provider_id and result.provider_id


def test_html_only_email_and_sandbox_mode(sg, tmp_path):
    channel = build_channel(make_config(tmp_path, sg.url, sandbox_mode=True), "email")
    channel.send(email(text=""))
    body = sg.requests[0].body
    assert body["content"] == [
        {"type": "text/html", "value": "<p>Come back for <b>10%</b> off</p>"}
    ]
    assert body["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert "reply_to" not in body and body["from"] == {"email": "shop@example.com"}


def test_429_with_retry_after_is_transient(sg, tmp_path):
    channel = build_channel(make_config(tmp_path, sg.url), "email")
    sg.script(429, retry_after=2)
    with pytest.raises(TransientSendError) as info:
        channel.send(email())
    assert info.value.retry_after == 2.0
    assert info.value.code == "429"
    # the next request is answered normally again
    assert channel.send(email(43)).provider_id


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(sg, tmp_path, status):
    channel = build_channel(make_config(tmp_path, sg.url), "email")
    sg.script(status)
    with pytest.raises(TransientSendError) as info:
        channel.send(email())
    assert info.value.code == str(status)
    assert info.value.retry_after is None


def test_bad_recipient_address_is_permanent_and_suppresses(sg, tmp_path):
    channel = build_channel(make_config(tmp_path, sg.url), "email")
    with pytest.raises(PermanentSendError) as info:
        channel.send(email(to="jane.at.example.com"))
    assert info.value.suppress_reason == "invalid_address"
    assert info.value.code == "400"
    assert sg.requests[0].status == 400


def test_other_400_is_permanent_without_suppression(sg, tmp_path):
    channel = build_channel(make_config(tmp_path, sg.url), "email")
    sg.script(400, message="The subject is required.", field="subject")
    with pytest.raises(PermanentSendError) as info:
        channel.send(email())
    assert info.value.suppress_reason is None
    assert "subject is required" in str(info.value)


def test_error_text_masks_the_recipient(sg, tmp_path):
    channel = build_channel(make_config(tmp_path, sg.url), "email")
    sg.script(400, message="jane@example.com bounced before", field="personalizations.0.to")
    with pytest.raises(PermanentSendError) as info:
        channel.send(email())
    assert "jane@example.com" not in str(info.value)
    assert "j***@example.com" in str(info.value)
    assert info.value.suppress_reason == "invalid_address"


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_is_an_auth_error_and_never_echoed(tmp_path, status):
    wrong = "SG.wrong-key-secret-9c1"
    with FakeSendGrid(api_key=KEY) as sg:
        channel = build_channel(make_config(tmp_path, sg.url, key=wrong), "email")
        if status == 403:
            sg.api_key = wrong
            sg.script(403, message=f"key {wrong} lacks permission")
        with pytest.raises(ProviderAuthError) as info:
            channel.send(email())
    assert sg.requests[0].status == status
    exc = info.value
    assert exc.code == str(status)
    for text in (str(exc), repr(exc), repr(exc.args), repr(channel)):
        assert wrong not in text
    assert "SENDGRID_API_KEY" in str(exc)
    assert exc.__cause__ is None and exc.__suppress_context__


def test_a_hanging_provider_hits_the_timeout_and_may_have_the_message(sg, tmp_path):
    channel = build_channel(make_config(tmp_path, sg.url, timeout=0.5), "email")
    sg.script("hang", seconds=30)
    started = time.monotonic()
    with pytest.raises(AmbiguousSendError) as info:
        channel.send(email())
    elapsed = time.monotonic() - started
    assert info.value.code == "timeout"
    assert elapsed < 5  # without a timeout urllib would wait the full 30 s
    assert len(sg.requests) == 1


def test_an_answer_after_the_timeout_is_ambiguous(sg, tmp_path):
    """SendGrid accepted it (202), but too late for the client: not a retry."""
    channel = build_channel(make_config(tmp_path, sg.url, timeout=0.3), "email")
    sg.script(202, delay=1.0)
    with pytest.raises(AmbiguousSendError):
        channel.send(email())
    assert channel.send(email(43)).provider_id  # a fresh connection works again
    deadline = time.monotonic() + 5
    while len(sg.requests) < 2 and time.monotonic() < deadline:  # the late answer is logged
        time.sleep(0.05)
    assert [r.status for r in sg.requests] == [202, 202]


def test_a_connection_dropped_after_the_request_is_ambiguous(sg, tmp_path):
    channel = build_channel(make_config(tmp_path, sg.url), "email")
    sg.script("drop")
    with pytest.raises(AmbiguousSendError) as info:
        channel.send(email())
    assert info.value.code == "network" and "jane@example.com" not in str(info.value)
    assert channel.send(email(43)).provider_id


def test_unreachable_host_is_transient_and_marked_not_sent(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    channel = build_channel(make_config(tmp_path, f"http://127.0.0.1:{port}"), "email")
    with pytest.raises(TransientSendError) as info:
        channel.send(email())
    assert info.value.code == "connect"


def test_a_connect_timeout_is_transient_and_marked_not_sent(tmp_path):
    with full_backlog() as url:
        channel = build_channel(make_config(tmp_path, url, timeout=0.3), "email")
        with pytest.raises(TransientSendError) as info:
            channel.send(email())
    assert info.value.code == "connect" and "while connecting" in str(info.value)


def test_requests_share_a_kept_alive_connection(tmp_path):
    """One connection per sending thread, reused; one the server closed while
    idle is replaced before the next request, never a failed send."""
    with FakeSendGrid(api_key=KEY, idle_timeout=0.3) as sg:
        channel = build_channel(make_config(tmp_path, sg.url), "email")
        for n in range(5):
            channel.send(email(n))
        time.sleep(0.6)  # the fake closes the idle connection
        channel.send(email(5))
        channel.close()
    peers = [r.peer for r in sg.requests]
    assert len(set(peers[:5])) == 1 and peers[5] != peers[0]


def test_behind_a_proxy_the_sdks_own_transport_sends_through_it(sg, tmp_path, monkeypatch):
    """With HTTP(S)_PROXY set, the SDK's urllib transport carries each request
    to the proxy (here the fake itself, which reads the absolute URI), not
    the kept-alive connections, which would bypass it."""
    monkeypatch.setenv("HTTP_PROXY", sg.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    unreachable = "http://api.sendgrid.invalid"  # only the proxy knows the way
    channel = build_channel(make_config(tmp_path, unreachable), "email")
    result = channel.send(email(7))
    sg.script(400, message="Does not contain a valid address.", field="personalizations.0.to")
    with pytest.raises(PermanentSendError) as info:
        channel.send(email(8))
    channel.close()
    assert info.value.suppress_reason == "invalid_address"
    [req, _] = sg.requests
    assert req.path == "/v3/mail/send" and req.body["custom_args"] == {"engage_message_id": "7"}
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert result.provider_id == req.provider_id


def test_missing_api_key_is_a_config_error_naming_the_variable(tmp_path):
    config = make_config(tmp_path, "http://127.0.0.1:9", key=None)
    with pytest.raises(ConfigError, match="SENDGRID_API_KEY"):
        build_channel(config, "email")


def test_concurrent_sends_from_8_threads_arrive_once(sg, tmp_path):
    channel = build_channel(make_config(tmp_path, sg.url), "email")
    results: dict[int, str | None] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(ids: range) -> None:
        for i in ids:
            try:
                r = channel.send(email(i, to=f"customer{i}@example.com"))
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
    assert errors == []
    sent_ids = sorted(int(r.body["custom_args"]["engage_message_id"]) for r in sg.requests)
    assert sent_ids == list(range(200))
    for r in sg.requests:
        i = int(r.body["custom_args"]["engage_message_id"])
        assert r.body["personalizations"][0]["to"][0]["email"] == f"customer{i}@example.com"
        assert results[i] == r.provider_id
    assert len(set(results.values())) == 200


def test_fake_checks_credentials_before_using_a_scripted_answer(sg, tmp_path):
    good = build_channel(make_config(tmp_path, sg.url), "email")
    bad = build_channel(make_config(tmp_path, sg.url, key="SG.other"), "email")
    sg.script(500)
    with pytest.raises(ProviderAuthError):
        bad.send(email(1))
    with pytest.raises(TransientSendError):
        good.send(email(2))
    assert [r.status for r in sg.requests] == [401, 500]


def test_429_without_retry_after_uses_sendgrids_rate_limit_reset(sg, tmp_path):
    channel = build_channel(make_config(tmp_path, sg.url), "email")
    sg.script(429, headers={"X-RateLimit-Reset": str(int(time.time()) + 60)})
    with pytest.raises(TransientSendError) as info:
        channel.send(email())
    assert info.value.retry_after is not None and 30 < info.value.retry_after <= 61
