"""The ``console`` channel: prints a compact rendering of each message, for development.

One lock per output stream keeps messages from several worker threads whole.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from .base import ChannelKind, Outgoing, SendResult

__all__ = ["ConsoleChannel", "render_compact"]

_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(stream: TextIO) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(id(stream), threading.Lock())


def render_compact(message: Outgoing) -> str:
    """A few readable lines: who, what, and the body (the text part for email)."""
    lines = [f"--- {message.channel} #{message.message_id} [{message.campaign}] to {message.to}"]
    if message.channel == "email":
        lines.append(f"Subject: {message.subject or ''}")
        lines.extend(f"{name}: {value}" for name, value in message.headers.items())
        if message.html and not message.text:
            lines.append("(HTML only)")
    lines.append(message.text.rstrip("\n"))
    return "\n".join(lines) + "\n"


class ConsoleChannel:
    provider = "console"

    def __init__(self, kind: ChannelKind, stream: TextIO | None = None) -> None:
        self.kind: ChannelKind = kind
        self._stream = stream

    def send(self, message: Outgoing) -> SendResult:
        stream = self._stream or sys.stdout  # looked up late so capture tools work
        text = render_compact(message)
        with _lock_for(stream):
            stream.write(text)
            stream.flush()
        return SendResult(provider=self.provider, provider_id=f"console-{message.message_id}")

    def close(self) -> None:
        """Nothing to release."""
