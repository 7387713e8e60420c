"""engage's web interface for marketers (SPEC §13): calendar, campaigns, customers, report.

``create_ui(config, engine)`` returns a Starlette app to mount at ``/`` of the
HTTP side (after its API routes), or None when no sign-in is configured.
See docs/ui.md.
"""

from .app import create_ui
from .report import CampaignFigures, Figure, Group, ReportData, ReportSource, SeriesPoint

__all__ = [
    "CampaignFigures",
    "Figure",
    "Group",
    "ReportData",
    "ReportSource",
    "SeriesPoint",
    "create_ui",
]
