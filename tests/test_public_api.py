"""The public surface: explicit exports, no framework or Redis imported by the core."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from progressq import ClientRegistry, MemoryBackend, TaskQueue
from progressq.backends.memory import MemoryClientRegistry, MemoryTaskQueue

PUBLIC_MODULES = ["progressq", "progressq.messages", "progressq.contracts", "progressq.transport"]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_a_tuple_of_existing_names(name: str) -> None:
    module = importlib.import_module(name)
    assert isinstance(module.__all__, tuple)
    missing = [attr for attr in module.__all__ if not hasattr(module, attr)]
    assert missing == []


def test_importing_progressq_imports_no_framework_and_no_redis() -> None:
    code = (
        "import sys, progressq, progressq.transport\n"
        "frameworks = {'starlette', 'litestar', 'fastapi', 'redis', 'uvicorn'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in frameworks)\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_memory_backend_satisfies_the_contracts_at_runtime() -> None:
    backend = MemoryBackend()
    assert isinstance(backend.queue, TaskQueue)
    assert isinstance(backend.registry, ClientRegistry)
    assert isinstance(MemoryTaskQueue(), TaskQueue)
    assert isinstance(MemoryClientRegistry(), ClientRegistry)
