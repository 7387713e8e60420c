"""Templates (SPEC §4): sandboxed Jinja2 rendering of campaign emails and SMS.

Public API::

    Renderer(config, *, secret_key=None)
        .render_email(template, campaign, recipient, now, *, message_ref=None) -> RenderedEmail
        .render_sms(template, campaign, recipient, now) -> RenderedSms
        .check(campaigns=None, *, now=None, sample=None) -> list[Problem]
        .reload(campaigns=None, *, now=None) -> list[Problem]
        .templates() -> {folder: {"email", "sms"}}
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
