"""Streaming CSV/JSONL readers with physical line numbers, and rejects writers.

Files are decoded as UTF-8 by the C-level text layer with invalid bytes kept
as escapes, so a bad byte sequence rejects one row instead of aborting the
file (and goes back to the rejects file byte for byte); the byte position
drives the progress bar, and nothing but the current batch is in memory.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import EngageError, Problem
from .fields import COLUMNS, REQUIRED, RowInvalid

FORMATS = ("csv", "jsonl")
_FORMAT_ALIASES = {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl"}
_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)


@dataclass(slots=True)
class SourceRow:
    """One record as read: where it started, its values, and what to write
    back to the rejects file (the original cells or object)."""

    line: int
    data: dict[str, Any]
    raw: Any = None
    error: RowInvalid | None = None
    quote_line: int | None = None  # CSV: a record spanning lines; where its quote opened
    end_line: int | None = None  # and its last line


def infer_format(path: str, fmt: str | None) -> str:
    if fmt:
        found = _FORMAT_ALIASES.get(fmt.strip().lower())
        if found is None:
            raise EngageError(f"unknown format {fmt!r}: use csv or jsonl")
        return found
    name = path.lower().removesuffix(".gz")
    for ext, found in _FORMAT_ALIASES.items():
        if name.endswith("." + ext):
            return found
    if path == "-":
        raise EngageError("reading from stdin needs --format csv or --format jsonl")
    raise EngageError(f"{path}: cannot tell the format from the name: use --format csv or jsonl")


@dataclass
class Input:
    text: IO[str]  # UTF-8 (BOM dropped), undecodable bytes as surrogate escapes
    name: str  # how errors name the file
    size: int | None  # bytes on disk, for progress; None for stdin
    position: Callable[[], int]  # bytes consumed so far (of ``size``)
    reopen: Callable[[], IO[str]] | None = None  # a fresh text stream (not for stdin)


def _text(binary: IO[bytes]) -> IO[str]:
    return io.TextIOWrapper(
        binary,  # type: ignore[arg-type]
        encoding="utf-8-sig",
        errors="surrogateescape",
        newline="",
    )


@contextmanager
def open_input(path: str) -> Iterator[Input]:
    """Open a file (or ``-`` for stdin, ``.gz`` transparently) for streaming."""
    if path == "-":
        yield Input(_text(sys.stdin.buffer), "<stdin>", None, lambda: 0)
        return
    p = Path(path)
    if not p.exists():
        raise EngageError(f"{path}: no such file")
    if p.is_dir():
        raise EngageError(f"{path}: is a directory, not a file")
    try:
        raw = p.open("rb")
    except OSError as exc:
        raise EngageError(f"{path}: cannot read: {exc.strerror}") from None
    gz = path.lower().endswith(".gz")

    def reopen() -> IO[str]:
        return _text(gzip.open(p, "rb") if gz else p.open("rb"))  # type: ignore[arg-type]

    with raw:
        size = os.fstat(raw.fileno()).st_size
        binary: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw  # type: ignore[assignment]
        yield Input(_text(binary), path, size, raw.tell, reopen)


class CsvSource:
    """CSV with a header row (line 1). Header names match case-insensitively.

    Read strictly: a quote that is never closed is an error naming the line
    where it opened (a lenient reader would swallow the rest of the file into
    one value), and so is text after a closing quote. Records may span lines
    (quoted line breaks); ``SourceRow.quote_line`` then says where the quote
    that spans them opened, for the errors of values that must not hold one.
    """

    def __init__(self, inp: Input, kind: str):
        self._reopen = inp.reopen
        self._reader = csv.reader(inp.text, strict=True)
        try:
            self.header = next(self._reader)
        except StopIteration:
            raise EngageError(f"{inp.name}: empty file, expected a CSV header line") from None
        except csv.Error as exc:
            raise EngageError(f"{inp.name}:1: cannot read the CSV header: {exc}") from None
        known = COLUMNS[kind]
        self.columns = [
            low if (low := h.strip().lower()) in known else h.strip() for h in self.header
        ]
        dups = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if dups:
            raise EngageError(f"{inp.name}:1: duplicate column(s): {', '.join(dups)}")
        missing = []
        for need in REQUIRED[kind]:
            options = (need,) if isinstance(need, str) else need
            if not any(o in self.columns for o in options):
                missing.append(" or ".join(options))
        if missing:
            raise EngageError(
                f"{inp.name}:1: missing required column(s) for {kind}: {', '.join(missing)}"
                f" (found: {', '.join(self.columns) or 'none'})"
            )

    def __iter__(self) -> Iterator[SourceRow]:
        reader, width, columns = self._reader, len(self.columns), self.columns
        prev = reader.line_num
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                start, end = prev + 1, reader.line_num
                yield SourceRow(start, {}, [], self._error(exc, start, end))
                prev = end
                continue
            start, prev = prev + 1, reader.line_num
            joined = "".join(cells)
            if not joined.strip():
                continue  # blank line, or a row of empty cells
            if not joined.isascii() and _ESCAPED.search(joined):
                yield SourceRow(start, {}, cells, _NOT_UTF8)
            elif len(cells) != width:
                why = f"expected {width} cells as in the header, found {len(cells)}"
                if prev > start:
                    why += f" (is the quote opened on line {start} closed where it should be?)"
                yield SourceRow(start, {}, cells, RowInvalid("csv", why))
            elif prev > start:  # quoted line breaks
                yield SourceRow(
                    start, dict(zip(columns, cells, strict=True)), cells, None, start, prev
                )
            else:
                yield SourceRow(start, dict(zip(columns, cells, strict=True)), cells)

    def _error(self, exc: csv.Error, start: int, end: int) -> RowInvalid:
        text = str(exc)
        if "unexpected end of data" in text:
            return RowInvalid(
                "csv",
                f"the quote opened on line {self._open_quote(start, end)} is never closed:"
                f" lines {start}-{end} (to the end of the file) were not imported",
            )
        if "field larger than field limit" in text:
            # Python's csv stops a value at 128 KiB: a quote left open swallows
            # lines until then, and reading resumes at the next line.
            return RowInvalid(
                "csv",
                f"a value longer than {csv.field_size_limit():,} characters: is the quote"
                f" opened on line {self._open_quote(start, end)} closed? Lines {start}-{end}"
                " were not imported",
            )
        return RowInvalid("csv", text)

    def _open_quote(self, start: int, end: int) -> int:
        """The line where the quote still open at line ``end`` opened (read
        again from the file; the record's first line for stdin)."""
        if self._reopen is None:
            return start
        inside, opened = False, start
        with self._reopen() as text:
            for n, line in enumerate(text, start=1):
                if n < start:
                    continue
                if n > end:
                    break
                for ch in line:
                    if ch == '"':
                        inside = not inside
                        if inside:
                            opened = n
        return opened


_NOT_UTF8 = RowInvalid("encoding", "not valid UTF-8 text")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class JsonlSource:
    """One JSON object per line; blank lines are skipped."""

    def __init__(self, inp: Input, kind: str):
        self._text = inp.text

    def __iter__(self) -> Iterator[SourceRow]:
        loads = json.loads
        for lineno, text in enumerate(self._text, start=1):
            if not text.strip():
                continue
            if not text.isascii() and _ESCAPED.search(text):
                yield SourceRow(lineno, {}, text.rstrip("\r\n"), _NOT_UTF8)
                continue
            try:
                obj = loads(text, parse_constant=_no_constants)
            except ValueError as exc:
                yield SourceRow(lineno, {}, text.rstrip("\r\n"), RowInvalid("json", str(exc)))
                continue
            if not isinstance(obj, dict):
                why = f"expected a JSON object, got {type(obj).__name__}"
                yield SourceRow(lineno, {}, obj, RowInvalid("json", why))
                continue
            yield SourceRow(lineno, obj, obj)


def open_source(inp: Input, fmt: str, kind: str) -> CsvSource | JsonlSource:
    return CsvSource(inp, kind) if fmt == "csv" else JsonlSource(inp, kind)


class CsvRejects:
    """The rejected rows as they were, under the original header plus ``error``."""

    def __init__(self, fh: IO[str], header: list[str]):
        self._writer = csv.writer(fh, lineterminator="\n")
        self._width = len(header)
        self._writer.writerow([*header, "error"])

    def write(self, row: SourceRow, problem: Problem) -> None:
        cells = list(row.raw) if isinstance(row.raw, list) else []
        head, extra = cells[: self._width], cells[self._width :]
        head += [""] * (self._width - len(head))
        self._writer.writerow([*head, str(problem), *extra])


class JsonlRejects:
    """The rejected objects with an ``_error`` key (``_line`` for unparsable lines)."""

    def __init__(self, fh: IO[str]):
        self._fh = fh

    def write(self, row: SourceRow, problem: Problem) -> None:
        if isinstance(row.raw, dict):
            obj = {**row.raw, "_error": str(problem)}
        else:
            obj = {"_line": row.raw, "_error": str(problem)}
        self._fh.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")


@contextmanager
def open_rejects(
    path: str | os.PathLike[str], source: CsvSource | JsonlSource
) -> Iterator[CsvRejects | JsonlRejects]:
    """Create (or truncate) the rejects file, even when nothing is rejected,
    so a stale file from an earlier run never survives."""
    try:
        # surrogateescape: rows with bytes that were not UTF-8 go back as they were
        fh = open(path, "w", encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115
    except OSError as exc:
        raise EngageError(f"{path}: cannot write rejects: {exc.strerror}") from None
    with fh:
        if isinstance(source, CsvSource):
            yield CsvRejects(fh, source.header)
        else:
            yield JsonlRejects(fh)
