"""SMS bodies: GSM-7 / UCS-2 detection, segment counting, the opt-out line.

Carriers bill and deliver per segment, so the count must match theirs:
GSM-7 (3GPP TS 23.038 basic table, extension-table characters take two
septets) fits 160 septets in one message or 153 per part when concatenated;
anything else goes as UCS-2, 70 UTF-16 code units alone or 67 per part
(an emoji is a surrogate pair: two units). An escape pair or a surrogate pair
is never split across parts, so counting packs characters greedily rather than
dividing a total.
"""

from __future__ import annotations

import re
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

# An opt-out instruction: a verb followed by a STOP-family keyword ("Reply STOP",
# "Text END to ..."), or "STOP to opt out" / "STOP=stop". A bare "don't stop now"
# is not an instruction, so it does not count.
_KEYWORDS = r"(?:STOP|STOPALL|UNSUBSCRIBE|CANCEL|END|QUIT|OPTOUT|OPT-OUT)"
OPT_OUT_RE = re.compile(
    rf"\b(?:reply|text|txt|send|sms)\s+[\"'“‘]?{_KEYWORDS}\b"
    r"|\bSTOP\s*(?:to|=|2)\s*(?:opt[\s-]?out|end|quit|cancel|unsubscribe|stop)\b",
    re.IGNORECASE,
)


def encoding_of(body: str) -> Encoding:
    """GSM-7 when every character is in the basic or extension table."""
    for ch in body:
        if ch not in GSM7_BASIC and ch not in GSM7_EXTENSION:
            return "UCS-2"
    return "GSM-7"


def non_gsm_chars(body: str) -> list[str]:
    """The characters that force UCS-2 (for a helpful validation warning)."""
    seen: dict[str, None] = {}
    for ch in body:
        if ch not in GSM7_BASIC and ch not in GSM7_EXTENSION:
            seen.setdefault(ch)
    return list(seen)


def _units(body: str, encoding: Encoding) -> list[int]:
    if encoding == "GSM-7":
        return [2 if ch in GSM7_EXTENSION else 1 for ch in body]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in body]


def count_segments(body: str, encoding: Encoding | None = None) -> int:
    """How many SMS segments the body takes (at least 1)."""
    enc = encoding or encoding_of(body)
    single, multi = (160, 153) if enc == "GSM-7" else (70, 67)
    units = _units(body, enc)
    if sum(units) <= single:
        return 1
    segments, used = 1, 0
    for u in units:
        if used + u > multi:
            segments += 1
            used = 0
        used += u
    return segments


def has_opt_out(body: str, opt_out_line: str) -> bool:
    return bool(OPT_OUT_RE.search(body)) or (
        bool(opt_out_line.strip()) and opt_out_line.strip().lower() in body.lower()
    )


def with_opt_out(body: str, opt_out_line: str) -> str:
    """Trim the body and append the opt-out line on its own line unless present."""
    text = body.strip()
    line = opt_out_line.strip()
    if not line or has_opt_out(text, line):
        return text
    return f"{text}\n{line}" if text else line
