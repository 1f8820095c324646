"""Naming the caller of a request: presented ids are checked, absent ones minted."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from progressq.errors import ForbiddenIdentity
from progressq.identity import IdentityAuthority
from progressq.transport._settings import Identify, RequestInfo, TransportSettings

__all__ = ("IdentityResolver", "origin_allowed", "warn_if_any_origin")

logger = logging.getLogger("progressq.transport")

# The seed's priority order, after the body's ``clientId``.
_IDENTITY_HEADERS = ("x-socket-id", "x-session-id", "x-client-id")


class IdentityResolver:
    def __init__(self, authority: IdentityAuthority, identify: Identify | None) -> None:
        self._authority = authority
        self._identify = identify

    async def vouched(self, request: RequestInfo) -> str | None:
        """The app's own identity for this request, if it has an ``identify`` hook."""
        if self._identify is None:
            return None
        try:
            return await self._identify(request)
        except Exception:
            logger.exception("the identify hook raised; treating the request as anonymous")
            return None

    async def accepts(self, request: RequestInfo, presented: str) -> bool:
        """True if ``presented`` was issued by this server or is vouched for by the app."""
        return self._authority.verify(presented) or presented == await self.vouched(request)

    async def caller(self, request: RequestInfo, body_client_id: str | None = None) -> str | None:
        """The identity a request names, or None when it names none.

        Raises:
            ForbiddenIdentity: the request presents an id the server did not issue.
        """
        presented = body_client_id or next(
            (value for name in _IDENTITY_HEADERS if (value := request.headers.get(name))), None
        )
        if presented is None:
            return await self.vouched(request)
        if await self.accepts(request, presented):
            return presented
        raise ForbiddenIdentity("the client id was not issued by this server")

    async def caller_or_new(self, request: RequestInfo, body_client_id: str | None = None) -> str:
        """Like :meth:`caller`, minting a new identity when the request names none."""
        return await self.caller(request, body_client_id) or self._authority.mint()


def origin_allowed(request: RequestInfo, settings: TransportSettings) -> bool:
    """Cross-site request guard for handshakes and the routes that change state.

    Browsers always send ``Origin`` on WebSocket handshakes, cross-origin requests and
    POSTs; a request without one is not from a browser page, and is allowed. The server's
    own origin is ``public_origins`` when configured, else the request's ``Host``. ``Origin:
    null`` (sandboxed frames, local files) is refused unless ``"*"`` is allowed.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if "*" in settings.allowed_origins or origin in settings.allowed_origins:
        return True
    if settings.public_origins:
        # The configured origins are the reference: ``Host`` is whatever name the browser
        # used, and a DNS-rebinding page controls that name.
        return _normalized(origin) in {_normalized(public) for public in settings.public_origins}
    return urlsplit(origin).netloc == request.headers.get("host")


def _normalized(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def warn_if_any_origin(settings: TransportSettings) -> None:
    """Log a warning when ``allowed_origins`` lets any site in (called at startup)."""
    if "*" in settings.allowed_origins:
        logger.warning(
            "progressq: allowed_origins contains '*': pages of ANY site may open WebSockets and "
            "event streams and start or cancel tasks in a visitor's name. List your origins instead."
        )
