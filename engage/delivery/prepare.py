"""Everything a claimed message needs before its provider call: the customer's
current data, the send-time checks, the rendered message.

``prepare`` is one plain function. The dispatcher runs it in its own process
for small batches, and in a ``Helper`` process while there is a backlog: the
sending threads spend most of their time inside the (pure Python) SDKs, and
rendering in the same process would compete with them for the GIL. The helper
reads the database itself and renders with its own ``Renderer``, so only the
claimed rows go in and only the rendered messages come back.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from .. import logs
from ..config import Config
from ..customers.recipients import Recipient, load_recipients
from ..db.session import in_memory_sqlite
from ..errors import EngageError
from ..planning import suppressions
from ..planning.policy import Suppressions, reachability
from ..templating.context import CampaignInfo
from ..templating.renderer import Renderer, Snapshot
from .channels.base import Outgoing

log = logging.getLogger(__name__)


@dataclass
class Claimed:
    id: int
    campaign: str
    customer_id: str
    channel: str
    template: str
    attempts: int
    lease_expires_at: datetime | None = None  # wall clock


@dataclass
class Outcome:
    """What happened to one claimed message, written by the dispatcher's recorder
    together with the others of its chunk.

    ``status`` ``released`` gives the message back (never handed to a provider);
    any other status is final for this attempt, with ``values`` the extra
    columns to set. ``suppress`` is a suppression row to add first.
    """

    msg: Claimed
    status: str
    values: dict[str, Any] = field(default_factory=dict)
    suppress: tuple[str, str, str | None, str, str | None] | None = None


@dataclass
class Ready:
    """A message that passed the send-time checks and is rendered."""

    msg: Claimed
    outgoing: Outgoing


def prepare(
    engine: Engine,
    config: Config,
    renderer: Renderer,
    claimed: Sequence[Claimed],
    campaigns: Mapping[str, Any],
    now: datetime,
) -> list[Ready | Outcome]:
    """For each claimed message: ``Ready``, or the ``Outcome`` that ends it here
    (``cancelled`` by the send-time checks, ``render_error``)."""
    with engine.connect() as conn:
        ids = [c.customer_id for c in claimed]
        recipients = load_recipients(conn, config, ids, now)
        supp = suppressions.load_for(conn, list(recipients.values()))
    campaigns = campaign_infos(campaigns, {c.campaign for c in claimed})
    out: list[Ready | Outcome] = []
    for msg in claimed:
        try:
            out.append(
                _prepare_one(
                    config, renderer, msg, recipients.get(msg.customer_id), supp, campaigns, now
                )
            )
        except Exception as exc:  # a bug for one message must not strand the batch
            log.exception(
                "prepare crashed", extra={"event": "dispatch_error", "message_id": msg.id}
            )
            out.append(Outcome(msg, "failed", {"error": f"internal error: {type(exc).__name__}"}))
    return out


def campaign_infos(campaigns: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """What rendering reads of each named campaign, built once per batch, not
    per message (``CampaignInfo.of`` dumps a campaign's pydantic UTM model).
    A campaign that cannot be read stays as it is: its messages then fail one
    by one at render time, as before, instead of failing the batch."""
    infos: dict[str, Any] = {}
    for name in names:
        if name in campaigns:
            try:
                infos[name] = CampaignInfo.of(campaigns[name])
            except Exception:
                infos[name] = campaigns[name]
    return infos


def _prepare_one(
    config: Config,
    renderer: Renderer,
    msg: Claimed,
    recipient: Recipient | None,
    supp: Suppressions,
    campaigns: Mapping[str, Any],
    now: datetime,
) -> Ready | Outcome:
    if recipient is None:
        return Outcome(msg, "cancelled", {"error": "customer no longer exists"})
    campaign = campaigns.get(msg.campaign)
    if campaign is None:
        return Outcome(msg, "cancelled", {"error": "campaign no longer exists or is invalid"})
    address, reason = reachability(recipient, msg.channel, config)
    if reason is None and address and supp.blocks(msg.channel, address, recipient.customer_id):
        reason = "suppressed"
    if reason is not None or not address:
        return Outcome(msg, "cancelled", {"error": f"at send time: {reason}"})
    try:
        if msg.channel == "email":
            email = renderer.render_email(
                msg.template, campaign, recipient, now, message_ref=str(msg.id)
            )
            outgoing = Outgoing(
                message_id=msg.id,
                channel="email",
                to=address,
                campaign=msg.campaign,
                subject=email.subject,
                html=email.html,
                text=email.text,
                headers=dict(email.headers),
            )
        else:
            sms = renderer.render_sms(msg.template, campaign, recipient, now)
            outgoing = Outgoing(
                message_id=msg.id, channel="sms", to=address, campaign=msg.campaign, text=sms.body
            )
    except EngageError as exc:
        return Outcome(msg, "render_error", {"error": str(exc), "address": address})
    return Ready(msg, outgoing)


# -- the helper process ------------------------------------------------------------------
PARENT_CHECK_SECONDS = 0.5
_state: dict[str, Any] = {}  # in the helper: its engine, config, renderer and generation


def _helper_start(
    config: Config, db_url: str, parent: int, log_as: tuple[logging.Formatter | None, int]
) -> None:
    from ..db.session import make_engine

    logs.inherit(*log_as)  # masked, JSON or text, like the dispatcher's own log

    # The dispatcher decides when to stop. If it dies (SIGKILL, os._exit), the
    # helper must not linger: its own copy of the task queue keeps the pipe
    # open, so it watches the dispatcher's pid instead (which may be gone already).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    _state.update(engine=make_engine(db_url), config=config)


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _helper_ping() -> bool:
    return True


def _helper_prepare(
    claimed: Sequence[Claimed],
    campaigns: Mapping[str, CampaignInfo],
    now: datetime,
    sources: Mapping[str, str] | None,
) -> list[Ready | Outcome]:
    if sources is not None:  # the dispatcher's templates, as last checked
        _state["renderer"] = Renderer(_state["config"], sources=sources)
    return prepare(_state["engine"], _state["config"], _state["renderer"], claimed, campaigns, now)


class Helper:
    """One process that runs ``prepare`` for the dispatcher (see the module doc).

    It renders from the sources of the dispatcher's current template snapshot,
    sent along whenever that snapshot changes (a reload that passed its checks),
    never from the disk: what it renders is exactly what the dispatcher checked.
    """

    def __init__(self, config: Config, db_url: str) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_helper_start,
            initargs=(config, db_url, os.getpid(), logs.inherited()),
        )
        # Starting takes a second (imports, templates); batches are prepared
        # in-process until this has come back.
        self._started = self._pool.submit(_helper_ping)
        self._generation: int | None = None  # of the templates the helper has

    @property
    def ready(self) -> bool:
        return self._started.done() and self._started.exception() is None

    @property
    def failed(self) -> bool:
        return self._started.done() and self._started.exception() is not None

    def submit(
        self,
        claimed: Sequence[Claimed],
        campaigns: Mapping[str, Any],
        now: datetime,
        templates: Snapshot,
    ) -> Future[list[Ready | Outcome]]:
        """Prepare a batch; tasks run one at a time, in order, so templates sent
        with one batch hold for the batches after it."""
        infos = campaign_infos(campaigns, {c.campaign for c in claimed})
        sources = None
        if templates.generation != self._generation:
            sources, self._generation = templates.sources, templates.generation
        return self._pool.submit(_helper_prepare, list(claimed), infos, now, sources)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def helper_url(engine: Engine) -> str | None:
    """The URL a helper process can open, or None if it cannot share this
    database (an in-memory SQLite database lives only in this process)."""
    if in_memory_sqlite(engine.url):
        return None
    return engine.url.render_as_string(hide_password=False)


__all__ = ["Claimed", "Helper", "Outcome", "Ready", "helper_url", "prepare"]
