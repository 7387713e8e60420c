"""Deciding who gets what (SPEC §5): the pure policy rules, the planner that
turns one occurrence into outbox rows, catch-up after downtime, suppressions,
the calendar of upcoming occurrences, and the dry run / preview.

Stage 3 of the flow: it reads campaigns and customers' facts and writes
``planned`` messages; it never talks to a provider.
"""
