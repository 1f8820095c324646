"""A WebSocket client on a bare socket, for clients that stop reading (the library ones
keep reading into their own buffers)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any


class StalledClient:
    """Opens ``/ws`` with a tiny receive buffer, then reads only when told to.

    A read that gets nothing for ``timeout`` seconds raises :class:`TimeoutError`.
    """

    def __init__(self, port: int, *, timeout: float = 60.0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += self.sock.recv(4096)
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def _exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def read(self) -> dict[str, Any] | int:
        """The next message as JSON, or the close code when the server closed."""
        first, second = self._exactly(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._exactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._exactly(8))[0]
        payload = self._exactly(length)
        opcode = first & 0x0F
        if opcode == 0x8:
            code: int = struct.unpack("!H", payload[:2])[0]
            return code
        if opcode in (0x9, 0xA):  # ping / pong frames
            return self.read()
        message: dict[str, Any] = json.loads(payload)
        return message

    def close(self) -> None:
        self.sock.close()
