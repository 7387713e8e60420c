"""The channel interface: what dispatch hands a provider, and what comes back.

A channel sends one already-rendered message. It never touches the database;
it raises ``TransientSendError`` (worth retrying) or ``PermanentSendError``
(do not retry; may carry a ``suppress_reason``) from ``engage.errors``.
Channels must be safe to call from several worker threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

ChannelKind = Literal["email", "sms"]


@dataclass(frozen=True)
class Outgoing:
    """One rendered message, ready for a provider."""

    message_id: int  # engage's message.id: the only identifier sent to providers
    channel: ChannelKind
    to: str  # email address or E.164 phone number
    campaign: str
    subject: str | None = None  # email only
    html: str | None = None  # email only
    text: str = ""  # email plain-text part, or the SMS body
    headers: dict[str, str] = field(default_factory=dict)  # e.g. List-Unsubscribe


@dataclass(frozen=True)
class SendResult:
    provider: str  # "sendgrid", "twilio", "file", "console"
    provider_id: str | None  # X-Message-Id, Twilio SID, file name...


class Channel(Protocol):
    """A provider for one channel kind (email or SMS)."""

    provider: str
    kind: ChannelKind

    def send(self, message: Outgoing) -> SendResult: ...

    def close(self) -> None: ...
