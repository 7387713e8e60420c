"""Render one campaign's email or SMS for one customer.

``Renderer`` is built once per process and shared by the dispatcher's worker
threads: the compiled templates live in an immutable snapshot (environment +
the list of files it saw) that ``reload()`` replaces in one assignment, and
only after the new files passed ``check()``, so a broken edit never replaces
the last good version.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..config import Config
from ..customers.recipients import Recipient
from ..errors import Problem
from ..unsubscribe import make_token, unsubscribe_url
from .budget import bounded_join
from .context import CampaignInfo, build_context
from .environment import TemplateRenderError, make_environment, render_error
from .htmltext import html_to_text
from .isolation import QUARANTINE_FILE, CheckResult
from .sms import Encoding, count_segments, encoding_of, with_opt_out

SUBJECT = "subject.j2"
HTML = "email.html.j2"
TEXT = "email.txt.j2"
SMS = "sms.j2"
CHANNEL_FILES: dict[str, tuple[str, ...]] = {"email": (SUBJECT, HTML), "sms": (SMS,)}
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_WS = re.compile(r"\s+")
# In unsubscribe links rendered without ENGAGE_SECRET_KEY (previews, dry runs):
# plainly not a token, so nobody mistakes such a link for a working one.
PLACEHOLDER_TOKEN = "UNSIGNED-PREVIEW-set-ENGAGE_SECRET_KEY"


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str
    headers: dict[str, str]


@dataclass(frozen=True)
class RenderedSms:
    body: str
    encoding: Literal["GSM-7", "UCS-2"]
    segments: int


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the templates folder: compiled templates + file list."""

    env: ImmutableSandboxedEnvironment
    files: frozenset[str]  # posix names relative to the templates root
    generation: int = 0  # bumped by each reload that switched to a new snapshot
    # Folders whose check broke the time or memory budget (isolation.py): their
    # messages fail at once. Travels in ``sources`` as "<folder>/.quarantined".
    quarantined: Mapping[str, str] = field(default_factory=dict)

    @property
    def sources(self) -> dict[str, str]:
        """Name -> source of every template read into this snapshot."""
        return dict(self.env.loader.sources)  # type: ignore[union-attr]

    def folders(self) -> dict[str, frozenset[str]]:
        """Template folder -> channels it can render (``email``, ``sms``)."""
        found: dict[str, set[str]] = {}
        for name in self.files:
            folder, _, leaf = name.partition("/")
            if not leaf or "/" in leaf or folder.startswith(("_", ".")):
                continue
            chans = found.setdefault(folder, set())
            for channel, needed in CHANNEL_FILES.items():
                if all(f"{folder}/{f}" in self.files for f in needed):
                    chans.add(channel)
        return {k: frozenset(v) for k, v in sorted(found.items())}


def snapshot_of(root: Path, sources: Mapping[str, str], generation: int = 0) -> Snapshot:
    """A compiled snapshot of ``sources`` (name -> text), quarantine markers included."""
    marker = "/" + QUARANTINE_FILE
    quarantined = {n[: -len(marker)]: text for n, text in sources.items() if n.endswith(marker)}
    files = frozenset(n for n in sources if not n.endswith(marker))
    snap = Snapshot(make_environment(root, sources), files, generation, quarantined)
    for name in snap.files:
        try:
            snap.env.get_template(name)
        except Exception:  # reported by check(), raised again at render time
            continue
    return snap


def scan_files(root: Path) -> frozenset[str]:
    names: set[str] = set()
    if not root.is_dir():
        return frozenset()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        for fn in filenames:
            if fn.endswith(".j2"):
                names.add((rel / fn).as_posix())
    return frozenset(names)


def available_templates(config: Config) -> dict[str, frozenset[str]]:
    """Template folders under ``config.templates_path`` and the channels each supports."""
    root = config.templates_path
    return Snapshot(make_environment(root), scan_files(root)).folders()


class Renderer:
    """Sandboxed rendering of campaign templates (SPEC §4); thread-safe."""

    def __init__(
        self,
        config: Config,
        *,
        secret_key: str | None = None,
        sources: Mapping[str, str] | None = None,
        placeholder_links: bool = False,
    ):
        """``sources`` (name -> text) stands in for the templates folder: a copy
        of another Renderer's snapshot (see ``Snapshot.sources``).

        ``placeholder_links``: render unsubscribe links with ``PLACEHOLDER_TOKEN``
        instead of a signed token (previews and dry runs without
        ``ENGAGE_SECRET_KEY``); such a renderer must never be used to send."""
        self.config = config
        self.root = config.templates_path
        self.shown_root = Path(config.templates_dir).as_posix().rstrip("/") or "templates"
        self._secret = (
            secret_key if secret_key is not None else config.secrets.get("ENGAGE_SECRET_KEY")
        )
        self.placeholder_links = placeholder_links
        self._sources = sources
        self._lock = threading.Lock()
        self._snap = self._fresh_snapshot()

    # -- snapshots --------------------------------------------------------
    def _fresh_snapshot(self) -> Snapshot:
        """Read and compile every template now, so the snapshot is what is on disk now."""
        if self._sources is not None:
            return snapshot_of(self.root, self._sources)
        snap = Snapshot(make_environment(self.root), scan_files(self.root))
        for name in snap.files:
            try:
                snap.env.get_template(name)
            except Exception:  # reported by check(), raised again at render time
                continue
        return snap

    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    def templates(self) -> dict[str, frozenset[str]]:
        return self._snap.folders()

    def reload(
        self,
        campaigns: Iterable[Any] | None = None,
        *,
        now: datetime | None = None,
        initial: bool = False,
    ) -> list[Problem]:
        """Check the templates folder (in a child process, within the time and
        memory budget: ``isolation.py``) and switch to what was checked only if
        no error was found; otherwise the last good templates keep serving.

        ``initial`` (the daemon's start, when there is no last good version):
        switch even with errors; a folder that broke the budget is then
        quarantined, its messages failing at once as ``render_error``.
        Returns the problems found.
        """
        with self._lock:
            result = self._check_in_child(campaigns, now=now)
            if result.sources is not None and (result.ok or initial):
                self._snap = snapshot_of(self.root, result.sources, self._snap.generation + 1)
            return result.problems

    def check(
        self,
        campaigns: Iterable[Any] | None = None,
        *,
        now: datetime | None = None,
        sample: Recipient | None = None,
    ) -> list[Problem]:
        """Validate the templates on disk (``engage validate``), in a child
        process within the time and memory budget; see ``check.py``."""
        return self._check_in_child(campaigns, now=now, sample=sample).problems

    def _check_in_child(
        self,
        campaigns: Iterable[Any] | None,
        *,
        now: datetime | None = None,
        sample: Recipient | None = None,
    ) -> CheckResult:
        from .isolation import check_in_child

        return check_in_child(
            self.config,
            campaigns,
            now=now,
            sample=sample,
            secret=self._secret,
            sources=self._sources,
        )

    # -- rendering --------------------------------------------------------
    def _secret_key(self) -> str | None:
        """The signing key; None for placeholder links."""
        if self.placeholder_links:
            return None
        if self._secret is None:
            return self.config.secret("ENGAGE_SECRET_KEY")  # raises ConfigError naming the variable
        return self._secret

    def _context(
        self,
        snap: Snapshot,
        info: CampaignInfo,
        recipient: Recipient,
        now: datetime,
        channel: str,
        secret: str | None,
    ) -> dict[str, Any]:
        """The render context plus the environment's globals, built once per message.

        The token (three HMACs) is made once and shared by every part of the
        message; the merged dict is passed to each template as a *shared*
        context (see ``_render``), so Jinja does not copy it per template.
        Without a secret the link carries ``PLACEHOLDER_TOKEN``.
        """
        token = (
            make_token(secret, recipient.customer_id, channel, info.name)
            if secret is not None
            else PLACEHOLDER_TOKEN
        )
        url = unsubscribe_url(self.config.public_url, token)
        ctx = dict(snap.env.globals)
        ctx.update(build_context(self.config, info, recipient, now, url))
        return ctx

    def _require(self, snap: Snapshot, template: str, channel: str) -> None:
        if not _FOLDER_NAME.fullmatch(template):
            raise TemplateRenderError(f"not a template folder name: {template!r}")
        if template in snap.quarantined:
            raise TemplateRenderError(
                f"not rendered: {snap.quarantined[template]}",
                template=f"{self.shown_root}/{template}",
            )
        for leaf in CHANNEL_FILES[channel]:
            if f"{template}/{leaf}" not in snap.files:
                raise TemplateRenderError(
                    f"{channel} needs {leaf} in this template folder, and it is missing",
                    template=f"{self.shown_root}/{template}/{leaf}",
                )

    def _render(self, snap: Snapshot, name: str, ctx: dict[str, Any]) -> str:
        env = snap.env
        try:
            tpl = env.get_template(name)
            # What ``Template.render`` does, minus its two copies of the context
            # per template: ``ctx`` already holds the globals and is never
            # modified by rendering (assignments live in the Context's own vars).
            try:  # bounded_join: stops a template that writes without end (budget.py)
                return bounded_join(tpl.root_render_func(tpl.new_context(ctx, shared=True)))
            except Exception:
                env.handle_exception()  # re-raises with template file/line frames
        except Exception as exc:  # one customer's render error must not stop a batch
            raise render_error(exc, self.root, self.shown_root, name) from exc

    def render_email(
        self,
        template: str,
        campaign: Any,
        recipient: Recipient,
        now: datetime,
        *,
        message_ref: str | None = None,
    ) -> RenderedEmail:
        """Subject, HTML, text and headers of one email. Raises TemplateRenderError,
        also for HTML over ``max_email_html_kb``."""
        email = self._email(
            self._snap,
            template,
            CampaignInfo.of(campaign),
            recipient,
            now,
            self._secret_key(),
            message_ref,
        )
        problem = self.html_too_large(email.html)
        if problem:
            raise TemplateRenderError(problem, template=f"{self.shown_root}/{template}/{HTML}")
        return email

    def render_sms(
        self, template: str, campaign: Any, recipient: Recipient, now: datetime
    ) -> RenderedSms:
        """The SMS body with the opt-out line, its encoding and segment count.
        Raises TemplateRenderError, also for more than ``max_sms_segments``."""
        sms = self._sms(
            self._snap, template, CampaignInfo.of(campaign), recipient, now, self._secret_key()
        )
        if sms.segments > self.config.max_sms_segments:
            raise TemplateRenderError(
                f"SMS takes {sms.segments} segments ({sms.encoding}), more than "
                f"max_sms_segments={self.config.max_sms_segments}",
                template=f"{self.shown_root}/{template}/{SMS}",
            )
        return sms

    def html_too_large(self, html: str) -> str | None:
        """Why ``html`` is over ``max_email_html_kb`` (UTF-8 bytes), or None."""
        cap = self.config.max_email_html_kb * 1024
        if len(html) * 4 <= cap:  # no encoding needed: UTF-8 is at most 4 bytes a character
            return None
        size = len(html) if len(html) > cap else len(html.encode("utf-8"))
        if size <= cap:
            return None
        return (
            f"the HTML is {size / 1024:,.1f} KB, more than "
            f"max_email_html_kb={self.config.max_email_html_kb} "
            "(Gmail clips emails over 102 KB, unsubscribe link included)"
        )

    def _email(
        self,
        snap: Snapshot,
        template: str,
        info: CampaignInfo,
        recipient: Recipient,
        now: datetime,
        secret: str | None,
        message_ref: str | None = None,
    ) -> RenderedEmail:
        self._require(snap, template, "email")
        ctx = self._context(snap, info, recipient, now, "email", secret)
        # A subject is one header line: newlines from data would be header injection.
        subject = _WS.sub(" ", self._render(snap, f"{template}/{SUBJECT}", ctx)).strip()
        html = self._render(snap, f"{template}/{HTML}", ctx)
        if f"{template}/{TEXT}" in snap.files:
            text = self._render(snap, f"{template}/{TEXT}", ctx).strip() + "\n"
        else:
            text = html_to_text(html, opaque=(ctx["unsubscribe_url"],)) + "\n"
        headers: dict[str, str] = {}
        if not info.transactional:
            headers["List-Unsubscribe"] = f"<{ctx['unsubscribe_url']}>"
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        if message_ref:
            headers["X-Engage-Ref"] = message_ref
        return RenderedEmail(subject=subject, html=html, text=text, headers=headers)

    def _sms(
        self,
        snap: Snapshot,
        template: str,
        info: CampaignInfo,
        recipient: Recipient,
        now: datetime,
        secret: str | None,
    ) -> RenderedSms:
        self._require(snap, template, "sms")
        ctx = self._context(snap, info, recipient, now, "sms", secret)
        raw = self._render(snap, f"{template}/{SMS}", ctx)
        body = with_opt_out(raw, self.config.sms_opt_out_line)
        enc: Encoding = encoding_of(body)
        return RenderedSms(body=body, encoding=enc, segments=count_segments(body, enc))
