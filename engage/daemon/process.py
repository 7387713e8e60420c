"""The ``engage run`` process: start-up checks, jobs, hot reload, signals, shutdown.

What each job does lives elsewhere (``catchup.plan_due``, the ``Dispatcher``,
``states.expire_leases``, ``status.heartbeat``); which job runs when is
``scheduler.py``. This module owns the process around them:

* **start**: the schema is at head; on SQLite an exclusive ``flock`` on
  ``<database>.lock`` makes a second daemon refuse to start; campaigns,
  templates and channels are loaded (a missing secret stops start-up);
* **hot reload**: a watcher compares modification times of the config file,
  ``campaigns/`` and ``templates/`` every ``WATCH_EVERY`` (SIGHUP forces a
  reload). An invalid edit is logged with its ``path:line:col`` problems and
  the last good version keeps running;
* **shutdown**: the first SIGTERM/SIGINT stops claiming and scheduling; sends
  already handed to a provider finish, claimed messages never sent go back
  to the queue (the Dispatcher does that when ``stop`` is set), and the
  process exits 0 — unless ``dispatch.shutdown_grace`` runs out or a second
  signal arrives: then it exits 1 at once, and whatever was mid-send stays
  ``sending`` until its lease turns it ``unknown`` (never resent).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from ..campaigns.loader import collect_campaigns
from ..campaigns.schema import Campaign
from ..config import Config, default_config_path, load_config
from ..db.states import Expired
from ..delivery.channels import build_channels
from ..delivery.dispatch import Dispatcher, DispatchStats, default_owner, expire_leases
from ..delivery.outbox import counts_by_status
from ..errors import ConfigError, EngageError, PlanningFailed, Problem, describe
from ..planning.catchup import plan_due
from ..planning.planner import PlanResult
from ..templating.renderer import Renderer
from ..timeutil import utcnow
from .scheduler import add_periodic, make_scheduler, run_soon, sync_campaigns
from .status import forget_worker, heartbeat

log = logging.getLogger(__name__)

WATCH_EVERY = timedelta(seconds=2)
HEARTBEAT_EVERY = timedelta(minutes=1)
SWEEP_EVERY = timedelta(seconds=30)


# -- start-up checks ---------------------------------------------------------------------
class DaemonLock:
    """An exclusive ``flock`` beside a SQLite database, held for the process lifetime."""

    def __init__(self, path: Path, handle: IO[str]):
        self.path = path
        self._handle = handle

    @classmethod
    def for_engine(cls, engine: Engine) -> DaemonLock | None:
        """Lock ``<db>.lock`` for a SQLite file; None for PostgreSQL or in-memory SQLite.

        Raises EngageError naming the process that holds it.
        """
        url = engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        import fcntl

        path = Path(url.database).resolve().with_name(Path(url.database).name + ".lock")
        handle = open(path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise EngageError(
                f"another engage run ({holder}) is already using {url.database}: "
                "SQLite allows one daemon at a time (use PostgreSQL to run several)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        self._handle.close()  # closing the descriptor drops the flock


def check_schema(engine: Engine) -> None:
    """Refuse to run on a database without the current schema."""
    from ..db import current_revision, head_revision

    current, head = current_revision(engine), head_revision()
    if current is None:
        raise EngageError("the database has no engage tables yet: run `engage db upgrade` first")
    if current != head:
        raise EngageError(
            f"the database schema is at revision {current}, this engage needs {head}: "
            "run `engage db upgrade`"
        )


def safe_url(engine: Engine) -> str:
    return make_url(engine.url).render_as_string(hide_password=True)


# -- what a run did ----------------------------------------------------------------------
@dataclass
class OnceReport:
    """What ``engage run --once`` did."""

    plans: list[PlanResult] = field(default_factory=list)
    dispatch: DispatchStats = field(default_factory=DispatchStats)
    expired: Expired = field(default_factory=lambda: Expired(0, 0))
    problems: list[Problem] = field(default_factory=list)  # campaign files that did not load
    failures: list[str] = field(default_factory=list)  # one line per campaign that failed

    @property
    def inserted(self) -> int:
        return sum(p.inserted for p in self.plans)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.problems

    def summary(self) -> str:
        fresh = [p for p in self.plans if not p.already_planned]
        outcomes = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.dispatch.outcomes.items()))
        text = (
            f"planned {len(fresh)} occurrence(s) with {self.inserted:,} new messages; "
            f"dispatched {self.dispatch.claimed:,} ({outcomes or 'nothing due'}); "
            f"lost leases: {self.expired.released:,} message(s) back in the queue, "
            f"{self.expired.unknown:,} marked unknown"
        )
        if self.failures:
            text += f"; {len(self.failures)} campaign(s) failed"
        return text


def _fingerprint(*roots: Path) -> tuple[Any, ...]:
    """Names, sizes and modification times under ``roots`` (files or folders)."""
    seen: list[Any] = []
    for root in roots:
        if root.is_file():
            st = root.stat()
            seen.append((str(root), st.st_mtime_ns, st.st_size))
            continue
        if not root.is_dir():
            seen.append((str(root), None))
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                seen.append((dirpath, name, st.st_mtime_ns, st.st_size))
    return tuple(seen)


# -- the daemon --------------------------------------------------------------------------
class Daemon:
    """One ``engage run`` process. Build it, then call ``run_once()`` or ``run_forever()``."""

    def __init__(self, config: Config, engine: Engine, *, config_path: Path | None = None):
        self.config = config
        self.engine = engine
        self.config_path = config_path
        self.owner = default_owner()
        self.started_at = utcnow()
        self.stop = threading.Event()
        self._hurry = threading.Event()
        self._hup = threading.Event()
        self._plan_guard = threading.Lock()
        self._reload_guard = threading.Lock()
        self._busy = 0
        self._busy_cond = threading.Condition()
        self._retired: list[Dispatcher] = []
        self.totals: Counter[str] = Counter()
        self.campaigns: dict[str, Campaign] = {}
        self.load_errors: list[Problem] = []  # of the last reading of the campaign files
        self.scheduler: Any = None
        self.signal_name: str | None = None
        self._load_campaigns(initial=True)
        self.renderer = Renderer(config)
        # Checked in a child process within the time and memory budget; a template
        # over it is quarantined (its messages fail fast) so dispatch never jams.
        for problem in self.renderer.reload(self.campaigns.values(), initial=True):
            self._problem(problem, "template_problem")
        self.dispatcher = self._make_dispatcher(config, build_channels(config), self.renderer)
        self._seen = self._watch_state()

    # -- building blocks -----------------------------------------------------------------
    def _make_dispatcher(self, config: Config, channels: Any, renderer: Renderer) -> Dispatcher:
        return Dispatcher(
            self.engine,
            config,
            channels,
            renderer,
            lambda: self.campaigns,
            owner=self.owner,
            stop=self.stop,
        )

    def _problem(self, problem: Problem, event: str) -> None:
        level = logging.WARNING if problem.severity == "warning" else logging.ERROR
        log.log(level, str(problem), extra={"event": event, "path": problem.path})

    def _load_campaigns(self, *, initial: bool = False) -> list[str]:
        """Re-read campaign files; invalid ones keep their last good version. Returns kept."""
        result = collect_campaigns(self.config)
        self.load_errors = result.errors
        for problem in result.problems:
            self._problem(problem, "campaign_problem")
        fresh = {c.name: c for c in result.campaigns}
        failed = {p.resolve() for p in result.failed_files}
        kept = []
        for name, old in self.campaigns.items():
            if name not in fresh and old.path.resolve() in failed:
                fresh[name] = old
                kept.append(name)
        if kept:
            log.warning(
                "invalid campaign files: the last good versions keep running",
                extra={"event": "campaigns_kept", "campaigns": kept},
            )
        self.campaigns = dict(sorted(fresh.items()))
        return kept

    def enabled(self) -> list[Campaign]:
        return [c for c in self.campaigns.values() if c.enabled]

    def _config_file(self) -> Path:
        return Path(self.config_path) if self.config_path else default_config_path()

    def _watch_state(self) -> dict[str, tuple[Any, ...]]:
        return {
            "config": _fingerprint(self._config_file()),
            "campaigns": _fingerprint(self.config.campaigns_path),
            "templates": _fingerprint(self.config.templates_path),
        }

    @contextmanager
    def _job(self, name: str) -> Iterator[bool]:
        """Count running jobs (shutdown waits for them) and log their failures.

        Yields False when the daemon is stopping: a queued job then does nothing.
        """
        with self._busy_cond:
            self._busy += 1
        try:
            yield not self.stop.is_set()
        except Exception:
            log.exception("job failed", extra={"event": "job_failed", "job": name})
        finally:
            with self._busy_cond:
                self._busy -= 1
                self._busy_cond.notify_all()

    # -- jobs ----------------------------------------------------------------------------
    def plan_campaign(self, name: str) -> None:
        """A campaign's cron job (and the catch-up sweep): plan what is due now."""
        with self._job(f"plan:{name}") as go:
            campaign = self.campaigns.get(name)
            if not go or campaign is None or not campaign.enabled:
                return
            try:
                results = plan_due(
                    self.engine, self.config, campaign, utcnow(), guard=self._plan_guard
                )
            except PlanningFailed:  # logged and recorded on its campaign_run row
                self.totals["occurrences_failed"] += 1
                return
            self.totals["occurrences_planned"] += sum(not r.already_planned for r in results)

    def sweep(self) -> None:
        """Catch-up for every enabled campaign (start-up, then periodically)."""
        for campaign in self.enabled():
            if self.stop.is_set():
                return
            self.plan_campaign(campaign.name)

    def dispatch(self) -> None:
        """Send what is due until nothing is (or we are stopping)."""
        with self._job("dispatch") as go:
            if go:
                stats = self.dispatcher.run_once(tally=self.totals)
                for kind, why in stats.refused.items():
                    log.error(
                        f"{kind} stopped until the next dispatch: {why}",
                        extra={"event": "channel_refused", "channel": kind},
                    )
            self._close_retired()

    def expire(self) -> None:
        with self._job("expire") as go:
            if go:
                lost = expire_leases(self.engine)
                if any(lost):
                    log.warning(
                        "leases expired: reserved messages back in the queue, started ones "
                        "marked unknown (never resent automatically)",
                        extra={
                            "event": "leases_expired",
                            "released": lost.released,
                            "unknown": lost.unknown,
                        },
                    )

    def beat(self) -> None:
        """Refresh this worker's row and log the outbox counts per state."""
        with self._job("heartbeat") as go:
            if not go:
                return
            now = utcnow()
            stats = {k: v for k, v in sorted(self.totals.items())}
            host, pid = socket.gethostname(), os.getpid()
            heartbeat(self.engine, self.owner, host, pid, self.started_at, now, stats)
            log.info(
                "heartbeat",
                extra={"event": "heartbeat", "outbox": counts_by_status(self.engine), **stats},
            )

    def watch(self) -> None:
        """Reload what changed on disk (or everything after SIGHUP)."""
        with self._job("watch") as go:
            if not go:
                return
            forced = self._hup.is_set()
            self._hup.clear()
            now_seen = self._watch_state()
            changed = {k for k, v in now_seen.items() if v != self._seen.get(k)}
            if forced:
                changed = set(now_seen)
            if changed:
                self._seen = now_seen
                self.reload(changed)

    # -- hot reload ----------------------------------------------------------------------
    def reload(self, parts: set[str]) -> None:
        """Apply edits to ``config``, ``campaigns`` and/or ``templates``."""
        with self._reload_guard:
            log.info("reloading", extra={"event": "reload", "parts": sorted(parts)})
            if "config" in parts and not self._reload_config():
                parts = parts - {"config"}
            if parts & {"config", "campaigns"}:
                self._load_campaigns()
                if self.scheduler is not None:
                    sync = sync_campaigns(
                        self.scheduler, self.campaigns, self.plan_campaign, self.config.catch_up
                    )
                    if sync:
                        log.info(
                            "campaign schedules updated",
                            extra={
                                "event": "campaigns_reloaded",
                                "added": sync.added,
                                "rescheduled": sync.rescheduled,
                                "removed": sync.removed,
                            },
                        )
                    for name in sync.added + sync.rescheduled:
                        job = functools.partial(self.plan_campaign, name)
                        run_soon(self.scheduler, f"catch-up:{name}", job)
            if "templates" in parts or "campaigns" in parts:
                problems = self.renderer.reload(self.campaigns.values())
                for problem in problems:
                    self._problem(problem, "template_problem")
                errors = [p for p in problems if p.severity == "error"]
                if errors:
                    log.error(
                        "template errors: the last good templates keep running",
                        extra={"event": "templates_kept", "reason": str(errors[0])},
                    )
                else:
                    log.info("templates reloaded", extra={"event": "templates_reloaded"})

    def _reload_config(self) -> bool:
        """Swap in a new config, renderer, channels and dispatcher, or keep all the old ones."""
        try:
            new = load_config(self.config_path)
        except EngageError as exc:
            log.error(
                f"config not reloaded: {exc}",
                extra={"event": "config_invalid", "path": str(self._config_file())},
            )
            return False
        if new.db_url != self.config.db_url:
            log.error(
                "database_url changed: restart engage run to use the new database",
                extra={"event": "config_database_unchanged"},
            )
            new = new.model_copy(update={"database_url": self.config.database_url})
        try:
            new.require_sending_secrets("the new config.yaml")
            channels = build_channels(new)
        except ConfigError as exc:
            log.error(f"config not reloaded: {exc}", extra={"event": "config_invalid"})
            return False
        renderer = Renderer(new)
        problems = renderer.reload(self.campaigns.values())
        if any(p.severity == "error" for p in problems):
            for problem in problems:
                self._problem(problem, "template_problem")
            for ch in channels.values():
                ch.close()
            log.error("config not reloaded: template errors", extra={"event": "config_invalid"})
            return False
        old = self.dispatcher
        self.config, self.renderer = new, renderer
        self.dispatcher = self._make_dispatcher(new, channels, renderer)
        self._retired.append(old)
        log.info("config reloaded", extra={"event": "config_reloaded"})
        return True

    def _close_retired(self) -> None:
        """Close dispatchers replaced by a reload (called from the dispatch job only)."""
        while self._retired:
            old = self._retired.pop()
            old.close()
            for ch in old.channels.values():
                ch.close()

    # -- modes ---------------------------------------------------------------------------
    def run_once(self) -> OnceReport:
        """Expire leases, plan every due occurrence (with catch-up), send what is due."""
        report = OnceReport(problems=list(self.load_errors))
        self.install_signals()
        report.expired = expire_leases(self.engine)
        now = utcnow()
        for campaign in self.enabled():
            if self.stop.is_set():
                break
            try:
                report.plans.extend(plan_due(self.engine, self.config, campaign, now))
            except Exception as exc:  # one campaign's failure never stops the others
                if not isinstance(exc, PlanningFailed):  # (plan_due logged those)
                    fields = {"campaign": campaign.name, "reason": describe(exc)}
                    log.error("campaign failed", extra={"event": "campaign_failed", **fields})
                    log.debug("traceback", exc_info=True, extra={"event": "campaign_failed_trace"})
                report.failures.append(
                    str(exc)
                    if isinstance(exc, PlanningFailed)
                    else f"campaign {campaign.name}: {describe(exc)}"
                )
        report.dispatch.add(self.dispatcher.run_once())
        self.close()
        return report

    def run_forever(self) -> int:
        """Schedule the jobs and serve until a signal; returns the exit status."""
        self.install_signals()
        cfg = self.config.dispatch
        start = utcnow()
        self.scheduler = scheduler = make_scheduler(threads=max(4, len(self.campaigns) + 4))
        sync_campaigns(scheduler, self.campaigns, self.plan_campaign, self.config.catch_up)
        add_periodic(scheduler, "dispatch", self.dispatch, cfg.poll_interval, now=start)
        lease_check = min(max(cfg.lease / 4, timedelta(seconds=1)), timedelta(seconds=30))
        add_periodic(scheduler, "expire", self.expire, lease_check, now=start)
        add_periodic(scheduler, "heartbeat", self.beat, HEARTBEAT_EVERY, now=start)
        add_periodic(scheduler, "sweep", self.sweep, SWEEP_EVERY, now=start)
        add_periodic(scheduler, "watch", self.watch, WATCH_EVERY)
        scheduler.start()
        log.info(
            "engage run started",
            extra={
                "event": "daemon_started",
                "owner": self.owner,
                "database": safe_url(self.engine),
                "campaigns": [c.name for c in self.enabled()],
                "catch_up": self.config.catch_up.total_seconds(),
            },
        )
        while not self.stop.wait(0.25):
            if self._hup.is_set():
                run_soon(scheduler, "watch-now", self.watch)
        return self._shutdown()

    def _shutdown(self) -> int:
        grace = self.config.dispatch.shutdown_grace.total_seconds()
        log.info(
            "stopping: no new claims, in-flight sends may finish",
            extra={"event": "daemon_stopping", "signal": self.signal_name, "grace": grace},
        )
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + grace
        with self._busy_cond:
            while self._busy and not self._hurry.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._busy_cond.wait(min(left, 0.2))
            busy = self._busy
        if busy:
            why = "second signal" if self._hurry.is_set() else "grace period over"
            log.error(
                f"{why}: exiting with work in flight; messages left sending become unknown "
                "when their lease runs out (never resent automatically)",
                extra={"event": "daemon_forced_exit", "jobs": busy},
            )
            self._forget()
            logging.shutdown()
            os._exit(1)
        self.close()
        self._forget()
        log.info("stopped", extra={"event": "daemon_stopped", **dict(self.totals)})
        return 0

    def _forget(self) -> None:
        try:
            forget_worker(self.engine, self.owner)
        except Exception:  # the database may be what failed; the row then just ages out
            log.warning("could not remove the worker row", extra={"event": "worker_not_removed"})

    def close(self) -> None:
        self._retired.append(self.dispatcher)
        self._close_retired()

    # -- signals -------------------------------------------------------------------------
    def install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, _frame: Any) -> None:
        # No logging here: the handler may interrupt a log call of the main thread.
        if self.stop.is_set():
            self._hurry.set()
            return
        self.signal_name = signal.Signals(signum).name
        self.stop.set()

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        self._hup.set()


def open_daemon(config: Config, engine: Engine, config_path: Path | None) -> tuple[Daemon, Any]:
    """Check secrets and the schema, take the SQLite lock, build the Daemon; returns
    (daemon, lock)."""
    config.require_sending_secrets("engage run")
    check_schema(engine)
    lock = DaemonLock.for_engine(engine)
    try:
        return Daemon(config, engine, config_path=config_path), lock
    except BaseException:
        if lock is not None:
            lock.release()
        raise
