"""A client written from the wire contract (docs/concepts/protocol.md) alone: a WebSocket that reads JSON messages."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Message = dict[str, Any]


class WsClient:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.received: list[Message] = []
        self.client_id = ""
        self.socket_id = ""

    @classmethod
    async def open(cls, url: str, **options: Any) -> WsClient:
        client = cls(await connect(url, **options))
        hello = await client.next()
        assert hello["type"] == "connection", hello
        client.client_id, client.socket_id = hello["clientId"], hello["socketId"]
        return client

    async def next(self, timeout: float = 5.0) -> Message:
        with anyio.fail_after(timeout):
            message: Message = json.loads(await self.connection.recv())
        self.received.append(message)
        return message

    async def until(self, predicate: Callable[[Message], bool], timeout: float = 10.0) -> list[Message]:
        """Messages up to and including the first that satisfies ``predicate``."""
        seen: list[Message] = []
        with anyio.fail_after(timeout):
            while True:
                message = await self.next(timeout)
                seen.append(message)
                if predicate(message):
                    return seen

    async def send(self, message: Message | str) -> None:
        await self.connection.send(message if isinstance(message, str) else json.dumps(message))

    async def close(self) -> None:
        await self.connection.close()

    async def close_code(self, *frames: Message | str, repeat: int = 1) -> int:
        """Send ``frames`` (``repeat`` times over), then read until the server closes; its close code."""
        try:
            for _ in range(repeat):
                for frame in frames:
                    await self.send(frame)
            while True:
                await self.next()
        except ConnectionClosed as closed:
            if closed.rcvd is None:
                raise AssertionError("the connection ended without a close frame") from closed
            return closed.rcvd.code

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def terminal(task_id: str) -> Callable[[Message], bool]:
    def done(message: Message) -> bool:
        task = message.get("task") or {}
        return task.get("id") == task_id and task.get("status") in {"completed", "failed", "cancelled"}

    return done


async def start_task(
    http: httpx.AsyncClient, name: str = "job", duration: int = 1000, **headers: str
) -> httpx.Response:
    return await http.post("/api/task/start", json={"name": name, "duration": duration}, headers=headers)


async def start_kind(
    http: httpx.AsyncClient, kind: str, params: Any = None, *, name: str | None = None, prefix: str = "", **headers: str
) -> httpx.Response:
    """``POST {prefix}/api/tasks/{kind}`` with ``params`` as the body."""
    query = {"name": name} if name is not None else {}
    return await http.post(f"{prefix}/api/tasks/{kind}", json=params or {}, params=query, headers=headers)
