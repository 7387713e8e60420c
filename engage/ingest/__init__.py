"""CSV/JSONL import of customers, interactions and points (SPEC §2, §9, §12).

``import_file`` streams a file in batches; ``import_rows`` takes decoded rows
and is what the HTTP ingest API reuses. Both are idempotent upserts and
report bad rows as ``source:line: field: why`` without stopping good ones.
"""

from .fields import KINDS
from .runner import ERRORS_KEPT, ImportResult, import_file, import_rows
from .sources import FORMATS

__all__ = ["ERRORS_KEPT", "FORMATS", "KINDS", "ImportResult", "import_file", "import_rows"]
