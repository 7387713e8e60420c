"""The web interface as one Starlette app: ``create_ui(config, engine)``.

Read-only pages for marketers (SPEC §13): the calendar, a campaign's page
(YAML, validation, dry run, exact preview), a customer's timeline and the
report. It is mounted by ``engage serve`` at ``/`` after the API routes, and
brings everything it needs: sign-in, security headers, its templates and
static files. The handlers are thin; the library computes.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ...config import Config, load_config
from ...db.session import get_engine
from ...errors import ConfigError, EngageError
from ...timeutil import utcnow
from . import pages
from .auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Session,
    Sessions,
    Signer,
    Throttle,
    Users,
    UsersError,
    new_token,
    same_token,
)
from .estimates import EstimateCache
from .report import ReportSource, library_report
from .security import SecurityHeaders
from .state import CampaignFiles

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 16 * 1024

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class UI:
    """Everything the handlers share, built once per process."""

    config: Config
    engine: Engine
    users: Users
    sessions: Sessions
    throttle: Throttle
    estimates: EstimateCache
    campaigns: CampaignFiles
    report_source: ReportSource
    clock: Callable[[], datetime]
    env: Environment
    estimate_wait: float = 1.5

    def render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        session: Session | None = getattr(request.state, "session", None)
        base = request.scope.get("root_path", "").rstrip("/")
        html = self.env.get_template(name).render(
            base=base,
            path=request.url.path[len(base):] or "/",
            session=session,
            shop=self.config.shop,
            config_zone=self.config.timezone,
            **ctx,
        )
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"], default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    pages.install_filters(env)
    return env


def create_ui(
    config: Config | str | Path | None = None,
    engine: Engine | None = None,
    *,
    report_source: ReportSource | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Starlette | None:
    """The web interface, or None (logged once, as a warning) when no sign-in is
    configured: set ``ENGAGE_UI_PASSWORD`` or ``ENGAGE_UI_USERS`` to turn it on.

    ``config`` is a loaded Config or a path to config.yaml; ``engine`` defaults
    to the config's database. ``report_source`` computes the report page's
    data (default: ``engage report``'s library); ``clock`` is for tests.
    """
    if not isinstance(config, Config):
        config = load_config(config)
    try:
        users = Users.from_secrets(config.secrets)
    except UsersError as exc:
        raise ConfigError(str(exc)) from None
    if users is None:
        log.warning(
            "web interface off: set ENGAGE_UI_PASSWORD (or ENGAGE_UI_USERS) to turn it on",
            extra={"event": "ui_off"},
        )
        return None
    engine = engine if engine is not None else get_engine(config.db_url)
    secret = config.secrets.get("ENGAGE_SECRET_KEY")
    if not secret:
        log.warning(
            "ENGAGE_SECRET_KEY is not set: web sign-ins last until this process stops "
            "and are not shared between processes",
            extra={"event": "ui_ephemeral_sessions"},
        )
        secret = secrets.token_urlsafe(32)
    ui = UI(
        config=config,
        engine=engine,
        users=users,
        sessions=Sessions(Signer(secret), users),
        throttle=Throttle(),
        estimates=EstimateCache(engine, config, clock=clock),
        campaigns=CampaignFiles(config),
        report_source=report_source or library_report,
        clock=clock,
        env=_environment(),
    )
    log.info("web interface on", extra={"event": "ui_on", "named_users": users.named})
    return build_app(ui)


def build_app(ui: UI) -> Starlette:
    def page(handler: Callable[[UI, Request], Response]) -> Handler:
        """Require a session, then run the handler in a thread (it queries the database)."""

        async def endpoint(request: Request) -> Response:
            session = ui.sessions.read(request.cookies.get(SESSION_COOKIE))
            if session is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                base = request.scope.get("root_path", "").rstrip("/")
                return RedirectResponse(
                    f"{base}/login?{urlencode({'next': target})}", status_code=303
                )
            request.state.session = session
            return await run_in_threadpool(handler, ui, request)

        return endpoint

    async def login_form(request: Request) -> Response:
        return _login_page(ui, request)

    async def login(request: Request) -> Response:
        return await _login(ui, request)

    async def logout(request: Request) -> Response:
        session = ui.sessions.read(request.cookies.get(SESSION_COOKIE))
        form = await _form(request)
        base = request.scope.get("root_path", "").rstrip("/")
        if session is not None and not same_token(form.get("csrf"), session.csrf):
            raise HTTPException(403, "the form expired: reload the page and try again")
        response = RedirectResponse(f"{base}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=base or "/")
        return response

    routes = [
        Route("/", page(pages.calendar), name="calendar"),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/campaigns", page(pages.campaign_list)),
        Route("/campaigns/{name}", page(pages.campaign)),
        Route("/campaigns/{name}/preview.html", page(pages.preview_html)),
        Route("/customers", page(pages.customer_search)),
        Route("/customers/{customer_id:path}", page(pages.customer)),
        Route("/report", page(pages.report)),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(ui, request, exc.status_code, exc.detail)

    async def engage_error(request: Request, exc: Exception) -> Response:
        return _error(ui, request, 400, str(exc))

    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: http_error, EngageError: engage_error},
    )
    app.state.ui = ui
    return app


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _error(ui: UI, request: Request, status: int, detail: str) -> Response:
    if not _wants_html(request):
        return JSONResponse({"error": detail}, status_code=status)
    request.state.session = getattr(
        request.state, "session", ui.sessions.read(request.cookies.get(SESSION_COOKIE))
    )
    return ui.render(request, "error.html", status=status, status_code=status, detail=detail)


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (small forms only)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        raise HTTPException(400, "the form is not UTF-8") from None


def _safe_next(target: str | None, base: str) -> str:
    """Only a path of this site (no scheme, no host, no ``//``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return f"{base}/"
    return f"{base}{target}" if base and not target.startswith(base + "/") else target


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _login_page(
    ui: UI,
    request: Request,
    *,
    error: str | None = None,
    status: int = 200,
    user: str = "",
    next_: str | None = None,
) -> Response:
    base = request.scope.get("root_path", "").rstrip("/")
    # One token per browser (kept while its cookie lives), so two open sign-in tabs both work.
    token = ui.sessions.signer.unsign(request.cookies.get(LOGIN_CSRF_COOKIE, "")) or new_token()
    response = ui.render(
        request,
        "login.html",
        status=status,
        csrf=token,
        error=error,
        named=ui.users.named,
        user=user,
        next=next_ or request.query_params.get("next", "/"),
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        ui.sessions.signer.sign(token),
        max_age=3600,
        path=f"{base}/login",
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    return response


async def _login(ui: UI, request: Request) -> Response:
    base = request.scope.get("root_path", "").rstrip("/")
    form = await _form(request)
    expected = ui.sessions.signer.unsign(request.cookies.get(LOGIN_CSRF_COOKIE, ""))
    if not same_token(form.get("csrf"), expected):
        log.info("sign-in refused: bad CSRF token", extra={"event": "ui_login_csrf"})
        return _login_page(
            ui, request, error="The form expired. Please try again.", status=403,
            next_=form.get("next"),
        )
    client = request.client.host if request.client else "?"
    if ui.throttle.blocked(client):
        log.warning("sign-in throttled", extra={"event": "ui_login_throttled"})
        return _login_page(
            ui, request, error="Too many failed attempts. Wait a few minutes.", status=429,
            next_=form.get("next"),
        )
    user = await run_in_threadpool(
        ui.users.check, form.get("user", ""), form.get("password", "")
    )
    if user is None:
        ui.throttle.failed(client)
        log.info("sign-in failed", extra={"event": "ui_login_failed"})
        return _login_page(
            ui, request, error="Wrong user name or password.", status=401,
            user=form.get("user", ""), next_=form.get("next"),
        )
    ui.throttle.succeeded(client)
    _, cookie = ui.sessions.open(user)
    log.info("signed in", extra={"event": "ui_login", "user": user})
    response = RedirectResponse(_safe_next(form.get("next"), base), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=ui.sessions.max_age,
        path=base or "/",
        httponly=True,
        samesite="lax",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=f"{base}/login")
    return response
