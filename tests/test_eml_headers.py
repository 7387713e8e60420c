"""``.eml`` files keep List-Unsubscribe readable and addresses international (issue 13, item 9).

Python's email package folded the long ``List-Unsubscribe`` header into RFC
2047 encoded words (``=?utf-8?q?=3Chttps...``), which mail clients do not
read as a link, and wrote a non-ASCII address as encoded words, which no
server accepts. Checked on the bytes written, and end to end through
``engage send`` with the ``file`` channel.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_string, policy
from email.parser import BytesParser
from pathlib import Path

from engage.db import make_engine, upgrade
from engage.delivery.channels.base import Outgoing
from engage.delivery.channels.file import FileDropChannel

from .helpers import SECRET, add_customer
from .installed import clean_env, engage

LONG_URL = "https://engage.shop.example.com/u/" + "AbCdEfGhIj" * 12  # a real token is ~70


def _eml(tmp_path: Path, to: str) -> bytes:
    channel = FileDropChannel(tmp_path, "email", from_email="shop@example.com", from_name="Shöp")
    message = Outgoing(
        message_id=7,
        channel="email",
        to=to,
        campaign="winback",
        subject="Wir vermissen Sie, Jürgen",
        html="<p>Hallo Jürgen</p>",
        text="Hallo Jürgen",
        headers={
            "List-Unsubscribe": f"<{LONG_URL}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    channel.send(message)
    return (tmp_path / "7-winback-email.eml").read_bytes()


def _header_lines(raw: bytes) -> dict[str, str]:
    head = raw.split(b"\n\n", 1)[0].decode("utf-8")
    out: dict[str, str] = {}
    for line in head.splitlines():
        assert not line[:1].isspace(), f"folded header line: {line!r}"
        name, _, value = line.partition(": ")
        out[name] = value
    return out


def test_list_unsubscribe_is_one_literal_line(tmp_path: Path) -> None:
    raw = _eml(tmp_path, "juergen@example.com")
    headers = _header_lines(raw)
    assert headers["List-Unsubscribe"] == f"<{LONG_URL}>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["To"] == "juergen@example.com"
    assert "=?" not in headers["List-Unsubscribe"]
    assert "=?utf-8?" in headers["Subject"]  # ASCII transport: the subject is encoded
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert msg["Subject"] == "Wir vermissen Sie, Jürgen"


def test_a_non_ascii_address_is_written_for_smtputf8(tmp_path: Path) -> None:
    raw = _eml(tmp_path, "jürgen@bücher.example")
    headers = _header_lines(raw)
    assert headers["To"] == "jürgen@bücher.example"  # UTF-8, never an encoded word
    assert headers["Subject"] == "Wir vermissen Sie, Jürgen"
    assert headers["List-Unsubscribe"] == f"<{LONG_URL}>"
    assert b"=?utf-8?" not in raw.split(b"\n\n", 1)[0]
    msg = message_from_string(raw.decode("utf-8"), policy=policy.SMTPUTF8)
    assert msg["To"].addresses[0].username == "jürgen"
    body = BytesParser(policy=policy.SMTPUTF8).parsebytes(raw).get_body(("plain",))
    assert body.get_content().strip() == "Hallo Jürgen"


def test_engage_send_writes_readable_eml_files(tmp_path: Path) -> None:
    engage("init", "proj", cwd=tmp_path)
    proj = tmp_path / "proj"
    env = clean_env(
        ENGAGE_SECRET_KEY=SECRET, ENGAGE_PUBLIC_URL="https://engage.northwind.example.com"
    )
    db_url = f"sqlite:///{proj / 'engage.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    (proj / "campaigns" / "hello.yaml").write_text(
        'name: hello\nschedule:\n  cron: "0 10 * * *"\naudience: {}\nchannels: [email]\n'
        'template: winback\nsend_window: {start: "00:00", end: "24:00"}\n'
    )
    created = datetime.now(UTC) - timedelta(days=60)
    add_customer(engine, "c1", email="ann@example.com", created_at=created)
    add_customer(engine, "c2", email="jürgen@bücher.example", created_at=created)
    engine.dispose()
    engage("send", "hello", "--yes", cwd=proj, env=env)
    files = sorted((proj / "outbox").glob("*.eml"))
    assert len(files) == 2
    for path in files:
        raw = path.read_bytes()
        headers = _header_lines(raw)
        url = headers["List-Unsubscribe"]
        assert url.startswith("<https://engage.northwind.example.com/u/") and url.endswith(">")
        assert headers["To"] in ("ann@example.com", "jürgen@bücher.example")
