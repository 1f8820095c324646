"""Task kinds: a handler, the type of its params and its policy.

A kind is declared by decorating a handler with ``@hub.task``. Its params type comes from
the handler's second parameter's annotation (a msgspec ``Struct`` or any type msgspec can
validate); a handler that takes only ``ctx`` has untyped params (a JSON object, read as
``ctx.payload``). Params are validated when a task is submitted, stored as JSON-ready
builtins with the task and decoded into the declared type again in the worker.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from progressq._context import TaskContext
from progressq._worker import TaskPolicy
from progressq.contracts import TaskRecord
from progressq.errors import ConfigurationError, ValidationError

__all__ = ("Handler", "KindRegistry", "TaskKind")

Handler = Callable[..., Awaitable[Any]]
"""``async def handler(ctx)`` or ``async def handler(ctx, params: Params)``."""

_UNTYPED: Any = dict[str, Any]
_AT_PATH = re.compile(r"\s+-\s+at `\$(?P<path>[^`]*)`$")
_NAMED_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]+)`")


@dataclass(frozen=True, slots=True)
class TaskKind:
    """One registered kind of task.

    Attributes:
        name: what tasks of this kind are submitted under.
        handler: the async function that runs them.
        params_type: the declared type of the params; ``None`` for an untyped JSON object.
        policy: timeout, attempts and progress interval.
        description: the first line of the handler's docstring, or ``""``.
    """

    name: str
    handler: Handler
    params_type: Any
    policy: TaskPolicy
    description: str
    _decoder: msgspec.json.Decoder[Any] = field(repr=False, compare=False)

    def decode_params(self, body: bytes | str) -> Any:
        """Decode and validate params sent as JSON.

        Raises:
            ValidationError: the JSON is malformed (``field`` None) or does not match the
                declared type (``field`` names the path, e.g. ``"size.width"``).
        """
        try:
            return self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise _validation_error(exc) from None
        except (msgspec.DecodeError, RecursionError, UnicodeEncodeError):
            raise ValidationError("the params are not valid JSON", field=None, code="malformed_json") from None

    def dump_params(self, params: Any) -> Any:
        """Validate ``params`` (an instance of the declared type, or builtins such as a dict)
        and return them as JSON-ready builtins, the form they are stored in.

        Raises:
            ValidationError: they do not match the declared type or cannot be encoded.
        """
        if params is None and self.params_type is None:
            return {}
        try:
            encoded = msgspec.json.encode(params)
        except (TypeError, msgspec.EncodeError, RecursionError) as exc:
            raise ValidationError(f"the params cannot be encoded as JSON: {exc}", field=None) from None
        self.decode_params(encoded)  # exactly the checks a JSON body gets, constraints included
        return msgspec.json.decode(encoded)

    def load_params(self, stored: Any) -> Any:
        """The stored builtins as the declared type (for the worker)."""
        if self.params_type is None:
            return stored
        return self._decoder.decode(msgspec.json.encode(stored))

    def params_schema(self) -> dict[str, Any]:
        """The JSON Schema of the params (``{"type": "object"}`` when untyped)."""
        return msgspec.json.schema(self.params_type if self.params_type is not None else _UNTYPED)


class KindRegistry:
    """The everyday ``Processor``: registered kinds, each run by its handler."""

    def __init__(self) -> None:
        self.kinds: dict[str, TaskKind] = {}

    def register(self, name: str | None, handler: Handler, policy: TaskPolicy) -> TaskKind:
        kind_name = name or getattr(handler, "__name__", "")
        if not kind_name:
            raise ConfigurationError("name the task kind: @hub.task('kind')")
        if kind_name in self.kinds:
            raise ConfigurationError(f"a handler for task kind {kind_name!r} is already registered")
        if not _is_async(handler):
            raise ConfigurationError(
                f"the handler of task kind {kind_name!r} is a plain function: declare it `async def` "
                "(handlers run on the event loop; run blocking work with "
                "`await anyio.to_thread.run_sync(...)` inside it, see the tasks how-to)"
            )
        params_type = _params_type(kind_name, handler)
        decoder = msgspec.json.Decoder(params_type if params_type is not None else _UNTYPED)
        doc = inspect.getdoc(handler) or ""
        kind = TaskKind(
            kind_name, handler, params_type, policy, doc.strip().splitlines()[0] if doc.strip() else "", decoder
        )
        self.kinds[kind_name] = kind
        return kind

    @property
    def view(self) -> Mapping[str, TaskKind]:
        return self.kinds

    def __call__(self, task: TaskRecord, ctx: TaskContext) -> Coroutine[Any, Any, Any]:
        # The handler's own coroutine (handlers are ``async``: see ``register``), not one
        # awaiting it: every time the handler resumes (each report that yields, each
        # ``sleep``) it goes through one frame less.
        kind = self.kinds[task.kind]
        if kind.params_type is None:
            return typing.cast("Coroutine[Any, Any, Any]", kind.handler(ctx))
        return typing.cast("Coroutine[Any, Any, Any]", kind.handler(ctx, kind.load_params(task.payload)))

    def policy_for(self, kind: str) -> TaskPolicy:
        entry = self.kinds.get(kind)
        return entry.policy if entry is not None else TaskPolicy()


def _is_async(handler: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - an object whose __call__ is async
    return call is not None and not inspect.isfunction(handler) and inspect.iscoroutinefunction(call)


def _params_type(kind: str, handler: Handler) -> Any:
    """The annotation of the handler's second parameter; None when it takes only ``ctx``."""
    try:
        parameters = [
            p
            for p in inspect.signature(handler).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the signature of the handler of {kind!r}: {exc}") from None
    if len(parameters) == 1:
        return None
    if len(parameters) != 2:
        raise ConfigurationError(
            f"the handler of task kind {kind!r} must take (ctx) or (ctx, params), not {len(parameters)} parameters"
        )
    target = getattr(handler, "__call__", handler) if not inspect.isroutine(handler) else handler  # noqa: B004
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:
        raise ConfigurationError(f"cannot resolve the annotations of the handler of {kind!r}: {exc}") from None
    name = parameters[1].name
    if name not in hints:
        raise ConfigurationError(
            f"annotate the params of task kind {kind!r}: `async def handler(ctx, {name}: YourStruct)`"
        )
    params_type = hints[name]
    try:
        msgspec.json.schema(params_type)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"msgspec cannot validate the params type of task kind {kind!r}: {exc}") from None
    return params_type


def _validation_error(exc: msgspec.ValidationError) -> ValidationError:
    """msgspec's error as ours, with the field path on its own (``size.width``, ``items[0]``)."""
    text = str(exc)
    at = _AT_PATH.search(text)
    path = at.group("path").lstrip(".") if at else ""
    message = text[: at.start()] if at else text
    named = _NAMED_FIELD.match(message)
    if named:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    return ValidationError(message, field=path or None)
