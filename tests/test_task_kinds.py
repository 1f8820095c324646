"""Typed task kinds: params declared by the handler, validated at submit, decoded in the worker."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import msgspec
import pytest

from progressq import ConfigurationError, Hub, HubNotOpen, MemoryBackend, TaskContext, TaskKind, ValidationError
from tests.test_engine import OWNER, SECRET, attach, wait_until

pytestmark = pytest.mark.anyio


class Size(msgspec.Struct):
    width: Annotated[int, msgspec.Meta(ge=1, le=10_000)]
    height: Annotated[int, msgspec.Meta(ge=1, le=10_000)]


class Resize(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    size: Size
    tags: list[str] = []


def make_hub(**options: Any) -> Hub:
    options.setdefault("progress_interval", 0.0)
    options.setdefault("shutdown_grace", 1.0)
    return Hub(MemoryBackend(), secret=SECRET, **options)


def typed_hub(seen: list[Any] | None = None, **options: Any) -> Hub:
    hub = make_hub(**options)

    @hub.task("resize")
    async def resize(ctx: TaskContext, params: Resize) -> dict[str, int]:
        """Resize one picture.

        More words that are not the summary.
        """
        if seen is not None:
            seen.append(params)
        await ctx.report(50, f"resizing {params.path}")
        return {"pixels": params.size.width * params.size.height}

    return hub


async def test_a_typed_handler_gets_its_params_decoded_into_the_declared_type() -> None:
    seen: list[Any] = []
    hub = typed_hub(seen)
    async with hub:
        sink = await attach(hub)
        record = await hub.submit("resize", owner=OWNER, params=Resize("a.jpg", Size(640, 480), ["x"]))
        assert record.payload == {"path": "a.jpg", "size": {"width": 640, "height": 480}, "tags": ["x"]}
        from_dict = await hub.submit("resize", owner=OWNER, params={"path": "b.jpg", "size": {"width": 2, "height": 3}})
        await wait_until(lambda: sink.has_status(record.id, "completed") and sink.has_status(from_dict.id, "completed"))
    assert sorted(seen, key=lambda p: p.path) == [Resize("a.jpg", Size(640, 480), ["x"]), Resize("b.jpg", Size(2, 3))]
    final = sink.last(record.id)
    assert final is not None
    assert (final.result, final.message) == ({"pixels": 640 * 480}, "resizing a.jpg")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"path": "a", "size": {"width": "wide", "height": 1}}, "size.width"),
        ({"path": "a", "size": {"width": 0, "height": 1}}, "size.width"),
        ({"path": "a", "size": {"width": 1}}, "size.height"),
        ({"path": "a", "size": {"width": 1, "height": 1}, "colour": "red"}, "colour"),
        ({"path": "a", "size": {"width": 1, "height": 1}, "tags": ["ok", 3]}, "tags[1]"),
        (Resize("a", Size(-5, 1)), "size.width"),  # a Struct built by hand skips its constraints
        ([1, 2], None),
        (None, None),
    ],
)
async def test_submit_refuses_params_that_do_not_match_and_names_the_field(params: Any, field: str | None) -> None:
    hub = typed_hub(concurrency=0)
    async with hub:
        sink = await attach(hub)
        with pytest.raises(ValidationError) as refused:
            await hub.submit("resize", owner=OWNER, params=params)
        assert refused.value.field == field
        assert refused.value.code == "invalid_field"
        assert refused.value.message
        assert "$" not in refused.value.message
        assert isinstance(refused.value, ValueError)
        assert await hub.list(owner=OWNER) == []
        assert sink.events == []


async def test_params_sent_as_json_are_decoded_or_refused_with_a_clear_error() -> None:
    kind = typed_hub().task_kinds["resize"]
    assert kind.decode_params(b'{"path": "a", "size": {"width": 3, "height": 4}}') == Resize("a", Size(3, 4))
    for body in (b"{", b"\xff", b"[" * 5000 + b"]" * 5000, "\ud800"):
        with pytest.raises(ValidationError) as refused:
            kind.decode_params(body)
        assert refused.value.code in {"malformed_json", "invalid_field"}
    with pytest.raises(ValidationError) as refused:
        kind.decode_params(b'{"path": "a", "size": {"width": 3, "height": 1e9}}')
    assert (refused.value.code, refused.value.field) == ("invalid_field", "size.height")


async def test_an_untyped_kind_takes_any_json_object_and_reads_it_as_payload() -> None:
    hub = make_hub()
    seen: list[Any] = []

    @hub.task("echo")
    async def echo(ctx: TaskContext) -> None:
        seen.append(ctx.payload)

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("echo", owner=OWNER, payload={"anything": [1, {"x": None}]})
        bare = await hub.submit("echo", owner=OWNER)
        with pytest.raises(ValidationError):
            await hub.submit("echo", owner=OWNER, params=[1, 2])  # not an object
        await wait_until(lambda: sink.has_status(record.id, "completed") and sink.has_status(bare.id, "completed"))
    assert sorted(seen, key=len) == [{}, {"anything": [1, {"x": None}]}]
    assert hub.task_kinds["echo"].params_type is None
    assert hub.task_kinds["echo"].params_schema()["type"] == "object"


async def test_a_kind_describes_itself() -> None:
    kind = typed_hub().task_kinds["resize"]
    assert isinstance(kind, TaskKind)
    assert (kind.name, kind.params_type, kind.description) == ("resize", Resize, "Resize one picture.")
    schema = kind.params_schema()
    assert schema["$ref"] == "#/$defs/Resize"
    assert schema["$defs"]["Size"]["properties"]["width"]["minimum"] == 1


def test_handlers_that_cannot_work_are_refused_at_registration() -> None:
    hub = make_hub()

    def blocking(ctx: TaskContext) -> None:
        pass

    async def unannotated(ctx, params):  # type: ignore[no-untyped-def]
        pass

    async def three(ctx: TaskContext, params: Resize, extra: int) -> None:
        pass

    async def unsupported(ctx: TaskContext, params: anyio.Event) -> None:
        pass

    async def fine(ctx: TaskContext) -> None:
        pass

    for handler, words in (
        (blocking, "async def"),
        (unannotated, "annotate"),
        (three, "(ctx, params)"),
        (unsupported, "msgspec cannot validate"),
    ):
        with pytest.raises(ConfigurationError, match=words.replace("(", r"\(").replace(")", r"\)")):
            hub.task()(handler)
    hub.task()(fine)
    with pytest.raises(ConfigurationError, match="already registered"):
        hub.task("fine")(fine)
    with pytest.raises(ConfigurationError, match="progress_interval"):
        hub.task(progress_interval=-1)
    assert hub.kinds == ("fine",)


async def test_an_object_with_an_async_call_is_a_handler() -> None:
    hub = make_hub()

    class Scale:
        __name__ = "scale"

        async def __call__(self, ctx: TaskContext, params: Size) -> int:
            return params.width * 2

    hub.task()(Scale())
    assert hub.task_kinds["scale"].params_type is Size
    async with hub:
        sink = await attach(hub)
        record = await hub.submit("scale", owner=OWNER, params=Size(21, 1))
        await wait_until(lambda: sink.has_status(record.id, "completed"))
    final = sink.last(record.id)
    assert final is not None
    assert (final.result, final.message) == (42, "completed")  # no report: the status word


async def test_a_hub_that_was_never_opened_refuses_to_submit_and_is_not_healthy() -> None:
    hub = typed_hub()
    assert not hub.is_running
    with pytest.raises(HubNotOpen, match="async with hub"):
        await hub.submit("resize", owner=OWNER, params=Resize("a", Size(1, 1)))
    assert not await hub.healthy()
    async with hub:
        assert hub.is_open
        assert hub.is_running
        assert await hub.healthy()
    assert not hub.is_running
    assert not await hub.healthy()
    with pytest.raises(HubNotOpen):
        await hub.submit("resize", owner=OWNER, params=Resize("a", Size(1, 1)))


async def test_a_web_only_hub_runs_without_workers() -> None:
    hub = typed_hub(concurrency=0)
    async with hub:
        assert hub.is_running


async def test_progress_interval_is_per_kind() -> None:
    hub = make_hub(progress_interval=60.0)  # the hub's: one progress event a minute

    @hub.task("chatty", progress_interval=0.0)
    async def chatty(ctx: TaskContext) -> None:
        for step in range(1, 6):
            await ctx.report(step * 10, f"step {step}")
            await anyio.sleep(0.01)

    async with hub:
        sink = await attach(hub)
        record = await hub.submit("chatty", owner=OWNER)
        await wait_until(lambda: sink.has_status(record.id, "completed"))
    running = [v.message for v in sink.views(record.id) if v.status == "running"]
    assert running == ["started"] + [f"step {n}" for n in range(1, 6)]
    assert hub.task_kinds["chatty"].policy.progress_interval == 0.0
