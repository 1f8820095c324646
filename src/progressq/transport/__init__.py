"""Framework-free transports: the HTTP routes and the WebSocket session of PROTOCOL.md.

Adapters (``progressq.starlette``, ``progressq.litestar``) translate their framework's
requests into these and nothing more.
"""

from progressq.transport._adapters import AsgiWebSocketPeer, Caller, Endpoints, asgi_body, request_info
from progressq.transport._settings import Identify, RequestInfo, TransportSettings
from progressq.transport.http import ENDPOINTS, BodyTooLarge, HttpApi, Response, read_body
from progressq.transport.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG,
    PeerGone,
    WebSocketPeer,
    WebSocketSession,
)

__all__ = (
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOO_BIG",
    "ENDPOINTS",
    "AsgiWebSocketPeer",
    "BodyTooLarge",
    "Caller",
    "Endpoints",
    "HttpApi",
    "Identify",
    "PeerGone",
    "RequestInfo",
    "Response",
    "TransportSettings",
    "WebSocketPeer",
    "WebSocketSession",
    "asgi_body",
    "read_body",
    "request_info",
)
