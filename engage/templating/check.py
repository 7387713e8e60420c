"""``engage validate`` for templates: compile and render everything, up front.

A missing variable or a sandbox violation must surface before the campaign
runs, not as a ``render_error`` for every customer at 10:00. So we compile
every ``*.j2`` file, render every campaign's channels (and every template
folder) against a realistic sample customer, and apply the compliance rules of
SPEC §4: a marketing email links to ``unsubscribe_url`` and shows the shop's
postal address; an SMS stays within ``max_sms_segments``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..customers.recipients import Recipient
from ..errors import EngageError, Problem
from ..timeutil import utcnow
from .context import CampaignInfo, sample_recipient
from .environment import TemplateRenderError, render_error
from .htmltext import html_to_text
from .renderer import HTML, SMS, TEXT, Snapshot
from .sms import non_gsm_chars

if TYPE_CHECKING:
    from .renderer import Renderer

PLACEHOLDER_KEY = "validate-only-placeholder-secret-key"
CONFIG_FILE = "config.yaml"


class Watch(Protocol):
    def starting(self, folder: str, channel: str) -> bool:
        """About to render ``folder``'s ``channel``; False skips it."""
        ...

    def failed(self, folder: str, channel: str, cause: BaseException) -> None:
        """That render failed because of ``cause``."""
        ...


@dataclass(frozen=True)
class _Target:
    folder: str
    info: CampaignInfo
    channels: tuple[str, ...]
    strict: bool  # compliance problems are errors (else warnings)
    used_by: str | None  # campaign name, for messages


def _channels_of(campaign: Any) -> tuple[str, ...]:
    raw = (
        campaign.get("channels")
        if isinstance(campaign, dict)
        else getattr(campaign, "channels", None)
    )
    if not raw:
        return ("email", "sms")
    return tuple(str(getattr(c, "value", c)) for c in raw)


def _targets(snap: Snapshot, campaigns: Iterable[Any] | None) -> list[_Target]:
    folders = snap.folders()
    targets: list[_Target] = []
    used: set[str] = set()
    for c in campaigns or ():
        info = CampaignInfo.of(c)
        folder = info.template or info.name
        used.add(folder)
        targets.append(_Target(folder, info, _channels_of(c), not info.transactional, info.name))
    for folder, chans in folders.items():
        if folder in used:
            continue
        info = CampaignInfo(
            name=folder,
            description=f"{folder} (sample)",
            template=folder,
            utm={"source": "engage", "medium": "email", "campaign": folder},
        )
        targets.append(_Target(folder, info, tuple(sorted(chans)), campaigns is None, None))
    return targets


def _address_lines(address: str) -> list[str]:
    return [
        " ".join(line.split()) for line in address.replace(",", "\n").splitlines() if line.strip()
    ]


def check_snapshot(
    renderer: Renderer,
    snap: Snapshot,
    campaigns: Iterable[Any] | None = None,
    *,
    now: datetime | None = None,
    sample: Recipient | None = None,
    watch: Watch | None = None,
) -> list[Problem]:
    """Every problem of the snapshot's templates, rendered against ``sample``.

    ``watch`` (used by the check's child process, ``isolation.py``) is told
    which folder and channel is about to render, may skip folders, and sees
    the exception behind every failed render.
    """
    cfg = renderer.config
    shown = renderer.shown_root
    now = now or utcnow()
    sample = sample or sample_recipient(cfg, now)
    problems: list[Problem] = []
    campaigns = list(campaigns) if campaigns is not None else None

    secret = renderer._secret
    if not secret:
        problems.append(
            Problem(
                CONFIG_FILE,
                None,
                None,
                "ENGAGE_SECRET_KEY",
                "not set in the environment: unsubscribe links cannot be signed when sending",
                "warning",
            )
        )
        secret = PLACEHOLDER_KEY
    if not cfg.public_url.startswith("https://"):
        problems.append(
            Problem(
                CONFIG_FILE,
                None,
                None,
                "public_url",
                "should be https: mailbox providers require an https "
                "List-Unsubscribe URL (RFC 8058)",
                "warning",
            )
        )
    if not snap.files:
        problems.append(Problem(shown, None, None, None, "no templates found"))

    # Compile everything (layouts and unused files too): syntax errors, and a
    # snapshot that holds every template compiled.
    broken: set[str] = set()  # reported once here, not again per campaign below
    for name in sorted(snap.files):
        try:
            snap.env.get_template(name)
        except Exception as exc:
            err = render_error(exc, renderer.root, shown, name)
            broken.add(err.template or "")
            problems.append(err.problem())

    folders = snap.folders()
    for folder, chans in folders.items():
        if not chans:
            problems.append(
                Problem(
                    f"{shown}/{folder}",
                    None,
                    None,
                    None,
                    "incomplete template folder: email needs subject.j2 and "
                    "email.html.j2, SMS needs sms.j2",
                )
            )

    postal_reported = False
    for t in _targets(snap, campaigns):
        sev = "error" if t.strict else "warning"
        who = f" (campaign {t.used_by})" if t.used_by else ""
        if t.folder not in folders:
            problems.append(
                Problem(f"{shown}/{t.folder}", None, None, None, f"template folder not found{who}")
            )
            continue
        for channel in t.channels:
            if channel not in ("email", "sms"):
                continue
            if watch is not None and not watch.starting(t.folder, channel):
                continue
            try:
                if channel == "email":
                    email = renderer._email(snap, t.folder, t.info, sample, now, secret)
                else:
                    sms = renderer._sms(snap, t.folder, t.info, sample, now, secret)
            except TemplateRenderError as exc:
                if watch is not None:
                    watch.failed(t.folder, channel, exc.__cause__ or exc)
                if exc.template in broken:
                    continue
                problems.append(
                    Problem(
                        exc.template or f"{shown}/{t.folder}",
                        exc.line,
                        None,
                        None,
                        exc.detail + who,
                    )
                )
                continue
            except EngageError as exc:  # e.g. a secret key that is too short
                problems.append(Problem(CONFIG_FILE, None, None, None, str(exc)))
                continue
            if channel == "email":
                html_path = f"{shown}/{t.folder}/{HTML}"
                too_large = renderer.html_too_large(email.html)
                if too_large:
                    problems.append(Problem(html_path, None, None, None, too_large + who, sev))
                if t.info.transactional:
                    continue
                url = email.headers["List-Unsubscribe"][1:-1]
                if url not in email.html:
                    problems.append(
                        Problem(
                            html_path,
                            None,
                            None,
                            None,
                            "a marketing email must link to {{ unsubscribe_url }}" + who,
                            sev,
                        )
                    )
                if f"{t.folder}/{TEXT}" in snap.files and url not in email.text:
                    problems.append(
                        Problem(
                            f"{shown}/{t.folder}/{TEXT}",
                            None,
                            None,
                            None,
                            "the text part should include {{ unsubscribe_url }}" + who,
                            "warning",
                        )
                    )
                lines = _address_lines(cfg.shop.postal_address)
                if not lines:
                    if not postal_reported and t.strict:
                        problems.append(
                            Problem(
                                CONFIG_FILE,
                                None,
                                None,
                                "shop.postal_address",
                                "marketing email must show the shop's postal "
                                "address, and it is empty",
                            )
                        )
                        postal_reported = True
                else:
                    seen = " ".join(html_to_text(email.html).split())
                    if not all(line in seen for line in lines):
                        problems.append(
                            Problem(
                                html_path,
                                None,
                                None,
                                None,
                                "a marketing email must show the shop's postal "
                                "address ({{ shop.postal_address }})" + who,
                                sev,
                            )
                        )
            else:
                sms_path = f"{shown}/{t.folder}/{SMS}"
                why = ""
                if sms.encoding == "UCS-2":
                    chars = "".join(non_gsm_chars(sms.body)[:5])
                    why = f"; UCS-2 (70 characters per segment) because of {chars!r}"
                if sms.segments > cfg.max_sms_segments:
                    problems.append(
                        Problem(
                            sms_path,
                            None,
                            None,
                            None,
                            f"SMS takes {sms.segments} segments, more than "
                            f"max_sms_segments={cfg.max_sms_segments}{why}{who}",
                        )
                    )
                elif sms.segments > 1:
                    problems.append(
                        Problem(
                            sms_path,
                            None,
                            None,
                            None,
                            f"SMS takes {sms.segments} segments (each is billed){why}{who}",
                            "warning",
                        )
                    )
    return _dedupe(problems)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    out: list[Problem] = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
