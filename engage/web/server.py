"""Run the app under uvicorn, as ``engage serve`` does.

One worker runs the app built here. Several (``--workers N``) are uvicorn's
spawned processes, each building its own app with ``worker_app`` from the
same config file and environment; their metrics meet in a folder
``PROMETHEUS_MULTIPROC_DIR`` made for this run (see ``metrics``). Logs go to
stderr in engage's format in every process (uvicorn's access log is off:
request paths hold unsubscribe tokens; every refused request is logged by
the app, and each request is timed in ``/metrics``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from ..config import SECRET_VARS, Config
from ..logs import JsonFormatter, TextFormatter
from .app import create_app
from .context import announce
from .metrics import MULTIPROC_ENV

GRACEFUL_SHUTDOWN = 30  # seconds in-flight requests get on SIGTERM


def log_formatter(fmt: str = "text", mask: bool = True) -> logging.Formatter:
    """engage's log formatter for uvicorn's ``log_config`` (every worker)."""
    secrets = [os.environ[k] for k in SECRET_VARS if os.environ.get(k)]
    cls = JsonFormatter if fmt == "json" else TextFormatter
    return cls(mask=mask, secrets=secrets)


class PlainUvicorn(logging.Filter):
    """Drops the ANSI-coloured duplicate of its message uvicorn adds to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def log_config(fmt: str, level: str, mask: bool) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "engage": {"()": "engage.web.server.log_formatter", "fmt": fmt, "mask": mask}
        },
        "filters": {"plain": {"()": "engage.web.server.PlainUvicorn"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "engage",
                "filters": ["plain"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": "INFO", "handlers": [], "propagate": True},
            "uvicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "twilio": {"level": "WARNING"},
        },
    }


def worker_app() -> Starlette:
    """The factory each of several worker processes calls."""
    return create_app(announce=False)


def serve(
    config: Config,
    *,
    config_path: Path | None = None,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    log_format: str = "text",
    log_level: str = "info",
    mask: bool = True,
) -> None:
    """Serve until SIGINT/SIGTERM (in-flight requests finish, up to 30 s).

    Raises ``ConfigError`` before listening when a secret is unusable."""
    import logging.config

    import uvicorn

    logging.config.dictConfig(log_config(log_format, log_level, mask))
    settings = config.serve
    host = host or settings.host
    port = port if port is not None else settings.port
    workers = workers or settings.workers
    app = create_app(config)  # validates config and secrets here, in the parent
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": log_config(log_format, log_level, mask),
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN,
    }
    if workers == 1:
        # After a graceful shutdown uvicorn raises the signal again for the
        # handler it found: a no-op one makes SIGTERM/SIGINT exit 0, as `engage run` does.
        previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            uvicorn.run(app, **options)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return
    if config_path is not None:
        os.environ["ENGAGE_CONFIG"] = str(config_path.resolve())
    made = None
    if not os.environ.get(MULTIPROC_ENV):
        made = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="engage-metrics-")
    # The parent's app only checked the configuration: it does not serve.
    logging.getLogger("engage.web").info(
        "starting workers",
        extra={
            "event": "serve_workers",
            "workers": workers,
            "metrics_dir": os.environ[MULTIPROC_ENV],
        },
    )
    announce(app.state.ctx)
    try:
        uvicorn.run("engage.web.server:worker_app", factory=True, workers=workers, **options)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)


def _ignore(signum: int, frame: object) -> None:
    pass
