"""One exception root for engage; subclasses carry the context a user needs."""

from __future__ import annotations

from dataclasses import dataclass


class EngageError(Exception):
    """Root of every error engage raises on purpose (bad input, bad config, ...).

    The CLI turns these into a message and exit status 1; anything else is a bug.
    """


@dataclass(frozen=True)
class Problem:
    """One located problem in a file: ``path:line:col: field: message``."""

    path: str
    line: int | None
    col: int | None
    field: str | None
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        prefix = f"{self.field}: " if self.field else ""
        tag = "warning: " if self.severity == "warning" else ""
        return f"{where}: {tag}{prefix}{self.message}"


class ValidationFailed(EngageError):
    """Several located problems, reported all at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConfigError(EngageError):
    """config.yaml or the environment is wrong."""


class PlanningFailed(EngageError):
    """Planning one campaign failed; the others go on. ``campaign`` names it."""

    def __init__(self, message: str, *, campaign: str | None = None):
        super().__init__(message)
        self.campaign = campaign


class NotFound(EngageError):
    """A named thing (campaign, customer, message) does not exist."""


class SendError(EngageError):
    """A channel failed to hand a message to its provider."""

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class TransientSendError(SendError):
    """Worth retrying later: the provider certainly does not have the message
    (429, 5xx, or the connection failed before the request was written)."""


class AmbiguousSendError(SendError):
    """The request left, but no answer came back (a timeout or a dropped
    connection after the request was written): the provider may have accepted
    the message. Never retried automatically (the message becomes ``unknown``);
    neither SendGrid Mail Send nor Twilio Messages takes an idempotency key."""


class ProviderAuthError(SendError):
    """The provider refused engage's credentials (HTTP 401/403): nothing is
    wrong with the message, and every other message on that channel would be
    refused too."""


class PermanentSendError(SendError):
    """Retrying cannot help: the provider refused this message.

    ``suppress_reason`` is set when the address itself must be suppressed
    (e.g. ``sms_stop`` for Twilio 21610, ``invalid_address``).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        suppress_reason: str | None = None,
    ):
        super().__init__(message, code=code)
        self.suppress_reason = suppress_reason


def describe(exc: BaseException, limit: int = 500) -> str:
    """One line saying what went wrong, for a log field, a status column or a
    CLI message: the message of an engage error, ``Type: message`` otherwise.

    A database error names the driver's own exception (``exc.orig``) rather
    than SQLAlchemy's wrapper, whose text carries the whole statement and its
    parameters.
    """
    if isinstance(exc, EngageError):
        base: BaseException = exc
    else:
        orig = getattr(exc, "orig", None)
        base = orig if isinstance(orig, BaseException) else exc
    lines = [line.strip() for line in str(base).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if not isinstance(base, EngageError):
        text = f"{type(base).__name__}: {text}" if text else type(base).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
