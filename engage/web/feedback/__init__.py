"""The database side of the feedback loop: what a webhook, an unsubscribe link
or an SMS reply changes. No HTTP here: the route modules of ``engage.web``
verify and decode requests, then call these functions.

Every function takes a connection inside the caller's transaction and works
set-based: a SendGrid batch of a thousand events is a handful of statements
(claim the event ids, read the messages, one guarded move per target state,
one insert per table), never a statement or a transaction per event.
"""

from .consent import Subscription, look_up, resubscribe, unsubscribe
from .email import Applied, EmailEvent, apply_sendgrid, parse_sendgrid
from .ledger import Outcomes, prune, transaction
from .sms import START_WORDS, STOP_WORDS, apply_twilio_inbound, apply_twilio_status, keyword

__all__ = [
    "STOP_WORDS",
    "START_WORDS",
    "Applied",
    "EmailEvent",
    "Outcomes",
    "Subscription",
    "apply_sendgrid",
    "apply_twilio_inbound",
    "apply_twilio_status",
    "keyword",
    "look_up",
    "parse_sendgrid",
    "prune",
    "resubscribe",
    "transaction",
    "unsubscribe",
]
