"""Identity ids: minted unguessable, verifiable by any process that shares the secret.

An id looks like ``<random>.<issued>.<signature>``: 128 random bits, the issue time
(seconds, base 36) and an HMAC-SHA256 of both under the app's secret. Any process with the
secret checks an id without shared state; rotating the secret keeps accepting ids signed
with the previous ones listed in ``previous_secrets``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Sequence

from progressq.errors import ConfigurationError

__all__ = ("IdentityAuthority",)

logger = logging.getLogger("progressq.identity")

_MAX_ID_LENGTH = 128
_SIGNATURE_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _as_key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < 16:
        raise ConfigurationError("the identity secret must be at least 16 bytes long")
    return key


class IdentityAuthority:
    """Mints and verifies identity ids.

    Args:
        secret: the app's signing secret (16 bytes or more). ``None`` makes a random one
            and logs a warning the first time an id is minted or verified (a process that
            only runs tasks never needs a secret): ids then do not survive a restart or
            verify in other processes.
        previous_secrets: older secrets still accepted (for rotation).
        max_age: seconds after which an id is refused; ``None`` for no expiry.
    """

    def __init__(
        self,
        secret: str | bytes | None = None,
        *,
        previous_secrets: Sequence[str | bytes] = (),
        max_age: float | None = None,
    ) -> None:
        self._warn_random_secret = secret is None
        if secret is None:
            secret = secrets.token_bytes(32)
        self._key = _as_key(secret)
        self._accepted = (self._key, *(_as_key(s) for s in previous_secrets))
        self._max_age = max_age

    def mint(self) -> str:
        """A new id: unguessable, signed with the current secret."""
        self._first_use()
        body = f"{_b64(secrets.token_bytes(16))}.{_base36(int(time.time()))}"
        return f"{body}.{self._sign(self._key, body)}"

    def verify(self, value: str) -> bool:
        """True if ``value`` was minted with an accepted secret and has not expired."""
        self._first_use()
        if not isinstance(value, str) or len(value) > _MAX_ID_LENGTH or not value.isascii():
            return False
        body, dot, signature = value.rpartition(".")
        if not dot or body.count(".") != 1:
            return False
        if not any(hmac.compare_digest(self._sign(key, body), signature) for key in self._accepted):
            return False
        if self._max_age is not None:
            try:
                issued = int(body.partition(".")[2], 36)
            except ValueError:
                return False
            if time.time() - issued > self._max_age:
                return False
        return True

    def _first_use(self) -> None:
        if self._warn_random_secret:
            self._warn_random_secret = False
            logger.warning(
                "progressq: no identity secret configured; using a random one. Client ids "
                "will not survive a restart or verify in other processes. Set PROGRESSQ_SECRET."
            )

    @staticmethod
    def _sign(key: bytes, body: str) -> str:
        return _b64(hmac.new(key, body.encode(), hashlib.sha256).digest()[:_SIGNATURE_BYTES])


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out
