"""Read-only views over what happened: one customer's timeline (``timeline``)
and, with SPEC §10, the campaign and shop report.

Above delivery, below the edges: it reads every table and writes none.
"""
