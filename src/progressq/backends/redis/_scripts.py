"""The texts of the backend's two Redis scripts, joined from the files in ``scripts/``.

The whole script holds every operation (``queue.lua``, ``taking.lua``, ``commits.lua`` and
``operations.lua``, joined in that order); the progress script runs batches of ``progress``
rows only (``commits.lua`` and ``progress.lua``, after the shard's settings written as Lua:
one text per shard, see ``progress.lua``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any

from redis.commands.core import AsyncScript

__all__ = ("_Call", "lua_literal", "progress_script_text", "queue_script", "whole_script_text")

_Value = str | bytes
_Named = Mapping[str, _Value]

# The whole script's parts, joined in this order: the queue's functions first, then its named
# operations, then the commits, then the rest of the backend's (which uses all of them).
_WHOLE_PARTS = ("queue.lua", "taking.lua", "commits.lua", "operations.lua")
_PROGRESS_PARTS = ("commits.lua", "progress.lua")


@functools.cache
def _part(name: str) -> str:
    return files("progressq.backends.redis").joinpath("scripts", name).read_text(encoding="utf-8")


@functools.cache
def whole_script_text() -> str:
    return "\n".join(_part(name) for name in _WHOLE_PARTS)


def progress_script_text(settings: Mapping[str, str | int]) -> str:
    """The progress script, with ``settings`` (the shard's: names as the whole script's ``s``
    has them; a number stays a Lua number, a string is written as a Lua string) as its ``s``."""
    fields = ", ".join(
        f"{name} = {value:d}" if isinstance(value, int) else f"{name} = {lua_literal(value)}"
        for name, value in settings.items()
    )
    head = f"-- the shard's settings (_scripts.py)\nlocal s = {{{fields}}}\n"
    return head + "\n".join(_part(name) for name in _PROGRESS_PARTS)


def lua_literal(value: str) -> str:
    """``value`` as a Lua string literal: every byte but ASCII letters, digits, ':' and '_'
    written as a decimal escape (three digits, so that a digit after it cannot join it)."""
    plain = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_"
    return '"' + "".join(chr(b) if b in plain else f"\\{b:03d}" for b in value.encode()) + '"'


class _Call:
    """One call of the script: ``keys`` and ``args`` as Redis takes them (``KEYS``, ``ARGV``)."""

    __slots__ = ("args", "keys", "script")

    def __init__(self, script: AsyncScript, op: str, keys: _Named, args: _Named) -> None:
        self.script = script
        self.keys = list(keys.values())
        self.args: list[_Value] = [op, *keys]
        for pair in args.items():
            self.args += pair

    async def run(self) -> Any:
        """Run the call now (the script loaded first where Redis lost it)."""
        return await self.script(keys=self.keys, args=self.args)

    def queue_on(self, pipe: Any) -> None:
        """Queue the call on a pipeline (of a single Redis or of Redis Cluster); an answer
        ``NoScriptError`` means Redis lost the script: ``run`` the call again."""
        queue_script(pipe, self.script, self.keys, self.args)


def queue_script(pipe: Any, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """``EVALSHA`` of ``script`` on a pipeline. As a command, not as the pipeline's ``evalsha``:
    redis-py 5.0 refuses that method on a cluster pipeline (a node may lack the script);
    the callers run a call again where Redis answers ``NoScriptError``, loading the script."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
