"""The demo's tasks for worker processes: ``progressq worker demo_worker:hub`` (run from this
folder) runs them on the Redis that the demo server uses with ``--backend redis://...``.

    PROGRESSQ_REDIS_URL=redis://127.0.0.1:6379/0 progressq worker demo_worker:hub
"""

from __future__ import annotations

import os

from demo_task import register_demo_task

from progressq import Hub
from progressq.backends.redis import RedisBackend

hub = Hub(RedisBackend.from_url(os.environ.get("PROGRESSQ_REDIS_URL", "redis://127.0.0.1:6379/0")))
register_demo_task(hub)
