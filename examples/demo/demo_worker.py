"""The demo's tasks for worker processes: ``progressq worker demo_worker:hub`` (run from this
folder) runs them on the backend in ``PROGRESSQ_BACKEND``, the variable the demo server
reads too (its ``--backend`` flag overrides it there):

    export PROGRESSQ_BACKEND=redis://127.0.0.1:6379/0    # or postgresql://postgres@127.0.0.1:5432/postgres
    bash scripts/demo --workers-in-process 0 &
    (cd examples/demo && progressq worker demo_worker:hub)

Without the variable it uses ``redis://127.0.0.1:6379/0``. Its first log line names the
backend; the web process logs its own: they must be the same.
"""

from __future__ import annotations

import os

from demo_task import register_demo_task
from server import BACKEND_VARIABLE, make_backend

from progressq import Hub

hub = Hub(make_backend(os.environ.get(BACKEND_VARIABLE) or "redis://127.0.0.1:6379/0"))
register_demo_task(hub)
