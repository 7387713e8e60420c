"""Templates (SPEC §4): sandboxed Jinja2 rendering of campaign emails and SMS.

Public API::

    Renderer(config, *, secret_key=None, placeholder_links=False)
        .render_email(template, campaign, recipient, now, *, message_ref=None) -> RenderedEmail
        .render_sms(template, campaign, recipient, now) -> RenderedSms
        .check(campaigns=None, *, now=None, sample=None) -> list[Problem]
        .reload(campaigns=None, *, now=None, initial=False) -> list[Problem]
        .templates() -> {folder: {"email", "sms"}}

``check`` and ``reload`` render in a child process within ``config.template_check``
(``isolation.py``); every render is bounded (``budget.py``); ``render_email`` and
``render_sms`` refuse HTML over ``max_email_html_kb`` and SMS over
``max_sms_segments``.
"""

from .context import CampaignInfo, sample_recipient
from .environment import TemplateRenderError, autoescape_for
from .htmltext import html_to_text
from .renderer import RenderedEmail, RenderedSms, Renderer, available_templates
from .sms import count_segments, encoding_of, has_opt_out, with_opt_out

__all__ = [
    "CampaignInfo",
    "RenderedEmail",
    "RenderedSms",
    "Renderer",
    "TemplateRenderError",
    "autoescape_for",
    "available_templates",
    "count_segments",
    "encoding_of",
    "has_opt_out",
    "html_to_text",
    "sample_recipient",
    "with_opt_out",
]
