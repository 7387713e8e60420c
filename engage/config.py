"""config.yaml as a strict pydantic model, with environment overrides and secrets.

Read once at the edge (CLI, daemon, web app) and passed down. Every value can
be overridden from the environment: ``ENGAGE_`` + the key path joined with
``__`` (``ENGAGE_DISPATCH__WORKERS=8``, ``ENGAGE_CHANNELS__SENDGRID__API_HOST=...``).
Secrets are never in the file: they come only from the environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError, Problem, ValidationFailed
from .timeutil import get_zone, parse_duration
from .unsubscribe import check_secret_key
from .yamlutil import YamlSyntaxError, load_yaml_file, problems_from_validation

ENV_PREFIX = "ENGAGE_"
MAX_CATCH_UP = timedelta(days=30)
SECRET_VARS = (
    "SENDGRID_API_KEY",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "ENGAGE_SECRET_KEY",
    "ENGAGE_API_TOKEN",
    "SENDGRID_WEBHOOK_PUBLIC_KEY",
    "ENGAGE_UI_PASSWORD",  # the web interface's sign-in (docs/ui.md)
    "ENGAGE_UI_USERS",
)


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    return parse_duration(value)


def _clock(value: Any) -> time:
    if isinstance(value, time):
        return value
    if not isinstance(value, str):
        raise ValueError(f'expected a time of day such as "09:00", got {value!r}')
    try:
        hh, mm = value.strip().split(":")
        if len(mm) != 2:
            raise ValueError
        if int(hh) == 24 and int(mm) == 0:
            return time(23, 59, 59, 999999)
        return time(int(hh), int(mm))
    except ValueError:
        raise ValueError(f'expected a time of day such as "09:00", got {value!r}') from None


def _zone_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected an IANA time zone name, got {value!r}")
    get_zone(value)
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
ClockTime = Annotated[time, BeforeValidator(_clock)]
ZoneName = Annotated[str, BeforeValidator(_zone_name)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(Strict):
    """A daily window in the customer's local time, ``start`` inclusive, ``end`` exclusive."""

    start: ClockTime
    end: ClockTime

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.start == self.end:
            raise ValueError("send window start and end must differ")
        return self


class SendWindows(Strict):
    email: Window = Window(start=time(8), end=time(21))
    sms: Window = Window(start=time(9), end=time(20))


class FrequencyCap(Strict):
    max_messages: int = Field(3, ge=1)
    per: Duration = timedelta(days=7)


class Shop(Strict):
    name: str = "Example Shop"
    url: str = "https://shop.example.com"
    postal_address: str = ""
    support_email: str = ""
    currency: str = "USD"


class FileChannel(Strict):
    dir: str = "outbox"


class SendGridChannel(Strict):
    api_host: str = "https://api.sendgrid.com"
    timeout: float = Field(10.0, gt=0)
    from_email: str = "shop@example.com"
    from_name: str | None = None
    reply_to: str | None = None
    rate_per_second: float = Field(50.0, gt=0)
    categories: list[str] = []  # added to ["engage", <campaign>] on every email
    sandbox_mode: bool = False  # SendGrid validates but delivers nothing


class TwilioChannel(Strict):
    api_base: str = "https://api.twilio.com"
    timeout: float = Field(10.0, gt=0)
    from_number: str | None = None
    messaging_service_sid: str | None = None
    status_callback: str | None = None
    rate_per_second: float = Field(10.0, gt=0)


EmailProvider = Literal["file", "console", "sendgrid"]
SmsProvider = Literal["file", "console", "twilio"]


class Channels(Strict):
    email: EmailProvider = "file"
    sms: SmsProvider = "file"
    file: FileChannel = FileChannel()
    sendgrid: SendGridChannel = SendGridChannel()
    twilio: TwilioChannel = TwilioChannel()


class TemplateCheck(Strict):
    """The budget of ``engage validate`` and hot reload rendering each template
    against the sample customer (in a child process, templating/isolation.py)."""

    timeout: Duration = timedelta(seconds=10)  # per template rendered
    memory_mb: int = Field(512, ge=64, le=65_536)  # above what the check process uses at start

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, timeout: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= timeout <= timedelta(minutes=10):
            raise ValueError("must be between 1s and 10m")
        return timeout


class Dispatch(Strict):
    batch_size: int = Field(200, ge=1)
    # Requests in flight per process: enough to hide a provider answering in
    # 100-300 ms (each waits in its own thread; idle threads cost nothing).
    workers: int = Field(256, ge=1, le=1024)
    lease: Duration = timedelta(minutes=5)
    max_attempts: int = Field(5, ge=1)
    backoff_base: Duration = timedelta(seconds=30)
    backoff_max: Duration = timedelta(hours=1)
    poll_interval: Duration = timedelta(seconds=5)
    shutdown_grace: Duration = timedelta(seconds=30)  # engage run: in-flight sends may finish


class Serve(Strict):
    """``engage serve``: the HTTP side (docs/http.md)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    # SendGrid signs a timestamp with each batch: older or newer than this is a replay.
    webhook_tolerance: Duration = timedelta(minutes=10)
    # How long applied webhook event ids are kept to recognise a redelivery.
    event_retention: Duration = timedelta(days=7)


class Config(Strict):
    timezone: ZoneName = "UTC"
    locale: str = "en_US"
    default_phone_region: str = "US"
    database_url: str | None = None
    campaigns_dir: str = "campaigns"
    templates_dir: str = "templates"
    public_url: str = "https://engage.example.com"
    shop: Shop = Shop()
    engagement_kinds: list[str] | None = None
    ignored_kinds: list[str] = ["email_open"]
    require_email_opt_in: bool = True
    frequency_cap: FrequencyCap = FrequencyCap()
    send_windows: SendWindows = SendWindows()
    max_sms_segments: int = Field(3, ge=1, le=10)
    # Gmail clips an email whose HTML passes 102 KB ("[Message clipped]"), and the
    # unsubscribe link and postal address at the bottom disappear with the rest.
    max_email_html_kb: int = Field(100, ge=1, le=10_240)
    template_check: TemplateCheck = TemplateCheck()
    sms_opt_out_line: str = "Reply STOP to opt out"
    catch_up: Duration = timedelta(hours=6)
    attribution_window: Duration = timedelta(days=7)
    retention_window: Duration = timedelta(days=365)
    loyal_min_orders: int = Field(3, ge=1)
    import_batch_size: int = Field(1000, ge=1)
    channels: Channels = Channels()
    dispatch: Dispatch = Dispatch()
    serve: Serve = Serve()

    # Where the file was read from; not a YAML key.
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)
    secrets: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)

    @field_validator("attribution_window", "retention_window")
    @classmethod
    def _positive_window(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be a positive duration such as 7d")
        return value

    @field_validator("send_windows")
    @classmethod
    def _sms_legal_hours(cls, windows: SendWindows) -> SendWindows:
        if (
            windows.sms.start < time(8)
            or windows.sms.end > time(21)
            or windows.sms.end < windows.sms.start
        ):
            raise ValueError("the SMS send window must lie within 08:00-21:00 local time")
        return windows

    @field_validator("catch_up")
    @classmethod
    def _catch_up_bounded(cls, catch_up: timedelta) -> timedelta:
        # Catch-up walks every occurrence of the window, on every sweep.
        if catch_up > MAX_CATCH_UP:
            raise ValueError(
                f"at most {MAX_CATCH_UP.days}d: older occurrences are recorded as missed"
            )
        return catch_up

    @property
    def zone(self) -> ZoneInfo:
        return get_zone(self.timezone)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.base_dir / 'engage.db'}"

    @property
    def campaigns_path(self) -> Path:
        return self.base_dir / self.campaigns_dir

    @property
    def templates_path(self) -> Path:
        return self.base_dir / self.templates_dir

    def window_for(self, channel: str) -> Window:
        return getattr(self.send_windows, channel)

    def sending_secrets(self) -> list[str]:
        """The environment variables sending needs with these channels."""
        names = ["ENGAGE_SECRET_KEY"]  # signs the unsubscribe link of every message
        if self.channels.email == "sendgrid":
            names.append("SENDGRID_API_KEY")
        if self.channels.sms == "twilio":
            names += ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"]
        return names

    def require_sending_secrets(self, who: str) -> None:
        """One ConfigError naming every missing or unusable secret ``who`` needs to send."""
        missing = [n for n in self.sending_secrets() if not self.secrets.get(n)]
        problems = []
        if missing:
            problems.append(f"set {', '.join(missing)} in the environment")
        key = self.secrets.get("ENGAGE_SECRET_KEY")
        if key:
            try:
                check_secret_key(key)
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError(f"{who}: {'; '.join(problems)} (nothing was planned or sent)")

    def secret(self, name: str) -> str:
        """A secret from the environment, or a ConfigError naming the variable."""
        value = self.secrets.get(name)
        if not value:
            raise ConfigError(f"environment variable {name} is not set")
        return value

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``ENGAGE_A__B=v`` -> ``{"a": {"b": v}}`` for keys that are config fields."""
    fields = set(Config.model_fields) - {"base_dir", "secrets"}
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in SECRET_VARS:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if parts[0] not in fields or not all(parts):
            continue
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                pass
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("ENGAGE_CONFIG") or "config.yaml")


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    must_exist: bool = False,
) -> Config:
    """Read config.yaml (if present) and the environment into a Config.

    Raises ValidationFailed with ``path:line:col`` problems for a bad file.
    """
    env = dict(os.environ if environ is None else environ)
    cfg_path = Path(path) if path is not None else default_config_path(env)
    shown = str(cfg_path)
    data: dict[str, Any] = {}
    where: dict[Any, Any] = {}
    if cfg_path.exists():
        try:
            loaded, where = load_yaml_file(cfg_path, shown)
        except YamlSyntaxError as exc:
            raise ValidationFailed([exc.problem]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValidationFailed([Problem(shown, 1, 1, None, "config must be a mapping")])
        data = loaded
    elif must_exist or path is not None:
        raise ConfigError(f"config file not found: {cfg_path}")
    overrides = _env_overrides(env)
    if "ENGAGE_DATABASE_URL" in env:
        overrides["database_url"] = env["ENGAGE_DATABASE_URL"]
    merged = _merge(data, overrides)
    merged["base_dir"] = cfg_path.resolve().parent
    merged["secrets"] = {k: env[k] for k in SECRET_VARS if env.get(k)}
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        problems = problems_from_validation(exc, shown, where)
        for p in problems:
            if p.field and _from_env(p.field, overrides):
                object.__setattr__(p, "message", p.message + " (from the environment)")
        raise ValidationFailed(problems) from None


def _from_env(field: str, overrides: dict[str, Any]) -> bool:
    node: Any = overrides
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
