"""SMS through Twilio's Messages API, with the official ``twilio`` SDK.

The SDK has no base-URL option and no default timeout, so every Twilio client
gets a ``RedirectingHttpClient``: a ``TwilioHttpClient`` that sends requests
meant for ``api[.edge.region].twilio.com`` to ``channels.twilio.api_base``
(Twilio itself, a regional host, a proxy or a local fake) with
``channels.twilio.timeout``. ``TWILIO_EDGE``/``TWILIO_REGION`` from the
environment are ignored on purpose: the host is ``api_base``, and only that.

Each worker thread gets its own client (``threading.local``): requests'
``Session`` is not documented as thread-safe, and the SDK's error objects do
not carry response headers, so the per-thread HTTP client remembers the last
response's headers for ``Retry-After``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client
from urllib3.exceptions import NewConnectionError

from ...config import Config, TwilioChannel
from ...errors import (
    AmbiguousSendError,
    ConfigError,
    PermanentSendError,
    ProviderAuthError,
    SendError,
    TransientSendError,
)
from ._common import CONNECT, NETWORK, TIMEOUT, parse_retry_after, scrub
from .base import ChannelKind, Outgoing, SendResult

__all__ = ["RedirectingHttpClient", "TwilioSmsChannel", "map_twilio_error"]

STOP_CODES = {21610}  # recipient replied STOP
INVALID_NUMBER_CODES = {21211, 21614}  # not a valid (mobile) number
RATE_LIMIT_CODES = {20429}


class RedirectingHttpClient(TwilioHttpClient):
    """A ``TwilioHttpClient`` that rewrites Twilio's API host and applies a timeout."""

    def __init__(self, api_base: str, timeout: float) -> None:
        super().__init__(pool_connections=True, timeout=timeout)
        base = urlsplit(api_base.rstrip("/"))
        if base.scheme not in ("http", "https") or not base.netloc:
            raise ConfigError(f"channels.twilio.api_base is not an http(s) URL: {api_base!r}")
        self._base = base
        self.last_headers: Mapping[str, str] | None = None

    def rewrite(self, url: str) -> str:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if not (host.startswith("api.") and (host.endswith(".twilio.com"))):
            return url  # not the REST API host we send messages through
        path = self._base.path + parts.path
        return urlunsplit((self._base.scheme, self._base.netloc, path, parts.query, parts.fragment))

    def request(  # type: ignore[override]  # same signature, argument names as the parent
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        self.last_headers = None
        response = super().request(
            method,
            self.rewrite(url),
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )
        self.last_headers = response.headers
        return response

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def map_twilio_error(
    exc: BaseException,
    *,
    headers: Mapping[str, str] | None = None,
    to: str = "",
    secrets: tuple[str, ...] = (),
) -> SendError:
    """The one place Twilio/requests failures become Transient or Permanent errors.

    ``headers`` are the failed response's headers (for ``Retry-After``). Secrets
    are removed and the recipient number is masked in the message.
    """

    def clean(text: str) -> str:
        return scrub(text, secrets=secrets, addresses=(to,))

    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status = int(exc.status or 0)
        code = int(exc.code) if exc.code is not None else status
        if isinstance(exc, TwilioRestException):
            detail = exc.msg
        else:
            detail = exc.detail or exc.title
        text = clean(f"Twilio HTTP {status} error {code}: {detail}")
        retry_after = parse_retry_after(_header(headers, "Retry-After"))
        if code in STOP_CODES:
            return PermanentSendError(text, code=str(code), suppress_reason="sms_stop")
        if code in INVALID_NUMBER_CODES:
            return PermanentSendError(text, code=str(code), suppress_reason="invalid_address")
        if code in RATE_LIMIT_CODES or status == 429 or status >= 500:
            return TransientSendError(text, code=str(code), retry_after=retry_after)
        if status in (401, 403):
            return ProviderAuthError(
                f"Twilio refused the credentials (HTTP {status} error {code}): "
                "check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
                code=str(code),
            )
        return PermanentSendError(text, code=str(code))
    if isinstance(exc, TwilioException):  # raised by the SDK before any request
        return PermanentSendError(clean(f"Twilio client error: {exc}"))
    # Before the request was written (Twilio has nothing): worth retrying.
    if isinstance(exc, requests.ConnectTimeout):
        return TransientSendError("Twilio timed out while connecting", code=CONNECT)
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0] if exc.args else None, "reason", None)
        if isinstance(reason, NewConnectionError):  # refused, DNS, unreachable
            return TransientSendError("cannot reach Twilio: connection failed", code=CONNECT)
    # After it (a read timeout, a connection dropped mid-request): Twilio may have it.
    if isinstance(exc, requests.Timeout):
        return AmbiguousSendError(
            "Twilio did not answer in time: it may have accepted the message", code=TIMEOUT
        )
    if isinstance(exc, OSError):  # other ConnectionErrors, raw socket errors
        return AmbiguousSendError(
            clean(
                f"the connection to Twilio broke during the request "
                f"({type(exc).__name__}: {exc}): it may have accepted the message"
            ),
            code=NETWORK,
        )
    raise TypeError(f"not a Twilio transport error: {type(exc).__name__}")


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)  # requests' CaseInsensitiveDict
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


class _PerThread(threading.local):
    client: Client | None = None
    http: RedirectingHttpClient | None = None


class TwilioSmsChannel:
    """The ``twilio`` SMS channel; safe to share between worker threads."""

    provider = "twilio"
    kind: ChannelKind = "sms"

    def __init__(self, settings: TwilioChannel, account_sid: str, auth_token: str) -> None:
        if not settings.from_number and not settings.messaging_service_sid:
            raise ConfigError(
                "channels.twilio needs from_number or messaging_service_sid to send SMS"
            )
        RedirectingHttpClient(settings.api_base, settings.timeout)  # validate api_base now
        self.settings = settings
        self._sid = account_sid
        self._token = auth_token
        self._local = _PerThread()
        self._lock = threading.Lock()
        self._opened: list[RedirectingHttpClient] = []

    @classmethod
    def from_config(cls, config: Config) -> TwilioSmsChannel:
        values, missing = {}, []
        for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
            try:
                values[name] = config.secret(name)
            except ConfigError:
                missing.append(name)
        if missing:
            raise ConfigError(f"environment variable(s) {', '.join(missing)} not set")
        sid, token = values["TWILIO_ACCOUNT_SID"], values["TWILIO_AUTH_TOKEN"]
        return cls(config.channels.twilio, sid, token)

    def __repr__(self) -> str:  # never show the token
        return f"<TwilioSmsChannel api_base={self.settings.api_base!r}>"

    def _client(self) -> tuple[Client, RedirectingHttpClient]:
        local = self._local
        if local.client is None or local.http is None:
            http = RedirectingHttpClient(self.settings.api_base, self.settings.timeout)
            client = Client(self._sid, self._token, http_client=http)
            client.edge = None  # ignore TWILIO_EDGE / TWILIO_REGION: api_base decides
            client.region = None
            local.client, local.http = client, http
            with self._lock:
                self._opened.append(http)
        return local.client, local.http

    def _params(self, message: Outgoing) -> dict[str, Any]:
        params: dict[str, Any] = {"to": message.to, "body": message.text}
        if self.settings.messaging_service_sid:
            params["messaging_service_sid"] = self.settings.messaging_service_sid
        if self.settings.from_number:
            params["from_"] = self.settings.from_number
        if self.settings.status_callback:
            params["status_callback"] = self.settings.status_callback
        return params

    def send(self, message: Outgoing) -> SendResult:
        if message.channel != "sms":
            raise PermanentSendError(f"twilio cannot send a {message.channel} message")
        if not message.text:
            raise PermanentSendError("SMS body is empty")
        client, http = self._client()
        try:
            created = client.api.v2010.account.messages.create(**self._params(message))
        except (TwilioException, OSError) as exc:
            raise map_twilio_error(
                exc, headers=http.last_headers, to=message.to, secrets=(self._token,)
            ) from None  # the SDK error text may hold the number; ours is scrubbed
        return SendResult(provider=self.provider, provider_id=created.sid)

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for http in opened:
            http.close()
