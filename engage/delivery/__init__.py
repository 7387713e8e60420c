"""Sending what was planned (SPEC §6): the outbox, preparing a claimed batch
(render from current data, re-check consent and suppressions), the dispatch
loop, ``engage send``, and the provider ``channels``.

Stage 4 of the flow: it reads the outbox that planning wrote and hands
messages to SendGrid, Twilio or the development channels.
"""
