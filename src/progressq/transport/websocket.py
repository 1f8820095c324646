"""The WebSocket half of the wire contract, over a four-method socket interface.

Adapters wrap their framework's websocket in a :class:`WebSocketPeer` (on
:class:`PeerDefaults`, or saying how it may be sent to itself); everything else —
identity, snapshot, resume, ping, cancel, limits, slow clients — happens in
:class:`~progressq.transport._connection.Connection`, shared with the event stream.
"""

from __future__ import annotations

import logging

from progressq.hub import Hub
from progressq.transport._connection import Connection
from progressq.transport._identity import IdentityResolver, origin_allowed
from progressq.transport._peer import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG,
    PeerDefaults,
    PeerGone,
)
from progressq.transport._peer import Peer as WebSocketPeer
from progressq.transport._settings import RequestInfo, TransportSettings

__all__ = (
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOO_BIG",
    "PeerDefaults",
    "PeerGone",
    "WebSocketPeer",
    "WebSocketSession",
)

logger = logging.getLogger("progressq.transport")


class WebSocketSession:
    """Serves ``/ws`` connections for one hub. One instance serves every connection."""

    def __init__(self, hub: Hub, settings: TransportSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.identities = IdentityResolver(hub.identities, settings.identify)

    async def serve(self, peer: WebSocketPeer, request: RequestInfo) -> None:
        """Run one connection until the client leaves or breaks a rule."""
        if not origin_allowed(request, self.settings):
            logger.info("refused a WebSocket from origin %r", request.headers.get("origin"))
            await peer.close(CLOSE_POLICY_VIOLATION, "origin not allowed")
            return
        vouched = await self.identities.vouched(request)
        if vouched is None and self.settings.require_identity:
            # Refused before the upgrade, as a foreign origin is: the handshake fails with 403.
            await peer.close(CLOSE_POLICY_VIOLATION, "identity required")
            return
        try:
            await peer.accept()
        except PeerGone:
            return  # the client left during the handshake
        socket_id = self.hub.identities.mint()
        connection = Connection(self.hub, self.settings, self.identities, peer, request, socket_id)
        await connection.run(vouched or socket_id)
