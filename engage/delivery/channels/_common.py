"""Small helpers the provider channels share: Retry-After and keeping PII out of errors.

Error messages from channels end up in logs and in ``message.last_error``, so
they must never carry a secret and should not carry the recipient's address.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Send error codes for transport failures: "connect" (TransientSendError) means
# the request certainly did not reach the provider; "timeout" and "network"
# (AmbiguousSendError) mean it was written and may have been accepted.
TIMEOUT = "timeout"
NETWORK = "network"
CONNECT = "connect"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def mask_address(address: str) -> str:
    """``jane.doe@example.com`` -> ``j***@example.com``; ``+15551234567`` -> ``+1*******567``."""
    if "@" in address:
        local, _, domain = address.rpartition("@")
        return f"{local[:1]}***@{domain}"
    if len(address) > 6:
        return address[:2] + "*" * (len(address) - 5) + address[-3:]
    return "***"


def scrub(text: str, *, secrets: tuple[str, ...] = (), addresses: tuple[str, ...] = ()) -> str:
    """``text`` with every secret removed and every address masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[secret]")
    for address in addresses:
        if address:
            text = text.replace(address, mask_address(address))
    return text
