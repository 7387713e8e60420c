"""Read-only views over what happened: one customer's timeline (``timeline``)
and the shop and campaign report of SPEC §10 (``build_report``).

Above delivery, below the edges: it reads every table and writes none.
"""

from .period import Period
from .report import Report, build_report, campaign_names

__all__ = ["Period", "Report", "build_report", "campaign_names"]
