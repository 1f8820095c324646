"""A running task's view, encoded once per attempt; each progress report splices in its own
percent and message.

Between two reports of one attempt only ``progress`` and ``message`` change in the view (the
revision is not in it), and they are adjacent fields of ``TaskView``. Encoding the whole view
(two datetimes, nine fields) took about twice what encoding the two values and joining them
to the unchanged bytes around them takes, on every progress event.
"""

from __future__ import annotations

import msgspec

from progressq.contracts import TaskRecord

__all__ = ("ProgressView",)

_KEY = b'"progress":'
_BETWEEN = b',"message":'
_encode = msgspec.json.Encoder().encode  # as ``messages.encode``, without its call per value


class ProgressView:
    """Encodes the views of records that differ from ``base`` in ``progress``, ``message``
    and ``revision`` only: exactly ``record.view_json()``, for less."""

    __slots__ = ("_after", "_base", "_before")

    def __init__(self, base: TaskRecord) -> None:
        # Split on the first encode: an attempt that reports nothing (most short tasks) pays
        # nothing for it.
        self._base: TaskRecord | None = base
        self._before = self._after = b""

    def encode(self, record: TaskRecord) -> bytes:
        """``record.view_json()``, for a record made from ``base`` by changing its progress,
        message or revision."""
        before = self._before
        if not before:  # not split yet, or not splittable
            if self._base is None or not self._split(self._base):
                return record.view_json()
            before = self._before
        return b"".join((before, _encode(record.progress), _BETWEEN, _encode(record.message), self._after))

    def _split(self, base: TaskRecord) -> bool:
        """Keep the bytes around ``base``'s progress and message; False if its view is not
        laid out as assumed (then every view is encoded whole)."""
        self._base = None
        whole = base.view_json()
        # The first '"progress":' is the key: in a JSON string every quote is escaped, and
        # only ``id``, ``name`` and ``status``, all strings, come before it.
        start = whole.find(_KEY) + len(_KEY)
        middle = _encode(base.progress) + _BETWEEN + _encode(base.message)
        if start < len(_KEY) or whole[start : start + len(middle)] != middle:
            return False
        self._before, self._after = whole[:start], whole[start + len(middle) :]
        return True
