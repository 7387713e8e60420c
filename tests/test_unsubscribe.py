"""Unsubscribe tokens: signed, opaque, and rejected when forged or damaged."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engage.errors import ConfigError, EngageError
from engage.unsubscribe import (
    InvalidToken,
    UnsubscribeClaim,
    make_token,
    read_token,
    unsubscribe_url,
)

SECRET = "test-secret-key-0123456789abcdef"
OTHER = "another-secret-key-0123456789abc"


def _decoded(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_round_trip() -> None:
    token = make_token(SECRET, "cust-42", "email", "winback-30d")
    assert read_token(SECRET, token) == UnsubscribeClaim("cust-42", "email", "winback-30d")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token), "token must be URL-safe without escaping"


@given(
    customer_id=st.text(min_size=1, max_size=80),
    channel=st.sampled_from(["email", "sms"]),
    campaign=st.text(max_size=60),
)
def test_round_trip_any_ids(customer_id: str, channel: str, campaign: str) -> None:
    token = make_token(SECRET, customer_id, channel, campaign)
    assert read_token(SECRET, token) == UnsubscribeClaim(customer_id, channel, campaign)  # type: ignore[arg-type]


def test_same_message_same_token_different_message_different_token() -> None:
    a = make_token(SECRET, "c1", "email", "winback")
    assert make_token(SECRET, "c1", "email", "winback") == a
    assert make_token(SECRET, "c2", "email", "winback") != a
    assert make_token(SECRET, "c1", "sms", "winback") != a
    assert make_token(OTHER, "c1", "email", "winback") != a


@pytest.mark.parametrize("customer_id", ["alice@example.com", "CRM-000123456", "+15551234567"])
def test_token_has_no_readable_pii(customer_id: str) -> None:
    token = make_token(SECRET, customer_id, "email", "winback")
    raw = _decoded(token)
    for needle in {customer_id, customer_id.split("@")[0], customer_id[-7:]}:
        assert needle.lower() not in token.lower()
        assert needle.encode() not in raw
        assert needle.encode("utf-16-le") not in raw
        assert base64.urlsafe_b64encode(needle.encode()).rstrip(b"=")[:8].decode() not in token


def test_forged_token_rejected() -> None:
    token = make_token(OTHER, "cust-42", "email", "winback")
    with pytest.raises(InvalidToken):
        read_token(SECRET, token)


def test_every_altered_character_is_rejected() -> None:
    token = make_token(SECRET, "cust-42", "email", "winback")
    alphabet = "AQgw"  # differ in high and low bits of the 6-bit value
    for i, ch in enumerate(token):
        for repl in alphabet:
            if repl == ch:
                continue
            altered = token[:i] + repl + token[i + 1 :]
            with pytest.raises(InvalidToken):
                read_token(SECRET, altered)


def test_truncated_and_extended_tokens_rejected() -> None:
    token = make_token(SECRET, "cust-42", "sms", "points-expiring")
    for n in range(len(token)):
        with pytest.raises(InvalidToken):
            read_token(SECRET, token[:n])
    for extra in ("A", "AA", "=", "AAAA"):
        with pytest.raises(InvalidToken):
            read_token(SECRET, token + extra)


@pytest.mark.parametrize("garbage", ["", "!!!", "a b", "%2F..%2F", "A" * 5000, "AQ" * 20])
def test_garbage_rejected(garbage: str) -> None:
    with pytest.raises(InvalidToken):
        read_token(SECRET, garbage)


def test_invalid_token_is_an_engage_error() -> None:
    assert issubclass(InvalidToken, EngageError)


def test_short_secret_refused() -> None:
    with pytest.raises(ConfigError, match="ENGAGE_SECRET_KEY"):
        make_token("short", "c", "email", "x")


def test_unknown_channel_refused() -> None:
    with pytest.raises(EngageError):
        make_token(SECRET, "c", "fax", "x")


def test_url_shape() -> None:
    assert unsubscribe_url("https://e.example.com/", "TOK") == "https://e.example.com/u/TOK"


def test_tokens_are_stable_across_releases() -> None:
    """Links already in customers' inboxes must keep working: the same key and
    message give exactly the token earlier versions gave."""
    from engage.unsubscribe import make_token

    key = "a-secret-key-of-32-characters!!!"
    assert make_token(key, "cust-0001", "email", "winback-30d") == (
        "AQfFCrhU3Vre_SbBKC8d_bDpnlbt8nN__IkOaikwPfgeW_VhU2cMK7kNNmhm_Yo--4Kqxw"
    )
    assert make_token(key, "jane.doe@example.com", "sms", "points-expiring-with-a-long-name") == (
        "AYD_g8z43wc3czQwQwScVVQHWaZyMXfwTrmQ5Z9WOC5S93W84nWVm-c_8EXL_zQikDCQMQd32M-"
        "yTYU1Wy_atYuhx9xSCFBPYS8glsR1EdYNYCzs"
    )


@given(key=st.binary(max_size=200), message=st.binary(max_size=300))
def test_precomputed_prf_is_hmac_sha256(key: bytes, message: bytes) -> None:
    import hmac

    from engage.unsubscribe import _Prf

    prf = _Prf(key)
    assert prf(message) == hmac.digest(key, message, "sha256")
    assert prf(message) == prf(message)  # the keyed states are not consumed
