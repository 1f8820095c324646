"""The web application the multi-process tests run with ``uvicorn tests.web_app:app``.

It holds WebSocket connections and takes requests; it runs no task (``concurrency=0``):
the ``progressq worker tests.worker_app:hub`` processes on the same Redis do.
"""

from __future__ import annotations

import os

from progressq.starlette import create_app
from progressq.transport import TransportSettings
from tests.worker_app import make_hub

hub = make_hub(
    os.environ.get("PQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("PQ_TEST_PREFIX", "pqtest:unset"),
    concurrency=0,
)
app = create_app(hub, TransportSettings())
