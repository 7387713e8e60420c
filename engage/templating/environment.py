"""The sandboxed Jinja2 environment, its filters, and render-error translation.

Marketers edit templates, so templates are untrusted code: they run in
``ImmutableSandboxedEnvironment`` (no Python internals, no mutation of the
objects we pass in), with ``StrictUndefined`` (a typo is an error, never an
empty string) and a loader that cannot leave the templates folder. HTML
templates (``*.html.j2``) are autoescaped; subject, text and SMS templates are
not, on purpose: escaping there would put ``&amp;`` into a subject line.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal, get_group_symbol, parse_pattern
from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, pass_context
from jinja2.filters import do_center, do_format, do_indent
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.utils import generate_lorem_ipsum

from ..config import Shop
from ..errors import EngageError, Problem
from ..timeutil import ensure_utc
from .budget import BudgetExceeded, check_binop, check_format, check_width
from .context import RENDER_INFO_KEY, CampaignInfo, CustomerView, PointsView, RenderInfo


class TemplateRenderError(EngageError):
    """One template failed for one customer: syntax, undefined name, sandbox, filter.

    ``template`` is the display path (``templates/winback/email.html.j2``) and
    ``line`` the template line Jinja reports, when known.
    """

    def __init__(self, message: str, *, template: str | None = None, line: int | None = None):
        self.template = template
        self.line = line
        self.detail = message
        where = template or "template"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {message}")

    def problem(self, severity: str = "error") -> Problem:
        return Problem(self.template or "templates", self.line, None, None, self.detail, severity)


def autoescape_for(name: str | None) -> bool:
    """Escape HTML templates only (``email.html.j2``, ``_layouts/base.html.j2``)."""
    return bool(name) and (str(name).endswith(".html.j2") or str(name).endswith(".html"))


class ConfinedLoader(FileSystemLoader):
    """A FileSystemLoader that also refuses symlinks pointing outside its root.

    FileSystemLoader already rejects ``..`` and absolute names; a symlink in
    the templates folder would still reach any file the process can read.
    """

    def __init__(self, root: Path, sources: Mapping[str, str] | None = None):
        super().__init__(str(root), encoding="utf-8")
        self.root = root.resolve()
        # Every source it has served, so a snapshot can be rebuilt elsewhere
        # (the dispatcher's helper process) from exactly what was checked. Given
        # ``sources``, it serves those and never reads the disk.
        self.sources: dict[str, str] = dict(sources) if sources is not None else {}
        self._fixed = sources is not None

    def get_source(self, environment: Any, template: str) -> Any:
        if self._fixed:
            if template not in self.sources:
                raise TemplateNotFound(template)
            return self.sources[template], str(self.root / template), lambda: True
        source, filename, uptodate = super().get_source(environment, template)
        if filename is None or not Path(filename).resolve().is_relative_to(self.root):
            raise TemplateNotFound(template)
        self.sources[template] = source
        return source, filename, uptodate


def _info(ctx: Context) -> RenderInfo:
    info = ctx.get(RENDER_INFO_KEY)
    if not isinstance(info, RenderInfo):
        raise RuntimeError(
            "this filter needs the render context "
            "(import macros that use it with `{% import ... with context %}`)"
        )
    return info


def _as_decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"money expects a number, got {type(value).__name__}")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"money expects a number, got {value!r}") from None


def _local(value: Any, info: RenderInfo, what: str) -> datetime | date:
    if isinstance(value, datetime):
        return ensure_utc(value).astimezone(info.zone)
    if isinstance(value, date):
        return value
    raise ValueError(f"{what} expects a date or datetime, got {type(value).__name__}")


# Babel formatting costs more than the rest of a render; results depend only on
# their arguments and repeat across customers (same dates, same prices), so cache.
@lru_cache(maxsize=8192)
def _money(value: Decimal, currency: str, locale: Locale) -> str:
    return format_currency(value, currency, locale=locale)


@lru_cache(maxsize=8192)
def _number(value: Decimal, locale: Locale) -> str:
    return format_decimal(value, locale=locale)


@lru_cache(maxsize=8192)
def _date(day: date, format: str, locale: Locale) -> str:
    return format_date(day, format=format, locale=locale)


@lru_cache(maxsize=8192)
def _datetime(local: datetime, format: str, zone: tzinfo, locale: Locale) -> str:
    return format_datetime(local, format=format, tzinfo=zone, locale=locale)


@pass_context
def money_filter(ctx: Context, value: Any, currency: str | None = None) -> str:
    """``{{ 12.5|money }}`` -> ``$12.50`` / ``12,50 $`` in the customer's locale."""
    info = _info(ctx)
    return _money(_as_decimal(value), currency or info.currency, info.locale)


@dataclass(frozen=True)
class _IntFormat:
    """Babel's default decimal pattern of one locale, reduced to whole numbers >= 0."""

    first: int  # digits in the rightmost group
    rest: int  # digits in each further group (2 for en_IN: 12,34,567)
    symbol: str
    min_digits: int
    prefix: str
    suffix: str

    def format(self, n: int) -> str:
        digits = str(n).rjust(self.min_digits, "0")
        size = self.first
        groups: list[str] = []
        while len(digits) > size:
            groups.append(digits[-size:])
            digits = digits[:-size]
            size = self.rest
        groups.append(digits)
        return self.prefix + self.symbol.join(reversed(groups)) + self.suffix


_INT_PROBES = (
    *range(0, 12),
    99, 100, 999, 1000, 1234, 9999, 10000, 12345, 99999, 100000, 123456, 999999,
    1000000, 1234567, 12345678, 123456789, 1234567890, 10**15 + 7, 10**21 + 1,
)  # fmt: skip


@lru_cache(maxsize=256)
def _int_format(locale: Locale) -> _IntFormat | None:
    """A fast formatter for whole numbers in this locale, or None to always ask Babel.

    Point balances differ per customer, so the ``_number`` cache mostly misses
    and Babel's ``format_decimal`` (pattern, symbol and quantize lookups) was
    a tenth of a render. Grouping whole numbers is all that pattern does to
    them; the formatter is only used when it reproduces Babel on every probe.
    """
    try:
        pattern = parse_pattern(locale.decimal_formats[None])
        fmt = _IntFormat(
            first=int(pattern.grouping[0]),
            rest=int(pattern.grouping[1]),
            symbol=get_group_symbol(locale),
            min_digits=int(pattern.int_prec[0]),
            prefix=str(pattern.prefix[0]),
            suffix=str(pattern.suffix[0]),
        )
    except Exception:  # an unusual pattern: Babel handles it
        return None
    if fmt.first < 1 or fmt.rest < 1 or pattern.scale or pattern.exp_prec:
        return None
    for n in _INT_PROBES:
        if fmt.format(n) != format_decimal(Decimal(n), locale=locale):
            return None
    return fmt


@pass_context
def number_filter(ctx: Context, value: Any) -> str:
    """``{{ 1250|number }}`` -> ``1,250`` / ``1.250`` in the customer's locale."""
    locale = _info(ctx).locale
    if type(value) is int and value >= 0:
        fmt = _int_format(locale)
        if fmt is not None:
            return fmt.format(value)
    number = _as_decimal(value)
    if (
        number.is_finite()
        and not number.is_signed()
        and number.adjusted() < 30
        and number == number.to_integral_value()
    ):
        fmt = _int_format(locale)
        if fmt is not None:
            return fmt.format(int(number))
    return _number(number, locale)


@pass_context
def date_filter(ctx: Context, value: Any, format: str = "medium") -> str:
    """A date in the customer's zone and locale; ``short|medium|long|full`` or a pattern."""
    info = _info(ctx)
    local = _local(value, info, "date")
    day = local.date() if isinstance(local, datetime) else local
    return _date(day, str(format), info.locale)


@pass_context
def datetime_filter(ctx: Context, value: Any, format: str = "medium") -> str:
    info = _info(ctx)
    local = _local(value, info, "datetime")
    if not isinstance(local, datetime):
        local = datetime(local.year, local.month, local.day, tzinfo=info.zone)
    return _datetime(local, str(format), info.zone, info.locale)


@pass_context
def days_until_filter(ctx: Context, value: Any) -> int:
    """Calendar days from today to that date, both in the customer's zone (may be < 0)."""
    info = _info(ctx)
    local = _local(value, info, "days_until")
    day = local.date() if isinstance(local, datetime) else local
    return (day - info.now.date()).days


@pass_context
def utm_filter(ctx: Context, url: Any, **overrides: Any) -> str:
    """Append the campaign's UTM parameters (``utm_source`` ...) to a link.

    Parameters already in the URL win; keyword arguments override the
    campaign's (``{{ shop.url|utm(medium="sms") }}``).
    """
    info = _info(ctx)
    params = {**(info.utm or {}), **{k: str(v) for k, v in overrides.items()}}
    if not params:
        return str(url)
    return _with_utm(str(url), tuple(params.items()))


@lru_cache(maxsize=4096)
def _with_utm(url: str, params: tuple[tuple[str, str], ...]) -> str:
    # Same link and campaign for every customer of a run: parse it once.
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k for k, _ in query}
    for key, val in params:
        name = key if key.startswith("utm_") else f"utm_{key}"
        if name not in present and val:
            query.append((name, val))
    path = parts.path or ("/" if parts.netloc else "")
    return urlunsplit(parts._replace(path=path, query=urlencode(query)))


def _finalize(value: Any) -> Any:
    # A missing optional value (last_name None) prints as nothing, not "None".
    return "" if value is None else value


# Declared data fields of the frozen objects we put in the context, and a few
# read-only methods. Reading them is safe by construction, and checking them
# here skips the sandbox's generic checks (ABC isinstance tests), the largest
# cost of a render.
_DATA_FIELDS: dict[type, frozenset[str]] = {
    CustomerView: frozenset(f.name for f in fields(CustomerView)),
    PointsView: frozenset(f.name for f in fields(PointsView)),
    CampaignInfo: frozenset(f.name for f in fields(CampaignInfo)),
    Shop: frozenset(Shop.model_fields),
    # Read-only methods of the plain types templates meet most (the lines of a
    # postal address, an attribute lookup): they can neither change their
    # object nor reach Python internals. str.format/format_map are not here:
    # the sandbox must wrap those.
    str: frozenset(
        "splitlines split strip lstrip rstrip lower upper title capitalize "
        "startswith endswith replace".split()
    ),
    dict: frozenset({"get", "keys", "values", "items"}),
}


class EngageSandbox(ImmutableSandboxedEnvironment):
    # Operators that can build huge values from small ones go through
    # ``call_binop``, which refuses results over the budget (see budget.py).
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:  # "{:>99999999}".format(x)
            check_format(value.__self__)
        return wrapped

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        allowed = _DATA_FIELDS.get(type(obj))
        if allowed is not None and attr in allowed:
            return True
        return bool(super().is_safe_attribute(obj, attr, value))

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Fast path for the declared data fields of our own context objects
        # (``customer.name``, ``shop.url``) and the read-only methods above:
        # never a bound ``str.format``, so the sandbox's per-access wrapping and
        # safety checks have nothing to catch there. Everything else (other
        # methods, other objects, unknown names) takes the full sandbox path.
        allowed = _DATA_FIELDS.get(type(obj))
        if allowed is not None and attribute in allowed:
            return getattr(obj, attribute)
        return super().getattr(obj, attribute)


@pass_context
def bounded_range(ctx: Context, *args: int) -> range:
    """The sandbox's ``range`` (at most 100,000 numbers), counted against the
    render's budget: nested loops cannot multiply it."""
    numbers = safe_range(*args)
    info = ctx.get(RENDER_INFO_KEY)
    if isinstance(info, RenderInfo):
        info.budget.take_range(len(numbers))
    return numbers


def bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if n > 100 or max > 1000:
        raise BudgetExceeded("lipsum: at most 100 paragraphs of 1,000 words")
    return str(generate_lorem_ipsum(n=n, html=html, min=min, max=max))


def _center(value: Any, width: int = 80) -> str:
    check_width(width)
    return do_center(value, width)


def _indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    check_width(width)
    return do_indent(value, width, first, blank)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    check_format(str(value))
    return do_format(value, *args, **kwargs)


def make_environment(
    root: Path, sources: Mapping[str, str] | None = None
) -> ImmutableSandboxedEnvironment:
    env = EngageSandbox(
        loader=ConfinedLoader(root, sources),
        autoescape=autoescape_for,
        undefined=StrictUndefined,
        auto_reload=False,  # Renderer.reload() swaps in a fresh, checked environment
        cache_size=-1,  # keep every compiled template: the snapshot stays consistent
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.globals.update(range=bounded_range, lipsum=bounded_lipsum)
    env.filters.update(
        center=_center,
        indent=_indent,
        format=_format,
        money=money_filter,
        number=number_filter,
        date=date_filter,
        datetime=datetime_filter,
        days_until=days_until_filter,
        utm=utm_filter,
    )
    return env


def render_error(
    exc: BaseException, root: Path, shown_root: str, fallback: str
) -> TemplateRenderError:
    """Translate any exception raised while rendering into ``file:line: message``.

    Jinja rewrites tracebacks so template frames carry the template file and
    line; the innermost such frame is where the error happened (a layout or an
    included file included).
    """
    from jinja2 import TemplateSyntaxError

    root_s = str(root)
    name, line = fallback, None
    if isinstance(exc, TemplateSyntaxError) and exc.lineno:
        name, line = exc.name or fallback, exc.lineno
    else:
        for frame in traceback.extract_tb(exc.__traceback__):
            if frame.filename.startswith(root_s) and frame.filename.endswith(".j2"):
                name = Path(frame.filename).relative_to(root_s).as_posix()
                line = frame.lineno
    message = _describe(exc)
    return TemplateRenderError(message, template=f"{shown_root}/{name}", line=line)


_OBJECT_NAMES = {
    "'engage.templating.context.CustomerView object'": "customer",
    "'engage.templating.context.PointsView object'": "points",
    "'engage.templating.context.CampaignInfo object'": "campaign",
    "'engage.config.Shop object'": "shop",
}


def _describe(exc: BaseException) -> str:
    from jinja2 import TemplateNotFound as NotFound
    from jinja2 import TemplateSyntaxError, UndefinedError
    from jinja2.exceptions import SecurityError

    if isinstance(exc, BudgetExceeded):
        return f"too much work for one message: {exc}"
    if isinstance(exc, SecurityError):
        return f"not allowed in templates: {exc}"
    if isinstance(exc, NotFound):
        return f"template not found: {exc.name}"
    if isinstance(exc, TemplateSyntaxError):
        return f"syntax error: {exc.message}"
    if isinstance(exc, UndefinedError):
        message = str(exc.message)
        for internal, shown in _OBJECT_NAMES.items():
            message = message.replace(internal, shown)
        return f"undefined: {message}"
    return f"{type(exc).__name__}: {exc}"
