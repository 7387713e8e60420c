"""Signed, opaque unsubscribe tokens for ``{public_url}/u/{token}`` links.

A token names (customer, channel, campaign) so the unsubscribe endpoint can
suppress the right address, yet it sits in email footers, browser histories
and proxy logs, so it must not carry readable PII (a shop's customer id is
often an email address or a CRM number). The standard library has no block
cipher, so the token uses a small, well-understood construction built only on
HMAC-SHA256 (a PRF), with keys derived from ``ENGAGE_SECRET_KEY``:

* ``nonce = HMAC(k_nonce, plaintext)[:12]`` -- synthetic and deterministic, so
  the same message always gets the same link (preview equals what is sent)
  and nothing random has to be stored;
* ``ciphertext = plaintext XOR HMAC(k_enc, nonce || counter)...`` -- a stream
  cipher in counter mode;
* ``tag = HMAC(k_mac, version || nonce || ciphertext)[:16]`` --
  encrypt-then-MAC; the tag is checked (constant time) before anything is
  decrypted.

``token = base64url(version || nonce || ciphertext || tag)`` without padding.
Only equality leaks (the same customer, channel and campaign give the same
token) and the length of the plaintext, which is acceptable for this use.
``cryptography`` is installed (via ``sendgrid``) but only transitively; a
security feature should not hinge on another package's dependency list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError, EngageError

Channel = Literal["email", "sms"]

VERSION = 1
_NONCE = 12
_TAG = 16
_CHANNEL_CODES: dict[str, int] = {"email": 1, "sms": 2}
_CHANNEL_NAMES = {v: k for k, v in _CHANNEL_CODES.items()}
_MIN_SECRET = 16


class InvalidToken(EngageError):
    """The token was not made with our key: forged, truncated or altered."""


@dataclass(frozen=True)
class UnsubscribeClaim:
    """What a valid token says: unsubscribe this customer from this channel."""

    customer_id: str
    channel: Channel
    campaign: str


class _Prf:
    """HMAC-SHA256 under one fixed key (RFC 2104), with the keyed inner and outer
    hash states computed once: a quarter of the cost of ``hmac.digest`` per
    call, and every email's footer link needs three calls."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes):
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def __call__(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_BLOCK = 64  # SHA-256's block size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


@dataclass(frozen=True)
class _Keys:
    nonce: _Prf
    enc: _Prf
    mac: _Prf


def check_secret_key(secret: str | bytes) -> None:
    """ConfigError unless ``secret`` can sign unsubscribe tokens."""
    raw = secret.encode() if isinstance(secret, str) else secret
    if len(raw) < _MIN_SECRET:
        raise ConfigError(f"ENGAGE_SECRET_KEY must be at least {_MIN_SECRET} characters long")


def _keys(secret: str | bytes) -> _Keys:
    raw = secret.encode() if isinstance(secret, str) else secret
    check_secret_key(raw)
    return _keys_cached(raw)


_KEY_CACHE: dict[bytes, _Keys] = {}


def _keys_cached(raw: bytes) -> _Keys:
    # Key derivation is three HMACs; the secret rarely changes, so memoise it
    # (dict get/set are atomic under the GIL, so this is thread-safe).
    keys = _KEY_CACHE.get(raw)
    if keys is None:

        def derive(label: bytes) -> bytes:
            return hmac.digest(raw, b"engage/unsubscribe/v1/" + label, "sha256")

        keys = _Keys(_Prf(derive(b"nonce")), _Prf(derive(b"enc")), _Prf(derive(b"mac")))
        if len(_KEY_CACHE) < 16:
            _KEY_CACHE[raw] = keys
    return keys


def _keystream(prf: _Prf, nonce: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += prf(nonce + struct.pack(">I", counter))
        counter += 1
    return bytes(out[:length])


def _xor(data: bytes, stream: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


def _encode_plain(customer_id: str, channel: str, campaign: str) -> bytes:
    cid = customer_id.encode()
    if len(cid) > 0xFFFF:
        raise EngageError("customer id too long for an unsubscribe token")
    return bytes([_CHANNEL_CODES[channel]]) + struct.pack(">H", len(cid)) + cid + campaign.encode()


def make_token(secret: str | bytes, customer_id: str, channel: str, campaign: str) -> str:
    """An opaque, URL-safe, authenticated token for one unsubscribe link."""
    if channel not in _CHANNEL_CODES:
        raise EngageError(f"unknown channel {channel!r} for an unsubscribe token")
    keys = _keys(secret)
    plain = _encode_plain(customer_id, channel, campaign)
    nonce = keys.nonce(plain)[:_NONCE]
    body = bytes([VERSION]) + nonce + _xor(plain, _keystream(keys.enc, nonce, len(plain)))
    tag = keys.mac(body)[:_TAG]
    return base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode("ascii")


def read_token(secret: str | bytes, token: str) -> UnsubscribeClaim:
    """Verify and open a token; ``InvalidToken`` for anything we did not issue."""
    keys = _keys(secret)
    if not isinstance(token, str) or not token or len(token) > 4096:
        raise InvalidToken("invalid unsubscribe token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("invalid unsubscribe token") from None
    # Reject non-canonical encodings too, so one token has exactly one spelling.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        raise InvalidToken("invalid unsubscribe token")
    if len(raw) < 1 + _NONCE + 3 + _TAG or raw[0] != VERSION:
        raise InvalidToken("invalid unsubscribe token")
    body, tag = raw[:-_TAG], raw[-_TAG:]
    expected = keys.mac(body)[:_TAG]
    if not hmac.compare_digest(tag, expected):
        raise InvalidToken("invalid unsubscribe token")
    nonce, cipher = body[1 : 1 + _NONCE], body[1 + _NONCE :]
    plain = _xor(cipher, _keystream(keys.enc, nonce, len(cipher)))
    try:
        channel = _CHANNEL_NAMES[plain[0]]
        (n,) = struct.unpack(">H", plain[1:3])
        if len(plain) < 3 + n:
            raise ValueError
        customer_id = plain[3 : 3 + n].decode()
        campaign = plain[3 + n :].decode()
    except (KeyError, ValueError, struct.error):  # pragma: no cover - MAC already checked
        raise InvalidToken("invalid unsubscribe token") from None
    return UnsubscribeClaim(customer_id=customer_id, channel=channel, campaign=campaign)  # type: ignore[arg-type]


def unsubscribe_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/u/{token}"
