"""The TypeScript client's wire types (clients/js/src/wire.ts) match the Python messages."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

from progressq import messages

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_ts_types", ROOT / "scripts" / "gen_ts_types.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_wire_ts_is_what_the_python_messages_generate(generator: ModuleType) -> None:
    committed = (ROOT / "clients" / "js" / "src" / "wire.ts").read_text(encoding="utf-8")
    assert committed == generator.generate(), (
        "clients/js/src/wire.ts differs from progressq.messages: run `python scripts/gen_ts_types.py` and commit it"
    )


def test_every_message_and_field_reaches_the_typescript_side(generator: ModuleType) -> None:
    text = generator.generate()
    structs: list[Any] = [*messages.ServerMessage.__subclasses__(), messages.PingRequest, messages.ResumeRequest]
    for cls in structs:
        assert f'type: "{cls.__struct_config__.tag}";' in text, cls
    for cls in (*structs, messages.CancelRequest, messages.TaskView, messages.TaskList, messages.ErrorDetail):
        for field in cls.__struct_encode_fields__:
            assert f"\t{field}" in text, (cls, field)
    assert "token" not in text  # never issued nor checked: not on the wire


def test_a_changed_message_changes_the_generated_text(generator: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    class TaskViewWithEta(msgspec.Struct, rename="camel", kw_only=True):
        """A task view that grew a field."""

        eta_seconds: int | None = None

    roots = generator._roots()
    before = generator.generate()
    monkeypatch.setattr(generator, "_roots", lambda: {**roots, "TaskViewWithEta": TaskViewWithEta})
    after = generator.generate()
    assert after != before
    assert "export interface TaskViewWithEta {\n\tetaSeconds?: number | null;\n}" in after
