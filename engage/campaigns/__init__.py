"""Campaign files (SPEC §3): the schema, loading with file:line errors, crontab
schedules, the audience compiler (conditions -> one SELECT) and ``validate``.

Stage 2 of the flow: it reads customers' facts (``engage.customers``) and the
templates (``engage.templating``); planning, delivery and the edges read it.
"""
