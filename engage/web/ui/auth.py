"""Sign-in for the web interface: who may sign in, signed session cookies, CSRF.

Two ways to say who may sign in, both from the environment (they are secrets,
never in config.yaml):

* ``ENGAGE_UI_PASSWORD``: one shared password (the user is shown as ``admin``);
* ``ENGAGE_UI_USERS``: ``name:HASH`` pairs separated by commas or newlines,
  each HASH made by ``python -m engage.web.ui.passwords`` (scrypt, salted).

The session is a cookie holding ``user|issued|csrf|credential tag`` signed
with an HMAC key derived from ``ENGAGE_SECRET_KEY``. The credential tag ties
the session to the password it was opened with: changing a password signs
out its sessions. Nothing is stored server-side, so any number of ``engage
serve`` processes share sessions as long as they share the secret key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

SESSION_COOKIE = "engage_session"
LOGIN_CSRF_COOKIE = "engage_login"
SESSION_MAX_AGE = 12 * 3600  # seconds: a working day, then sign in again
SHARED_USER = "admin"
_SCRYPT = (2**14, 8, 1)  # n, r, p: about 16 MB and 50 ms per check


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash``: what ``ENGAGE_UI_USERS`` holds per user."""
    n, r, p = _SCRYPT
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32,
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


class UsersError(ValueError):
    """``ENGAGE_UI_USERS`` is malformed (the message never repeats a hash)."""


@dataclass(frozen=True)
class Users:
    """Who may sign in: a shared password and/or named users with scrypt hashes."""

    shared_password: str | None = None
    hashed: Mapping[str, str] | None = None

    @classmethod
    def from_secrets(cls, values: Mapping[str, str]) -> Users | None:
        """From ``ENGAGE_UI_PASSWORD`` / ``ENGAGE_UI_USERS``; None when neither is set."""
        shared = values.get("ENGAGE_UI_PASSWORD") or None
        raw = values.get("ENGAGE_UI_USERS") or ""
        hashed: dict[str, str] = {}
        for n, item in enumerate(raw.replace("\n", ",").split(","), 1):
            item = item.strip()
            if not item:
                continue
            name, sep, encoded = item.partition(":")
            if not sep or not name.strip() or not encoded.startswith("scrypt$"):
                raise UsersError(
                    f"ENGAGE_UI_USERS entry {n} is not name:HASH "
                    "(make the hash with: python -m engage.web.ui.passwords)"
                )
            if len(encoded.split("$")) != 6:
                raise UsersError(f"ENGAGE_UI_USERS entry {n}: the hash is cut short")
            hashed[name.strip()] = encoded.strip()
        if shared is None and not hashed:
            return None
        return cls(shared, hashed or None)

    @property
    def named(self) -> bool:
        """Whether the sign-in form asks for a user name."""
        return bool(self.hashed)

    def check(self, user: str, password: str) -> str | None:
        """The signed-in user's name, or None. Always does the same work per call."""
        user = user.strip()
        if self.hashed and user in self.hashed:
            return user if verify_password(password, self.hashed[user]) else None
        if self.hashed:  # unknown name: spend the time a real check takes
            verify_password(password, hash_password("x", salt=b"0" * 16))
        if self.shared_password is not None and user in ("", SHARED_USER):
            ok = hmac.compare_digest(password.encode(), self.shared_password.encode())
            return SHARED_USER if ok else None
        return None

    def credential_tag(self, user: str) -> str:
        """A short fingerprint of the user's current credential (not reversible)."""
        material = (
            self.hashed[user]
            if self.hashed and user in self.hashed
            else "shared:" + (self.shared_password or "")
        )
        return _b64(hashlib.sha256(b"engage-ui-credential|" + material.encode()).digest()[:9])


@dataclass(frozen=True)
class Session:
    user: str
    issued: int
    csrf: str


class Signer:
    """HMAC-SHA256 signatures for the session and login cookies."""

    def __init__(self, secret_key: str):
        self._key = hmac.new(secret_key.encode(), b"engage-ui-cookies", hashlib.sha256).digest()

    def sign(self, value: str) -> str:
        mac = hmac.new(self._key, value.encode(), hashlib.sha256).digest()
        return f"{value}.{_b64(mac)}"

    def unsign(self, signed: str) -> str | None:
        value, _, mac = signed.rpartition(".")
        if not value or not mac:
            return None
        want = hmac.new(self._key, value.encode(), hashlib.sha256).digest()
        try:
            return value if hmac.compare_digest(want, _unb64(mac)) else None
        except (ValueError, TypeError):
            return None


class Sessions:
    """Encode and check session cookies."""

    def __init__(self, signer: Signer, users: Users, *, max_age: int = SESSION_MAX_AGE):
        self.signer = signer
        self.users = users
        self.max_age = max_age

    def open(self, user: str, now: float | None = None) -> tuple[Session, str]:
        session = Session(user, int(now if now is not None else time.time()), new_token())
        tag = self.users.credential_tag(user)
        payload = "|".join((_b64(user.encode()), str(session.issued), session.csrf, tag))
        return session, self.signer.sign(payload)

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        if not cookie:
            return None
        payload = self.signer.unsign(cookie)
        if payload is None:
            return None
        try:
            user_b64, issued, csrf, tag = payload.split("|")
            user = _unb64(user_b64).decode()
            issued_at = int(issued)
        except (ValueError, UnicodeDecodeError):
            return None
        age = (now if now is not None else time.time()) - issued_at
        if age < -60 or age > self.max_age:
            return None
        if not hmac.compare_digest(tag, self.users.credential_tag(user)):
            return None  # the password changed (or the user is gone) since
        return Session(user, issued_at, csrf)


def new_token() -> str:
    return secrets.token_urlsafe(24)


def same_token(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


class Throttle:
    """At most ``limit`` failed sign-ins per client address within ``window`` seconds."""

    def __init__(self, limit: int = 10, window: float = 900.0):
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def blocked(self, key: str, now: float | None = None) -> bool:
        with self._lock:
            return len(self._recent(key, now or time.monotonic())) >= self.limit

    def failed(self, key: str, now: float | None = None) -> None:
        with self._lock:
            self._recent(key, now or time.monotonic()).append(now or time.monotonic())
            if len(self._failures) > 10_000:  # forget the oldest addresses, bounded memory
                for stale in list(self._failures)[:5_000]:
                    del self._failures[stale]

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)
