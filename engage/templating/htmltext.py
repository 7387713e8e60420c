"""Derive an email's plain-text part from its HTML, with no extra dependency.

Spam filters and text-only clients want a ``text/plain`` alternative that says
the same thing as the HTML. Marketers rarely write one, so we derive it: tags
go, links stay as ``text (url)`` so every link (unsubscribe included) survives,
block elements become line breaks, entities are decoded and whitespace is
collapsed the way a browser would.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_SKIP = frozenset({"head", "style", "script", "title", "template", "noscript"})
_PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote"})
_LINE = frozenset({"div", "tr", "td", "th", "section", "article", "header", "footer", "center"})
_VOID = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }
)
_HIDDEN = re.compile(r"display\s*:\s*none", re.IGNORECASE)
# HTML whitespace is ASCII only: a &nbsp; (or Babel's narrow no-break space) stays.
_SPACES = re.compile(r"[ \t\n\r\f]+")
_INLINE_WS = re.compile(r"[ \t\r\f]+")
_BLANKS = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0
        self._links: list[tuple[str, int]] = []  # (href, index into out where link text starts)
        self._img_alt: list[str] = []
        self._open: list[str] = []  # open non-void elements, to find where a hidden one ends
        self._hidden_at: int | None = None  # depth of the display:none element we are inside

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skip += 1
            return
        if self._skip:
            return
        a = {k: v or "" for k, v in attrs}
        if tag not in _VOID:
            self._open.append(tag)
            if self._hidden_at is None and _HIDDEN.search(a.get("style", "")):
                # A hidden preheader is for the inbox preview only, not for the text part.
                self._hidden_at = len(self._open)
        if self._hidden_at is not None:
            return
        if tag == "br":
            self.out.append("\n")
        elif tag == "hr":
            self.out.append("\n\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in _PARAGRAPH:
            self.out.append("\n\n")
        elif tag in _LINE:
            self.out.append("\n")
        elif tag == "a":
            self._links.append((a.get("href", "").strip(), len(self.out)))
            self._img_alt = []
        elif tag == "img" and self._links:
            self._img_alt.append(a.get("alt", "").strip())

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
            return
        if self._skip:
            return
        if tag in self._open:
            while self._open and self._open.pop() != tag:
                pass
            if self._hidden_at is not None:
                if len(self._open) < self._hidden_at:
                    self._hidden_at = None
                return
        if self._hidden_at is not None:
            return
        if tag in _PARAGRAPH:
            self.out.append("\n\n")
        elif tag in _LINE:
            self.out.append("\n")
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = _SPACES.sub(" ", "".join(self.out[start:])).strip(" ")
            if not label:
                label = " ".join(x for x in self._img_alt if x)
            del self.out[start:]
            self.out.append(_link_text(label, href))

    def handle_data(self, data: str) -> None:
        if not self._skip and self._hidden_at is None:
            self.out.append(_SPACES.sub(" ", data))


def _link_text(label: str, href: str) -> str:
    if not href or href.startswith("#") or href.lower().startswith("javascript:"):
        return label
    shown = href[7:] if href.lower().startswith("mailto:") else href
    if not label or label in (href, shown):
        return shown
    return f"{label} ({shown})"


def html_to_text(html: str) -> str:
    """Readable plain text for an HTML email body."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    raw = "".join(parser.out)
    lines = [_INLINE_WS.sub(" ", line).strip(" ") for line in raw.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()
