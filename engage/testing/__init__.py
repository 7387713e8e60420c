"""Test helpers shipped with engage, so users can test their own campaigns too.

``FakeSendGrid`` and ``FakeTwilio`` are local HTTP servers that the real
provider SDKs talk to; see docs/testing.md.
"""

from .fakes import FakeSendGrid, FakeTwilio, Recorded, Reply

__all__ = ["FakeSendGrid", "FakeTwilio", "Recorded", "Reply"]
