"""A connection's bounded outbox, and the sink that feeds it each event once, in order."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from progressq.backends.memory import MemoryClientRegistry
from progressq.contracts import Event
from progressq.messages import frame_event
from progressq.transport._outbox import IdentitySink, Outbox, SlowConsumer
from tests.waiting import PATIENCE

OWNER = "owner-a"


def event(seq: int, task_id: str = "t", revision: int | None = None) -> Event:
    revision = seq if revision is None else revision
    return Event(seq, "taskProgress", task_id, revision, view_json(task_id, revision))


def view_json(task_id: str, revision: int, *, snapshot: bool = False) -> bytes:
    return msgspec.json.encode({"id": task_id, "rev": revision, "snap": snapshot})


# --- Outbox -------------------------------------------------------------------------------


def test_outbox_offers_a_message_to_send_now_only_when_nothing_is_queued() -> None:
    outbox = Outbox(limit=3)
    offered: list[str] = []
    taking = True

    def send_now(text: str) -> bool:
        offered.append(text)
        return taking

    outbox.send_now = send_now
    outbox.put("a")  # empty outbox, taken: never queued
    assert offered == ["a"]
    assert len(outbox) == 0
    taking = False
    outbox.put("b")  # refused (something is sending): queued
    outbox.put("c")  # not offered: "b" waits before it
    assert offered == ["a", "b"]
    assert outbox.take() == ["b", "c"]
    outbox.overflow()
    outbox.put("d")  # an overflowed outbox offers nothing
    assert offered == ["a", "b"]


@pytest.mark.anyio
async def test_outbox_hands_out_everything_in_order_and_empties() -> None:
    outbox = Outbox(limit=3)
    for text in ("a", "b", "c"):
        outbox.put(text)
    assert len(outbox) == 3
    assert not outbox.overflowed
    assert await outbox.next_batch() == ["a", "b", "c"]
    assert len(outbox) == 0
    outbox.put("d")
    assert await outbox.next_batch() == ["d"]


@pytest.mark.anyio
async def test_outbox_over_its_limit_overflows_and_stops_growing() -> None:
    outbox = Outbox(limit=2)
    outbox.put("a")
    outbox.put("b")
    outbox.put("c")
    assert outbox.overflowed
    for extra in range(100):
        outbox.put(str(extra))
    assert len(outbox) == 2
    with pytest.raises(SlowConsumer):
        await outbox.next_batch()
    with pytest.raises(SlowConsumer):  # stays overflowed: the connection must close
        await outbox.next_batch()


@pytest.mark.anyio
async def test_next_batch_waits_for_a_put() -> None:
    outbox = Outbox(limit=5)
    got: list[list[str]] = []

    async def writer() -> None:
        got.append(await outbox.next_batch())

    with anyio.fail_after(PATIENCE):
        async with anyio.create_task_group() as group:
            group.start_soon(writer)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            outbox.put("x")
            outbox.put("y")
    assert got == [["x", "y"]]


@pytest.mark.anyio
async def test_an_overflow_wakes_a_waiting_writer() -> None:
    outbox = Outbox(limit=1)
    raised: list[type[BaseException]] = []

    async def writer() -> None:
        try:
            await outbox.next_batch()
        except SlowConsumer as exc:
            raised.append(type(exc))

    with anyio.fail_after(PATIENCE):
        async with anyio.create_task_group() as group:
            group.start_soon(writer)
            await anyio.wait_all_tasks_blocked()
            outbox.overflow()
    assert raised == [SlowConsumer]


@pytest.mark.anyio
async def test_clear_forgets_what_waits() -> None:
    outbox = Outbox(limit=5)
    outbox.put("old")
    outbox.clear()
    assert len(outbox) == 0
    outbox.put("new")
    assert await outbox.next_batch() == ["new"]


# --- IdentitySink -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sink_holds_events_until_go_live_and_drops_what_the_snapshot_covered() -> None:
    outbox = Outbox(limit=100)
    sink = IdentitySink(outbox)
    for seq in (4, 5, 6):
        sink.deliver(event(seq))
    assert len(outbox) == 0  # still sending the snapshot
    sink.go_live(5, [], {})
    sink.deliver(event(7))
    assert await outbox.next_batch() == [event(6).frame, event(7).frame]


@pytest.mark.anyio
async def test_sink_replays_then_sends_held_and_live_events_once_each() -> None:
    outbox = Outbox(limit=100)
    sink = IdentitySink(outbox)
    sink.deliver(event(5))
    sink.deliver(event(6))
    sink.go_live(3, [event(4), event(5)], {})  # replay read when seq was 5; 6 arrived meanwhile
    sink.deliver(event(7))
    frames = [msgspec.json.decode(text)["seq"] for text in await outbox.next_batch()]
    assert frames == [4, 5, 6, 7]


@pytest.mark.anyio
async def test_sink_never_sends_a_duplicate_or_out_of_order_seq() -> None:
    outbox = Outbox(limit=100)
    sink = IdentitySink(outbox)
    sink.go_live(0, [], {})
    for seq in (1, 2, 2, 3, 1, 5, 4, 6, 6):
        sink.deliver(event(seq))
    frames = [msgspec.json.decode(text)["seq"] for text in await outbox.next_batch()]
    assert frames == [1, 2, 3, 5, 6]


@pytest.mark.anyio
async def test_sink_substitutes_the_snapshots_newer_view_for_older_live_events() -> None:
    outbox = Outbox(limit=100)
    sink = IdentitySink(outbox)
    # The snapshot was read at seq 10, but task "a" had already moved on to revision 7.
    snapshot_a = view_json("a", 7, snapshot=True)
    sink.go_live(10, [], {"a": (7, snapshot_a)})
    sink.deliver(event(11, "a", 5))  # older than the snapshot: sent with the snapshot's view
    sink.deliver(event(12, "b", 1))  # another task: untouched
    sink.deliver(event(13, "a", 6))
    sink.deliver(event(14, "a", 7))  # caught up: its own view, and the guard is done
    sink.deliver(event(15, "a", 8))
    sent = [msgspec.json.decode(text) for text in await outbox.next_batch()]
    assert [(m["seq"], m["task"]["id"], m["task"]["rev"], m["task"]["snap"]) for m in sent] == [
        (11, "a", 7, True),
        (12, "b", 1, False),
        (13, "a", 7, True),
        (14, "a", 7, False),
        (15, "a", 8, False),
    ]
    assert sent[0] == msgspec.json.decode(frame_event("taskProgress", 11, snapshot_a))


@pytest.mark.anyio
async def test_sink_overflows_when_too_much_arrives_before_go_live() -> None:
    outbox = Outbox(limit=3)
    sink = IdentitySink(outbox)
    for seq in range(1, 5):
        sink.deliver(event(seq))
    assert outbox.overflowed
    with pytest.raises(SlowConsumer):
        await outbox.next_batch()


@pytest.mark.anyio
async def test_an_inactive_sink_delivers_nothing() -> None:
    outbox = Outbox(limit=10)
    sink = IdentitySink(outbox)
    sink.go_live(0, [], {})
    sink.active = False
    sink.deliver(event(1))
    assert len(outbox) == 0


# --- the whole hand-over, as a property ----------------------------------------------------


@st.composite
def handovers(draw: st.DrawFn) -> dict[str, Any]:
    """One identity's events and how a connection follows them (as the WebSocket session does).

    The sink is attached after ``attach_at`` events were published. Then either a replay
    (``events_after(last_seq)`` read when ``read_at`` events existed) or a snapshot (its seq
    read at ``seq_at``, its task records at ``records_at``, possibly one saved change ahead
    of its event); then ``go_live`` after ``live_at`` events; then the rest are published.
    """
    n = draw(st.integers(min_value=0, max_value=25))
    tasks = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    steps = draw(st.lists(st.integers(min_value=1, max_value=3), min_size=n, max_size=n))
    attach_at = draw(st.integers(min_value=0, max_value=n))
    live_at = draw(st.integers(min_value=attach_at, max_value=n))
    scenario: dict[str, Any] = {
        "n": n,
        "tasks": tasks,
        "steps": steps,
        "attach_at": attach_at,
        "live_at": live_at,
        "replay": draw(st.booleans()),
        "backend": draw(st.sampled_from(["asyncio", "trio"])),
    }
    if scenario["replay"]:
        read_at = draw(st.integers(min_value=attach_at, max_value=live_at))
        scenario.update(read_at=read_at, watermark=draw(st.integers(min_value=0, max_value=read_at)))
    else:
        seq_at = draw(st.integers(min_value=attach_at, max_value=live_at))
        records_at = draw(st.integers(min_value=seq_at, max_value=live_at))
        scenario.update(
            watermark=seq_at,
            records_at=records_at,
            ahead=draw(st.booleans()) and records_at < n,
        )
    return scenario


@settings(max_examples=200, deadline=None)
@given(handovers())
def test_any_interleaving_sends_each_event_after_the_watermark_once_in_order(scenario: dict[str, Any]) -> None:
    n, tasks, steps = scenario["n"], scenario["tasks"], scenario["steps"]
    revisions: list[int] = []  # of event k+1
    latest: dict[str, int] = {}
    for task, step in zip(tasks, steps, strict=True):
        latest[task] = latest.get(task, 0) + step
        revisions.append(latest[task])

    def snapshot_revisions(upto: int, ahead: bool) -> dict[str, int]:
        seen: dict[str, int] = {}
        for k in range(upto + (1 if ahead else 0)):
            seen[tasks[k]] = revisions[k]
        return seen

    async def follow() -> tuple[list[dict[str, Any]], dict[str, int]]:
        registry = MemoryClientRegistry(history_size=100)
        outbox = Outbox(limit=1000)
        sink = IdentitySink(outbox)
        replay: list[Event] = []
        snapshot: dict[str, int] = {}
        for published in range(n + 1):
            if published == scenario["attach_at"]:
                await registry.attach(OWNER, sink)
            if scenario["replay"] and published == scenario["read_at"]:
                missed = await registry.events_after(OWNER, scenario["watermark"])
                assert missed is not None
                replay = list(missed)
            if not scenario["replay"] and published == scenario["watermark"]:
                assert await registry.current_seq(OWNER) == published
            if not scenario["replay"] and published == scenario["records_at"]:
                snapshot = snapshot_revisions(published, scenario["ahead"])
            if published == scenario["live_at"]:
                fresher = {task: (rev, view_json(task, rev, snapshot=True)) for task, rev in snapshot.items()}
                sink.go_live(scenario["watermark"], replay, fresher)
            if published < n:
                task = tasks[published]
                await registry.publish(
                    OWNER, "taskProgress", task, revisions[published], view_json(task, revisions[published])
                )
        assert not outbox.overflowed
        return [msgspec.json.decode(text) for text in list(await _take_all(outbox))], snapshot

    sent, snapshot = anyio.run(follow, backend=scenario["backend"])

    watermark = scenario["watermark"]
    assert [m["seq"] for m in sent] == list(range(watermark + 1, n + 1))
    for message in sent:
        k = message["seq"]
        assert message["type"] == "taskProgress"
        assert message["task"]["id"] == tasks[k - 1]
        # The client never sees a task older than the snapshot it already has.
        expected = max(revisions[k - 1], snapshot.get(tasks[k - 1], 0))
        assert message["task"]["rev"] == expected
        assert message["task"]["snap"] == (revisions[k - 1] < expected)


async def _take_all(outbox: Outbox) -> list[str]:
    taken: list[str] = []
    while len(outbox):
        taken.extend(await outbox.next_batch())
    return taken


# --- a slow reader: merging, as a property ---------------------------------------------------


def _collapse(states: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return [state for index, state in enumerate(states) if index == 0 or states[index - 1] != state]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.sampled_from(["queued", "running", "running", "running", "completed"]),
            st.integers(min_value=1, max_value=2),
        ),
        max_size=60,
    ),
    st.integers(min_value=1, max_value=20),
    st.sampled_from(["asyncio", "trio"]),
)
def test_a_reader_that_falls_behind_loses_only_superseded_progress(
    changes: list[tuple[str, str, int]], limit: int, backend: str
) -> None:
    """Nothing is read until the end: what arrives is every status change of every task, its
    latest event, in seq order, or the outbox overflows and the connection is to be closed."""
    events = [
        Event(
            seq,
            "taskProgress",
            task,
            seq,
            msgspec.json.encode({"id": task, "status": status, "attempt": attempt, "rev": seq}),
        )
        for seq, (task, status, attempt) in enumerate(changes, start=1)
    ]

    async def run() -> tuple[bool, list[str]]:
        outbox = Outbox(limit=limit)
        sink = IdentitySink(outbox)
        sink.go_live(0, [], {})
        for item in events:
            sink.deliver(item)
        assert len(outbox) <= limit
        if outbox.overflowed:
            with pytest.raises(SlowConsumer):
                await outbox.next_batch()
            return True, []
        return False, await _take_all(outbox)

    overflowed, sent = anyio.run(run, backend=backend)
    if overflowed:
        return
    frames = {item.frame for item in events}
    assert all(text in frames for text in sent)
    messages = [msgspec.json.decode(text) for text in sent]
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(set(seqs))
    for task in "abc":
        mine = [item for item in events if item.task_id == task]
        got = [m["task"] for m in messages if m["task"]["id"] == task]
        if not mine:
            assert got == []
            continue
        assert got[-1]["rev"] == mine[-1].seq  # the latest of each task always arrives
        wanted = _collapse([(s, a) for t, s, a in changes if t == task])
        assert _collapse([(m["status"], m["attempt"]) for m in got]) == wanted
