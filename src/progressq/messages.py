"""Every message of the wire contract (docs/concepts/protocol.md) as a msgspec struct.

Server messages share one tagged base (``type`` field), field names are camelCase on the
wire. Events (``taskQueued``/``taskProgress``) are framed by :func:`frame_event_text` from the
task view's bytes, which are encoded once per change and reused for every connection.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import msgspec

__all__ = (
    "CancelRequest",
    "ClientMessage",
    "ConnectionMessage",
    "ErrorBody",
    "ErrorDetail",
    "ErrorMessage",
    "EventType",
    "PingRequest",
    "PongMessage",
    "ResumeRequest",
    "ServerMessage",
    "SnapshotMessage",
    "StartedTask",
    "TaskProgressMessage",
    "TaskQueuedMessage",
    "TaskStatus",
    "TaskList",
    "TaskView",
    "TERMINAL_STATUSES",
    "decode_client_message",
    "encode",
    "frame_event",
    "frame_event_text",
)

TaskStatus = Literal["scheduled", "queued", "running", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
EventType = Literal["taskQueued", "taskProgress"]


class TaskView(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True, gc=False):
    """What a client sees of one task."""

    id: str
    name: str
    status: TaskStatus
    progress: float
    message: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempt: int
    error: str | msgspec.UnsetType = msgspec.UNSET
    result: Any | msgspec.UnsetType = msgspec.UNSET
    run_at: datetime | msgspec.UnsetType = msgspec.UNSET  # a queued task waits until then


class TaskList(msgspec.Struct, rename="camel", kw_only=True):
    """Answer to ``GET /api/tasks``: the caller's identity (None if it named none) and its tasks, newest first."""

    client_id: str | None
    tasks: list[TaskView]


class StartedTask(TaskView, kw_only=True):
    """Answer to ``POST /api/tasks/{kind}``: the task view plus the owner's identity id."""

    client_id: str


# --- server → client ------------------------------------------------------------------


class ServerMessage(msgspec.Struct, tag_field="type", rename="camel", omit_defaults=True):
    """Base of every message the server sends on a WebSocket."""


class ConnectionMessage(ServerMessage, tag="connection", kw_only=True):
    """First message of every connection, and the answer to a ``resume``.

    ``recovered`` is set only when answering a resume: ``true`` means the missed events
    follow, ``false`` means a snapshot follows.
    """

    socket_id: str
    client_id: str
    server_time: datetime
    recovered: bool | msgspec.UnsetType = msgspec.UNSET


class SnapshotMessage(ServerMessage, tag="snapshot", kw_only=True):
    """All tasks of the identity, and the identity's sequence number they are current at."""

    seq: int  # first after the tag, like an event's, so a stream can read it without decoding
    tasks: list[TaskView]
    recovered: bool
    complete: bool = True  # False: the identity has more tasks than ``tasks`` (the newest) holds


class TaskQueuedMessage(ServerMessage, tag="taskQueued", kw_only=True):
    seq: int
    task: TaskView


class TaskProgressMessage(ServerMessage, tag="taskProgress", kw_only=True):
    seq: int
    task: TaskView


class PongMessage(ServerMessage, tag="pong", kw_only=True):
    server_time: datetime


class ErrorMessage(ServerMessage, tag="error", kw_only=True):
    code: str
    message: str


# --- client → server ------------------------------------------------------------------


class PingRequest(msgspec.Struct, tag_field="type", tag="ping", rename="camel"):
    pass


class ResumeRequest(msgspec.Struct, tag_field="type", tag="resume", rename="camel", kw_only=True):
    client_id: Annotated[str, msgspec.Meta(max_length=256)]
    last_seq: Annotated[int, msgspec.Meta(ge=0, le=2**53)] | None = None


class CancelRequest(msgspec.Struct, tag_field="type", tag="cancel", rename="camel", kw_only=True):
    task_id: Annotated[str, msgspec.Meta(max_length=256)]


ClientMessage = PingRequest | ResumeRequest | CancelRequest

# --- HTTP bodies ----------------------------------------------------------------------


class ErrorDetail(msgspec.Struct, omit_defaults=True, kw_only=True):
    code: str
    message: str
    field: str | msgspec.UnsetType = msgspec.UNSET


class ErrorBody(msgspec.Struct):
    """Every HTTP error answer: ``{"error": {"code", "message", "field"?}}``."""

    error: ErrorDetail


# --- codecs, built once ---------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_client_decoder = msgspec.json.Decoder(ClientMessage)


def encode(value: object) -> bytes:
    """Encode any message or view as JSON bytes."""
    return _encoder.encode(value)


def decode_client_message(data: str | bytes) -> ClientMessage:
    """Decode one client frame. Raises ``msgspec.DecodeError`` or ``msgspec.ValidationError``."""
    try:
        message: ClientMessage = _client_decoder.decode(data)
    except UnicodeEncodeError:  # a str holding lone surrogates is not UTF-8 text
        raise msgspec.DecodeError("frame is not valid UTF-8 text") from None
    except RecursionError:  # msgspec's depth limit: a few KB of brackets reach it
        raise msgspec.DecodeError("JSON nested too deeply") from None
    return message


# The start of an event's frame, per kind: the one place a frame's shape is written, with the
# rest in ``frame_event_text``. A table, not the kind interpolated: an unknown kind is a
# ``KeyError``, not a frame the client cannot read.
_EVENT_START: dict[str, str] = {kind: f'{{"type":"{kind}","seq":' for kind in get_args(EventType)}


def frame_event_text(kind: EventType, seq: int, task_json: bytes) -> str:
    """Frame an event around a task view that is already encoded, as the text a WebSocket
    sends.

    Equivalent to encoding ``TaskQueuedMessage``/``TaskProgressMessage`` (a test proves it),
    without decoding or re-encoding the task view: the pieces joined as a string at once (an
    f-string), cheaper than formatting bytes and decoding them.
    """
    return f'{_EVENT_START[kind]}{seq},"task":{task_json.decode()}}}'


def frame_event(kind: EventType, seq: int, task_json: bytes) -> bytes:
    """:func:`frame_event_text` as bytes."""
    return frame_event_text(kind, seq, task_json).encode()
