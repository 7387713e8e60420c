"""The import's fast paths give exactly the answers of the slow ones.

``parse_email`` checks addresses of the plain ASCII form with a regular
expression and a per-domain cache instead of calling ``email-validator`` for
each; ``typed`` reads CSV attribute cells as JSON scalars only when they
spell one exactly.
"""

from __future__ import annotations

import json
import string

from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engage.ingest.fields import RowInvalid, column_kind, parse_email, scalar_kind, typed

_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
_LABEL = st.text(string.ascii_letters + string.digits + "-", min_size=0, max_size=70)
_LOCAL = st.one_of(
    st.text(_ATEXT + ".", min_size=0, max_size=70),
    st.text(string.printable, min_size=0, max_size=20),
    st.text(min_size=0, max_size=10),  # any unicode
)
_DOMAIN = st.one_of(
    st.sampled_from(["example.com", "Example.COM", "shop.example", "xn--bcher-kva.example",
                     "localhost", "a.b", "x.invalid", "mail.test", "1.2.3.4", "[127.0.0.1]",
                     "bücher.example", "-bad.com", "ok-.com", "a..b.com"]),
    st.builds(lambda a, b, tld: f"{a}.{b}.{tld}", _LABEL, _LABEL, st.sampled_from(["com", "org", "x1", "c0m"])),
)  # fmt: skip


def _slow(raw: str) -> str | None:
    try:
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


@settings(max_examples=3000, deadline=None)
@given(local=_LOCAL, domain=_DOMAIN)
@example(local="a" * 64, domain="example.com")  # the local part's limit
@example(local="a" * 65, domain="example.com")
@example(local="a" * 64, domain=".".join(["b" * 62] * 3) + ".com")  # 257 characters: too long
@example(local="a" * 60, domain=".".join(["b" * 62] * 3) + ".com")  # 253
def test_plain_addresses_read_as_email_validator_reads_them(local: str, domain: str) -> None:
    raw = f"{local}@{domain}"
    stripped = raw.strip()  # cells are stripped first
    refused = any(c in stripped for c in "\n\r\x00") or len(stripped) > 320
    want = None if refused else _slow(stripped)
    try:
        got = parse_email(raw)
    except RowInvalid:
        got = None
    assert got == want, raw


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(string.digits + "-.eE+", max_size=12), st.text(max_size=8),
                 st.integers().map(str), st.floats(allow_nan=False).map(repr),
                 st.sampled_from(["true", "False", "TRUE", "tru", "007", "-0", "1e3", "4.50"])))  # fmt: skip
def test_a_typed_cell_writes_back_as_the_same_text(text: str) -> None:
    """A cell becomes a number or boolean only when it spells that JSON scalar."""
    kind = scalar_kind(text)
    value = typed(kind)(text)
    if kind == "text":
        assert value == text
    elif kind == "bool":
        assert value is (text.lower() == "true")
    else:
        assert json.dumps(value) == text


def test_columns_take_one_type() -> None:
    assert column_kind(["1", "2", "30"]) == "int"
    assert column_kind(["1", "2.5"]) == "number"
    assert column_kind(["true", "FALSE"]) == "bool"
    assert column_kind(["02134", "90210"]) == "text"  # a leading zero: codes, not numbers
    assert column_kind(["1", "n/a"]) == "text"
    assert typed("int")("n/a") == "n/a" and typed("number")("7") == 7
