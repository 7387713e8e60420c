"""Check templates in a child process, within a time and a memory budget.

A marketer's template is code: nested loops (``{% for i in range(100000) %}``
inside another), ``10**10000000`` or ``'a' * 10**9`` hang a process or take
gigabytes, and Jinja's sandbox stops escapes, not work. ``engage validate``
and the daemon's hot reload therefore render every template against the
sample customer in a child process:

* the child's address space is capped (``RLIMIT_AS``, ``template_check.memory_mb``
  above what it uses at start), so an allocation past the budget fails there
  with ``MemoryError`` instead of swapping the machine;
* the parent gives each render ``template_check.timeout`` (the child reports
  which folder and channel it is about to render) and kills the child when
  one takes longer; the check then starts again without that folder, so the
  other templates are still checked;
* what the child read and checked comes back with the problems: a reload
  switches to exactly those sources, never to files that changed since.

A folder that broke the budget (took too long, ran out of memory, killed the
child) is *quarantined*: ``Renderer.reload`` keeps the previous good
templates, and at start-up, when there is no previous version, the folder's
messages fail at once as ``render_error`` instead of jamming the dispatcher.
Per-message rendering stays in-process and fast, with the cheap bounds of
``budget.py``.

A single-threaded process (``engage validate``) forks the child directly; one
with threads (the daemon: scheduler, dispatcher) asks multiprocessing's fork
server instead (started once, single-threaded, with the checker preloaded),
because forking a process whose other threads may hold locks is unsafe.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from ..config import Config
from ..customers.recipients import Recipient
from ..errors import Problem, describe

log = logging.getLogger(__name__)

START_ALLOWANCE = 60.0  # seconds for a child to start (a loaded machine) before it counts
QUARANTINE_FILE = ".quarantined"  # "<folder>/.quarantined" in a snapshot's sources: the reason


@dataclass
class CheckResult:
    """What a check found, and what it checked (None when nothing could be read)."""

    problems: list[Problem] = field(default_factory=list)
    sources: dict[str, str] | None = None
    quarantined: dict[str, str] = field(default_factory=dict)  # folder -> why

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


# -- the child -------------------------------------------------------------------------------
class _Reporter:
    """check_snapshot's ``watch`` in the child: progress and memory failures to the parent."""

    def __init__(self, conn: Connection, skip: frozenset[str]):
        self.conn = conn
        self.skip = skip
        self.out_of_memory: dict[str, str] = {}

    def starting(self, folder: str, channel: str) -> bool:
        if folder in self.skip:
            return False
        self.conn.send(("at", folder, channel))
        return True

    def failed(self, folder: str, channel: str, cause: BaseException) -> None:
        if isinstance(cause, MemoryError):
            self.out_of_memory.setdefault(folder, channel)


def _limit_memory(budget_mb: int) -> None:
    """Cap the address space at what the process maps now plus ``budget_mb``."""
    try:
        import resource
    except ImportError:  # not on this platform: the time limit still holds
        return
    mapped = 0
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    mapped = int(line.split()[1]) * 1024
    except OSError:
        pass
    limit = mapped + budget_mb * 1024 * 1024
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass


def _child(
    conn: Connection,
    config: Config,
    campaigns: list[Any] | None,
    now: datetime | None,
    sample: Recipient | None,
    skip: frozenset[str],
    memory_mb: int,
    parent: int,
    secret: str | None,
    sources: dict[str, str] | None,
) -> None:
    import threading

    from .check import check_snapshot
    from .renderer import Renderer

    # Die with the process that asked (a fork server's child outlives it otherwise).
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()
    _limit_memory(memory_mb)
    reporter = _Reporter(conn, skip)
    try:
        conn.send(("at", None, "compile"))
        renderer = Renderer(config, secret_key=secret, sources=sources)
        snap = renderer.snapshot
        problems = check_snapshot(renderer, snap, campaigns, now=now, sample=sample, watch=reporter)
        conn.send(("done", problems, snap.sources, reporter.out_of_memory))
    except BaseException as exc:  # MemoryError outside a render, a bug: say what, then exit
        try:
            conn.send(("crashed", describe(exc)))
        except Exception:
            pass
        os._exit(1)
    finally:
        conn.close()


def _exit_without(parent: int) -> None:
    while True:
        time.sleep(1)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # it exists (and belongs to someone else: unlikely)
            pass


# -- the parent ------------------------------------------------------------------------------
def _context() -> Any:
    """``fork`` from a single-threaded process (``engage validate``: instant),
    the fork server from one with threads (the daemon), ``spawn`` elsewhere."""
    import threading

    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["engage.templating.check"])
        return ctx
    return multiprocessing.get_context("spawn")


def _folder(path: str, shown: str) -> str:
    return path[len(shown) + 1 :].partition("/")[0] if path.startswith(shown + "/") else ""


def _channel_file(channel: str) -> str:
    return "email.html.j2" if channel == "email" else "sms.j2" if channel == "sms" else ""


def check_in_child(
    config: Config,
    campaigns: Iterable[Any] | None = None,
    *,
    now: datetime | None = None,
    sample: Recipient | None = None,
    secret: str | None = None,
    sources: Mapping[str, str] | None = None,
) -> CheckResult:
    """Check the templates on disk (or ``sources``) in child processes (see the
    module doc), signing links with ``secret`` (default: the config's)."""
    budget = config.template_check
    timeout = budget.timeout.total_seconds()
    shown = config.templates_dir.rstrip("/") or "templates"
    listed = list(campaigns) if campaigns is not None else None
    quarantined: dict[str, str] = {}
    over_budget: list[Problem] = []
    while True:
        try:
            outcome = _run_child(
                config,
                listed,
                now,
                sample,
                frozenset(quarantined),
                budget.memory_mb,
                timeout,
                secret,
                dict(sources) if sources is not None else None,
            )
        except OSError as exc:  # no process could be started
            why = f"could not start the template check process: {describe(exc)}"
            return CheckResult(over_budget + [Problem(shown, None, None, None, why)])
        if outcome[0] == "done":
            _, problems, checked, out_of_memory = outcome
            problems = [  # the MemoryError itself is said better below
                p
                for p in problems
                if not (
                    p.message.startswith("MemoryError") and _folder(p.path, shown) in out_of_memory
                )
            ]
            for folder, channel in out_of_memory.items():
                why = (
                    f"rendering the {channel} for the sample customer used more than "
                    f"{budget.memory_mb} MB (template_check.memory_mb)"
                )
                quarantined[folder] = why
                over_budget.append(
                    Problem(f"{shown}/{folder}/{_channel_file(channel)}", None, None, None, why)
                )
            for folder, why in quarantined.items():
                checked[f"{folder}/{QUARANTINE_FILE}"] = why
            return CheckResult(over_budget + problems, checked, quarantined)
        kind, folder, channel, detail = outcome
        if folder is None:  # reading or compiling everything, or starting: nothing to leave out
            why = (
                f"the template check could not finish: {detail}"
                if kind == "crashed"
                else f"reading and compiling the templates took longer than {timeout:g}s "
                "(template_check.timeout)"
            )
            return CheckResult(over_budget + [Problem(shown, None, None, None, why)])
        if kind == "timeout":
            why = (
                f"rendering the {channel} for the sample customer took longer than "
                f"{timeout:g}s (template_check.timeout): a loop that never ends, or far "
                "too much work for one message"
            )
        else:
            why = (
                f"rendering the {channel} for the sample customer stopped the check "
                f"({detail}; template_check.memory_mb={budget.memory_mb})"
            )
        log.info(  # callers report the problem; this says when it happened
            "template over budget",
            extra={"event": "template_over_budget", "folder": folder, "reason": why},
        )
        quarantined[folder] = why
        over_budget.append(
            Problem(f"{shown}/{folder}/{_channel_file(channel)}", None, None, None, why)
        )


def _run_child(
    config: Config,
    campaigns: list[Any] | None,
    now: datetime | None,
    sample: Recipient | None,
    skip: frozenset[str],
    memory_mb: int,
    timeout: float,
    secret: str | None,
    sources: dict[str, str] | None,
) -> tuple[Any, ...]:
    """One child: ``("done", problems, sources, out_of_memory)``, or
    ``(kind, folder, channel, detail)`` for a child that took too long
    (``timeout``) or died (``crashed``) while rendering ``folder``."""
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_child,
        args=(send, config, campaigns, now, sample, skip, memory_mb, os.getpid(), secret, sources),
        name="engage-template-check",
        daemon=True,
    )
    child.start()
    send.close()
    folder: str | None = None
    channel = "start"
    deadline = time.monotonic() + START_ALLOWANCE
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return ("timeout", folder, channel, "")
            try:
                if not receive.poll(left):
                    continue
                message = receive.recv()
            except (EOFError, OSError):
                child.join(5)
                return ("crashed", folder, channel, _death(child.exitcode))
            if message[0] == "at":
                _, folder, channel = message
                deadline = time.monotonic() + timeout
            elif message[0] == "done":
                return message  # type: ignore[no-any-return]
            else:  # "crashed"
                return ("crashed", folder, channel, message[1])
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
        child.join(5)


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        import signal

        try:
            return f"the check process was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return f"the check process exited with status {exitcode}"
