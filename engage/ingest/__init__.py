"""CSV/JSONL import of customers, interactions and points (SPEC §2, §9, §12).

``import_file`` streams a file in batches; ``import_rows`` takes decoded rows
and is what the HTTP ingest API reuses. Both are idempotent upserts, report
bad rows as ``source:line: field: why`` without stopping good ones, and keep
``customer_facts`` current in the transaction of every batch.
"""

from .fields import KINDS
from .runner import (
    ERRORS_KEPT,
    ImportInterrupted,
    ImportProgress,
    ImportResult,
    import_file,
    import_rows,
)
from .sources import FORMATS

__all__ = [
    "ERRORS_KEPT",
    "FORMATS",
    "KINDS",
    "ImportInterrupted",
    "ImportProgress",
    "ImportResult",
    "import_file",
    "import_rows",
]
