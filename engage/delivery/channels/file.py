"""The ``file`` channel: every message becomes a file in a folder, for development and demos.

Emails are real RFC 5322 messages (``.eml``, multipart/alternative text + HTML,
List-Unsubscribe headers included), so any mail client can open them and tests
can parse them; SMS become ``.txt`` files with ``To:``/``From:`` lines, a blank
line and the body. Files are written to a temporary name and renamed, so a
reader never sees half a message.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path

from ...config import Config
from ...errors import PermanentSendError, TransientSendError
from .base import ChannelKind, Outgoing, SendResult

__all__ = ["FileDropChannel", "build_email_message", "file_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_LINE = 998  # RFC 5322 2.1.1


def file_name(message: Outgoing) -> str:
    """``<message_id>-<campaign>-<channel>.eml|txt``, safe on any filesystem."""
    campaign = _UNSAFE.sub("_", message.campaign).strip("._") or "campaign"
    ext = "eml" if message.channel == "email" else "txt"
    return f"{message.message_id}-{campaign[:80]}-{message.channel}.{ext}"


def build_email_message(
    message: Outgoing, *, from_email: str, from_name: str | None, now: datetime
) -> EmailMessage:
    """The RFC 5322 message a provider would deliver for ``message``.

    Headers are never folded below RFC 5322's 998-character limit: the email
    package folds a long header with no space in it (a ``List-Unsubscribe``
    URL) into RFC 2047 encoded words, which mail clients do not read as a
    ``<https://...>`` link. A non-ASCII address cannot be an encoded word
    either: such a message is written for SMTPUTF8 (RFC 6532), headers in
    UTF-8.
    """
    international = not (message.to.isascii() and from_email.isascii())
    # policy.SMTPUTF8 is this with CRLF line ends; the files keep the LF of the others.
    msg = EmailMessage(policy=policy.default.clone(utf8=international, max_line_length=MAX_LINE))
    msg["From"] = formataddr((from_name, from_email)) if from_name else from_email
    msg["To"] = message.to
    msg["Subject"] = message.subject or ""
    msg["Date"] = format_datetime(now.astimezone(UTC))
    domain = from_email.rpartition("@")[2] or "engage.invalid"
    msg["Message-ID"] = make_msgid(idstring=f"engage.{message.message_id}", domain=domain)
    msg["X-Engage-Message-Id"] = str(message.message_id)
    msg["X-Engage-Campaign"] = message.campaign
    for name, value in message.headers.items():
        msg[name] = value
    if message.text and message.html:
        msg.set_content(message.text)
        msg.add_alternative(message.html, subtype="html")
    elif message.html:
        msg.set_content(message.html, subtype="html")
    else:
        msg.set_content(message.text)
    return msg


class FileDropChannel:
    """Writes each message into ``channels.file.dir``; safe to share between threads."""

    provider = "file"

    def __init__(
        self,
        directory: Path,
        kind: ChannelKind,
        *,
        from_email: str = "shop@example.com",
        from_name: str | None = None,
        sms_from: str = "engage",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.directory = directory
        self.kind: ChannelKind = kind
        self.from_email = from_email
        self.from_name = from_name
        self.sms_from = sms_from
        self._clock = clock or (lambda: datetime.now(UTC))

    @classmethod
    def from_config(cls, config: Config, kind: ChannelKind) -> FileDropChannel:
        sg, tw = config.channels.sendgrid, config.channels.twilio
        return cls(
            config.resolve(config.channels.file.dir),
            kind,
            from_email=sg.from_email,
            from_name=sg.from_name,
            sms_from=tw.from_number or tw.messaging_service_sid or "engage",
        )

    def render(self, message: Outgoing) -> bytes:
        if message.channel == "email":
            try:
                email = build_email_message(
                    message, from_email=self.from_email, from_name=self.from_name, now=self._clock()
                )
            except ValueError as exc:  # e.g. a line break in a header value
                raise PermanentSendError(f"cannot build the email: {exc}") from None
            return email.as_bytes()
        head = f"To: {message.to}\nFrom: {self.sms_from}\n\n"
        return (head + message.text + ("" if message.text.endswith("\n") else "\n")).encode()

    def send(self, message: Outgoing) -> SendResult:
        data = self.render(message)
        name = file_name(message)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, self.directory / name)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:  # disk full, permissions: may clear up
            raise TransientSendError(f"cannot write {name}: {exc.strerror or exc}") from None
        return SendResult(provider=self.provider, provider_id=name)

    def close(self) -> None:
        """Nothing to release."""
