"""The public name for code that sends through engage's channels (documented in
docs/channels.md): ``from engage.channels import build_channels, Outgoing``.

The channels live in ``engage.delivery.channels``; this module is part of the
library's public surface, like ``engage.testing``, and nothing inside engage
imports it (the import-linter contract keeps it at the top).
"""

from .delivery.channels import (
    Channel,
    ChannelKind,
    Outgoing,
    SendResult,
    build_channel,
    build_channels,
)
from .errors import (
    AmbiguousSendError,
    PermanentSendError,
    ProviderAuthError,
    SendError,
    TransientSendError,
)

__all__ = [
    "AmbiguousSendError",
    "Channel",
    "ChannelKind",
    "Outgoing",
    "PermanentSendError",
    "ProviderAuthError",
    "SendError",
    "SendResult",
    "TransientSendError",
    "build_channel",
    "build_channels",
]
