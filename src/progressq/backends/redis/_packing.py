"""Commands packed in C: a script call's two dozen arguments cost redis-py's pure-Python
packer about a sixth of a busy worker's CPU. With ``hiredis`` installed (the ``redis``
extra brings it), the connections of a client made by ``RedisBackend.from_url`` pack with
``hiredis.pack_command`` instead; everything else about them is redis-py's own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - the redis extra installs it
    _pack = None

__all__ = ("pack_in_c",)


class _PackInC:
    """Mixed into the connection class redis-py chose for the URL (TCP, TLS or Unix socket)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # As redis-py does: a command name with a space ("CLIENT SETINFO") is several words.
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        assert _pack is not None  # mixed in only when hiredis packs
        return [_pack(args)]


def pack_in_c(client: Redis) -> bool:
    """Make ``client``'s future connections pack commands with hiredis; False without it."""
    if _pack is None:
        return False
    pool = client.connection_pool
    base = pool.connection_class
    if issubclass(base, _PackInC):
        return True
    pool.connection_class = type(f"PackInC{base.__name__}", (_PackInC, base), {})
    return True
