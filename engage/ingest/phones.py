"""Phone numbers of a large customer file, validated on the machine's other core.

``phonenumbers`` takes about 20 µs to parse and validate one number (half of
the per-customer work of an import), and its answer cannot be cached: a
customer list holds as many numbers as customers. A file import of customers
therefore hands each batch's numbers to one helper process as soon as the
batch is read; the import meanwhile writes the previous batch and parses the
other columns, and collects the answers when it parses the batch.

The helper runs ``fields.parse_phone`` itself, so its answers are exactly
the in-process ones. It is started for big files only (a first batch with at
least ``HELPER_MIN_PHONES`` numbers: starting it costs about a third of a
second) and is stopped with the import; if it cannot be used, numbers are
validated in-process.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from .fields import RowInvalid, parse_phone

log = logging.getLogger(__name__)

HELPER_MIN_PHONES = 2_000
Request = tuple[Any, str, bool]  # raw value, region, region from the country column
Answer = tuple[str | None, str | None]  # E.164 or None, the reason it is invalid


def _ignore_sigint() -> None:
    """Ctrl-C is the importer's to handle (it reaches the whole process group)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_phones(requests: Sequence[Request]) -> list[Answer]:
    """Each number as ``parse_phone`` reads it: (E.164, None) or (None, why)."""
    out: list[Answer] = []
    for raw, region, from_country in requests:
        try:
            out.append((parse_phone(raw, region, from_country=from_country), None))
        except RowInvalid as exc:
            out.append((None, exc.why))
    return out


class PhoneHelper:
    """One helper process validating batches of numbers, in submission order."""

    def __init__(self) -> None:
        # spawn: a forked child would inherit the importer's database connections
        # and threads.
        context = multiprocessing.get_context("spawn")
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            1, mp_context=context, initializer=_ignore_sigint
        )

    def submit(self, requests: list[Request]) -> Future[list[Answer]] | None:
        if self._pool is None:
            return None
        try:
            return self._pool.submit(check_phones, requests)
        except Exception as exc:  # noqa: BLE001 - a broken helper: validate in-process
            log.warning(
                "phone helper unavailable: %s", exc, extra={"event": "import_phone_helper"}
            )
            self.close()
            return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
