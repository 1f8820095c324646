"""Framework-free transports: the route table, the HTTP routes and the WebSocket session of the wire contract.

Adapters (``progressq.starlette``, ``progressq.litestar``, ``progressq.fastapi``) register
the routes of :func:`route_table` and translate their framework's requests into these.
"""

from progressq.transport._adapters import AsgiWebSocketPeer, Caller, Endpoints, asgi_body, request_info
from progressq.transport._routes import ROUTE_GROUPS, RouteGroup, RouteSpec, route_table
from progressq.transport._settings import Identify, RequestInfo, TransportSettings
from progressq.transport.http import BodyTooLarge, HttpApi, Response, error_response, read_body
from progressq.transport.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG,
    PeerDefaults,
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
    "ROUTE_GROUPS",
    "AsgiWebSocketPeer",
    "BodyTooLarge",
    "Caller",
    "Endpoints",
    "HttpApi",
    "Identify",
    "PeerDefaults",
    "PeerGone",
    "RequestInfo",
    "Response",
    "RouteGroup",
    "RouteSpec",
    "TransportSettings",
    "WebSocketPeer",
    "WebSocketSession",
    "asgi_body",
    "error_response",
    "read_body",
    "request_info",
    "route_table",
)
