"""The ``engage`` command line: parse, call one library function, print.

No business logic lives here. Every command reads config through ``Ctx``;
``EngageError`` becomes a message and exit status 1, usage errors exit 2.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from sqlalchemy import Engine

from .config import Config, load_config
from .errors import EngageError, describe
from .timeutil import isoformat_z, parse_at, utcnow

app = typer.Typer(
    help="engage: reach the right customer at the right moment, with campaigns as code.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
app.add_typer(db_app, name="db")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Ctx:
    """Lazily built objects shared by the commands of one invocation."""

    config_path: Path | None
    _config: Config | None = None
    _engine: Engine | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from .db import get_engine

            self._engine = get_engine(self.config.db_url)
        return self._engine

    def at(self, when: str | None) -> datetime:
        """``--at WHEN`` (bare date = local midnight in the config zone), or now."""
        if not when:
            return utcnow()
        try:
            return parse_at(when, self.config.zone)
        except ValueError as exc:
            raise EngageError(f"--at: {exc}") from None


def ctx_of(ctx: typer.Context) -> Ctx:
    obj = ctx.obj
    assert isinstance(obj, Ctx)
    return obj


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.callback()
def _main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Path to config.yaml (env ENGAGE_CONFIG; default ./config.yaml).",
            envvar="ENGAGE_CONFIG",
        ),
    ] = None,
) -> None:
    ctx.obj = Ctx(config_path=config)
    _invocation[:] = [ctx.obj]


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply database migrations (creates the database on first run).

    Also rebuilds the customer facts when config's engagement_kinds or
    ignored_kinds changed, and restores what an interrupted first import left.
    """
    from .customers.facts import rule_of
    from .db import current_revision, upgrade
    from .ingest.loading import restore

    c = ctx_of(ctx)
    upgrade(c.engine)
    out.print(f"database at revision {current_revision(c.engine)}")
    with c.engine.begin() as conn:
        if restore(conn, rule_of(c.config), utcnow()):
            out.print("customer facts rebuilt (and any index an interrupted import dropped)")


ERRORS_SHOWN = 50


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="customers, interactions or points.")],
    file: Annotated[
        str, typer.Argument(help="A .csv, .jsonl or .ndjson file (optionally .gz); - reads stdin.")
    ],
    rejects: Annotated[
        Path | None,
        typer.Option("--rejects", help="Write rejected rows here, same format plus the error."),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv or jsonl (default: from the file name).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Import customers, interactions or points: idempotent upserts, streamed in batches.

    Bad rows are reported as FILE:LINE: field: why and skipped; good rows are kept
    and the exit status is 0. A missing file or a CSV without the required
    columns exits 1 before anything is written. Ctrl-C stops after the batch in
    flight is rolled back (exit 130); running the same import again is safe.
    """
    from .ingest import ImportInterrupted, ImportProgress, import_file

    c = ctx_of(ctx)
    bar: Any = None
    if err.is_terminal:  # a progress bar, only for a human watching
        from rich.progress import BarColumn, Progress, TextColumn

        bar = Progress(
            TextColumn(f"importing {kind}"),
            BarColumn(),
            TextColumn("{task.fields[rows]:>12,} rows {task.fields[rate]:>9,.0f} rows/s"),
            TextColumn("{task.fields[eta]}"),
            console=err,
        )
        task = bar.add_task(kind, total=None, rows=0, rate=0.0, eta="")

        def progress(p: ImportProgress) -> None:
            eta = "" if p.eta is None else f"about {_seconds(p.eta)} left"
            bar.update(
                task, completed=p.bytes_done, total=p.bytes_total, rows=p.rows, rate=p.rate, eta=eta
            )

        bar.start()
    else:  # periodic log lines instead (event import_progress)
        from .logs import setup_logging

        setup_logging("text", level="INFO", secrets=c.config.secrets.values())
        progress = None  # type: ignore[assignment]
    try:
        result = import_file(
            c.engine, c.config, kind, file, fmt=fmt, rejects=rejects, now=utcnow(),
            progress=progress, phone_helper=True,
        )  # fmt: skip
    except ImportInterrupted as stopped:
        if bar is not None:
            bar.stop()
        _show_problems(stopped.result, rejects)
        err.print(str(stopped), markup=False)
        raise typer.Exit(130) from None
    finally:
        if bar is not None:
            bar.stop()
    _show_problems(result, rejects)
    if as_json:
        print_json(result.to_dict())
    else:
        out.print(result.summary(), markup=False)


def _seconds(value: float) -> str:
    value = int(value + 0.5)
    if value < 60:
        return f"{value}s"
    if value < 3600:
        return f"{value // 60}m{value % 60:02d}s"
    return f"{value // 3600}h{value % 3600 // 60:02d}m"


def _show_problems(result: Any, rejects: Path | None) -> None:
    """The first rejected rows and warnings on stderr, each as FILE:LINE: field: why."""
    for problem in result.errors[:ERRORS_SHOWN]:
        err.print(str(problem), markup=False)
    if result.rejected > ERRORS_SHOWN:
        where = f" (all in {rejects})" if rejects else " (use --rejects FILE to keep them all)"
        err.print(f"... and {result.rejected - ERRORS_SHOWN:,} more{where}", markup=False)
    for problem in result.warnings[:ERRORS_SHOWN]:
        err.print(str(problem), markup=False)
    warned = sum(result.warning_counts.values())
    if warned > ERRORS_SHOWN:
        err.print(f"... and {warned - ERRORS_SHOWN:,} more warnings", markup=False)


@app.command("validate")
def validate_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the problems as JSON.")] = False,
) -> None:
    """Check config, campaigns and templates; print every problem as FILE:LINE:COL.

    Exit status 1 when there is any error; warnings alone exit 0.
    """
    from .campaigns.validate import validate_path

    report = validate_path(ctx_of(ctx).config_path)
    if as_json:
        print_json(report.to_json())
    else:
        for problem in report.problems:
            out.print(str(problem), markup=False)
        out.print(report.summary(), markup=False)
    if not report.ok:
        raise typer.Exit(1)


def _campaign(c: Ctx, name: str) -> Any:
    from .campaigns.loader import load_campaign

    return load_campaign(c.config, name)


def _ts(value: datetime | None, zone: Any = None) -> str:
    if value is None:
        return "-"
    return (value.astimezone(zone) if zone else value).strftime("%Y-%m-%d %H:%M %Z")


AtOption = Annotated[
    str | None,
    typer.Option(
        "--at",
        help="Behave as if it were this moment: ISO date or datetime "
        "(a bare date is local midnight in the config time zone).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# The log options of the long-running commands (run, serve).
LogFormatOption = Annotated[
    str, typer.Option("--log-format", help="text or json (one object per line).")
]
LogLevelOption = Annotated[str, typer.Option("--log-level", help="debug, info, warning.")]
ShowPiiOption = Annotated[
    bool, typer.Option("--show-pii", help="Do not mask e-mail addresses and phones in logs.")
]


def _check_log_format(log_format: str) -> None:
    if log_format not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")


@app.command("dry-run")
def dry_run_cmd(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign name.")],
    at: AtOption = None,
    as_json: JsonOption = False,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=0, help="List at most N decisions (counts cover all)."),
    ] = 50,
    no_render: Annotated[
        bool, typer.Option("--no-render", help="Skip rendering each would-be message.")
    ] = False,
) -> None:
    """Who would get what and why not, with counts per reason. Writes nothing."""
    from .planning.preview import dry_run_campaign, placeholder_note

    c = ctx_of(ctx)
    report = dry_run_campaign(
        c.engine, c.config, _campaign(c, campaign), c.at(at), limit=limit, render=not no_render
    )
    note = placeholder_note(c.config)
    if note and not no_render:
        err.print(f"note: {note}", markup=False)
    if as_json:
        print_json(report.to_json())
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table("customer", "decision", "reason", "channel", "send at (UTC)")
    for e in report.decisions:
        d = e.decision
        reason = f"{d.reason}: {d.extra['error']}" if "error" in d.extra else d.reason or ""
        table.add_row(
            escape(d.customer_id), d.action, escape(reason), d.channel or "", _ts(d.send_at)
        )
    if report.decisions:
        out.print(table)
    counts = ", ".join(f"{k}: {v:,}" for k, v in sorted(report.counts.items()))
    out.print(f"{report.campaign} as of {_ts(report.as_of)}: {counts or 'nobody matched'}")


@app.command("send")
def send_cmd(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign name.")],
    at: AtOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Plan one occurrence now and deliver what is due through the configured channels."""
    from .delivery.send import send_occurrence

    c = ctx_of(ctx)
    camp = _campaign(c, campaign)
    when = c.at(at)
    c.config.require_sending_secrets("engage send")  # before asking, and before planning
    if not yes:
        if not sys.stdin.isatty():
            raise EngageError("refusing to send without confirmation: pass --yes")
        typer.confirm(
            f"Send {camp.name} as of {_ts(when)} via email={c.config.channels.email}, "
            f"sms={c.config.channels.sms}?",
            abort=True,
        )
    report = send_occurrence(c.engine, c.config, camp, when, now=utcnow())
    plan = report.plan
    if plan.already_planned:
        out.print(f"{camp.name} at {_ts(plan.scheduled_at)} was already planned: nothing new")
    counts = ", ".join(f"{k}: {v:,}" for k, v in sorted(plan.counts.items()))
    out.print(f"planned {plan.inserted:,} new messages ({counts or 'nobody matched'})")
    outcomes = ", ".join(f"{k}: {v:,}" for k, v in sorted(report.dispatch.outcomes.items()))
    out.print(f"dispatched {report.dispatch.claimed:,} ({outcomes or 'none due'})")
    if report.waiting:
        out.print(f"{report.waiting:,} wait for their send window (the daemon sends them)")
    _exit_if_refused(report.dispatch.refused)


def _exit_if_refused(refused: dict[str, str]) -> None:
    """A provider refused engage's credentials: one line per channel, exit 1."""
    for kind, why in refused.items():
        err.print(f"error: {kind} stopped, its messages stay planned: {why}", markup=False)
    if refused:
        raise typer.Exit(1)


@app.command("preview")
def preview_cmd(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign name.")],
    customer: Annotated[str, typer.Option("--customer", help="Customer id.")],
    channel: Annotated[
        str | None, typer.Option("--channel", help="email or sms (default: the one chosen).")
    ] = None,
    at: AtOption = None,
    as_json: JsonOption = False,
) -> None:
    """Render the exact message a customer would get, and say whether they would get it."""
    from dataclasses import asdict

    from .planning.preview import placeholder_note, preview_message

    c = ctx_of(ctx)
    p = preview_message(
        c.engine, c.config, _campaign(c, campaign), customer, c.at(at), channel=channel
    )
    note = placeholder_note(c.config)
    if note:
        err.print(f"note: {note}", markup=False)
    if as_json:
        data = asdict(p)
        data["send_at"] = isoformat_z(p.send_at) if p.send_at else None
        print_json(data)
        return
    verdict = "would be sent" if p.decision == "send" else f"would be skipped: {p.reason}"
    out.print(f"# {p.campaign} -> {p.customer_id} via {p.channel} ({verdict})", markup=False)
    if p.email is not None:
        out.print(f"To: {p.address or '-'}", markup=False)
        out.print(f"Subject: {p.email.subject}", markup=False)
        for name, value in p.email.headers.items():
            out.print(f"{name}: {value}", markup=False)
        out.print("\n--- text/plain ---\n" + p.email.text, markup=False)
        out.print("--- text/html ---\n" + p.email.html, markup=False)
    if p.sms is not None:
        out.print(f"To: {p.address or '-'}", markup=False)
        out.print(f"({p.sms.segments} segment(s), {p.sms.encoding})\n" + p.sms.body, markup=False)


@app.command("calendar")
def calendar_cmd(
    ctx: typer.Context,
    days: Annotated[int, typer.Option("--days", min=1, max=366, help="How far ahead.")] = 14,
    at: AtOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upcoming occurrences of every enabled campaign with estimated audience sizes.

    A campaign file with errors, or a campaign whose audience cannot be
    computed, is reported on stderr (exit status 1); the others are listed.
    """
    from .campaigns.loader import collect_campaigns
    from .planning.calendar import upcoming

    c = ctx_of(ctx)
    when = c.at(at)
    loaded = collect_campaigns(c.config)
    failed: list[tuple[str, str]] = []
    entries = upcoming(c.engine, c.config, loaded.campaigns, when, days, errors=failed)
    if as_json:
        print_json([e.to_json() for e in entries])
    else:
        from rich.table import Table

        table = Table("when (campaign time)", "UTC", "campaign", "est. audience")
        for e in entries:
            table.add_row(_ts(e.local), _ts(e.at), e.campaign, f"{e.estimated_audience:,}")
        out.print(table if entries else f"no occurrences in the next {days} days")
    for problem in loaded.errors:
        err.print(f"error: {problem}", markup=False)
    for name, why in failed:
        err.print(f"error: campaign {name} left out: {why}", markup=False)
    if loaded.errors or failed:
        raise typer.Exit(1)


@app.command("customer")
def customer_cmd(
    ctx: typer.Context,
    customer_id: Annotated[str, typer.Argument(help="Customer id.")],
    at: AtOption = None,
    as_json: JsonOption = False,
) -> None:
    """One customer's timeline: activity, points, messages sent and planned."""
    from .report.timeline import customer_timeline

    c = ctx_of(ctx)
    t = customer_timeline(c.engine, c.config, customer_id, c.at(at))
    if as_json:
        print_json(t.to_json())
        return
    r = t.recipient
    name = " ".join(x for x in (r.first_name, r.last_name) if x) or "-"
    out.print(f"{r.customer_id}  {name}  tier={r.tier or '-'}  tz={r.timezone}", markup=False)
    out.print(
        f"email={r.email or '-'} (opt-in {r.email_opt_in})  "
        f"phone={r.phone or '-'} (opt-in {r.sms_opt_in})",
        markup=False,
    )
    out.print(
        f"last activity {_ts(r.last_activity)} ({t.days_quiet} days quiet), "
        f"{r.orders} orders, lifetime value {r.lifetime_value}",
        markup=False,
    )
    pts = r.points
    out.print(
        f"points: balance {pts.balance:,}, expiring within 30 days {pts.expiring:,}, "
        f"next expiry {_ts(pts.next_expiry)}",
        markup=False,
    )
    for s in t.suppressions:
        out.print(f"suppressed on {s['channel']}: {s['reason']} since {_ts(s['created_at'])}")
    from rich.table import Table

    if t.interactions:
        table = Table("when", "kind", "amount", title="recent activity")
        for i in t.interactions:
            table.add_row(_ts(i["occurred_at"]), i["kind"], str(i["amount"] or ""))
        out.print(table)
    if t.messages:
        table = Table("id", "campaign", "channel", "status", "send after", "sent", title="messages")
        for m in t.messages:
            table.add_row(
                str(m["id"]),
                m["campaign"],
                m["channel"],
                m["status"],
                _ts(m["send_after"]),
                _ts(m["sent_at"]),
            )
        out.print(table)


def _day(value: str | None, option: str) -> Any:
    from datetime import date

    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise EngageError(f"{option}: not a date: {value!r} (use YYYY-MM-DD)") from None


@app.command("report")
def report_cmd(
    ctx: typer.Context,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="First day (YYYY-MM-DD, config time zone; included)."),
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last day (YYYY-MM-DD; included).")] = None,
    campaign: Annotated[
        list[str] | None,
        typer.Option("--campaign", help="Only this campaign (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (docs/report.md).")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV, one row per figure.")] = False,
) -> None:
    """Shop figures (retention, churn, orders, points, NPS) and each campaign's
    sends, conversions and lift over its holdout, for a period of whole days.

    Default: the last 30 complete days in the config time zone.
    """
    from .report import Period, build_report

    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv", param_hint="--csv")
    c = ctx_of(ctx)
    now = utcnow()
    period = Period.of_days(_day(from_, "--from"), _day(to, "--to"), c.config.zone, now)
    names = _report_campaigns(c, campaign) if campaign else None
    report = build_report(c.engine, c.config, period, now, campaigns=names)
    if as_json:
        print_json(report.to_json())
        return
    if as_csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(("section", "campaign", "figure", "value"))
        for part, name, figure, value in report.rows():
            text = "" if value is None else str(value).lower() if isinstance(value, bool) else value
            writer.writerow((part, name, figure, text))
        return
    from rich.markup import escape
    from rich.table import Table

    from .report.text import heading, sections

    out.print(heading(report), markup=False)
    for section in sections(report):
        table = Table(*section.columns, title=section.title, caption=section.note or None)
        for row in section.rows:
            table.add_row(*(escape(cell) for cell in row))
        out.print(table)


def _report_campaigns(c: Ctx, names: list[str]) -> list[str]:
    """``--campaign`` names, each known from campaigns/ or from the outbox."""
    from .campaigns.loader import collect_campaigns
    from .report import campaign_names

    known = {camp.name for camp in collect_campaigns(c.config).campaigns}
    unknown = [n for n in names if n not in known]
    if unknown:
        known |= campaign_names(c.engine)
        unknown = [n for n in names if n not in known]
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise EngageError(f"no campaign named {', '.join(unknown)} (known: {listed})")
    return list(dict.fromkeys(names))


outbox_app = typer.Typer(help="Inspect and re-queue outbox messages.", invoke_without_command=True)
app.add_typer(outbox_app, name="outbox")


@outbox_app.callback()
def outbox_cmd(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    campaign: Annotated[str | None, typer.Option("--campaign", help="Only this campaign.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most N rows.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List outbox messages (newest first) with counts per status."""
    if ctx.invoked_subcommand is not None:
        return
    from .delivery.outbox import counts_by_status, list_messages

    c = ctx_of(ctx)
    rows = list_messages(c.engine, status=status, campaign=campaign, limit=limit)
    counts = counts_by_status(c.engine, campaign=campaign)
    if as_json:
        print_json({"counts": counts, "messages": [r.to_json() for r in rows]})
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table("id", "campaign", "customer", "channel", "status", "send after", "tries", "error")
    for r in rows:
        table.add_row(  # data, not Rich markup: "[/b]" in an error must not end a style
            str(r.id),
            escape(r.campaign),
            escape(r.customer_id),
            r.channel,
            r.status,
            _ts(r.send_after),
            str(r.attempts),
            escape((r.error or "")[:60]),
        )
    out.print(table)
    out.print(", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())) or "the outbox is empty")


@outbox_app.command("requeue")
def outbox_requeue_cmd(
    ctx: typer.Context,
    ids: Annotated[
        list[int] | None,
        typer.Argument(help="Message ids (unknown, failed, render_error, cancelled, expired)."),
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", help="Only messages in this state (repeatable)."),
    ] = None,
    campaign: Annotated[str | None, typer.Option("--campaign", help="Only this campaign.")] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only messages that reached their state at or after WHEN."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Re-queue messages explicitly: the only way an `unknown` message is ever sent again.

    Name them by id, or select them with --status/--campaign/--since: then the
    count is shown and confirmed first (--yes skips the question).
    """
    from .delivery.outbox import Requeue, count_requeueable, requeue, statuses_of

    c = ctx_of(ctx)
    filtered = bool(status or campaign or since)
    if not ids and not filtered:
        raise EngageError("say which messages: ids, or --status (with --campaign, --since)")
    which = Requeue(ids, status, campaign, c.at(since) if since else None)
    if ids and not filtered:  # named one by one: say what happened to each
        before = statuses_of(c.engine, ids)
        moved = set(requeue(c.engine, which, utcnow()))
        for mid in ids:
            state = before.get(mid)
            what = "requeued" if mid in moved else "not found" if state is None else None
            out.print(f"{mid}: {what or f'not requeueable ({state})'}")
        if len(moved) < len(set(ids)):
            raise typer.Exit(1)
        return
    count = count_requeueable(c.engine, which)
    if count == 0:
        out.print("no message matches: nothing re-queued")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise EngageError(f"{count:,} messages match: pass --yes to re-queue them")
        typer.confirm(f"Re-queue {count:,} messages?", abort=True)
    moved_ids = requeue(c.engine, which, utcnow())
    out.print(f"re-queued {len(moved_ids):,} messages")


suppress_app = typer.Typer(help="Manage the suppression list.", no_args_is_help=True)
app.add_typer(suppress_app, name="suppress")


@suppress_app.command("add")
def suppress_add_cmd(
    ctx: typer.Context,
    channel: Annotated[str, typer.Argument(help="email or sms.")],
    address: Annotated[str, typer.Argument(help="Email address or E.164 phone number.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (default: manual).")] = "manual",
    customer: Annotated[str | None, typer.Option("--customer", help="Customer id.")] = None,
) -> None:
    """Never message this address on this channel."""
    from .planning import suppressions

    c = ctx_of(ctx)
    new = suppressions.add(c.engine, [(channel, address, customer, reason, "cli")])
    out.print("suppressed" if new else "already suppressed")


@suppress_app.command("remove")
def suppress_remove_cmd(
    ctx: typer.Context,
    channel: Annotated[str, typer.Argument(help="email or sms.")],
    address: Annotated[str, typer.Argument(help="Email address or E.164 phone number.")],
) -> None:
    """Lift a suppression."""
    from .planning import suppressions

    if not suppressions.remove(ctx_of(ctx).engine, channel, address):
        raise EngageError(f"{channel} {address} is not suppressed")
    out.print("removed")


@suppress_app.command("list")
def suppress_list_cmd(
    ctx: typer.Context,
    channel: Annotated[str | None, typer.Option("--channel", help="email or sms.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most N rows.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List suppressions, newest first."""
    from dataclasses import asdict

    from .planning import suppressions

    rows = suppressions.list_entries(ctx_of(ctx).engine, channel=channel, limit=limit)
    if as_json:
        print_json([{**asdict(r), "created_at": isoformat_z(r.created_at)} for r in rows])
        return
    from rich.table import Table

    table = Table("channel", "address", "customer", "reason", "source", "since")
    for r in rows:
        table.add_row(
            r.channel, r.address, r.customer_id or "", r.reason, r.source or "", _ts(r.created_at)
        )
    out.print(table)


@app.command("init")
def init_cmd(
    directory: Annotated[Path, typer.Argument(help="Project folder.")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Scaffold config.yaml, campaigns/ and templates/ with working examples."""
    from .scaffold import init_project

    for path in init_project(directory, force=force):
        out.print(f"created {path}")
    out.print(f"next: cd {directory} && engage db upgrade && engage validate")


@app.command("demo")
def demo_cmd(
    directory: Annotated[Path, typer.Argument(help="Demo folder (created).")] = Path("engage-demo"),
    customers: Annotated[int, typer.Option("--customers", min=1, help="Sample size.")] = 2000,
) -> None:
    """Create a sample shop, run every example campaign once through the file channel,
    and show what was sent and the calendar."""
    from .scaffold import run_demo

    demo = run_demo(
        directory.resolve(), utcnow(), customers=customers, progress=lambda m: err.print(m)
    )
    d = demo.data
    out.print(
        f"sample shop: {d.customers:,} customers, {d.interactions:,} interactions, "
        f"{d.lots:,} point lots in {directory / 'engage.db'}"
    )
    from rich.table import Table

    table = Table(
        "campaign", "occurrence (UTC)", "matched", "planned", "held out", "skipped", "sent"
    )
    for c in demo.campaigns:
        k = c.plan.counts
        table.add_row(
            c.plan.campaign,
            _ts(c.plan.scheduled_at),
            str(k.get("matched", 0)),
            str(k.get("send", 0)),
            str(k.get("held_out", 0)),
            str(k.get("skip", 0) - k.get("held_out", 0)),
            str(c.sent),
        )
    out.print(table)
    out.print(
        f"{len(demo.files)} files written to {demo.config.resolve(demo.config.channels.file.dir)}"
    )
    for f in demo.files[:5]:
        out.print(f"  {f.name}")
    cal = Table("when (campaign time)", "campaign", "est. audience", title="the next 7 days")
    for e in demo.calendar:
        cal.add_row(_ts(e.local), e.campaign, f"{e.estimated_audience:,}")
    out.print(cal)
    out.print(
        f"explore: engage --config {directory / 'config.yaml'} "
        "report | calendar | outbox | customer c0000001"
    )
    out.print(
        "close the loop: start the HTTP side (unsubscribe links, webhooks) with\n"
        f"  env $(cat {directory / '.env'}) engage --config {directory / 'config.yaml'} serve",
        markup=False,
    )
    if demo.unsubscribe_link:
        eml = demo.unsubscribe_file
        shown = directory / eml.relative_to(demo.folder) if eml else "an email"
        out.print(
            f"then open the unsubscribe link of {shown} in a browser:\n"
            f"  {demo.unsubscribe_link}",
            markup=False,
        )
    out.print(
        "and look at it in the web interface (calendar, campaign previews, customers, report):\n"
        f"  env $(cat {directory / '.env'}) ENGAGE_UI_PASSWORD=demo "
        f"engage --config {directory / 'config.yaml'} serve\n"
        "  then open http://127.0.0.1:8080/ and sign in with the password demo",
        markup=False,
    )


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="Plan and send what is due now, then exit.")
    ] = False,
    log_format: LogFormatOption = "text",
    log_level: LogLevelOption = "info",
    show_pii: ShowPiiOption = False,
) -> None:
    """The daemon: campaign schedules, dispatch, lease expiry and hot reload until SIGTERM.

    Logs go to stderr. On SQLite one daemon at a time; on PostgreSQL run as many as you like.
    """
    from .daemon.process import open_daemon
    from .logs import setup_logging

    _check_log_format(log_format)
    c = ctx_of(ctx)
    setup_logging(log_format, level=log_level, mask=not show_pii, secrets=c.config.secrets.values())
    daemon, lock = open_daemon(c.config, c.engine, c.config_path)
    try:
        if once:
            report = daemon.run_once()
            out.print(report.summary(), markup=False)
            if report.problems:
                n = len({p.path for p in report.problems})
                err.print(f"error: {n} campaign file(s) with errors were skipped (logged above)")
            for failure in report.failures:
                err.print(f"error: {failure}", markup=False)
            _exit_if_refused(report.dispatch.refused)
            if not report.ok:
                raise typer.Exit(1)
            return
        code = daemon.run_forever()
    finally:
        if lock is not None:
            lock.release()
    raise typer.Exit(code)


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default: serve.host).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", min=0, max=65535, help="Port (default: serve.port, 8080)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, max=64, help="Worker processes (default: serve.workers)."),
    ] = None,
    log_format: LogFormatOption = "text",
    log_level: LogLevelOption = "info",
    show_pii: ShowPiiOption = False,
) -> None:
    """The HTTP side: unsubscribe links, SendGrid and Twilio webhooks, the ingest API.

    Endpoints whose secret is not in the environment are disabled (listed at start).
    Put it behind an HTTPS reverse proxy at `public_url` (docs/http.md).
    """
    from sqlalchemy.exc import DBAPIError

    from .daemon.process import check_schema, safe_url
    from .web import serve

    _check_log_format(log_format)
    c = ctx_of(ctx)
    try:
        check_schema(c.engine)
    except DBAPIError as exc:
        raise EngageError(
            f"cannot reach the database {safe_url(c.engine)}: {type(exc.orig).__name__}"
        ) from None
    c.engine.dispose()  # the server opens its own connections
    serve(
        c.config,
        config_path=c.config_path,
        host=host,
        port=port,
        workers=workers,
        log_format=log_format,
        log_level=log_level,
        mask=not show_pii,
    )


@app.command("status")
def status_cmd(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Last and next run of every campaign, outbox counts, missed occurrences, live workers."""
    from .campaigns.loader import collect_campaigns
    from .daemon.status import status

    c = ctx_of(ctx)
    loaded = collect_campaigns(c.config)
    problems = [str(p) for p in loaded.errors]
    st = status(c.engine, loaded.campaigns, utcnow(), problems=problems)
    if as_json:
        print_json(st.to_json())
        return
    from rich.table import Table

    table = Table(
        "campaign", "schedule", "last run (UTC)", "state", "sent/planned", "next run (UTC)"
    )
    for cs in st.campaigns:
        k = cs.last_counts
        table.add_row(
            cs.name + ("" if cs.enabled else " (disabled)"),
            cs.schedule,
            _ts(cs.last_run),
            cs.last_state or "-",
            str(k.get("send", "-")) if cs.last_state else "-",
            _ts(cs.next_run),
        )
    out.print(table)
    counts = ", ".join(f"{k}: {v:,}" for k, v in sorted(st.outbox.items()))
    out.print(f"outbox: {counts or 'empty'}", markup=False)
    for cs in st.campaigns:
        if cs.error:
            out.print(f"failed: {cs.name}: {cs.error}", markup=False)
    for name, at in st.missed:
        out.print(f"missed: {name} at {_ts(at)}", markup=False)
    if st.missed_total > len(st.missed):
        out.print(f"... {st.missed_total - len(st.missed):,} more missed occurrences", markup=False)
    for w in st.workers:
        out.print(
            f"worker {w.host} pid {w.pid}: up since {_ts(w.started_at)}, "
            f"last heartbeat {_ts(w.heartbeat_at)}",
            markup=False,
        )
    if not st.workers:
        out.print("no live engage run worker", markup=False)
    for problem in problems:
        err.print(problem, markup=False)


_invocation: list[Ctx] = []  # this process's Ctx, for the error messages of main()


def _db_url() -> str | None:
    """The database URL of this invocation, if its config could be read."""
    if not _invocation:
        return None
    try:
        return _invocation[0].config.db_url
    except Exception:
        return None


def _one_line(exc: BaseException) -> str:
    """What ``main`` prints for an exception no command handled itself."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):  # the database: unreachable, missing, read-only, no tables
        from .db.session import explain_db_error

        return explain_db_error(exc, _db_url())
    if isinstance(exc, OSError) and exc.strerror:  # a folder or file engage cannot use
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"{describe(exc)} (unexpected: set ENGAGE_DEBUG=1 to see where)"


def _cli_logging() -> None:
    """Warnings and errors of the library, one line each on stderr (never a traceback)."""
    import os

    from .config import SECRET_VARS
    from .logs import setup_logging

    secrets = [os.environ.get(name, "") for name in SECRET_VARS]
    setup_logging("text", level="WARNING", secrets=secrets, tracebacks=False)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: exit 0 ok, 1 user error, 2 usage error.

    Every failure is one line on stderr: engage's own errors say what to do,
    database and file-system errors say which database or file, anything
    else names the exception (``ENGAGE_DEBUG=1`` shows the traceback).
    """
    import os

    _cli_logging()  # `engage run` sets up its own logging
    try:
        # Without standalone mode, click returns a command's typer.Exit code.
        code = app(args=argv, prog_name="engage", standalone_mode=False)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors (typer vendors click)
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            err.print(f"error: {exc}", markup=False)
        sys.exit(getattr(exc, "exit_code", 2))
    except EngageError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("ENGAGE_DEBUG"):
            raise
        err.print(f"error: {_one_line(exc)}", markup=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
