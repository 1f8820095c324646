"""What every framework adapter shares: the request view, the ASGI socket, the caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from progressq.hub import Hub
from progressq.transport._identity import IdentityResolver
from progressq.transport._settings import RequestInfo, TransportSettings
from progressq.transport.websocket import PeerGone

__all__ = ("AsgiWebSocketPeer", "Caller", "request_info")


class _Address(Protocol):
    @property
    def host(self) -> str: ...


class Connection(Protocol):
    """What Starlette's and Litestar's request and websocket objects both offer."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def client(self) -> _Address | None: ...


def request_info(connection: Connection) -> RequestInfo:
    """The framework-free view of a framework's request or websocket."""
    client = connection.client
    return RequestInfo(headers=connection.headers, client=client.host if client else None, raw=connection)


class AsgiWebSocketPeer:
    """A :class:`~progressq.transport.WebSocketPeer` over ASGI websocket messages.

    Args:
        receive: the framework's ``receive()`` of the connection (ASGI messages).
        send: the framework's ``send(message)`` of the connection.
        gone: the framework's exceptions that mean the client has gone.
    """

    def __init__(
        self,
        receive: Callable[[], Awaitable[Mapping[str, Any]]],
        send: Callable[[Any], Awaitable[None]],
        gone: tuple[type[Exception], ...] = (),
    ) -> None:
        self._receive = receive
        self._send = send
        self._gone: tuple[type[Exception], ...] = (*gone, RuntimeError, OSError)

    async def accept(self) -> None:
        if (await self._next())["type"] != "websocket.connect":
            raise PeerGone
        await self._deliver({"type": "websocket.accept"})

    async def receive(self) -> str | bytes:
        message = await self._next()
        if message["type"] != "websocket.receive":
            raise PeerGone
        text: str | None = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    async def send(self, text: str) -> None:
        await self._deliver({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str = "") -> None:
        await self._deliver({"type": "websocket.close", "code": code, "reason": reason})

    async def _next(self) -> Mapping[str, Any]:
        try:
            return await self._receive()
        except self._gone as exc:
            raise PeerGone from exc

    async def _deliver(self, message: dict[str, Any]) -> None:
        try:
            await self._send(message)
        except self._gone as exc:
            raise PeerGone from exc


class Caller:
    """The caller of one request, named the way progressq's own routes name it.

    For an app's own routes that submit tasks: the owner is the identity the request
    presents (``X-Socket-Id``, ``X-Session-Id`` or ``X-Client-Id``, checked), else the one
    the app's ``identify`` hook vouches for.

    Args:
        hub: the hub whose identities are checked.
        settings: the ``identify`` hook to ask.
        request: the request.
    """

    def __init__(self, hub: Hub, settings: TransportSettings, request: RequestInfo) -> None:
        self._resolver = IdentityResolver(hub.identities, settings.identify)
        self.request = request

    async def identity(self) -> str | None:
        """The caller's identity, or None when the request names none.

        Raises:
            ForbiddenIdentity: the request presents an id this server did not issue.
        """
        return await self._resolver.caller(self.request)

    async def identity_or_new(self) -> str:
        """The caller's identity, or a newly minted one to hand back to the caller.

        Raises:
            ForbiddenIdentity: the request presents an id this server did not issue.
        """
        return await self._resolver.caller_or_new(self.request)
