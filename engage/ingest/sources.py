"""Streaming CSV/JSONL readers with physical line numbers, and rejects writers.

Files are read as bytes one line at a time and decoded per line, so a bad
byte sequence rejects one row instead of aborting the file, the byte count
drives the progress bar, and nothing but the current batch is in memory.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import EngageError, Problem
from .fields import COLUMNS, REQUIRED, RowInvalid

FORMATS = ("csv", "jsonl")
_FORMAT_ALIASES = {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl"}


@dataclass(slots=True)
class SourceRow:
    """One record as read: where it started, its values, and what to write
    back to the rejects file (the original cells or object)."""

    line: int
    data: dict[str, Any]
    raw: Any = None
    error: RowInvalid | None = None


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
    stream: Iterable[bytes]
    name: str  # how errors name the file
    size: int | None  # bytes on disk, for progress; None for stdin
    position: Callable[[], int]  # bytes consumed so far (of ``size``)


@contextmanager
def open_input(path: str) -> Iterator[Input]:
    """Open a file (or ``-`` for stdin, ``.gz`` transparently) for streaming."""
    if path == "-":
        lines = _CountingStream(sys.stdin.buffer)
        yield Input(lines, "<stdin>", None, lambda: lines.count)
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
    with raw:
        size = os.fstat(raw.fileno()).st_size
        if path.lower().endswith(".gz"):
            yield Input(gzip.GzipFile(fileobj=raw, mode="rb"), path, size, raw.tell)
        else:
            counting = _CountingStream(raw)
            yield Input(counting, path, size, lambda: counting.count)


class _CountingStream:
    """Binary line iterator that counts the bytes it handed out."""

    def __init__(self, stream: IO[bytes]):
        self._stream = stream
        self.count = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self.count += len(line)
            yield line


def _decoded(stream: Iterable[bytes], bad: set[int]) -> Iterator[str]:
    """UTF-8 lines (BOM dropped); the numbers of undecodable lines go to ``bad``."""
    for lineno, line in enumerate(stream, start=1):
        if lineno == 1:
            line = line.removeprefix(codecs.BOM_UTF8)
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            bad.add(lineno)
            yield line.decode("utf-8", "replace")


_NOT_UTF8 = RowInvalid("encoding", "not valid UTF-8 text")


class CsvSource:
    """CSV with a header row (line 1). Header names match case-insensitively."""

    def __init__(self, inp: Input, kind: str):
        self._bad: set[int] = set()
        self._reader = csv.reader(_decoded(inp.stream, self._bad))
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
        reader, width = self._reader, len(self.columns)
        prev = reader.line_num
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield SourceRow(prev + 1, {}, [], RowInvalid("csv", str(exc)))
                prev = reader.line_num
                continue
            start, prev = prev + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank line, or a row of empty cells
            if self._bad and any(n in self._bad for n in range(start, prev + 1)):
                yield SourceRow(start, {}, cells, _NOT_UTF8)
            elif len(cells) != width:
                why = f"expected {width} cells as in the header, found {len(cells)}"
                yield SourceRow(start, {}, cells, RowInvalid("csv", why))
            else:
                yield SourceRow(start, dict(zip(self.columns, cells, strict=True)), cells)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class JsonlSource:
    """One JSON object per line; blank lines are skipped."""

    def __init__(self, inp: Input, kind: str):
        self._stream = inp.stream

    def __iter__(self) -> Iterator[SourceRow]:
        bad: set[int] = set()
        for lineno, text in enumerate(_decoded(self._stream, bad), start=1):
            if not text.strip():
                continue
            if lineno in bad:
                yield SourceRow(lineno, {}, text.rstrip("\r\n"), _NOT_UTF8)
                continue
            try:
                obj = json.loads(text, parse_constant=_no_constants)
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
        fh = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise EngageError(f"{path}: cannot write rejects: {exc.strerror}") from None
    with fh:
        if isinstance(source, CsvSource):
            yield CsvRejects(fh, source.header)
        else:
            yield JsonlRejects(fh)
