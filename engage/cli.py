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

from .config import Config, default_config_path, load_config
from .errors import EngageError
from .timeutil import parse_instant, utcnow

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
            return parse_instant(when, self.config.zone)
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


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Apply database migrations (creates the database on first run)."""
    from .db import current_revision, upgrade

    c = ctx_of(ctx)
    upgrade(c.engine)
    out.print(f"database at revision {current_revision(c.engine)}")


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
    columns exits 1 before anything is written.
    """
    from .ingest import import_file

    c = ctx_of(ctx)
    bar, progress = None, None
    if err.is_terminal:  # a progress bar over bytes read, only for a human watching
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        bar = Progress(TextColumn(f"importing {kind}"), BarColumn(), DownloadColumn(), console=err)
        task = bar.add_task(kind, total=None)
        progress = lambda done, total: bar.update(task, completed=done, total=total)  # noqa: E731
        bar.start()
    try:
        now = utcnow()
        result = import_file(
            c.engine, c.config, kind, file, fmt=fmt, rejects=rejects, now=now, progress=progress
        )
    finally:
        if bar is not None:
            bar.stop()
    for problem in result.errors[:ERRORS_SHOWN]:
        err.print(str(problem), markup=False)
    if result.rejected > ERRORS_SHOWN:
        where = f" (all in {rejects})" if rejects else " (use --rejects FILE to keep them all)"
        err.print(f"... and {result.rejected - ERRORS_SHOWN:,} more{where}", markup=False)
    if as_json:
        print_json(result.to_dict())
    else:
        out.print(result.summary(), markup=False)


@app.command("validate")
def validate_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the problems as JSON.")] = False,
) -> None:
    """Check config, campaigns and templates; print every problem as FILE:LINE:COL.

    Exit status 1 when there is any error; warnings alone exit 0.
    """
    from .validate import validate_path

    report = validate_path(ctx_of(ctx).config_path)
    if as_json:
        print_json(report.to_json())
    else:
        for problem in report.problems:
            out.print(str(problem), markup=False)
        out.print(report.summary(), markup=False)
    if not report.ok:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: exit 0 ok, 1 user error, 2 usage error."""
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
    sys.exit(code if isinstance(code, int) else 0)
