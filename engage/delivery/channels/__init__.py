"""Channels: hand one rendered message to a provider (see ``base.py`` for the contract).

``build_channels(config)`` is what dispatch calls: it picks the provider for
each kind from ``channels.email`` / ``channels.sms`` and checks secrets up
front, so a missing ``SENDGRID_API_KEY`` is a ConfigError at start-up, not a
failed message later. Provider modules are imported lazily: the Twilio SDK
alone takes a noticeable fraction of a second to import, and development
setups (``file``/``console``) never need it.
"""

from __future__ import annotations

from ...config import Config
from ...errors import ConfigError
from .base import Channel, ChannelKind, Outgoing, SendResult

__all__ = [
    "Channel",
    "ChannelKind",
    "Outgoing",
    "SendResult",
    "build_channel",
    "build_channels",
]

KINDS: tuple[ChannelKind, ...] = ("email", "sms")


def build_channel(config: Config, kind: ChannelKind) -> Channel:
    """The configured channel for ``kind`` ("email" or "sms")."""
    if kind == "email":
        provider: str = config.channels.email
    elif kind == "sms":
        provider = config.channels.sms
    else:
        raise ConfigError(f"unknown channel kind {kind!r} (expected email or sms)")
    if provider == "file":
        from .file import FileDropChannel

        return FileDropChannel.from_config(config, kind)
    if provider == "console":
        from .console import ConsoleChannel

        return ConsoleChannel(kind)
    if provider == "sendgrid" and kind == "email":
        from .sendgrid import SendGridEmailChannel

        return SendGridEmailChannel.from_config(config)
    if provider == "twilio" and kind == "sms":
        from .twilio import TwilioSmsChannel

        return TwilioSmsChannel.from_config(config)
    raise ConfigError(f"channels.{kind}: provider {provider!r} cannot send {kind}")


def build_channels(config: Config) -> dict[str, Channel]:
    """Both channels, keyed by kind; every missing secret is reported at once."""
    channels: dict[str, Channel] = {}
    problems: list[str] = []
    for kind in KINDS:
        try:
            channels[kind] = build_channel(config, kind)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        for channel in channels.values():
            channel.close()
        raise ConfigError("; ".join(problems))
    return channels
