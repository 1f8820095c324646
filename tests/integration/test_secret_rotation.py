"""Rotating the signing secret: a server restarted with a new secret and the old one as
previous keeps accepting the ids it issued before, over HTTP, the WebSocket and the event
stream; an id signed with a secret it does not know is refused; once the old secret is
dropped, its ids are refused too."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from progressq.identity import IdentityAuthority
from tests.integration.client import WsClient, start_task
from tests.integration.security_support import FOREIGN_SECRET, OLD_SECRET
from tests.integration.test_limits import close_code, resume
from tests.waiting import PATIENCE

pytestmark = pytest.mark.anyio

NEW_SECRET = "the-secret-after-rotation-0123456789"


def configure(monkeypatch: pytest.MonkeyPatch, secret: str, previous: str = "") -> None:
    """The secrets as a deployment sets them: in the environment."""
    monkeypatch.setenv("PROGRESSQ_SECRET", secret)
    monkeypatch.setenv("PROGRESSQ_PREVIOUS_SECRETS", previous)


async def test_ids_survive_a_rotation_and_foreign_ones_do_not(
    make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, OLD_SECRET)
    with make_server(secret=None) as before:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=before.http) as http:
            from_http = (await start_task(http)).json()["clientId"]
        async with await WsClient.open(before.ws) as ws:
            from_ws = ws.client_id
    foreign = IdentityAuthority(FOREIGN_SECRET).mint()

    configure(monkeypatch, NEW_SECRET, f"unrelated-secret-0123456789,{OLD_SECRET}")
    with make_server(secret=None) as after:
        assert after.hub.identities.verify(from_http)
        assert not IdentityAuthority(OLD_SECRET).verify(after.hub.identities.mint())  # new ids: the new secret
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=after.http) as http:
            for identity in (from_http, from_ws):
                started = await start_task(http, **{"X-Client-Id": identity})
                assert (started.status_code, started.json()["clientId"]) == (202, identity)
                listed = await http.get("/api/tasks", headers={"X-Session-Id": identity})
                assert listed.status_code == 200
                async with http.stream("GET", "/api/events", params={"clientId": identity}) as stream:
                    assert stream.status_code == 200
            assert (await start_task(http, **{"X-Client-Id": foreign})).status_code == 403
            assert (await http.get("/api/tasks", headers={"X-Client-Id": foreign})).status_code == 403
            assert (await http.get("/api/events", params={"clientId": foreign})).status_code == 403
        async with await WsClient.open(after.ws) as ws:
            await ws.next()
            assert (await resume(ws, from_ws))["clientId"] == from_ws
            assert (await resume(ws, from_http))["clientId"] == from_http
        async with await WsClient.open(after.ws) as ws:
            await ws.next()
            await ws.send({"type": "resume", "clientId": foreign})
            assert await close_code(ws) == 1008

    configure(monkeypatch, NEW_SECRET)  # the grace period is over: the old secret is gone
    with make_server(secret=None) as later:
        async with httpx.AsyncClient(timeout=PATIENCE, base_url=later.http) as http:
            assert (await http.get("/api/tasks", headers={"X-Client-Id": from_http})).status_code == 403
        async with await WsClient.open(later.ws) as ws:
            await ws.next()
            await ws.send({"type": "resume", "clientId": from_ws})
            assert await close_code(ws) == 1008
